//! The accept loop: HTTP/1.1 through hyper with a timer, so that a connection must finish
//! its request head in time and within a small buffer.
//!
//! `axum::serve` runs hyper without a timer, which disables `header_read_timeout`: 1,000
//! connections each trickling 380 KB of headers held 400 MB, and none of them counted against
//! `--max-connections` (only upgraded sockets do). Here every accepted connection holds a
//! permit of its own cap until hyper is done with it (for a WebSocket: until the upgrade), its
//! head must arrive within `--header-read-timeout-secs`, and hyper buffers at most
//! [`MAX_BUF_SIZE`] of it.
//!
//! The global cap alone lets one address take every HTTP slot (1,280 trickling connections
//! from one host would lock everyone else out for the header timeout), so connections in the
//! HTTP phase are also counted per client address (IPv6 per /64, which one host usually
//! holds whole). Past `--max-http-connections-per-ip` a connection is answered 503 with
//! `Retry-After: 1` at once. Trusted proxies are exempt: every user behind them shares
//! their address, and their own X-Forwarded-For is not known before the head is read.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::limits::client_ip::{canonical, TrustedProxies};

/// Most bytes hyper buffers for one connection's request head (tokens included).
pub const MAX_BUF_SIZE: usize = 64 << 10;

static REFUSED_HTTP: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("resonant_connections_refused_total", "reason" => "max-http-connections"),
);
static REFUSED_HTTP_PER_IP: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("resonant_connections_refused_total", "reason" => "max-http-connections-per-ip"),
);

/// What the accept loop enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections in the HTTP phase at once, in all.
    pub max_http: usize,
    /// Connections in the HTTP phase at once from one address (IPv6: one /64); 0: no limit.
    pub max_http_per_ip: usize,
    /// How long a connection may take to send a request head (first byte to blank line).
    pub header_read_timeout: Duration,
    /// Peers exempt from the per-address cap.
    pub proxies: TrustedProxies,
}

/// The per-address key: IPv4 addresses whole, IPv6 addresses by their /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// HTTP-phase connections per address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; uncounts it when dropped.
struct IpSlot {
    table: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    /// Counts a connection from `key`, unless `max` are already open.
    fn acquire(self: &Arc<Self>, key: IpAddr, max: usize) -> Option<IpSlot> {
        let mut table = self.0.lock().expect("not poisoned");
        let n = table.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().expect("not poisoned");
        if let Some(n) = table.get_mut(&self.key) {
            *n -= 1;
            // Entries of gone addresses must not pile up.
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

/// The answer to a connection over its address's cap.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: text/plain\r\nContent-Length: 46\r\nConnection: close\r\n\r\n\
too many connections from your address: retry\n";

/// Answers `tcp` with [`BUSY`] and closes it. The request is read (a little of it, briefly)
/// after the answer: closing with unread bytes sends a reset, which can make the client lose
/// the answer.
async fn refuse_busy(mut tcp: TcpStream) {
    let answer = async {
        tcp.write_all(BUSY).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < 64 << 10 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Serves `app` on `listener` until `stop`, then lets open requests finish (idle keep-alive
/// connections close at once). At most `limits.max_http` connections are in the HTTP phase
/// at a time (more are closed as soon as they are accepted), and at most
/// `limits.max_http_per_ip` from one address (more are answered 503).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_http));
    let per_ip = Arc::new(PerIp::default());
    let header_read_timeout = limits.header_read_timeout;
    let conns = TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            REFUSED_HTTP.increment(1);
            drop(tcp);
            continue;
        };
        let slot = if limits.max_http_per_ip == 0 || limits.proxies.trusts(remote.ip()) {
            None
        } else {
            match per_ip.acquire(ip_key(remote.ip()), limits.max_http_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    REFUSED_HTTP_PER_IP.increment(1);
                    drop(permit);
                    // Its own task: a client that does not read must not stall accepting.
                    conns.spawn(refuse_busy(tcp));
                    continue;
                }
            }
        };
        // Without it, small frames wait on Nagle and delayed ACKs (tens of milliseconds).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        let app = app.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_buf_size(MAX_BUF_SIZE);
            let conn = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %remote, "HTTP connection ended with an error");
            }
            drop(slot);
            drop(permit);
        });
    }
    conns.close();
    // A long request (a waiting execution) must not hold the shutdown for ever.
    if tokio::time::timeout(Duration::from_secs(5), conns.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running at shutdown; abandoned");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_per_host_and_ipv6_per_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ip_key(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(ip_key(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(ip_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        let table = Arc::new(PerIp::default());
        let a = table.acquire(ip_key(ip("2001:db8:1:2::1")), 2).unwrap();
        let _b = table.acquire(ip_key(ip("2001:db8:1:2::ffff")), 2).unwrap();
        assert!(table.acquire(ip_key(ip("2001:db8:1:2::3")), 2).is_none());
        // Another /64 has a budget of its own.
        let _c = table.acquire(ip_key(ip("2001:db8:1:3::1")), 2).unwrap();
        drop(a);
        assert!(table.acquire(ip_key(ip("2001:db8:1:2::3")), 2).is_some());
        drop(_c);
        assert_eq!(table.0.lock().unwrap().len(), 1);
    }
}
