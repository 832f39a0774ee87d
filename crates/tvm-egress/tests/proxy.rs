//! The proxy end to end: a `tokio::io::duplex` pipe stands for the guest's connection,
//! real TCP servers on 127.0.0.1 stand for the internet (reachable only through rules
//! naming the literal 127.0.0.1, as the policy demands).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tvm_egress::{parse_rule, serve_connection, Grant, Limits, Reason, Refused, Usage};

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
const WAIT: Duration = Duration::from_secs(10);

fn grant_with(rules: &[String], limits: Limits) -> Arc<Grant> {
    let rules = rules.iter().map(|r| parse_rule(r).expect("rule")).collect();
    Arc::new(Grant { rules, limits })
}

fn limits() -> Limits {
    Limits {
        max_bytes_in: 1 << 30,
        max_bytes_out: 1 << 30,
        max_connections: 100,
        connect_timeout: Duration::from_secs(5),
    }
}

fn grant(rules: &[String]) -> Arc<Grant> {
    grant_with(rules, limits())
}

/// Starts `serve_connection` on one end of a pipe; the other end is the guest.
fn guest(grant: &Arc<Grant>, usage: &Arc<Usage>) -> (DuplexStream, JoinHandle<()>) {
    let (guest, host) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(serve_connection(host, Arc::clone(grant), Arc::clone(usage)));
    (guest, task)
}

async fn read_to_end(stream: &mut DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("the proxy ended the connection in time")
        .expect("read");
    out
}

/// Sends one request head and answers the whole response.
async fn exchange(grant: &Arc<Grant>, usage: &Arc<Usage>, request: &str) -> String {
    let (mut stream, _task) = guest(grant, usage);
    stream.write_all(request.as_bytes()).await.expect("write");
    String::from_utf8(read_to_end(&mut stream).await).expect("utf-8")
}

async fn connect_tunnel(stream: &mut DuplexStream, authority: &str) {
    let head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; ESTABLISHED.len()];
    timeout(WAIT, stream.read_exact(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(ESTABLISHED)
    );
}

fn refused(host: &str, port: u16, reason: Reason) -> Refused {
    Refused {
        host: host.to_string(),
        port,
        reason,
    }
}

/// A one-shot HTTP server: answers the request head and body it saw, and replies
/// `hello` with `Connection: close`.
async fn http_server() -> (u16, oneshot::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (seen, seen_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            conn.read_exact(&mut byte).await.expect("head");
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).expect("utf-8 head");
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |n| n.trim().parse::<usize>().expect("length"));
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body).await.expect("body");
        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        conn.write_all(reply).await.expect("reply");
        let _ = seen.send((head, body));
    });
    (port, seen_rx)
}

/// A server that echoes every connection until its client half-closes, then closes.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = conn.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn plain_http_is_rewritten_and_answered() {
    let (port, seen) = http_server().await;
    let grant = grant(&[format!("127.0.0.1:{port}")]);
    let usage = Arc::new(Usage::new());
    let request = format!(
        "POST http://127.0.0.1:{port}/submit?x=1 HTTP/1.1\r\n\
         Host: elsewhere.example\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\n\
         Connection: keep-alive\r\n\
         Content-Length: 4\r\n\
         \r\n\
         ping"
    );
    let response = exchange(&grant, &usage, &request).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nhello"), "{response}");

    let (head, body) = seen.await.expect("the server saw the request");
    assert_eq!(
        head,
        format!(
            "POST /submit?x=1 HTTP/1.1\r\n\
             Host: 127.0.0.1:{port}\r\n\
             Content-Length: 4\r\n\
             Connection: close\r\n\r\n"
        )
    );
    assert_eq!(body, b"ping");
    let report = usage.snapshot();
    assert_eq!(report.connections, 1);
    assert_eq!(report.bytes_out, (head.len() + body.len()) as u64);
    assert_eq!(report.bytes_in, response.len() as u64);
    assert!(report.refused.is_empty());
}

#[tokio::test]
async fn connect_tunnels_bytes_both_ways() {
    let port = echo_server().await;
    let grant = grant(&[format!("127.0.0.1:{port}")]);
    let usage = Arc::new(Usage::new());
    let (mut stream, task) = guest(&grant, &usage);
    connect_tunnel(&mut stream, &format!("127.0.0.1:{port}")).await;
    let messages = [&b"\x16\x03\x01 not really TLS"[..], b"second"];
    for message in messages {
        stream.write_all(message).await.expect("write");
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).await.expect("echo");
        assert_eq!(echoed, message);
    }
    stream.shutdown().await.expect("half-close");
    assert!(read_to_end(&mut stream).await.is_empty());
    timeout(WAIT, task).await.expect("served").expect("task");
    let report = usage.snapshot();
    let total = messages.iter().map(|m| m.len() as u64).sum::<u64>();
    assert_eq!((report.bytes_out, report.bytes_in), (total, total));
}

