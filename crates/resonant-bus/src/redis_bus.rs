//! The Redis implementation of [`Bus`]: one stream per topic, a publisher, blocking readers,
//! and a liveness key per node (`docs/scale-out.md` §5).
//!
//! Keys (prefix `{p}`, node `{n}` = [`node_hex`]):
//!
//! | key | what |
//! |---|---|
//! | `{p}:{topic}` | the topic's stream: entries `n`, `t`, `m` (see `codec.rs`) |
//! | `{p}:node:{n}` | this node's liveness, `SET … PX node_ttl`, renewed every `node_ttl / 5` |
//! | `{p}:node:{n}:poke` (reader 0), `…:poke:{i}` | wake-up streams, one per reader |
//!
//! Connections: one lazily connected `ConnectionManager` ("control": publishes, subscriber
//! anchors, pokes, the node key, `alive`) with a short response timeout, and one dedicated
//! connection per reader whose response timeout is `block` + 3 s (never redis-rs 1.x's
//! 500 ms default, which fails every `XREAD BLOCK` that waits longer — redis-rs #1924 — and
//! never `None`, so a silent partition still ends a read).
//!
//! What the readers detect and what they leave to the consumers' periodic probe:
//!
//! - Any read error or timeout: reconnect, re-anchor every topic (the stream may have been
//!   trimmed past the cursor meanwhile), Resync every subscription.
//! - A stream restarted *under* the cursor: after a `DEL`/`FLUSHALL` the next entry written in
//!   the same millisecond as the old last one gets that very id (yhub's warning; on one host
//!   this is the common case, not a corner), and after a failover to a replica whose clock is
//!   behind, lower ids. `XREAD` skips such entries silently. Every `stream_check` each reader
//!   pipelines `XREVRANGE … COUNT 1` over its keys: a last id below the cursor, or the cursor's
//!   own id with other content (a fingerprint of the entry at the cursor is kept), re-anchors
//!   the topic with a Resync; a vanished key resets the cursor to `0-0` (whatever is added
//!   next is new) without one.
//! - Not detected: a stream deleted and refilled past the cursor between two checks (what
//!   landed under the cursor is skipped, the rest arrives), trims past a live cursor, and a
//!   lost publish. Each is a lost message, which the consumers heal by sequence gap or by
//!   their periodic probe (a lost *last* message only by the probe).
//! - Readers are added when topics exceed `keys_per_reader` and are never stopped (an idle
//!   one costs a blocked connection); `is_up` is `false` while any reader is disconnected,
//!   including a new one for its first connect.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{self, BoxFuture, FutureExt};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, RedisResult};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{parse_last_entry, LastEntry, FIELD_NODE};
use crate::publisher::{Outbox, Outgoing, OUTBOX_BYTES};
use crate::queue::{Queue, Subscription};
use crate::topics::Topics;
use crate::{node_hex, now_ms, reader, valid_topic, Bus, BusError, NodeId, PublishOptions};

static UP: LazyLock<metrics::Gauge> = LazyLock::new(|| metrics::gauge!("resonant_bus_up"));

/// Tunables of a [`RedisBus`].
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// How long one `XREAD` blocks; its reply may take up to this plus 3 s before the reader
    /// gives the connection up as dead.
    pub block: Duration,
    /// How long `subscribe` waits for its anchor before resolving unanchored.
    pub anchor_timeout: Duration,
    /// Most stream keys one reader connection reads; more start another reader (the key list
    /// is sent with every `XREAD`, so one huge list costs Redis CPU on every call).
    pub keys_per_reader: usize,
    /// Lifetime of this node's liveness key, renewed every fifth of it.
    pub node_ttl: Duration,
    /// The liveness key's value (say, JSON naming the node for operators).
    pub node_info: String,
    /// How often each reader checks its streams for a restart below its cursor.
    pub stream_check: Duration,
    /// Response timeout of the control connection (publishes, anchors, liveness).
    pub command_timeout: Duration,
}

impl Default for RedisBusConfig {
    fn default() -> Self {
        RedisBusConfig {
            block: Duration::from_secs(2),
            anchor_timeout: Duration::from_millis(250),
            keys_per_reader: 1000,
            node_ttl: Duration::from_secs(10),
            node_info: "{}".into(),
            stream_check: Duration::from_secs(5),
            command_timeout: Duration::from_millis(250),
        }
    }
}

/// The control connection: a lazily connected `ConnectionManager`, replaced after a timeout.
///
/// redis-rs's manager reconnects only on errors that mean the socket is gone; a response
/// timeout is not one, so behind a silent partition every command would time out until the
/// kernel gives the socket up (minutes). Starting a fresh manager after a timeout bounds that.
pub(crate) struct Control {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: Mutex<(u64, ConnectionManager)>,
}

