//! The accept loop: HTTP/1.1 through hyper with a timer, so that a connection must finish
//! its request head in time and within a small buffer.
//!
//! `axum::serve` runs hyper without a timer, which disables `header_read_timeout`: 1,000
//! connections each trickling 380 KB of headers held 400 MB, and none of them counted against
//! `--max-connections` (only upgraded sockets do). Here every accepted connection holds a
//! permit of its own cap until hyper is done with it (for a WebSocket: until the upgrade), its
//! head must arrive within [`HEADER_READ_TIMEOUT`], and hyper buffers at most
//! [`MAX_BUF_SIZE`] of it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a connection may take to send a request head (first byte to blank line).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes hyper buffers for one connection's request head (tokens included).
pub const MAX_BUF_SIZE: usize = 64 << 10;

static REFUSED_HTTP: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("resonant_connections_refused_total", "reason" => "max-http-connections"),
);

/// Serves `app` on `listener` until `stop`, then lets open requests finish (idle keep-alive
/// connections close at once). At most `max_http` connections are in the HTTP phase at a
/// time; more are closed as soon as they are accepted.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    max_http: usize,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(max_http));
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
                .header_read_timeout(HEADER_READ_TIMEOUT)
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
