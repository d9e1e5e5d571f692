//! The room registry: single-flight loading, joining, idle unloading, storage failures and
//! shutdown. Every task it starts (unload timers, presence expiry and flushes) belongs to its
//! task tracker and ends at shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use resonant_store::{Journal, Store};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{
    aw_topic, decode_entries, doc_topic, encode_entries, ClusterConfig, INLINE_MAX,
};
use crate::peer::{close_code, Close, Outbox, Peer};
use crate::room::{AddPeerError, ApplyError, LoadError, Room, Unload};
use crate::session::Session;
use crate::SyncConfig;

static ROOMS_GAUGE: LazyLock<metrics::Gauge> = LazyLock::new(|| metrics::gauge!("resonant_rooms"));
static LOADS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_room_loads_total"));
static LOAD_FAILURES: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_room_load_failures_total"));
static REMOTE_UPDATES: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_updates_applied_total"));
static DELIVERY_SECONDS: LazyLock<metrics::Histogram> =
    LazyLock::new(|| metrics::histogram!("resonant_bus_delivery_seconds"));
static MALFORMED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_entries_malformed_total"));

type LoadFuture = Shared<BoxFuture<'static, Result<Arc<Room>, LoadError>>>;

enum Slot {
    Loading(LoadFuture),
    Ready(Arc<Room>),
}

/// Why a connection could not join a room.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The room name is not 1–128 characters of `[A-Za-z0-9._-]`.
    #[error("invalid room name (1-128 characters of A-Z a-z 0-9 . _ -)")]
    InvalidName,
    /// The room has as many connections as allowed.
    #[error("room is full")]
    Full,
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The room's document could not be loaded.
    #[error("room failed to load: {0}")]
    Load(#[from] LoadError),
}

impl JoinError {
    /// The close frame a transport should answer this error with.
    pub fn close(&self) -> Close {
        let code = match self {
            JoinError::InvalidName => close_code::POLICY_VIOLATION,
            JoinError::Full => close_code::TRY_AGAIN_LATER,
            JoinError::ShuttingDown => close_code::SERVICE_RESTART,
            JoinError::Load(_) => close_code::INTERNAL_ERROR,
        };
        let reason = match self {
            // Store details stay in the logs.
            JoinError::Load(_) => "room failed to load".to_string(),
            other => other.to_string(),
        };
        Close::new(code, reason)
    }
}

/// Why a server-side update was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ServerUpdateError {
    /// The room could not be joined (loaded).
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The room refused the update.
    #[error(transparent)]
    Apply(ApplyError),
}

impl From<LoadError> for ServerUpdateError {
    fn from(e: LoadError) -> Self {
        ServerUpdateError::Join(JoinError::Load(e))
    }
}

/// Checks a room name: 1–128 characters from `[A-Za-z0-9._-]`.
pub fn valid_room_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Handle to every room of this process; cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    slots: DashMap<Arc<str>, Slot>,
    store: Arc<dyn Store>,
    journal: Journal,
    config: Arc<SyncConfig>,
    next_peer: AtomicU64,
    shutting_down: AtomicBool,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Set when other nodes serve the same rooms (scale-out).
    cluster: Option<ClusterConfig>,
}

impl Rooms {
    /// Creates the registry over a store and its journal, and starts the maintenance task
    /// (presence expiry). Rooms whose writes the journal cannot commit are closed (1011) and
    /// reloaded from the store by their next joiner.
    pub fn new(store: Arc<dyn Store>, journal: Journal, config: SyncConfig) -> Rooms {
        Self::build(store, journal, config, None)
    }

    /// A registry whose rooms other nodes serve too: committed updates are published on the
    /// cluster's bus, other nodes' are applied as they arrive, and whatever the bus loses is
    /// read back from the store (`docs/scale-out.md` §4).
    pub fn clustered(
        store: Arc<dyn Store>,
        journal: Journal,
        config: SyncConfig,
        cluster: ClusterConfig,
    ) -> Rooms {
        let rooms = Self::build(store, journal, config, Some(cluster));
        let weak = Arc::downgrade(&rooms.inner);
        rooms
            .inner
            .journal
            .set_commit_handler(Box::new(move |done| {
                if let Some(inner) = weak.upgrade() {
                    (Rooms { inner }).committed(done);
                }
            }));
        let weak = Arc::downgrade(&rooms.inner);
        rooms.spawn(probe(weak));
        let weak = Arc::downgrade(&rooms.inner);
        rooms.spawn(sweep_dead_nodes(weak));
        rooms
    }