impl Control {
    fn new(client: redis::Client, response_timeout: Duration) -> RedisResult<Control> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Control {
            client,
            config,
            current: Mutex::new((0, manager)),
        })
    }

    fn failed(&self, generation: u64, error: &RedisError) {
        if !error.is_timeout() {
            return;
        }
        let mut current = self.current.lock();
        if current.0 != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => *current = (generation + 1, manager),
            Err(error) => tracing::debug!(%error, "could not replace the bus control connection"),
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        let (generation, mut conn) = self.current.lock().clone();
        let result = cmd.query_async(&mut conn).await;
        if let Err(error) = &result {
            self.failed(generation, error);
        }
        result
    }

    pub(crate) async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> RedisResult<T> {
        let (generation, mut conn) = self.current.lock().clone();
        let result = pipe.query_async(&mut conn).await;
        if let Err(error) = &result {
            self.failed(generation, error);
        }
        result
    }
}

/// One reader's shared state.
pub(crate) struct ReaderShared {
    pub(crate) index: usize,
    /// `resonant-reader:{node}` for reader 0, `…:{index}` for the others (`CLIENT LIST`).
    pub(crate) name: String,
    pub(crate) poke_key: String,
    up: AtomicBool,
}

/// What the topics table and the readers share, under one lock.
pub(crate) struct State {
    pub(crate) topics: Topics,
    readers: Vec<Arc<ReaderShared>>,
}

/// Everything the bus's tasks and subscriptions share.
pub(crate) struct Inner {
    pub(crate) node: NodeId,
    node_hex: String,
    prefix: String,
    pub(crate) config: RedisBusConfig,
    pub(crate) client: redis::Client,
    pub(crate) control: Arc<Control>,
    pub(crate) state: Mutex<State>,
    outbox: Arc<Outbox>,
    /// Readers owed a poke, sent by one task at most every `POKE_INTERVAL`.
    pokes: Mutex<BTreeSet<usize>>,
    poke_wanted: Notify,
    pub(crate) cancel: CancellationToken,
    tracker: TaskTracker,
    runtime: Handle,
    /// Held through a shutdown so a second caller waits for the first to finish; `true` once
    /// done.
    shutdown: tokio::sync::Mutex<bool>,
}

/// Wake-up streams keep about this many entries and expire this long after the last poke.
const POKE_MAX_LEN: usize = 100;
const POKE_TTL: Duration = Duration::from_secs(60);
/// At most one poke pipeline per interval: a burst of subscriptions costs one wake-up.
const POKE_INTERVAL: Duration = Duration::from_millis(10);
/// Bound on `alive` and on the liveness `DEL` at shutdown.
const CONTROL_DEADLINE: Duration = Duration::from_secs(1);

impl Inner {
    fn key(&self, topic: &str) -> String {
        format!("{}:{topic}", self.prefix)
    }

    fn node_key(&self, node: NodeId) -> String {
        format!("{}:node:{}", self.prefix, node_hex(node))
    }

    fn reader_shared(&self, index: usize) -> Arc<ReaderShared> {
        let (name, poke_key) = match index {
            0 => (
                format!("resonant-reader:{}", self.node_hex),
                format!("{}:node:{}:poke", self.prefix, self.node_hex),
            ),
            i => (
                format!("resonant-reader:{}:{i}", self.node_hex),
                format!("{}:node:{}:poke:{i}", self.prefix, self.node_hex),
            ),
        };
        Arc::new(ReaderShared {
            index,
            name,
            poke_key,
            up: AtomicBool::new(false),
        })
    }

    /// Starts reader `shared` (called with the state lock held, right after it was added).
    fn start_reader(self: &Arc<Self>, shared: Arc<ReaderShared>) {
        self.tracker
            .spawn_on(reader::run(self.clone(), shared), &self.runtime);
    }

    pub(crate) fn set_up(&self, reader: &ReaderShared, up: bool) {
        reader.up.store(up, Ordering::Relaxed);
        UP.set(if self.is_up() { 1.0 } else { 0.0 });
    }

    fn is_up(&self) -> bool {
        let state = self.state.lock();
        state.readers.iter().all(|r| r.up.load(Ordering::Relaxed))
    }

    /// Wakes reader `reader` from its `XREAD` so it reads its changed key list now.
    pub(crate) fn poke(&self, reader: usize) {
        self.pokes.lock().insert(reader);
        self.poke_wanted.notify_one();
    }

    fn close(&self) {
        self.cancel.cancel();
        self.state.lock().topics.close();
    }
}