#[tokio::test]
async fn bytes_sent_with_the_connect_head_are_forwarded() {
    let port = echo_server().await;
    let grant = grant(&[format!("127.0.0.1:{port}")]);
    let usage = Arc::new(Usage::new());
    let (mut stream, _task) = guest(&grant, &usage);
    let head = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nearly");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut want = ESTABLISHED.to_vec();
    want.extend_from_slice(b"early");
    assert_eq!(read_to_end(&mut stream).await, want);
}

#[tokio::test]
async fn half_close_lets_the_answer_flow_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut all = Vec::new();
        conn.read_to_end(&mut all)
            .await
            .expect("read to the guest's EOF");
        let answer = format!("got {} bytes", all.len());
        conn.write_all(answer.as_bytes()).await.expect("answer");
    });
    let grant = grant(&[format!("127.0.0.1:{port}")]);
    let usage = Arc::new(Usage::new());
    let (mut stream, _task) = guest(&grant, &usage);
    connect_tunnel(&mut stream, &format!("127.0.0.1:{port}")).await;
    stream.write_all(&vec![7u8; 100_000]).await.expect("upload");
    stream.shutdown().await.expect("half-close");
    assert_eq!(read_to_end(&mut stream).await, b"got 100000 bytes");
}

#[tokio::test]
async fn unlisted_host_is_forbidden_and_recorded() {
    let grant = grant(&["example.com".to_string()]);
    let usage = Arc::new(Usage::new());
    let response = exchange(&grant, &usage, "CONNECT evil.example:443 HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        response,
        "HTTP/1.1 403 Forbidden\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 47\r\n\
         Connection: close\r\n\r\n\
         egress refused (not_allowed): evil.example:443\n"
    );
    let response = exchange(
        &grant,
        &usage,
        "GET http://example.com:8080/ HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{response}"
    );
    assert_eq!(
        usage.snapshot().refused,
        [
            refused("evil.example", 443, Reason::NotAllowed),
            refused("example.com", 8080, Reason::NotAllowed),
        ]
    );
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_but_the_literal_rule_works() {
    let port = echo_server().await;
    let usage = Arc::new(Usage::new());

    let by_name = grant(&[format!("localhost:{port}")]);
    let response = exchange(
        &by_name,
        &usage,
        &format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with(&format!("(special_address): localhost:{port}\n")),
        "{response}"
    );

    let by_literal = grant(&[format!("127.0.0.1:{port}")]);
    let response = exchange(
        &by_literal,
        &usage,
        &format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(response.contains("(not_allowed)"), "{response}");

    let (mut stream, _task) = guest(&by_literal, &usage);
    connect_tunnel(&mut stream, &format!("127.0.0.1:{port}")).await;

    assert_eq!(
        usage.snapshot().refused,
        [
            refused("localhost", port, Reason::SpecialAddress),
            refused("localhost", port, Reason::NotAllowed),
        ]
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_get_429() {
    let port = echo_server().await;
    let grant = grant_with(
        &[format!("127.0.0.1:{port}")],
        Limits {
            max_connections: 1,
            ..limits()
        },
    );
    let usage = Arc::new(Usage::new());
    let (mut first, _task) = guest(&grant, &usage);
    connect_tunnel(&mut first, &format!("127.0.0.1:{port}")).await;
    let response = exchange(
        &grant,
        &usage,
        &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{response}"
    );
    assert!(response.contains("Connection: close\r\n"), "{response}");
    let report = usage.snapshot();
    assert_eq!(report.connections, 1);
    assert_eq!(
        report.refused,
        [refused("127.0.0.1", port, Reason::LimitConnections)]
    );
}

#[tokio::test]
async fn the_download_cap_cuts_the_connection_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut head = [0u8; 1024];
        let _ = conn.read(&mut head).await;
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        // Endless: only the cut stops it.
        while conn.write_all(&chunk).await.is_ok() {}
    });
    let cap = 100_000;
    let grant = grant_with(
        &[format!("127.0.0.1:{port}")],
        Limits {
            max_bytes_in: cap,
            ..limits()
        },
    );
    let usage = Arc::new(Usage::new());
    let (mut stream, task) = guest(&grant, &usage);
    let request = format!("GET http://127.0.0.1:{port}/big HTTP/1.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let got = read_to_end(&mut stream).await;
    assert_eq!(got.len() as u64, cap);
    timeout(WAIT, task)
        .await
        .expect("the connection ended")
        .expect("task");

    // The cap is spent: a new connection is refused before it connects, and the cap
    // is recorded once.
    let response = exchange(&grant, &usage, &request).await;
    assert!(response.starts_with("HTTP/1.1 429 "), "{response}");
    assert!(response.contains("(limit_bytes)"), "{response}");
    let report = usage.snapshot();
    assert_eq!(report.bytes_in, cap);
    assert_eq!(report.connections, 2);
    assert_eq!(
        report.refused,
        [refused("127.0.0.1", port, Reason::LimitBytes)]
    );
}

#[tokio::test]
async fn the_upload_cap_cuts_the_connection() {
    let port = echo_server().await;
    let cap = 1000;
    let grant = grant_with(
        &[format!("127.0.0.1:{port}")],
        Limits {
            max_bytes_out: cap,
            ..limits()
        },
    );
    let usage = Arc::new(Usage::new());
    let (mut stream, task) = guest(&grant, &usage);
    connect_tunnel(&mut stream, &format!("127.0.0.1:{port}")).await;
    // The write may fail once the proxy has cut the connection.
    let _ = stream.write_all(&[1u8; 5000]).await;
    let echoed = read_to_end(&mut stream).await;
    assert!(echoed.len() as u64 <= cap, "{}", echoed.len());
    timeout(WAIT, task)
        .await
        .expect("the connection ended")
        .expect("task");
    let report = usage.snapshot();
    assert_eq!(report.bytes_out, cap);
    assert_eq!(
        report.refused,
        [refused("127.0.0.1", port, Reason::LimitBytes)]
    );
}

#[tokio::test]
async fn a_closed_port_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let grant = grant(&[format!("127.0.0.1:{port}")]);
    let usage = Arc::new(Usage::new());
    let response = exchange(
        &grant,
        &usage,
        &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with(&format!("(connect_failed): 127.0.0.1:{port}\n")),
        "{response}"
    );
    assert_eq!(
        usage.snapshot().refused,
        [refused("127.0.0.1", port, Reason::ConnectFailed)]
    );
}

/// A listener whose accept queue is full, so that a further SYN is dropped and a
/// connect hangs, without depending on the network outside this machine.
async fn black_hole() -> (u16, Vec<TcpStream>, tokio::net::TcpListener) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(error)) => panic!("filling the accept queue: {error}"),
            Err(_) => return (addr.port(), fillers, listener),
        }
    }
    panic!("the accept queue never filled");
}

