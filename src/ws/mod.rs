//! The `/sync/{room}` WebSocket endpoint: moves frames between a socket and a sync session.
//!
//! The handler's task reads; one spawned task writes. The writer drains the peer's outbox
//! (feeding everything already queued, then flushing once), sends save acknowledgements as
//! the journal commits, pings, and sends the close frame the room or the reader asked for.
//! Both belong to the server's task tracker and end together: a write that makes no progress
//! for `--write-timeout-secs` (a client that stopped reading) ends the writer, which ends the
//! reader; a writer still busy when the reader is done is aborted.
//!
//! Admission happens before any WebSocket exists: past `--max-connections` an upgrade is
//! refused with 503; past `--max-joins-per-sec` a join waits its turn (its request pending),
//! and once about two seconds' worth of joins are waiting it is refused with 503 and a
//! `Retry-After` (see `admission.rs`), so a reconnect storm does not take latency from the
//! clients already here.
//!
//! We upgrade by hand (rather than through axum's `WebSocketUpgrade`) to reach tungstenite's
//! raw frames: large messages go out as 16 KiB fragments, because tungstenite copies each
//! outgoing frame into a per-socket buffer that never shrinks, so sending a 10 MB document
//! whole would leave every joiner's connection holding 10 MB for the rest of its life.

mod exec;
mod read_ahead;
mod unfinished;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper_util::rt::TokioIo;
use resonant_protocol::{
    BadRequest, ClientMessage, ClientMsg, ConnectionMsg, RawJson, Sender, ServerMsg,
    MAX_BROADCAST_BYTES,
};
use resonant_store::Ticket;
use resonant_sync::{close_code, protocol, Close, Outbox, Outgoing, Peer, Session};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::auth::identity::Principal;
use crate::db::{self, Action, Role};
use crate::limits::ratelimit::{self, Bucket};
use crate::ws::read_ahead::ReadAhead;
use crate::ws::unfinished::Watcher;
use crate::AppState;

/// The subprotocol a client offers next to its token in `Sec-WebSocket-Protocol`; the server
/// selects it, so the token is never echoed back.
pub const SUBPROTOCOL: &str = "resonant.v1";

static CONNECTIONS: LazyLock<metrics::Gauge> =
    LazyLock::new(|| metrics::gauge!("resonant_connections"));
static MESSAGES_IN: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_messages_in_total"));
static BYTES_IN: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bytes_in_total"));
static MESSAGES_OUT: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_messages_out_total"));
static BYTES_OUT: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bytes_out_total"));
static SOCKET_THROTTLED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_socket_throttled_total"));
static BROADCASTS_REFUSED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_broadcasts_refused_total"));
static CLOSES: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_protocol_error_closes_total"));
static REFUSED_FULL: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("resonant_connections_refused_total", "reason" => "max-connections"),
);
static REFUSED_RATE: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("resonant_connections_refused_total", "reason" => "join-rate"),
);
static REFUSED_AUTH: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_connections_refused_total", "reason" => "auth"));
static WRITE_TIMEOUTS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_write_timeouts_total"));

/// Most queued messages written before one flush.
const WRITE_BATCH: usize = 64;
/// Largest message read from a connection that is being refused: enough for a close frame.
const REFUSAL_MAX_MESSAGE: usize = 1 << 10;
/// Messages larger than this go out as several frames of this size.
const FRAGMENT: usize = 16 << 10;

type WebSocket = WebSocketStream<ReadAhead<TokioIo<hyper::upgrade::Upgraded>>>;