/// The Redis bus (see the module docs).
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl RedisBus {
    /// Starts a bus for node `node` on the Redis at `url`, with keys under `prefix`. Never
    /// waits for Redis: it connects (and reconnects) in the background, reporting
    /// [`Bus::is_up`] `false` until then. Fails only on a malformed URL or prefix, or outside a
    /// Tokio runtime.
    pub fn connect(
        url: &str,
        prefix: &str,
        node: NodeId,
        mut config: RedisBusConfig,
    ) -> Result<Arc<RedisBus>, BusError> {
        // `BLOCK 0` would block forever, and every read would end in the reply timeout.
        config.block = config.block.max(Duration::from_millis(1));
        let runtime = Handle::try_current().map_err(|_| BusError::NoRuntime)?;
        if !valid_topic(prefix) {
            return Err(BusError::InvalidPrefix(prefix.into()));
        }
        let invalid = |source| BusError::InvalidUrl {
            url: redact(url),
            source,
        };
        let client = redis::Client::open(url).map_err(invalid)?;
        let control = Control::new(client.clone(), config.command_timeout).map_err(invalid)?;
        let inner = Arc::new(Inner {
            node,
            node_hex: node_hex(node),
            prefix: prefix.into(),
            state: Mutex::new(State {
                topics: Topics::new(config.keys_per_reader),
                readers: Vec::new(),
            }),
            config,
            client,
            control: Arc::new(control),
            outbox: Arc::new(Outbox::new(OUTBOX_BYTES)),
            pokes: Mutex::new(BTreeSet::new()),
            poke_wanted: Notify::new(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            runtime,
            shutdown: tokio::sync::Mutex::new(false),
        });
        UP.set(0.0);
        inner.tracker.spawn_on(
            crate::publisher::run(
                inner.outbox.clone(),
                inner.control.clone(),
                node,
                inner.cancel.clone(),
            ),
            &inner.runtime,
        );
        inner
            .tracker
            .spawn_on(poke_loop(inner.clone()), &inner.runtime);
        inner
            .tracker
            .spawn_on(heartbeat(inner.clone()), &inner.runtime);
        {
            let first = inner.reader_shared(0);
            inner.state.lock().readers.push(first.clone());
            inner.start_reader(first);
        }
        tracing::info!(url = %redact(url), prefix, node = %inner.node_hex, "bus started on Redis");
        Ok(Arc::new(RedisBus { inner }))
    }

    /// The names of this bus's reader connections (as in `CLIENT LIST`), reader 0 first.
    pub fn reader_names(&self) -> Vec<String> {
        let state = self.inner.state.lock();
        state.readers.iter().map(|r| r.name.clone()).collect()
    }
}

impl Drop for RedisBus {
    /// Stops the tasks without withdrawing the liveness key, as a crash would: other nodes see
    /// this node gone when the key expires.
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl Bus for RedisBus {
    fn node(&self) -> NodeId {
        self.inner.node
    }

    fn publish(&self, topic: &str, payload: Bytes, opts: PublishOptions) {
        if !valid_topic(topic) {
            tracing::debug!(topic, "bus publish to an invalid topic dropped");
            return;
        }
        if self.inner.cancel.is_cancelled() {
            return;
        }
        self.inner.outbox.push(Outgoing {
            key: self.inner.key(topic),
            payload,
            sent_ms: now_ms(),
            opts,
        });
    }

    fn subscribe(&self, topic: &str) -> BoxFuture<'static, Subscription> {
        if !valid_topic(topic) {
            tracing::debug!(topic, "bus subscription to an invalid topic refused");
            return future::ready(Subscription::closed(topic)).boxed();
        }
        let inner = &self.inner;
        let key: Arc<str> = inner.key(topic).into();
        let queue = Queue::new();
        let registered = {
            let mut state = inner.state.lock();
            let Some(registered) = state.topics.register(&key, queue.clone()) else {
                return future::ready(Subscription::closed(topic)).boxed();
            };
            if let Some(index) = registered.new_reader {
                let shared = inner.reader_shared(index);
                state.readers.push(shared.clone());
                inner.start_reader(shared);
            }
            registered
        };
        let id = registered.id;
        let weak = Arc::downgrade(inner);
        let unregister_key = key.clone();
        let unregister = move || {
            if let Some(inner) = weak.upgrade() {
                inner.state.lock().topics.unregister(&unregister_key, id);
            }
        };
        let subscription = Subscription::new(topic.into(), queue, Box::new(unregister));
        if !registered.needs_anchor {
            return future::ready(subscription).boxed();
        }
        let inner = inner.clone();
        async move {
            let mut xrevrange = redis::cmd("XREVRANGE");
            xrevrange.arg(&*key).arg("+").arg("-").arg("COUNT").arg(1);
            let reply = tokio::time::timeout(
                inner.config.anchor_timeout,
                inner.control.query::<redis::Value>(&xrevrange),
            )
            .await;
            let last = match reply {
                Ok(Ok(value)) => parse_last_entry(value).ok(),
                Ok(Err(error)) => {
                    tracing::debug!(%key, %error, "bus anchor failed; the reader will anchor");
                    None
                }
                Err(_) => None,
            };
            let wake = {
                let mut state = inner.state.lock();
                match last {
                    Some(last) => state
                        .topics
                        .anchored(&key, id, last.unwrap_or(LastEntry::NONE)),
                    None => state.topics.anchor_failed(&key, id),
                }
            };
            if let Some(reader) = wake {
                inner.poke(reader);
            }
            subscription
        }
        .boxed()
    }

    fn is_up(&self) -> bool {
        self.inner.is_up()
    }

    fn alive(&self, nodes: &[NodeId]) -> BoxFuture<'static, Option<Vec<bool>>> {
        if nodes.is_empty() {
            return future::ready(Some(Vec::new())).boxed();
        }
        let mut mget = redis::cmd("MGET");
        for &node in nodes {
            mget.arg(self.inner.node_key(node));
        }
        let inner = self.inner.clone();
        async move {
            let reply = tokio::time::timeout(
                CONTROL_DEADLINE,
                inner.control.query::<Vec<Option<Vec<u8>>>>(&mget),
            )
            .await;
            match reply {
                Ok(Ok(values)) => Some(values.iter().map(Option::is_some).collect()),
                _ => None,
            }
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        async move {
            let mut done = inner.shutdown.lock().await;
            if *done {
                return;
            }
            inner.close();
            inner.tracker.close();
            inner.tracker.wait().await;
            // After the heartbeat task ended, so no renewal can follow the DEL.
            let del = redis::cmd("DEL").arg(inner.node_key(inner.node)).clone();
            let _ = tokio::time::timeout(CONTROL_DEADLINE, inner.control.query::<()>(&del)).await;
            UP.set(0.0);
            *done = true;
            tracing::info!(node = %inner.node_hex, "bus shut down");
        }
        .boxed()
    }
}

/// Sends the pokes readers are owed, at most one pipeline per `POKE_INTERVAL`.
async fn poke_loop(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.poke_wanted.notified() => {}
        }
        let wanted = std::mem::take(&mut *inner.pokes.lock());
        let keys: Vec<String> = {
            let state = inner.state.lock();
            wanted
                .iter()
                .filter_map(|&i| state.readers.get(i).map(|r| r.poke_key.clone()))
                .collect()
        };
        if keys.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(POKE_MAX_LEN)
                .arg("*")
                .arg(FIELD_NODE)
                .arg(inner.node)
                .arg("k")
                .arg("poke")
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(POKE_TTL.as_millis() as u64)
                .ignore();
        }
        if let Err(error) = inner.control.query_pipe::<()>(&pipe).await {
            // The reader still sees the new key when its current XREAD ends.
            tracing::debug!(%error, "bus poke failed");
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(POKE_INTERVAL) => {}
        }
    }
}

