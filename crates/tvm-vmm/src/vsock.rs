//! Host side of Firecracker's vsock: the guest's port is reached through a Unix
//! socket with a one-line handshake (`CONNECT <port>\n` → `OK <host port>\n`).
//! A guest that is not listening yet may get no reply at all, so every attempt has
//! its own deadline and the whole wait has another.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("vsock socket I/O failed: {0}")]
    Io(String),
    #[error("peer closed the connection before answering")]
    Closed,
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("unexpected handshake reply {0:?}")]
    Garbage(String),
    #[error("guest port {port} did not accept a connection within {waited:?}: {last}")]
    Deadline {
        port: u32,
        waited: Duration,
        last: String,
    },
}

/// One attempt: connect, send `CONNECT <port>`, read the reply line.
pub async fn handshake_once(
    uds: &Path,
    port: u32,
    wait: Duration,
) -> Result<UnixStream, HandshakeError> {
    let at = crate::uds::SocketPath::new(uds).map_err(|e| HandshakeError::Io(e.to_string()))?;
    let mut s = UnixStream::connect(at.path())
        .await
        .map_err(|e| HandshakeError::Io(e.to_string()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| HandshakeError::Io(e.to_string()))?;
    let line = tokio::time::timeout(wait, read_line(&mut s))
        .await
        .map_err(|_| HandshakeError::NoAnswer(wait))??;
    parse_reply(&line)?;
    Ok(s)
}

/// Reads up to a newline, one byte at a time, so no protocol byte after it is consumed.
async fn read_line(s: &mut UnixStream) -> Result<String, HandshakeError> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        let n = s
            .read(&mut b)
            .await
            .map_err(|e| HandshakeError::Io(e.to_string()))?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
        if line.len() > 64 {
            return Err(HandshakeError::Garbage(
                String::from_utf8_lossy(&line).into_owned(),
            ));
        }
    }
}

/// `OK <number>` is the only acceptable reply.
pub fn parse_reply(line: &str) -> Result<u32, HandshakeError> {
    line.strip_prefix("OK ")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .ok_or_else(|| HandshakeError::Garbage(line.to_string()))
}

/// Retries [`handshake_once`] until it succeeds or `deadline` passes; a garbage reply ends at once.
pub async fn connect(
    uds: &Path,
    port: u32,
    deadline: Instant,
) -> Result<UnixStream, HandshakeError> {
    let started = Instant::now();
    let mut last = String::from("never tried");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeError::Deadline {
                port,
                waited: started.elapsed(),
                last,
            });
        }
        match handshake_once(uds, port, left.min(Duration::from_millis(500))).await {
            Ok(s) => return Ok(s),
            Err(e @ HandshakeError::Garbage(_)) => return Err(e),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(
            Duration::from_millis(20).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A real Unix-socket peer that answers each connection with `reply` (or closes, or stays silent).
    async fn peer(dir: &Path, behaviour: &'static str) -> std::path::PathBuf {
        let path = dir.join(format!("{}.sock", behaviour.len()));
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = [0u8; 32];
                let n = s.read(&mut buf).await.unwrap_or(0);
                assert!(buf[..n].starts_with(b"CONNECT 1024\n"));
                match behaviour {
                    "close" => drop(s),
                    "silent" => tokio::time::sleep(Duration::from_secs(30)).await,
                    reply => {
                        s.write_all(reply.as_bytes()).await.unwrap();
                        s.write_all(b"frame-bytes").await.unwrap();
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
        path
    }

    #[tokio::test]
    async fn ok_reply_leaves_following_bytes_unread() {
        let d = tempfile::tempdir().unwrap();
        let p = peer(d.path(), "OK 1073741824\n").await;
        let mut s = connect(&p, 1024, Instant::now() + Duration::from_secs(2))
            .await
            .unwrap();
        let mut rest = [0u8; 11];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"frame-bytes");
    }

    #[tokio::test]
    async fn garbage_reply_fails_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = peer(d.path(), "HELLO THERE\n").await;
        let e = connect(&p, 1024, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e, HandshakeError::Garbage("HELLO THERE".into()));
    }

    #[tokio::test]
    async fn refusal_by_close_is_retried_until_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let p = peer(d.path(), "close").await;
        let started = Instant::now();
        let e = connect(&p, 1024, Instant::now() + Duration::from_millis(400))
            .await
            .unwrap_err();
        assert!(
            matches!(e, HandshakeError::Deadline { ref last, .. } if last.contains("closed")),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn silent_peer_is_bounded_by_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let p = peer(d.path(), "silent").await;
        let started = Instant::now();
        let e = connect(&p, 1024, Instant::now() + Duration::from_millis(700))
            .await
            .unwrap_err();
        assert!(matches!(e, HandshakeError::Deadline { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn missing_socket_is_retried_then_reported() {
        let d = tempfile::tempdir().unwrap();
        let e = connect(
            &d.path().join("none.sock"),
            1024,
            Instant::now() + Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HandshakeError::Deadline { .. }));
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(parse_reply("OK 5"), Ok(5));
        assert!(parse_reply("OK").is_err());
        assert!(parse_reply("ok 5").is_err());
        assert!(parse_reply("OK five").is_err());
    }
}