/// `GET /sync/{room}`: upgrades to a y-websocket connection.
pub async fn sync_handler(
    Path(room): Path<String>,
    State(app): State<AppState>,
    mut req: Request,
) -> Response {
    let (token, subprotocol) = token_of(&req);
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| app.proxies.client_ip(c.0.ip(), req.headers()));
    let Some(accept) = websocket_accept(req.headers()) else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this endpoint speaks the y-websocket protocol: connect with a WebSocket",
        )
            .into_response();
    };
    // When joins are already queueing past what admission will wait for, refuse before
    // anything else: this 503 is the cheapest answer the server has, and under a join storm
    // it is most of what the server does.
    if let Some(retry) = app.admission.busy() {
        REFUSED_RATE.increment(1);
        return busy(retry);
    }
    // Every connection is a file descriptor and some memory: past the cap, refuse before
    // the upgrade, which costs nothing.
    let Ok(permit) = app.connections.clone().try_acquire_owned() else {
        REFUSED_FULL.increment(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many connections: retry later",
        )
            .into_response();
    };
    // Who is asking, and for what, is settled before the upgrade: a connection that will be
    // refused is never read beyond a tiny frame limit, so tokenless sockets cannot make the
    // server buffer 16 MiB messages each (20 of them took 300 MB), and they never reach the
    // join budget that real users wait in.
    let verdict = verdict(&app, &room, token.as_deref(), ip).await;
    // Only joins that will be let in take a turn: refused tokens never queue ahead of real
    // users. Waiting here, before the upgrade, holds an HTTP request and nothing else.
    if verdict.is_ok() {
        if let Err(retry) = app.admission.admit().await {
            REFUSED_RATE.increment(1);
            return busy(retry);
        }
    }
    let max = match verdict {
        Ok(_) => app.config.max_message_bytes,
        Err(_) => {
            REFUSED_AUTH.increment(1);
            REFUSAL_MAX_MESSAGE
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        // The default 128 KiB read buffer per socket would dominate an idle connection's
        // memory; larger frames still arrive in one allocation of their announced size.
        // 256 bytes holds most awareness and edit frames whole; each read past it is a copy
        // from `ReadAhead`, not a syscall (1 KiB cost 0.8 KB more per idle connection).
        .read_buffer_size(256)
        .write_buffer_size(0);
    let unfinished = crate::ws::unfinished::Limits {
        budget: app.config.max_unfinished_bytes,
        deadline: crate::config::secs(app.config.message_deadline_secs),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = app.tracker.clone();
    tokio::spawn(tracker.track_future(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = ReadAhead::watched(TokioIo::new(upgraded), Watcher::new(unfinished));
                let socket =
                    WebSocketStream::from_raw_socket(io, WsRole::Server, Some(config)).await;
                match verdict {
                    Ok((principal, grant)) => {
                        connection(socket, room, principal, grant, app, permit).await
                    }
                    Err(close) => {
                        let (mut sink, mut stream) = socket.split();
                        refuse(&mut sink, &mut stream, close).await;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    }));
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    // Browsers fail the handshake unless the server selects one of the offered protocols.
    if let Some(protocol) = subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
        .body(Body::empty())
        .expect("static response parts are valid")
}

/// The answer to a join refused for the join rate: 503 with `Retry-After` at the slot booked
/// for it, and the TCP connection closed, so a refused client holds nothing here.
fn busy(retry: Duration) -> Response {
    let secs = crate::limits::admission::retry_after_secs(retry);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::RETRY_AFTER, secs.to_string()),
            (header::CONNECTION, "close".to_string()),
        ],
        format!("server busy: retry in {secs} s"),
    )
        .into_response()
}

/// The token of an upgrade request (`?token=`, or a `Sec-WebSocket-Protocol` value next to
/// `resonant.v1`) and the subprotocol to select.
fn token_of(req: &Request) -> (Option<String>, Option<String>) {
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let selected = offered.iter().find(|p| *p == SUBPROTOCOL).cloned();
    let from_query = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find_map(|(k, v)| (k == "token").then(|| v.into_owned()))
    });
    let from_protocol = offered.into_iter().find(|p| p != SUBPROTOCOL);
    let selected = selected.or_else(|| from_protocol.clone());
    (from_query.or(from_protocol), selected)
}

/// What a connection may do in its room, and how to hear when that changes.
struct Grant {
    role: Role,
    /// The role's live updates (`None` in the channel: removed); absent in development mode.
    watch: Option<watch::Receiver<Option<Role>>>,
}

/// Decides whether `principal` may open `room`. With auth on, only `workflow-<id>` rooms of
/// workspaces the caller belongs to; every refusal looks the same, so nothing reveals
/// whether a workflow exists.
async fn authorize(app: &AppState, principal: &Principal, room: &str) -> Result<Grant, Close> {
    if principal.dev {
        return Ok(Grant {
            role: Role::Owner,
            watch: None,
        });
    }
    let forbidden = || Close::new(close_code::FORBIDDEN, "no access to this room");
    let id = db::workflow_of_room(room).ok_or_else(forbidden)?;
    let since = app.access.seq();
    match db::workflow_with_role(&app.db, id, &principal.user.id).await {
        Ok(Some((wf, Some(read)))) => {
            // The API may have changed the role since we read it: the newer one stands.
            let watch = app
                .access
                .watch(&principal.user.id, &wf.workspace_id, read, since);
            let role = (*watch.borrow()).ok_or_else(forbidden)?;
            Ok(Grant {
                role,
                watch: Some(watch),
            })
        }
        Ok(_) => Err(forbidden()),
        Err(e) => {
            tracing::error!(error = %e, "authorization query failed");
            Err(Close::new(
                close_code::INTERNAL_ERROR,
                "authorization unavailable: retry",
            ))
        }
    }
}