    fn build(
        store: Arc<dyn Store>,
        journal: Journal,
        config: SyncConfig,
        cluster: Option<ClusterConfig>,
    ) -> Rooms {
        let rooms = Rooms {
            inner: Arc::new(Inner {
                slots: DashMap::new(),
                store,
                journal,
                config: Arc::new(config),
                next_peer: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
                cluster,
            }),
        };
        let weak = Arc::downgrade(&rooms.inner);
        rooms
            .inner
            .journal
            .set_failure_handler(Box::new(move |room, error| {
                if let Some(inner) = weak.upgrade() {
                    (Rooms { inner }).storage_failed(room, error);
                }
            }));
        let weak = Arc::downgrade(&rooms.inner);
        // y-protocols checks every 3 s against a 30 s timeout; shorter timeouts (tests) check
        // proportionally more often.
        let sweep = (rooms.inner.config.awareness_timeout / 3)
            .clamp(Duration::from_millis(50), Duration::from_secs(3));
        rooms.spawn(async move {
            let mut tick = tokio::time::interval(sweep);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                for room in (Rooms { inner }).loaded() {
                    room.expire_awareness();
                }
            }
        });
        rooms
    }

    /// Runs `task` on the registry's tracker until it ends or the registry shuts down.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let stop = self.inner.stop.clone();
        self.inner.tasks.spawn_on(
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = task => {}
                }
            },
            &handle,
        );
    }

    /// A room's writes failed permanently and were dropped: close the instance that made
    /// them, so its clients reconnect, resync against what the store holds, and re-send what
    /// was never acknowledged.
    fn storage_failed(&self, name: &str, error: &resonant_store::StoreError) {
        // The instance that wrote is the one in the slot: a newer instance only loads after
        // the journal has settled every write of the older one.
        let room = match self.inner.slots.get(name).as_deref() {
            Some(Slot::Ready(room)) => room.clone(),
            _ => return,
        };
        // No final snapshot: the store's log is the truth, and a snapshot of this instance
        // would stand in for log entries it does not hold.
        if matches!(error, resonant_store::StoreError::RoomDeleted(_)) {
            tracing::info!(room = %name, "room deleted (on another node); closing it");
            room.abandon(Close::new(close_code::GONE, "workflow deleted"));
        } else {
            tracing::error!(room = %name, error = %error, "closing room after a storage failure; it reloads on the next join");
            room.abandon(Close::new(
                close_code::INTERNAL_ERROR,
                "storage error: room reset, reconnect to resync",
            ));
        }
        self.remove_slot(&room);
    }

    /// A batch committed: each room's instance learns the seqs its updates got, and the
    /// other nodes learn of the updates. Called by the journal's writer before the batch's
    /// acknowledgements go out; never waits (the bus queues).
    fn committed(&self, done: &[resonant_store::Committed]) {
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        let mut start = 0;
        while start < done.len() {
            let room = &done[start].room;
            // A batch's appends of one room are usually together; when they are not, each
            // run is its own entry.
            let end = start
                + done[start..]
                    .iter()
                    .take_while(|c| Arc::ptr_eq(&c.room, room) || c.room == *room)
                    .count();
            let run = &done[start..end];
            if let Some(Slot::Ready(instance)) = self.inner.slots.get(&**room).as_deref() {
                instance.committed_own(run.iter().map(|c| c.seq));
            }
            let payload = encode_entries(run.iter().map(|c| {
                let inline = c.data.len() <= INLINE_MAX;
                (c.seq, if inline { &c.data[..] } else { &[][..] })
            }));
            cluster.bus.publish(
                &doc_topic(room),
                payload,
                resonant_bus::PublishOptions {
                    max_len: cluster.stream_max_len,
                    ttl: Some(cluster.stream_ttl),
                },
            );
            start = end;
        }
    }

    /// The bus to the other nodes, when this registry is part of a cluster.
    pub fn bus(&self) -> Option<&Arc<dyn resonant_bus::Bus>> {
        self.inner.cluster.as_ref().map(|c| &c.bus)
    }

    /// The journal every room appends to.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// The store behind the journal.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Rooms currently loaded.
    pub fn loaded(&self) -> Vec<Arc<Room>> {
        self.inner
            .slots
            .iter()
            .filter_map(|e| match e.value() {
                Slot::Ready(r) => Some(r.clone()),
                Slot::Loading(_) => None,
            })
            .collect()
    }

    /// Joins `name` (loading it if needed): returns the connection's session and the queue its
    /// transport writes from. The greeting (step 1, awareness) is already queued.
    pub async fn join(&self, name: &str, can_write: bool) -> Result<(Session, Outbox), JoinError> {
        if !valid_room_name(name) {
            return Err(JoinError::InvalidName);
        }
        let id = self.inner.next_peer.fetch_add(1, Ordering::Relaxed);
        loop {
            if self.inner.shutting_down.load(Ordering::Relaxed) {
                return Err(JoinError::ShuttingDown);
            }
            let room = self.get_or_load(name).await?;
            let (peer, outbox) = Peer::new(id, self.inner.config.max_queued_bytes, can_write);
            let peer = Arc::new(peer);
            match room.add_peer(peer.clone()) {
                Ok(()) => {
                    let session = Session::new(self.clone(), room, peer);
                    // A shutdown that started while this room was loading did not see it.
                    if self.inner.shutting_down.load(Ordering::Relaxed) {
                        session.room().close_all(shutdown_close());
                    }
                    return Ok((session, outbox));
                }
                Err(AddPeerError::Full) => return Err(JoinError::Full),
                // Unloaded between lookup and join: look again, which loads a fresh instance.
                Err(AddPeerError::Closed) => continue,
            }
        }
    }

    /// The room's whole document as a Yjs v1 update, read from the live instance (loading
    /// it if needed: the room unloads again after its grace period when nobody joins).
    pub async fn document_state(&self, name: &str) -> Result<Vec<u8>, JoinError> {
        if !valid_room_name(name) {
            return Err(JoinError::InvalidName);
        }
        let room = self.get_or_load(name).await?;
        Ok(room.with_doc(|doc| {
            use yrs::{ReadTxn, Transact};
            doc.transact()
                .encode_state_as_update_v1(&yrs::StateVector::default())
        }))
    }

    /// Applies an update on the server's behalf (a version restore): every connected peer
    /// receives it and the journal logs it like any client's change.
    pub async fn apply_server_update(
        &self,
        name: &str,
        update: &[u8],
    ) -> Result<(), ServerUpdateError> {
        if !valid_room_name(name) {
            return Err(JoinError::InvalidName.into());
        }
        loop {
            if self.inner.shutting_down.load(Ordering::Relaxed) {
                return Err(JoinError::ShuttingDown.into());
            }
            let room = self.get_or_load(name).await?;
            match room.apply_update(0, update) {
                // Unloaded between lookup and apply: the next lookup loads a fresh instance.
                Err(ApplyError::Closed) => continue,
                other => return other.map_err(ServerUpdateError::Apply),
            }
        }
    }

    /// Closes a room whose workflow was deleted: every connection gets `close`, nothing more
    /// is written for it, and once the journal has settled its writes the store forgets it.
    pub async fn delete(&self, name: &str, close: Close) -> Result<(), resonant_store::StoreError> {
        let room = match self.inner.slots.get(name).as_deref() {
            Some(Slot::Ready(room)) => Some(room.clone()),
            _ => None,
        };
        if let Some(room) = room {
            room.abandon(close);
            self.remove_slot(&room);
        }
        self.inner.journal.flush().await;
        self.inner.store.delete_room(name).await
    }

    async fn get_or_load(&self, name: &str) -> Result<Arc<Room>, LoadError> {
        let fut = match self.inner.slots.entry(Arc::from(name)) {
            Entry::Occupied(mut e) => match e.get() {
                Slot::Ready(room) if !room.is_closed() => return Ok(room.clone()),
                Slot::Ready(_) => {
                    // The closed instance is replaced here, so its unloader will not find it.
                    ROOMS_GAUGE.decrement(1.0);
                    let fut = self.load_future(e.key().clone());
                    e.insert(Slot::Loading(fut.clone()));
                    fut
                }
                Slot::Loading(fut) => fut.clone(),
            },
            Entry::Vacant(e) => {
                let fut = self.load_future(e.key().clone());
                e.insert(Slot::Loading(fut.clone()));
                fut
            }
        };
        let result = fut.clone().await;
        if let Entry::Occupied(mut e) = self.inner.slots.entry(Arc::from(name)) {
            if matches!(e.get(), Slot::Loading(f) if f.ptr_eq(&fut)) {
                match &result {
                    Ok(room) => {
                        e.insert(Slot::Ready(room.clone()));
                        ROOMS_GAUGE.increment(1.0);
                    }
                    // Forget the failure so the next joiner tries again.
                    Err(_) => {
                        e.remove();
                    }
                }
            }
        }
        result
    }

    fn load_future(&self, name: Arc<str>) -> LoadFuture {
        let rooms = self.clone();
        async move {
            LOADS.increment(1);
            // A previous instance of this room may still have writes in the journal.
            rooms.inner.journal.flush().await;
            // On a cluster: first the position in the room's stream, then the stored
            // document (W is its head); entries published after that position and not
            // already in the document are applied by the feeder (`docs/scale-out.md` §4.5).
            let subscriptions = match &rooms.inner.cluster {
                Some(cluster) => Some(
                    futures_util::future::join(
                        cluster.bus.subscribe(&doc_topic(&name)),
                        cluster.bus.subscribe(&aw_topic(&name)),
                    )
                    .await,
                ),
                None => None,
            };
            resonant_failpoint::hit("join.after-subscribe").await;
            let stored = rooms.inner.store.load(&name).await.map_err(|e| {
                LOAD_FAILURES.increment(1);
                tracing::error!(room = %name, error = %e, "room load failed");
                LoadError::Store(Arc::new(e))
            })?;
            resonant_failpoint::hit("join.after-load").await;
            let room = Room::from_stored(
                name.clone(),
                stored,
                rooms.inner.journal.clone(),
                rooms.inner.config.clone(),
                rooms.inner.tasks.clone(),
                rooms.inner.cluster.as_ref().map(|c| c.bus.clone()),
            )
            .inspect_err(|e| {
                LOAD_FAILURES.increment(1);
                tracing::error!(room = %name, error = %e, "room load failed");
            })?;
            if let (Some((docs, presence)), Some(cluster)) = (subscriptions, &rooms.inner.cluster) {
                rooms.spawn(feed(
                    rooms.inner.store.clone(),
                    room.clone(),
                    docs,
                    presence,
                    cluster.bus.node(),
                    cluster.gap_heal,
                ));
                room.ask_for_presence();
            }
            tracing::debug!(room = %name, "room loaded");
            // If the joiner that triggered the load never arrives, the room still unloads.
            rooms.schedule_unload(room.clone(), 0);
            Ok(room)
        }
        .boxed()
        .shared()
    }

    /// Called when a session ends.
    pub(crate) fn leave(&self, room: &Arc<Room>, peer_id: u64, awareness_ids: Vec<yrs::ClientID>) {
        let idle_generation = room.remove_peer(peer_id);
        if !awareness_ids.is_empty() {
            room.remove_awareness(awareness_ids);
        }
        if let Some(generation) = idle_generation {
            self.schedule_unload(room.clone(), generation);
        }
    }

    fn schedule_unload(&self, room: Arc<Room>, generation: u64) {
        let rooms = self.clone();
        let grace = self.inner.config.unload_grace;
        self.spawn(async move {
            tokio::time::sleep(grace).await;
            rooms.unload_if_idle(&room, generation).await;
        });
    }

    async fn unload_if_idle(&self, room: &Arc<Room>, generation: u64) {
        let Unload::Closed(ticket) = room.close_if_idle(generation) else {
            return;
        };
        self.remove_slot(room);
        if let Some(ticket) = ticket {
            self.inner.journal.wait(ticket).await;
        }
        tracing::debug!(room = %room.name(), "room unloaded");
    }

    fn remove_slot(&self, room: &Arc<Room>) {
        let removed = self.inner.slots.remove_if(
            room.name(),
            |_, slot| matches!(slot, Slot::Ready(r) if Arc::ptr_eq(r, room)),
        );
        if removed.is_some() {
            ROOMS_GAUGE.decrement(1.0);
        }
    }

    /// Refuses new joins, closes every connection with 1012, snapshots every room, stops the
    /// registry's tasks and waits until everything is committed.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        for room in self.loaded() {
            room.close_all(shutdown_close());
            self.remove_slot(&room);
        }
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.journal.flush().await;
    }
}