/// Keeps this node's liveness key alive until the bus stops.
async fn heartbeat(inner: Arc<Inner>) {
    let ttl = inner.config.node_ttl.max(Duration::from_millis(10));
    let every = ttl / 5;
    let mut set = redis::cmd("SET");
    set.arg(inner.node_key(inner.node))
        .arg(&inner.config.node_info)
        .arg("PX")
        .arg(ttl.as_millis() as u64);
    loop {
        let renewed = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            renewed = inner.control.query::<()>(&set) => renewed,
        };
        if let Err(error) = renewed {
            tracing::debug!(%error, "bus liveness renewal failed");
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// `url` with any password masked, for logs and errors (the rate limiter's Redis URL too).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://app:pw@redis/1"), "redis://app:***@redis/1");
    }

    #[tokio::test]
    async fn only_a_malformed_url_or_prefix_fails_to_start() {
        // Nothing listens on port 1: the bus still starts, and says it is down.
        let bus = RedisBus::connect("redis://127.0.0.1:1", "p", 7, RedisBusConfig::default())
            .expect("starts without Redis");
        assert!(!bus.is_up());
        assert_eq!(bus.alive(&[7]).await, None);
        bus.shutdown().await;
        assert!(matches!(
            RedisBus::connect("nonsense", "p", 7, RedisBusConfig::default()),
            Err(BusError::InvalidUrl { .. })
        ));
        assert!(matches!(
            RedisBus::connect("redis://127.0.0.1:1", "a b", 7, RedisBusConfig::default()),
            Err(BusError::InvalidPrefix(_))
        ));
    }

    #[test]
    fn connect_needs_a_runtime() {
        assert!(matches!(
            RedisBus::connect("redis://127.0.0.1:1", "p", 7, RedisBusConfig::default()),
            Err(BusError::NoRuntime)
        ));
    }
}
