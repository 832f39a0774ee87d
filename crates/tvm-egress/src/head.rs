//! The proxy request head, pure: `CONNECT host:port` for tunnels (HTTPS stays end to
//! end) and absolute-form `METHOD http://host[:port]/path` for plain HTTP, which is
//! rewritten to origin-form for the upstream server.

use std::net::IpAddr;

use crate::policy::Target;
use crate::rules::{parse_plain_host, parse_port, split_authority, AuthorityHost, Host};

/// The largest request head read; a longer one is refused.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// The most header lines a head may have.
const MAX_HEADERS: usize = 100;
/// The port of `http://` when the URI names none.
const HTTP_PORT: u16 = 80;
/// Header lines not forwarded: the proxy's own, and those the proxy replaces.
const DROPPED: [&str; 4] = [
    "proxy-connection",
    "proxy-authorization",
    "connection",
    "host",
];

/// A parsed proxy request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// `CONNECT host:port`: answer 200, then splice bytes both ways, never inspected.
    Connect { target: Target },
    /// A plain-HTTP request. `request` is the head to send upstream: the request line in
    /// origin-form (`GET /path?query HTTP/1.1`), `Host` from the URI, the guest's other
    /// headers minus `Proxy-Connection`, `Proxy-Authorization` and `Connection`, then
    /// `Connection: close`.
    Forward { target: Target, request: Vec<u8> },
}

impl Head {
    /// Where the request goes.
    pub fn target(&self) -> &Target {
        match self {
            Head::Connect { target } | Head::Forward { target, .. } => target,
        }
    }
}

/// Why a request head was refused. Messages never quote the path, headers or body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request head is larger than 16 KiB")]
    TooLarge,
    #[error("malformed request head")]
    Malformed(#[source] httparse::Error),
    #[error("an https:// URI must be reached with CONNECT host:443")]
    Https,
    #[error("a proxy request needs an absolute URI (http://host/path), not /path")]
    OriginForm,
    #[error("the request target is neither host:port (CONNECT) nor http://host[:port]/path")]
    BadTarget,
    #[error("user information (user@host) in the request target is not accepted")]
    Userinfo,
    #[error("CONNECT needs host:port")]
    MissingPort,
    #[error("the port must be a whole number from 1 to 65535")]
    BadPort,
    #[error("bad host in the request target: {0}")]
    BadHost(&'static str),
}

/// Parses the request head at the start of `buf`. `Ok(None)`: the head is not complete
/// yet, read more. `Ok(Some((head, n)))`: the head took `n` bytes; what follows is body
/// (plain HTTP) or tunnel data (CONNECT). A head longer than 16 KiB is an error.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(window).map_err(HeadError::Malformed)? {
        httparse::Status::Complete(used) => used,
        httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    let (Some(method), Some(uri), Some(version)) = (request.method, request.path, request.version)
    else {
        return Err(HeadError::BadTarget);
    };
    let head = if method == "CONNECT" {
        Head::Connect {
            target: parse_target(uri, None)?,
        }
    } else {
        let (target, origin) = absolute_http(uri)?;
        let request = forward_head(method, origin, version, &target, request.headers);
        Head::Forward { target, request }
    };
    Ok(Some((head, used)))
}

/// Splits `http://authority/path?query#fragment` into the target and `/path?query`.
fn absolute_http(uri: &str) -> Result<(Target, &str), HeadError> {
    let scheme_end = uri.find("://").map(|i| i + 3);
    let Some(rest) = scheme_end.and_then(|end| {
        uri.get(..end)
            .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
            .map(|_| &uri[end..])
    }) else {
        return Err(if uri.starts_with('/') {
            HeadError::OriginForm
        } else if uri
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            HeadError::Https
        } else {
            HeadError::BadTarget
        });
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let origin = tail.split('#').next().unwrap_or_default();
    Ok((parse_target(authority, Some(HTTP_PORT))?, origin))
}

/// Reads `host:port` (`[v6]:port`); `default_port` applies when no port is written.
fn parse_target(authority: &str, default_port: Option<u16>) -> Result<Target, HeadError> {
    if authority.contains('@') {
        return Err(HeadError::Userinfo);
    }
    if authority.contains('/') {
        return Err(HeadError::BadTarget);
    }
    let (host, port) = split_authority(authority).map_err(HeadError::BadHost)?;
    let host = match host {
        AuthorityHost::Bracketed(v6) => Host::Ip(IpAddr::V6(v6)),
        AuthorityHost::Plain(text) => parse_plain_host(text).map_err(HeadError::BadHost)?,
    };
    let port = match port {
        Some(text) => parse_port(text).ok_or(HeadError::BadPort)?,
        None => default_port.ok_or(HeadError::MissingPort)?,
    };
    Ok(Target { host, port })
}