/// The `Sec-WebSocket-Accept` value, if this is a valid WebSocket upgrade request.
fn websocket_accept(headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has(header::CONNECTION, "upgrade")
        || !has(header::UPGRADE, "websocket")
        || !has(header::SEC_WEBSOCKET_VERSION, "13")
    {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    Some(derive_accept_key(key.as_bytes()))
}

struct ConnectionGuard;

impl ConnectionGuard {
    fn new() -> Self {
        CONNECTIONS.increment(1.0);
        ConnectionGuard
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        CONNECTIONS.decrement(1.0);
    }
}

/// Whether a connection may join: the per-IP connection rate, the token and the caller's
/// access to the room, in that order (cheapest first). `Err` is the close to refuse with.
async fn verdict(
    app: &AppState,
    room: &str,
    token: Option<&str>,
    ip: Option<std::net::IpAddr>,
) -> Result<(Principal, Grant), Close> {
    if let Some(ip) = ip {
        if let Some(retry) = app.limit(Bucket::ConnectIp, &ratelimit::ip_key(ip)).await {
            let reason = format!(
                "too many connection attempts: retry in {} ms",
                retry.as_millis().max(1)
            );
            return Err(Close::new(close_code::RATE_LIMITED, reason));
        }
    }
    let principal = app.auth.authenticate(token).await.map_err(|e| {
        if e.is_unavailable() {
            tracing::error!(error = %e, "authentication unavailable");
            Close::new(
                close_code::TRY_AGAIN_LATER,
                "authentication unavailable: retry",
            )
        } else {
            Close::new(close_code::UNAUTHORIZED, e.to_string())
        }
    })?;
    let grant = authorize(app, &principal, room).await?;
    Ok((principal, grant))
}

async fn connection(
    socket: WebSocket,
    room: String,
    principal: Principal,
    grant: Grant,
    app: AppState,
    permit: OwnedSemaphorePermit,
) {
    let guard = ConnectionGuard::new();
    let (mut sink, mut stream) = socket.split();
    let (session, outbox) = match app.rooms.join(&room, grant.role.allows(Action::Edit)).await {
        Ok(joined) => joined,
        Err(e) => {
            let close = e.close();
            tracing::warn!(room = %room.chars().take(140).collect::<String>(), error = %e, code = close.code, "join refused");
            refuse(&mut sink, &mut stream, close).await;
            return;
        }
    };
    let span = tracing::info_span!("conn", room = %room, conn = session.peer().id(), user = %principal.user.id);
    let _entered = span.enter();
    tracing::debug!("connected");
    let peer = session.peer().clone();
    let write_timeout = crate::config::secs(app.config.write_timeout_secs);
    let writer = app.tracker.spawn(
        writer(
            sink,
            outbox,
            peer.clone(),
            app.rooms.journal().subscribe(),
            crate::config::secs(app.config.ping_interval_secs),
            write_timeout,
        )
        .in_current_span(),
    );
    // Editors of a workflow get its execution events (once they opt in to extensions).
    let workflow = db::workflow_of_room(&room).map(str::to_owned);
    let events = workflow
        .as_deref()
        .map(|wf| app.engine.events().subscribe(wf, peer.clone()));
    let auth = SocketAuth {
        role: grant.role,
        workflow,
        user: principal.user.id.clone(),
        external_id: principal.user.external_id.clone(),
        expires_at: principal.expires_at,
        watch: grant.watch,
        presence: app.access.connect(&principal.user.external_id),
    };
    let held = Held {
        _guard: guard,
        _permit: permit,
        _events: events,
    };
    // The connection's life runs as a task of its own, so this one ends here: its future
    // keeps the upgrade, the handshake, the principal and the unsplit socket's slots (3.7 of
    // the 4.3 KB its task took for as long as the connection lived, docs/benchmarks.md).
    let live = live(
        stream,
        session,
        app.clone(),
        auth,
        writer,
        write_timeout,
        held,
    );
    app.tracker.spawn(live.in_current_span());
}

/// What a connection holds for its whole life without using it: dropped when it ends.
struct Held {
    _guard: ConnectionGuard,
    _permit: OwnedSemaphorePermit,
    _events: Option<resonant_engine::events::Subscription>,
}

/// A joined connection from its first frame to its end: reads until the session is over,
/// then lets the writer send the close frame (bounded by the write timeout).
///
/// `live` and `writer` return an `async move` block instead of being `async fn`s: an `async
/// fn` moves its arguments into locals of its future, which keeps a slot for each argument
/// twice for the connection's whole life (the block uses its captures in place).
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn live(
    mut stream: SplitStream<WebSocket>,
    mut session: Session,
    app: AppState,
    mut auth: SocketAuth,
    writer: tokio::task::JoinHandle<()>,
    write_timeout: Duration,
    held: Held,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let peer = session.peer().clone();
        let abort = writer.abort_handle();
        // By reference: moved in, each would keep a slot here and another in the reader's
        // future for the connection's life.
        reader(&mut stream, &mut session, &app, &mut auth).await;
        // Leaving the room now tells the others at once; the writer then sends the close
        // frame, bounded by the write timeout, and is aborted if it cannot.
        drop(session);
        peer.close(Close::new(1000, ""));
        if tokio::time::timeout(write_timeout + Duration::from_secs(1), writer)
            .await
            .is_err()
        {
            abort.abort();
            tracing::warn!("writer did not finish in time; aborted");
        }
        drop(held);
        tracing::debug!("disconnected");
    }
}