fn shutdown_close() -> Close {
    Close::new(close_code::SERVICE_RESTART, "server shutting down")
}

/// Why a room reads what it lacks from the store.
#[derive(Clone, Copy)]
enum HealReason {
    /// A gap in the seqs received outlasted the gap bound.
    Gap,
    /// The bus may have lost entries (reconnect, overflow, a malformed entry).
    Resync,
    /// The probe found the room's head above W.
    Probe,
    /// An update too large for the bus came as its seq alone.
    Elided,
}

impl HealReason {
    fn label(self) -> &'static str {
        match self {
            HealReason::Gap => "gap",
            HealReason::Resync => "resync",
            HealReason::Probe => "probe",
            HealReason::Elided => "elided",
        }
    }
}

/// Feeds one room instance on a cluster: other nodes' updates from its stream, and heals
/// from the store when the stream cannot be trusted. Ends when the room closes or the bus
/// shuts down (its subscription, dropped with it, unregisters only this instance's).
async fn feed(
    store: Arc<dyn Store>,
    room: Arc<Room>,
    mut subscription: resonant_bus::Subscription,
    mut presence: resonant_bus::Subscription,
    own_node: resonant_bus::NodeId,
    gap_heal: Duration,
) {
    let far = Duration::from_secs(3600);
    loop {
        let gap_due = room.gap_since().map_or_else(
            || tokio::time::Instant::now() + far,
            |t| (t + gap_heal).into(),
        );
        let reason = tokio::select! {
            _ = room.stopped().cancelled() => return,
            _ = room.heal_requested().notified() => HealReason::Probe,
            _ = tokio::time::sleep_until(gap_due) => HealReason::Gap,
            delivery = presence.recv() => {
                match delivery {
                    None => return,
                    Some(resonant_bus::Delivery::Message(m)) if m.origin != own_node => {
                        if !room.apply_remote_awareness(m.origin, &m.payload) {
                            MALFORMED.increment(1);
                        }
                    }
                    // Lost presence is renewed by its clients; nothing to heal.
                    Some(_) => {}
                }
                continue;
            }
            delivery = subscription.recv() => match delivery {
                None => return,
                Some(resonant_bus::Delivery::Resync) => HealReason::Resync,
                Some(resonant_bus::Delivery::Message(m)) => {
                    // Own updates are in the document since before they were committed.
                    if m.origin == own_node {
                        continue;
                    }
                    // From the origin's publish to here (clock skew included across hosts).
                    DELIVERY_SECONDS.record(
                        (now_ms().saturating_sub(m.sent_ms)).max(0) as f64 / 1000.0,
                    );
                    match decode_entries(&m.payload) {
                        Some(mut entries) => {
                            // Large updates come as their seq alone: read at once from the store.
                            let before = entries.len();
                            entries.retain(|(_, data)| !data.is_empty());
                            let elided = entries.len() < before;
                            match room.apply_remote(&entries) {
                            Ok(n) => {
                                REMOTE_UPDATES.increment(n as u64);
                                if elided {
                                    HealReason::Elided
                                } else {
                                    continue;
                                }
                            }
                            Err(ApplyError::Closed) => return,
                            // Not an update at all: the store's copy of that seq is the truth.
                            Err(ApplyError::Invalid(e)) => {
                                MALFORMED.increment(1);
                                tracing::warn!(room = %room.name(), error = %e, "an update on the room's stream does not apply; healing from the store");
                                HealReason::Resync
                            }
                            Err(_) => {
                                room.abandon(Close::new(
                                    close_code::INTERNAL_ERROR,
                                    "internal error; reconnect",
                                ));
                                return;
                            }
                            }
                        }
                        None => {
                            MALFORMED.increment(1);
                            tracing::warn!(room = %room.name(), "malformed entry on the room's stream; healing from the store");
                            HealReason::Resync
                        }
                    }
                }
            },
        };
        if !heal(&*store, &room, reason).await {
            return;
        }
    }
}