/// The head sent upstream for a plain-HTTP request.
fn forward_head(
    method: &str,
    origin: &str,
    version: u8,
    target: &Target,
    headers: &[httparse::Header<'_>],
) -> Vec<u8> {
    let path = match origin {
        "" => "/".to_string(),
        query if query.starts_with('?') => format!("/{query}"),
        path => path.to_string(),
    };
    let host = match target.port {
        HTTP_PORT => match target.host {
            Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => target.host.to_string(),
        },
        _ => target.to_string(),
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        format!("{method} {path} HTTP/1.{version}\r\nHost: {host}\r\n").as_bytes(),
    );
    for header in headers {
        if DROPPED.iter().any(|d| header.name.eq_ignore_ascii_case(d)) {
            continue;
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<(Head, usize)>, HeadError> {
        parse_head(text.as_bytes())
    }

    fn complete(text: &str) -> (Head, usize) {
        match parse(text) {
            Ok(Some(found)) => found,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn forwarded(text: &str) -> (Target, String) {
        match complete(text).0 {
            Head::Forward { target, request } => {
                (target, String::from_utf8(request).expect("utf-8"))
            }
            other => panic!("not a forward: {other:?}"),
        }
    }

    fn name(host: &str, port: u16) -> Target {
        Target {
            host: Host::Name(host.to_string()),
            port,
        }
    }

    fn error(text: &str) -> HeadError {
        match parse(text) {
            Err(e) => e,
            other => panic!("{text:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn connect_gives_the_target_and_leaves_tunnel_bytes() {
        let text = "CONNECT Example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01";
        let (head, used) = complete(text);
        assert_eq!(
            head,
            Head::Connect {
                target: name("example.com", 443)
            }
        );
        assert_eq!(&text.as_bytes()[used..], b"\x16\x03\x01");
        let (head, _) = complete("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n");
        let v6 = Target {
            host: Host::Ip("::1".parse().expect("ip")),
            port: 8443,
        };
        assert_eq!(head.target(), &v6);
        let (head, _) = complete("CONNECT 10.0.0.1:22 HTTP/1.1\r\n\r\n");
        assert_eq!(
            head.target().host,
            Host::Ip("10.0.0.1".parse().expect("ip"))
        );
    }

    #[test]
    fn connect_refuses_bad_authorities() {
        for (text, want) in [
            (
                "CONNECT example.com HTTP/1.1\r\n\r\n",
                HeadError::MissingPort,
            ),
            ("CONNECT example.com:0 HTTP/1.1\r\n\r\n", HeadError::BadPort),
            (
                "CONNECT example.com:99999 HTTP/1.1\r\n\r\n",
                HeadError::BadPort,
            ),
            ("CONNECT example.com: HTTP/1.1\r\n\r\n", HeadError::BadPort),
            (
                "CONNECT example.com:-1 HTTP/1.1\r\n\r\n",
                HeadError::BadPort,
            ),
            (
                "CONNECT a@example.com:443 HTTP/1.1\r\n\r\n",
                HeadError::Userinfo,
            ),
            (
                "CONNECT http://example.com:443 HTTP/1.1\r\n\r\n",
                HeadError::BadTarget,
            ),
            (
                "CONNECT example.com:443/x HTTP/1.1\r\n\r\n",
                HeadError::BadTarget,
            ),
        ] {
            assert_eq!(error(text), want, "{text:?}");
        }
        assert!(matches!(
            error("CONNECT ::1:443 HTTP/1.1\r\n\r\n"),
            HeadError::BadHost(_)
        ));
        assert!(matches!(
            error("CONNECT *.a.com:443 HTTP/1.1\r\n\r\n"),
            HeadError::BadHost(_)
        ));
        assert!(matches!(
            error("CONNECT 127.1:443 HTTP/1.1\r\n\r\n"),
            HeadError::BadHost(_)
        ));
        assert!(matches!(
            error("CONNECT a_b.com:443 HTTP/1.1\r\n\r\n"),
            HeadError::BadHost(_)
        ));
    }

    #[test]
    fn absolute_form_is_rewritten_to_origin_form() {
        let (target, request) = forwarded(
            "GET http://Example.com/a/b?q=1&r=2 HTTP/1.1\r\n\
             Host: evil.example\r\n\
             Proxy-Connection: keep-alive\r\n\
             Proxy-Authorization: Basic eDp5\r\n\
             connection: keep-alive\r\n\
             Accept: */*\r\n\
             \r\n",
        );
        assert_eq!(target, name("example.com", 80));
        assert_eq!(
            request,
            "GET /a/b?q=1&r=2 HTTP/1.1\r\n\
             Host: example.com\r\n\
             Accept: */*\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_paths_ports_and_hosts() {
        for (uri, target, line, host) in [
            ("http://a.com", name("a.com", 80), "GET / HTTP/1.1", "a.com"),
            (
                "http://a.com?x",
                name("a.com", 80),
                "GET /?x HTTP/1.1",
                "a.com",
            ),
            (
                "http://a.com/p#frag",
                name("a.com", 80),
                "GET /p HTTP/1.1",
                "a.com",
            ),
            (
                "HTTP://a.com:8080/",
                name("a.com", 8080),
                "GET / HTTP/1.1",
                "a.com:8080",
            ),
            (
                "http://[::1]:81/x",
                Target {
                    host: Host::Ip("::1".parse().expect("ip")),
                    port: 81,
                },
                "GET /x HTTP/1.1",
                "[::1]:81",
            ),
            (
                "http://[::1]/x",
                Target {
                    host: Host::Ip("::1".parse().expect("ip")),
                    port: 80,
                },
                "GET /x HTTP/1.1",
                "[::1]",
            ),
        ] {
            let (got, request) = forwarded(&format!("GET {uri} HTTP/1.1\r\n\r\n"));
            assert_eq!(got, target, "{uri}");
            let want = format!("{line}\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            assert_eq!(request, want, "{uri}");
        }
    }

    #[test]
    fn body_bytes_are_left_for_the_splice_and_version_kept() {
        let text = "POST http://a.com/up HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc";
        let (head, used) = complete(text);
        assert_eq!(&text.as_bytes()[used..], b"abc");
        let Head::Forward { request, .. } = head else {
            panic!("not a forward");
        };
        assert!(request.starts_with(b"POST /up HTTP/1.0\r\n"));
        assert!(request.ends_with(b"Content-Length: 3\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn other_forms_are_refused() {
        for (text, want) in [
            ("GET https://a.com/ HTTP/1.1\r\n\r\n", HeadError::Https),
            ("GET HTTPS://a.com/ HTTP/1.1\r\n\r\n", HeadError::Https),
            (
                "GET /path HTTP/1.1\r\nHost: a.com\r\n\r\n",
                HeadError::OriginForm,
            ),
            ("GET ftp://a.com/ HTTP/1.1\r\n\r\n", HeadError::BadTarget),
            ("OPTIONS * HTTP/1.1\r\n\r\n", HeadError::BadTarget),
            ("GET a.com:80 HTTP/1.1\r\n\r\n", HeadError::BadTarget),
            ("GET http://a@b/ HTTP/1.1\r\n\r\n", HeadError::Userinfo),
            (
                "GET http://u:p@b.com/ HTTP/1.1\r\n\r\n",
                HeadError::Userinfo,
            ),
            ("GET http://a.com:0/ HTTP/1.1\r\n\r\n", HeadError::BadPort),
            ("GET http://a.com:x/ HTTP/1.1\r\n\r\n", HeadError::BadPort),
            ("GET http://a.com:/ HTTP/1.1\r\n\r\n", HeadError::BadPort),
        ] {
            assert_eq!(error(text), want, "{text:?}");
        }
        for text in [
            "GET http:///x HTTP/1.1\r\n\r\n",
            "GET http://a%2ecom/ HTTP/1.1\r\n\r\n",
            "GET http://*.a.com/ HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(error(text), HeadError::BadHost(_)), "{text:?}");
        }
    }

    #[test]
    fn spaces_and_binary_are_malformed() {
        for text in [
            "GET http://a b/ HTTP/1.1\r\n\r\n",
            "GET  http://a.com/ HTTP/1.1\r\n\r\n",
            "GET http://a.com/ HTTP/2.0\r\n\r\n",
            "GET http://a.com/\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n",
            "GET http://a.com/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET http://a.com/ HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        ] {
            assert!(matches!(error(text), HeadError::Malformed(_)), "{text:?}");
        }
        let mut binary = vec![0u8, 0xff, 0x80, 0x10];
        binary.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse_head(&binary), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("CONN"), Ok(None));
        assert_eq!(parse("CONNECT a.com:443 HTTP/1.1\r\n"), Ok(None));
        assert_eq!(
            parse("GET http://a.com/ HTTP/1.1\r\nAccept: x\r\n"),
            Ok(None)
        );
    }

    #[test]
    fn huge_heads_are_refused() {
        let mut text = String::from("GET http://a.com/ HTTP/1.1\r\nX-Big: ");
        text.push_str(&"a".repeat(MAX_HEAD));
        assert_eq!(parse_head(&text.as_bytes()[..MAX_HEAD - 1]), Ok(None));
        assert_eq!(
            parse_head(&text.as_bytes()[..MAX_HEAD]),
            Err(HeadError::TooLarge)
        );
        text.push_str("\r\n\r\n");
        assert_eq!(parse(&text), Err(HeadError::TooLarge));
        let long_uri = format!("GET http://a.com/{} HTTP/1.1\r\n\r\n", "p".repeat(MAX_HEAD));
        assert_eq!(parse(&long_uri), Err(HeadError::TooLarge));
        let many = format!(
            "GET http://a.com/ HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(parse(&many), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn a_head_just_under_the_cap_is_accepted() {
        let start = "GET http://a.com/ HTTP/1.1\r\nX-Big: ";
        let filler = MAX_HEAD - start.len() - 4;
        let text = format!("{start}{}\r\n\r\n", "a".repeat(filler));
        assert_eq!(text.len(), MAX_HEAD);
        let (_, used) = complete(&text);
        assert_eq!(used, MAX_HEAD);
    }
}