#[tokio::test]
async fn a_connect_timeout_is_504_in_about_the_timeout() {
    let (port, _fillers, _listener) = black_hole().await;
    let grant = grant_with(
        &[format!("127.0.0.1:{port}")],
        Limits {
            connect_timeout: Duration::from_millis(200),
            ..limits()
        },
    );
    let usage = Arc::new(Usage::new());
    let started = Instant::now();
    let response = exchange(
        &grant,
        &usage,
        &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    let took = started.elapsed();
    assert!(
        response.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{response}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        usage.snapshot().refused,
        [refused("127.0.0.1", port, Reason::ConnectTimeout)]
    );
}

#[tokio::test]
async fn bad_requests_are_400() {
    let grant = grant(&["example.com".to_string()]);
    let usage = Arc::new(Usage::new());
    for request in [
        "GET /path HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "GET https://example.com/ HTTP/1.1\r\n\r\n",
        "\x16\x03\x01\x00\x05hello\r\n\r\n",
    ] {
        let response = exchange(&grant, &usage, request).await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
        assert!(
            response.contains("egress refused (bad_request): "),
            "{response}"
        );
    }
    let oversized = format!(
        "GET http://example.com/{} HTTP/1.1\r\n\r\n",
        "a".repeat(20_000)
    );
    let response = exchange(&grant, &usage, &oversized).await;
    assert!(
        response.ends_with("(bad_request): the request head is larger than 16 KiB\n"),
        "{response}"
    );

    let (mut stream, _task) = guest(&grant, &usage);
    stream
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\n")
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    let response = String::from_utf8(read_to_end(&mut stream).await).expect("utf-8");
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );

    let report = usage.snapshot();
    assert_eq!(report.connections, 0);
    assert_eq!(report.refused, [refused("", 0, Reason::BadRequest)]);
}

#[tokio::test]
async fn a_guest_that_closes_at_once_gets_nothing() {
    let grant = grant(&["example.com".to_string()]);
    let usage = Arc::new(Usage::new());
    let (mut stream, task) = guest(&grant, &usage);
    stream.shutdown().await.expect("close");
    assert!(read_to_end(&mut stream).await.is_empty());
    timeout(WAIT, task).await.expect("served").expect("task");
    assert_eq!(usage.snapshot(), Default::default());
}
