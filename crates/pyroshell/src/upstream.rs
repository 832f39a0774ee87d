//! The upstream: where it is (a parsed base URL), and whether it can take requests
//! (a `watch` channel fed by a health prober in forward mode, or by pyrolima's
//! monitor in lima mode).

use std::time::Duration;

use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::Uri;
use tokio::sync::watch;

use crate::proxy::Clients;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("upstream URL {0:?} is not a URL")]
    Syntax(String),
    #[error(
        "upstream URL {0:?}: only http:// is supported (terminate TLS in front of the \
         upstream, or reach it inside the mesh/port-forward)"
    )]
    Scheme(String),
    #[error("upstream URL {0:?} has no host")]
    NoHost(String),
    #[error("upstream URL {0:?} must not carry a query or fragment")]
    Query(String),
}

/// `http://host:port[/prefix]`: requests go to `prefix + path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    authority: Authority,
    prefix: String,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let uri: Uri = s.parse().map_err(|_| UrlError::Syntax(s.into()))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(UrlError::Scheme(s.into()));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UrlError::NoHost(s.into()))?;
        if authority.host().is_empty() {
            return Err(UrlError::NoHost(s.into()));
        }
        if uri.query().is_some() || s.contains('#') {
            return Err(UrlError::Query(s.into()));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Self { authority, prefix })
    }

    /// The upstream URI for a request's path and query.
    pub fn join(&self, pq: Option<&PathAndQuery>) -> Uri {
        let pq = pq.map_or("/", PathAndQuery::as_str);
        let full = format!("{}{pq}", self.prefix);
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(full)
            .build()
            // Authority and path both came from parsed URIs.
            .unwrap_or_else(|_| Uri::from_static("http://invalid./"))
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// Whether requests can go upstream now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamState {
    /// Its `/readyz` answered 200 at the last look.
    Up,
    /// Not ready. `gate`: do not even try (lima mode while the VM is being
    /// (re)created); otherwise requests are still attempted, so a recovered upstream
    /// is used at once, and fail fast with 503 if it is still down.
    Down {
        reason: String,
        retry_after_secs: u64,
        gate: bool,
    },
}

impl UpstreamState {
    pub fn starting(retry_after_secs: u64) -> Self {
        UpstreamState::Down {
            reason: "not probed yet".into(),
            retry_after_secs,
            gate: false,
        }
    }
}

/// Forward mode's prober: `GET <path>` (with `auth`) every `interval`; ready on 2xx.
pub async fn probe_loop(
    clients: Clients,
    url: UpstreamUrl,
    path: PathAndQuery,
    auth: Option<axum::http::HeaderValue>,
    interval: Duration,
    state: std::sync::Arc<watch::Sender<UpstreamState>>,
) {
    let retry_after = retry_after_for(interval);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probe = clients.get(
            url.join(Some(&path)),
            auth.as_ref(),
            interval.max(Duration::from_secs(1)),
        );
        let next = match probe.await {
            Ok(code) if (200..300).contains(&code) => UpstreamState::Up,
            Ok(code) => UpstreamState::Down {
                reason: format!("upstream {path} answered {code}"),
                retry_after_secs: retry_after,
                gate: false,
            },
            Err(e) => UpstreamState::Down {
                reason: format!("upstream unreachable: {e}"),
                retry_after_secs: retry_after,
                gate: false,
            },
        };
        state.send_if_modified(|cur| {
            if *cur == next {
                return false;
            }
            match &next {
                UpstreamState::Up => tracing::info!(upstream = %url, "upstream ready"),
                UpstreamState::Down { reason, .. } => {
                    tracing::warn!(upstream = %url, reason, "upstream not ready")
                }
            }
            *cur = next;
            true
        });
    }
}

/// `Retry-After` while the upstream is down: the next probe's time, at least 1 s.
pub fn retry_after_for(interval: Duration) -> u64 {
    interval.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_join() {
        let u = UpstreamUrl::parse("http://127.0.0.1:8081").expect("ok");
        let pq = PathAndQuery::from_static("/v1/execute?x=1");
        assert_eq!(
            u.join(Some(&pq)).to_string(),
            "http://127.0.0.1:8081/v1/execute?x=1"
        );
        let u = UpstreamUrl::parse("http://gw.example/tvm/").expect("ok");
        assert_eq!(
            u.join(Some(&pq)).to_string(),
            "http://gw.example/tvm/v1/execute?x=1"
        );
        assert_eq!(u.to_string(), "http://gw.example/tvm");
        assert_eq!(u.join(None).to_string(), "http://gw.example/tvm/");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(matches!(
            UpstreamUrl::parse("https://x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse("x:80"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse("not a url"),
            Err(UrlError::Syntax(_))
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://h/?a=b"),
            Err(UrlError::Query(_))
        ));
    }

    #[test]
    fn retry_after_is_at_least_a_second() {
        assert_eq!(retry_after_for(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_for(Duration::from_millis(1500)), 2);
    }
}