/// A connection's identity while it lives: whose token, until when, and its role's updates.
struct SocketAuth {
    /// The current role (kept up to date from `watch`).
    role: Role,
    /// The workflow id, for `workflow-<id>` rooms.
    workflow: Option<String>,
    user: String,
    /// The rate-limit key (the same on every node).
    external_id: String,
    /// Unix seconds; `None` when the token does not expire (development mode).
    expires_at: Option<i64>,
    watch: Option<watch::Receiver<Option<Role>>>,
    /// Ends the connection when the user is deleted at the identity provider.
    presence: crate::auth::access::Presence,
}

impl SocketAuth {
    /// What execution messages need to know about the connection.
    fn exec(&self) -> crate::ws::exec::Who<'_> {
        crate::ws::exec::Who {
            user: &self.user,
            role: self.role,
            workflow: self.workflow.as_deref(),
        }
    }

    /// When the token expires, as a timer deadline (far away when it never does).
    fn deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let Some(exp) = self.expires_at else {
            return far;
        };
        let now = crate::db::now_ms() / 1000;
        Instant::now() + Duration::from_secs(exp.saturating_sub(now).max(0) as u64)
    }
}

/// Broadcast events one connection may relay each second. Every event is copied to each other
/// editor of the room, so a sender (a viewer too) gets far less than the socket's own budget:
/// at the socket's rate a flood would fill its peers' outboxes until they are closed as slow.
const BROADCASTS_PER_SEC: u32 = 20;

/// Bytes of broadcast JSON one connection may relay each second, in KiB (an event counts at
/// least 1 KiB).
const BROADCAST_KIB_PER_SEC: u32 = 64;

/// A connection's broadcast allowance: events and KiB a second, bursts of twice that.
struct BroadcastBudget {
    events: DefaultDirectRateLimiter,
    kib: DefaultDirectRateLimiter,
}

impl BroadcastBudget {
    fn new() -> BroadcastBudget {
        let quota = |per_sec: u32| {
            let rate = NonZeroU32::new(per_sec).expect("non-zero");
            let burst = NonZeroU32::new(2 * per_sec).expect("non-zero");
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        };
        BroadcastBudget {
            events: quota(BROADCASTS_PER_SEC),
            kib: quota(BROADCAST_KIB_PER_SEC),
        }
    }

    /// Whether an event of `bytes` fits now; a refused event spends nothing.
    fn allows(&self, bytes: usize) -> bool {
        let kib = NonZeroU32::new((bytes.div_ceil(1024) as u32).max(1)).expect("at least 1");
        // Checked on the byte bucket first: an event it refuses must not spend an event slot.
        self.kib.check_n(kib) == Ok(Ok(())) && self.events.check().is_ok()
    }
}

/// What [`connection_message`] did.
enum Handled {
    /// Answered.
    Yes,
    /// A token refresh was accepted: the expiry timer must move.
    Refreshed,
}

