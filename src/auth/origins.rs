//! Which sites may talk to the server: in development mode only loopback `Host`s and
//! `Origin`s, and with auth configured the `--allowed-origins` list on the WebSocket upgrade.
//!
//! Development mode makes every caller the owner, so a web page the developer happens to
//! visit must not reach it: not directly (its `Origin` is foreign), and not through DNS
//! rebinding (the browser then sends the attacker's name as `Host`). Checking the `Host`
//! against loopback names defeats rebinding; checking the `Origin` defeats a page that calls
//! `http://127.0.0.1:1234` itself. Non-browser clients send no `Origin` and pass.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Refuses, before any handler runs, requests that development mode must not serve and
/// WebSocket upgrades from origins `--allowed-origins` does not list.
pub(crate) async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if app.auth.is_dev() {
        if !host_of(&req).is_some_and(|h| is_loopback_host(&h)) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "development mode answers only requests addressed to localhost, 127.0.0.1 or \
                 [::1] (the Host header): configure --jwt-secret or --jwks-url to serve others",
            )
                .into_response();
        }
        if let Some(origin) = origin_of(req.headers()) {
            if !is_loopback_origin(&origin) {
                return forbidden_origin(&origin);
            }
        }
    } else if req.uri().path().starts_with("/sync/") && !app.config.allowed_origins.is_empty() {
        if let Some(origin) = origin_of(req.headers()) {
            let allowed = app
                .config
                .allowed_origins
                .iter()
                .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(&origin));
            if !allowed {
                return forbidden_origin(&origin);
            }
        }
    }
    next.run(req).await
}

fn forbidden_origin(origin: &str) -> Response {
    let origin: String = origin.chars().take(100).collect();
    (
        StatusCode::FORBIDDEN,
        format!("origin {origin} is not allowed to connect to this server"),
    )
        .into_response()
}

/// The host the request is addressed to: the `Host` header, or the URI's authority.
fn host_of(req: &Request) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    Some(host)
}

/// The `Origin` header, if present (`null`, sent by sandboxed frames and `file:` pages, is
/// returned as is and is never allowed).
fn origin_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
}

/// Whether `host` (`name[:port]` or `[v6][:port]`) names this machine's loopback interface.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) if tail.is_empty() || valid_port(tail) => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

/// Whether `origin` (`scheme://host[:port]`) is a page served from loopback.
pub(crate) fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
        && !host.contains('/')
        && !host.contains('@')
        && is_loopback_host(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_origins() {
        for h in [
            "localhost",
            "localhost:1234",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:1234",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:1234",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]:80",
            "localhost:99999",
            "localhost:x",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert!(is_loopback_origin("http://localhost:3000"));
        assert!(is_loopback_origin("https://127.0.0.1"));
        assert!(!is_loopback_origin("null"));
        assert!(!is_loopback_origin("https://evil.example"));
        assert!(!is_loopback_origin("http://localhost@evil.example"));
        assert!(!is_loopback_origin("file://localhost"));
    }
}