/// Reads what the room lacks from the store and applies it. False when the room is done.
async fn heal(store: &dyn Store, room: &Arc<Room>, reason: HealReason) -> bool {
    let started = std::time::Instant::now();
    let after = room.watermark();
    let tail = match store.read_since(room.name(), after).await {
        Ok(tail) => tail,
        Err(e) => {
            // The probe asks again; meanwhile the room keeps serving what it has.
            tracing::warn!(room = %room.name(), error = %e, "healing a room from the store failed");
            return true;
        }
    };
    match room.apply_tail(&tail) {
        Ok(applied) => {
            metrics::counter!("resonant_bus_gaps_healed_total", "reason" => reason.label())
                .increment(1);
            metrics::histogram!("resonant_bus_heal_seconds")
                .record(started.elapsed().as_secs_f64());
            if applied > 0 {
                tracing::debug!(room = %room.name(), reason = reason.label(), after, applied, "healed from the store");
            }
            true
        }
        Err(ApplyError::Closed) => false,
        Err(_) => {
            room.abandon(Close::new(
                close_code::INTERNAL_ERROR,
                "internal error; reconnect",
            ));
            false
        }
    }
}

/// Every probe interval, one query for the heads of every loaded room: a room whose head is
/// above its W lacks something the bus never brought (a lost last update, a bus outage).
async fn probe(inner: std::sync::Weak<Inner>) {
    loop {
        let wait = match inner.upgrade() {
            Some(inner) => {
                let cluster = inner.cluster.as_ref().expect("a clustered registry");
                if cluster.bus.is_up() {
                    cluster.probe
                } else {
                    cluster.probe_when_down
                }
            }
            None => return,
        };
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        let registry = Rooms { inner };
        let rooms = registry.loaded();
        if rooms.is_empty() {
            continue;
        }
        let names: Vec<Arc<str>> = rooms.iter().map(|r| r.name().clone()).collect();
        let heads = match registry.inner.store.heads(&names).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "probing the rooms' heads failed");
                continue;
            }
        };
        for (room, head) in rooms.iter().zip(heads) {
            if head.deleted {
                // Deleted on another node (whose message this node never got): the store
                // refuses its writes already; close it as the deleting node did.
                tracing::info!(room = %room.name(), "room deleted on another node; closing it");
                room.abandon(Close::new(close_code::GONE, "workflow deleted"));
                registry.remove_slot(room);
            } else if head.seq > room.watermark() {
                room.heal_requested().notify_one();
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How often a node asks whether the nodes it holds presence from are alive.
const DEAD_NODE_CHECK: Duration = Duration::from_secs(2);

/// Every [`DEAD_NODE_CHECK`]: the nodes whose peers have presence in a loaded room are looked
/// up on the bus; the presence of a node whose liveness key lapsed (killed, or cut off from
/// Redis for longer than its TTL) is removed everywhere, so its editors' cursors do not stay
/// until the awareness timeout. A node cut off only briefly comes back: its clients renew.
async fn sweep_dead_nodes(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(DEAD_NODE_CHECK).await;
        let Some(inner) = inner.upgrade() else { return };
        let registry = Rooms { inner };
        let rooms = registry.loaded();
        let mut origins: Vec<u64> = rooms.iter().flat_map(|r| r.presence_origins()).collect();
        origins.sort_unstable();
        origins.dedup();
        if origins.is_empty() {
            continue;
        }
        let bus = registry.bus().expect("a clustered registry").clone();
        // Unknown while the bus is down: nobody is declared dead for it.
        let Some(alive) = bus.alive(&origins).await else {
            continue;
        };
        for (node, alive) in origins.into_iter().zip(alive) {
            if alive {
                continue;
            }
            let removed: usize = rooms.iter().map(|r| r.remove_node_presence(node)).sum();
            if removed > 0 {
                tracing::info!(node = %resonant_bus::node_hex(node), removed, "removed the presence of a node that is gone");
                metrics::counter!("resonant_presence_ghosts_removed_total")
                    .increment(removed as u64);
            }
        }
    }
}