/// A client's stateless message, decoded once for everyone who acts on it. `Ok(None)` when
/// the frame is not one the server answers (or is over the stateless limit, which the
/// session refuses before anything is decoded).
fn stateless_message(frame: &[u8]) -> Result<Option<ClientMsg>, BadRequest> {
    if frame.first() != Some(&(protocol::MSG_STATELESS as u8))
        || frame.len() > resonant_protocol::MAX_STATELESS_BYTES
    {
        return Ok(None);
    }
    match ClientMessage::decode(frame) {
        Ok(ClientMessage::Stateless(text)) => ClientMsg::decode(text),
        _ => Ok(None),
    }
}

/// Answers `{"type":"auth","token":…}`, `{"type":"ping","id":…}` and
/// `{"type":"broadcast","event":…}`: messages about the connection itself, answered here
/// rather than by the execution handlers.
async fn connection_message(
    app: &AppState,
    session: &Session,
    auth: &mut SocketAuth,
    broadcasts: &BroadcastBudget,
    msg: ConnectionMsg,
) -> Handled {
    let reply = |msg: ServerMsg| session.peer().reply(&msg.encode());
    match msg {
        ConnectionMsg::Ping { id } => {
            reply(ServerMsg::Pong { id });
            Handled::Yes
        }
        ConnectionMsg::Broadcast { event } => {
            // The event's own size, as the others will receive it: written once, and that
            // text is what they receive.
            let event = RawJson::new(&event);
            let size = event.get().len();
            if size > MAX_BROADCAST_BYTES {
                session.send_error(
                    "broadcast-too-large",
                    &format!(
                        "a broadcast event may be {MAX_BROADCAST_BYTES} bytes of JSON, this one is {size}"
                    ),
                );
                return Handled::Yes;
            }
            if !broadcasts.allows(size) {
                BROADCASTS_REFUSED.increment(1);
                session.send_error(
                    "broadcast-rate-limited",
                    &format!(
                        "at most {BROADCASTS_PER_SEC} broadcast events and {BROADCAST_KIB_PER_SEC} KiB a second; this event was dropped"
                    ),
                );
                return Handled::Yes;
            }
            let msg = ServerMsg::Broadcast {
                event,
                from: Sender {
                    user_id: auth.user.clone(),
                },
            };
            session
                .room()
                .send_to_extended_peers(&msg.encode(), session.peer().id());
            Handled::Yes
        }
        ConnectionMsg::Auth { token } => match app.auth.authenticate(token.as_deref()).await {
            Ok(p) if p.user.id == auth.user => {
                auth.expires_at = p.expires_at;
                reply(ServerMsg::Auth {
                    status: "ok".into(),
                    expires_at: p.expires_at,
                });
                Handled::Refreshed
            }
            Ok(_) => {
                session.send_error("bad-token", "the new token is for another user");
                Handled::Yes
            }
            Err(e) => {
                session.send_error("bad-token", &e.to_string());
                Handled::Yes
            }
        },
    }
}

/// A connection's inbound byte budget in KiB: `per_sec` bytes a second, bursts up to twice the
/// largest message (so any single message fits); `None` when unlimited.
fn byte_budget(per_sec: usize, max_message: usize) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(u32::try_from(per_sec.div_ceil(1024)).unwrap_or(u32::MAX))?;
    let burst = u32::try_from((2 * max_message).div_ceil(1024)).unwrap_or(u32::MAX);
    let burst = NonZeroU32::new(burst.max(rate.get())).expect("at least the rate");
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

