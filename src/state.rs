//! The state every HTTP handler and socket shares.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use resonant_sync::Rooms;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::auth::{access, identity};
use crate::limits::{admission, client_ip, ratelimit};
use crate::{crypto, db, email, engine, ServeConfig};

/// Shared state of the HTTP handlers and sockets: one allocation, so a clone is one reference
/// count and a connection's task holds a pointer, not a copy of every field (by value it was
/// 1,248 bytes, moved three times into each WebSocket connection's task).
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    /// Shares `inner` between every handler and socket.
    pub(crate) fn new(inner: AppInner) -> AppState {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct AppInner {
    /// The documents.
    pub(crate) rooms: Rooms,
    /// The command line.
    pub(crate) config: Arc<ServeConfig>,
    /// Every task the server started: shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// Renders `/metrics`.
    pub(crate) metrics: PrometheusHandle,
    /// One permit per WebSocket connection (`--max-connections`).
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) admission: Arc<admission::Admission>,
    /// Users, workspaces, workflows…
    pub(crate) db: db::Db,
    /// Turns tokens into users.
    pub(crate) auth: identity::Authenticator,
    /// Seals provider API keys; `None` without `--encryption-key` (storing keys is refused).
    pub(crate) cipher: Option<crypto::KeyCipher>,
    /// Live sockets' roles.
    pub(crate) access: access::Access,
    /// Invitation emails.
    pub(crate) mailer: email::Mailer,
    /// Rate limits (in development mode only webhook triggers': one user and one IP would
    /// share every other budget).
    pub(crate) limiter: Option<ratelimit::Limiter>,
    /// Runs workflows.
    pub(crate) engine: engine::Engine,
    /// Whose `X-Forwarded-For` names the client (`--trusted-proxies`).
    pub(crate) proxies: client_ip::TrustedProxies,
    /// Server-Sent Events streams open now (`--max-event-streams` permits).
    pub(crate) event_streams: Arc<Semaphore>,
    /// Webhook-trigger bodies arriving now, in KiB (`--hook-inflight-bytes`).
    pub(crate) hook_bodies: Arc<Semaphore>,
}

impl AppState {
    /// Charges one unit of `bucket` to `key`: the wait before retrying when over budget.
    pub(crate) async fn limit(&self, bucket: ratelimit::Bucket, key: &str) -> Option<Duration> {
        match self.limiter.as_ref()?.check(bucket, key).await {
            ratelimit::Decision::Allow => None,
            ratelimit::Decision::Deny { retry_after } => Some(retry_after),
        }
    }
}