async fn reader(
    stream: &mut SplitStream<WebSocket>,
    session: &mut Session,
    app: &AppState,
    auth: &mut SocketAuth,
) {
    let idle_timeout = crate::config::secs(app.config.idle_timeout_secs);
    let peer = session.peer().clone();
    let journal = app.rooms.journal().clone();
    // One timer for the connection's life, for both the idle timeout and the token's expiry
    // (a timer is 112 bytes of every connection's task), moved forward lazily when it fires:
    // re-arming a timer on every frame would put timer-wheel work on the hot path.
    let mut last_frame = Instant::now();
    let mut expires = auth.deadline();
    let timer = tokio::time::sleep_until(expires.min(last_frame + idle_timeout));
    tokio::pin!(timer);
    let mut watch = auth.watch.take();
    let budget = byte_budget(
        app.config.socket_bytes_per_sec,
        app.config.max_message_bytes,
    );
    let broadcasts = BroadcastBudget::new();
    let mut access_told = false;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = auth.presence.kicked() => {
                tracing::info!("user deleted; closing");
                peer.close(Close::new(close_code::UNAUTHORIZED, "user deleted"));
                return;
            }
            changed = async { watch.as_mut().expect("guarded").changed().await }, if watch.is_some() => {
                if changed.is_err() {
                    watch = None;
                    continue;
                }
                let role = *watch.as_mut().expect("guarded").borrow_and_update();
                match role {
                    None => {
                        tracing::info!("access revoked; closing");
                        peer.close(Close::new(close_code::FORBIDDEN, "access revoked"));
                        return;
                    }
                    Some(role) => {
                        auth.role = role;
                        let can_write = role.allows(Action::Edit);
                        tracing::info!(role = role.as_str(), can_write, "role changed");
                        let was_writer = peer.can_write();
                        peer.set_can_write(can_write);
                        if can_write && !was_writer {
                            // Edits refused while read-only are still in the client's
                            // document, and its next edits depend on them: a step 1 makes
                            // it send what we lack, as a reconnect would.
                            let sv = session.room().with_doc(|doc| {
                                use yrs::{ReadTxn, Transact};
                                doc.transact().state_vector()
                            });
                            peer.reply(&protocol::encode_sync_step1(&sv));
                        }
                        if peer.extensions() {
                            let notice = ServerMsg::Access {
                                role: role.as_str().into(),
                                read_only: !can_write,
                            };
                            peer.reply(&notice.encode());
                        }
                    }
                }
                continue;
            }
            _ = &mut timer => {
                let now = Instant::now();
                if expires <= now {
                    tracing::info!("token expired; closing");
                    peer.close(Close::new(close_code::UNAUTHORIZED, "token expired: reconnect with a fresh token"));
                    return;
                }
                let idle_at = last_frame + idle_timeout;
                if idle_at <= now {
                    tracing::info!("no frame for {:?}; closing", idle_timeout);
                    peer.close(Close::new(close_code::TIMEOUT, "idle timeout: no frames or pongs"));
                    return;
                }
                timer.as_mut().reset(expires.min(idle_at));
                continue;
            }
            // The writer is closing the connection (slow consumer, shutdown, room error).
            _ = peer.closed() => return,
        };
        last_frame = Instant::now();
        let msg = match next {
            None => return,
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                if let Some(close) = classify_read_error(e) {
                    CLOSES.increment(1);
                    tracing::warn!(code = close.code, reason = %close.reason, "closing connection");
                    peer.close(close);
                }
                return;
            }
        };
        match msg {
            Message::Binary(frame) => {
                MESSAGES_IN.increment(1);
                BYTES_IN.increment(frame.len() as u64);
                if let Some(retry) = app.limit(Bucket::SocketUser, &auth.external_id).await {
                    let reason = format!(
                        "rate limited: too many messages, retry in {} ms",
                        retry.as_millis().max(1)
                    );
                    tracing::info!("socket message budget spent; closing");
                    peer.close(Close::new(close_code::RATE_LIMITED, reason));
                    return;
                }
                if let Some(budget) = &budget {
                    let kib = (frame.len().div_ceil(1024) as u32).max(1);
                    let kib = NonZeroU32::new(kib).expect("at least 1");
                    if budget.check_n(kib) != Ok(Ok(())) {
                        SOCKET_THROTTLED.increment(1);
                        tokio::select! {
                            _ = budget.until_n_ready(kib) => {}
                            _ = peer.closed() => return,
                        }
                    }
                }
                // Checked first: building the close waiter for every frame would put a lock
                // on the per-message path for the rare case of a store that falls behind.
                if journal.is_throttling() {
                    tokio::select! {
                        _ = journal.throttle() => {}
                        _ = peer.closed() => return,
                    }
                }
                // Decoded before the session sees the frame: a replay request must pause live
                // events before the frame opts the connection in to extensions.
                let msg = stateless_message(&frame);
                if let Ok(Some(ClientMsg::Execution(request))) = &msg {
                    crate::ws::exec::before_handle(app, session, &auth.exec(), request);
                }
                let result = handle_frame(session, &frame);
                if !access_told && peer.extensions() {
                    access_told = true;
                    // A viewer's editor learns it is read-only before it edits: otherwise its
                    // first repair or offline edit is refused and its save status turns unknown.
                    if !peer.can_write() {
                        let notice = ServerMsg::Access {
                            role: auth.role.as_str().into(),
                            read_only: true,
                        };
                        peer.reply(&notice.encode());
                    }
                }
                if result.is_ok() {
                    match msg {
                        Ok(None) => {}
                        Ok(Some(ClientMsg::Connection(msg))) => {
                            // Boxed, as is the execution handler below: both are rare and
                            // their futures large (database calls); inline, they sized every
                            // connection's task (13.1 -> 10.4 KB, docs/benchmarks.md).
                            let handled =
                                Box::pin(connection_message(app, session, auth, &broadcasts, msg))
                                    .await;
                            match handled {
                                Handled::Yes => {}
                                Handled::Refreshed => {
                                    expires = auth.deadline();
                                    timer.as_mut().reset(expires.min(last_frame + idle_timeout));
                                }
                            }
                            continue;
                        }
                        Ok(Some(ClientMsg::Execution(request))) => {
                            Box::pin(crate::ws::exec::handle(app, session, &auth.exec(), request))
                                .await;
                            continue;
                        }
                        Err(bad) => {
                            crate::ws::exec::refuse_bad(session, &auth.exec(), &bad);
                            continue;
                        }
                    }
                }
                match result {
                    Ok(Some(ticket)) => {
                        if !peer.acknowledge(ticket) {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        CLOSES.increment(1);
                        tracing::warn!(code = e.close().code, error = %e, "bad message; closing connection");
                        session.fail(&e);
                        return;
                    }
                }
            }
            Message::Text(_) => {
                CLOSES.increment(1);
                tracing::warn!("text frame; closing connection");
                peer.close(Close::new(
                    close_code::UNSUPPORTED_DATA,
                    "text frames are not supported: send binary y-websocket messages",
                ));
                return;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Close(_) => return,
        }
    }
}

/// Maps a read error to the close frame we should send, if the socket is still usable.
fn classify_read_error(e: tungstenite::Error) -> Option<Close> {
    match e {
        tungstenite::Error::Capacity(c) => Some(Close::new(
            close_code::MESSAGE_TOO_BIG,
            format!("message too big: {c}"),
        )),
        tungstenite::Error::Protocol(p) => Some(Close::new(1002, format!("protocol error: {p}"))),
        tungstenite::Error::Utf8(_) => Some(Close::new(
            close_code::INVALID_PAYLOAD,
            "invalid UTF-8 in text frame",
        )),
        tungstenite::Error::Io(e)
            if e.get_ref()
                .is_some_and(|r| r.is::<crate::ws::unfinished::Refused>()) =>
        {
            Some(Close::new(
                close_code::MESSAGE_TOO_BIG,
                format!("message refused: {e}"),
            ))
        }
        other => {
            tracing::debug!(error = %other, "read error");
            None
        }
    }
}

#[allow(clippy::manual_async_fn)] // see `live`
fn writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbox: Outbox,
    peer: Arc<Peer>,
    mut committed: watch::Receiver<Ticket>,
    ping_interval: Duration,
    write_timeout: Duration,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let mut pending: VecDeque<Ticket> = VecDeque::new();
        let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        // Not biased: under sustained fan-out the outbox is always ready, and acknowledgements
        // and pings must still get their turn.
        loop {
            let result = tokio::select! {
                out = outbox.recv(&peer) => match out {
                    // Boxed: its 656 bytes (the timed feeds and flush) would otherwise size the
                    // writer's task for the connection's whole life, idle or not (one allocation
                    // per batch, against ~10 us of socket write per message).
                    Outgoing::Message(first) => Box::pin(write_batch(&mut sink, &mut outbox, &peer, first, write_timeout)).await,
                    Outgoing::Acks(mut acks) => {
                        pending.append(&mut acks);
                        Ok(())
                    }
                    Outgoing::Close { close, last } => {
                        if close.code != 1000 {
                            tracing::debug!(code = close.code, reason = %close.reason, "sending close");
                        }
                        let goodbye = async {
                            if let Some(last) = last {
                                sink.feed(Message::Binary(last)).await?;
                            }
                            sink.send(close_message(&close)).await
                        };
                        let _ = tokio::time::timeout(write_timeout.min(Duration::from_secs(2)), goodbye).await;
                        return;
                    }
                },
                changed = committed.changed(), if !pending.is_empty() => {
                    if changed.is_err() {
                        return;
                    }
                    Ok(())
                }
                _ = ping.tick() => timed(write_timeout, sink.send(Message::Ping(Bytes::new()))).await,
            };
            if let Err(e) = result {
                // The socket is gone or stuck; make the reader stop too.
                tracing::debug!(error = %e, "write failed");
                peer.close(Close::new(1006, "write failed"));
                return;
            }
            // A room reset after a storage failure closes its peers before the journal reports
            // the batch committed: a closing peer gets no acknowledgement it might not deserve.
            if peer.is_closing() {
                continue;
            }
            let done = *committed.borrow();
            let mut acked = false;
            while pending.front().is_some_and(|t| *t <= done) {
                pending.pop_front();
                if timed(
                    write_timeout,
                    sink.feed(Message::Binary(protocol::encode_saved())),
                )
                .await
                .is_err()
                {
                    peer.close(Close::new(1006, "write failed"));
                    return;
                }
                acked = true;
            }
            if acked && timed(write_timeout, sink.flush()).await.is_err() {
                peer.close(Close::new(1006, "write failed"));
                return;
            }
        }
    }
}

/// Runs one socket write, failing it if it makes no progress for `limit`.
async fn timed(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), tungstenite::Error>>,
) -> Result<(), tungstenite::Error> {
    let mut write = std::pin::pin!(write);
    // Nearly every write finishes at once (a feed only buffers; a flush finds room in the
    // socket): those need no timer, whose set-up was a fifth of the per-delivery cost.
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(write.as_mut(), cx))
    })
    .await;
    if let std::task::Poll::Ready(done) = first {
        return done;
    }
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r,
        Err(_) => {
            WRITE_TIMEOUTS.increment(1);
            tracing::info!(?limit, "write made no progress; dropping the connection");
            Err(tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))
        }
    }
}

async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    outbox: &mut Outbox,
    peer: &Peer,
    first: Bytes,
    limit: Duration,
) -> Result<(), tungstenite::Error> {
    let mut count = 1u64;
    let mut bytes = first.len() as u64;
    feed(sink, first, limit).await?;
    while (count as usize) < WRITE_BATCH {
        let Some(msg) = outbox.try_recv(peer) else {
            break;
        };
        count += 1;
        bytes += msg.len() as u64;
        feed(sink, msg, limit).await?;
    }
    timed(limit, sink.flush()).await?;
    MESSAGES_OUT.increment(count);
    BYTES_OUT.increment(bytes);
    Ok(())
}

/// Queues one binary message, split into fragments when large (see the module comment).
/// Each fragment is one write with its own timeout: "no progress for `limit`".
async fn feed(
    sink: &mut SplitSink<WebSocket, Message>,
    msg: Bytes,
    limit: Duration,
) -> Result<(), tungstenite::Error> {
    if msg.len() <= FRAGMENT {
        return timed(limit, sink.feed(Message::Binary(msg))).await;
    }
    let mut start = 0;
    while start < msg.len() {
        let end = (start + FRAGMENT).min(msg.len());
        let opcode = if start == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(msg.slice(start..end), opcode, end == msg.len());
        timed(limit, sink.feed(Message::Frame(frame))).await?;
        start = end;
    }
    Ok(())
}

/// Sends `close` on a connection that never joined, giving up after a second, then waits
/// (briefly) for the client's close frame. Dropping the socket with the client's first frames
/// unread makes the kernel reset the connection, and the client then sees 1006 instead of our
/// code: a browser would not learn that its token expired (4401) or access is gone (4403).
async fn refuse(
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
    close: Close,
) {
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close_message(&close))).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn close_message(close: &Close) -> Message {
    Message::Close(Some(CloseFrame {
        code: close.code.into(),
        reason: close.reason.to_string().into(),
    }))
}

/// Frames at least this large are handled with the worker thread handed over to the runtime's
/// other tasks: validating, decoding and integrating a megabyte update (or refusing a
/// million-level nesting) takes long enough in one call to stall every socket queued behind it.
const HEAVY_FRAME: usize = 64 * 1024;

/// Handles one frame of `session`, off the worker's task queue when it is heavy.
fn handle_frame(
    session: &mut Session,
    frame: &[u8],
) -> Result<Option<Ticket>, resonant_sync::SessionError> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if frame.len() >= HEAVY_FRAME && multi_thread {
        tokio::task::block_in_place(|| session.handle(frame))
    } else {
        session.handle(frame)
    }
}
