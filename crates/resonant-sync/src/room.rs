//! One workflow document held in memory: the yrs doc, its presence, and its peers.
//!
//! Locking: `state` (doc + presence) is taken first, `peers` second, never the other way
//! round. Both are short, non-async critical sections: applying a small update takes
//! microseconds, and fan-out only pushes `Bytes` clones onto unbounded queues. The locks are
//! parking_lot's, which do not poison: a panic inside a room (yrs has panicked on hostile
//! input before) is caught at the room's boundary, closes that room (1011) and nothing else,
//! and must not turn every later lock of it into a second panic.
//!
//! The doc has exactly one update observer, which encodes each change once, appends it to the
//! journal, and hands the same bytes to every peer but the sender.
//!
//! A closed room applies nothing more. Closing takes the state lock, so once a room is marked
//! closed no update is in flight in it, and every write it made is already in the journal:
//! the next instance of the room, which flushes the journal before loading, sees all of it.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use resonant_store::{Journal, Snapshot, StoredDoc, Ticket};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use yrs::error::UpdateError;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::{
    ClientID, Doc, Origin, ReadTxn, StateVector, Transact, TransactionMut, Update, WriteTxn,
};

use crate::awareness::{AwarenessRefusal, Presence};
use crate::cluster::{self, Watermark};
use crate::nesting::{self, DepthCache};
use crate::peer::{close_code, Close, Peer};
use crate::protocol;
use crate::SyncConfig;
use resonant_bus::Bus;
use yrs::updates::encoder::Encode;

/// Awareness coalescing tick per peer in the room (see `Room::awareness_tick`).
const AWARENESS_TICK_PER_PEER: Duration = Duration::from_micros(150);

static FANOUT_SECONDS: LazyLock<metrics::Histogram> =
    LazyLock::new(|| metrics::histogram!("resonant_fanout_seconds"));
static UPDATES_APPLIED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_updates_applied_total"));
static ROOM_PANICS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_room_panics_total"));

/// Why a room could not be loaded from the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The store failed (unreachable, query error).
    #[error("store error: {0}")]
    Store(Arc<resonant_store::StoreError>),
    /// The stored data does not decode; serving an empty document instead could later
    /// overwrite it, so the room is not served at all.
    #[error("stored document is corrupt: {0}")]
    Corrupt(String),
}

/// Why an update was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The bytes are not a valid Yjs update.
    #[error("invalid update: {0}")]
    Invalid(String),
    /// The room failed internally and has been closed; reconnect.
    #[error("internal error; reconnect")]
    Internal,
    /// The room was closed (unloaded, reset after a storage error, shutting down).
    #[error("room closed; reconnect")]
    Closed,
    /// The document would grow past what one room may hold.
    #[error("{0}")]
    Full(String),
}

pub(crate) enum AddPeerError {
    Closed,
    Full,
}

/// What [`Room::close_if_idle`] did.
pub(crate) enum Unload {
    /// Someone joined meanwhile; the room stays.
    Busy,
    /// The room is closed; its final snapshot (if it needed one) has this ticket.
    Closed(Option<Ticket>),
}

/// A loaded room.
pub struct Room {
    name: Arc<str>,
    state: Mutex<RoomState>,
    shared: Arc<Shared>,
    config: Arc<SyncConfig>,
    tasks: TaskTracker,
    /// A panic interrupted an operation: the in-memory document may be inconsistent, so it
    /// is never snapshotted (the store's log stays the truth).
    poisoned: AtomicBool,
    /// Other nodes write this room too (scale-out): its snapshots cover what W says, not
    /// the whole log.
    clustered: bool,
    /// The other nodes serving this room hear of its presence changes here.
    bus: Option<Arc<dyn Bus>>,
    /// Which seqs of the log the document has applied (own ones as they commit, other
    /// nodes' as they arrive or are healed).
    wm: Mutex<Watermark>,
    /// Cancelled when the room closes: ends the tasks that feed it.
    stop: CancellationToken,
    /// Asks the room's feeder to read what it lacks from the store.
    heal: Notify,
    #[cfg(feature = "fault-injection")]
    inject_panic: AtomicBool,
}

struct RoomState {
    doc: Doc,
    presence: Presence,
    /// Depths of the document's shared types, for the nesting check.
    depths: DepthCache,
    /// The stored document already nests deeper than the limit: no update is applied.
    frozen: bool,
    /// Structs in the document: counted in its last snapshot (where yrs has merged adjacent
    /// runs) plus those of every update since. Each costs memory however few bytes it took on
    /// the wire, so the room's item limit counts these. Atomic like `bytes`.
    items: AtomicU64,
    /// The document's stored size: its snapshot plus the log after it (atomic only because
    /// snapshots, which reset it, see the state through a shared reference).
    bytes: AtomicU64,
}

/// What the update observer needs; shared with the closure registered on the doc.
struct Shared {
    name: Arc<str>,
    peers: Mutex<Peers>,
    journal: Journal,
    /// Log entries and bytes since the last snapshot (compaction trigger).
    log_updates: AtomicU64,
    log_bytes: AtomicU64,
    /// Step 2 for an empty state vector, encoded once and shared by every fresh joiner.
    full_state: Mutex<Option<Bytes>>,
}

#[derive(Default)]
struct Peers {
    list: Vec<Arc<Peer>>,
    closed: bool,
    generation: u64,
}

impl Room {
    /// Builds a room from what the store holds and registers its update observer.
    pub(crate) fn from_stored(
        name: Arc<str>,
        stored: StoredDoc,
        journal: Journal,
        config: Arc<SyncConfig>,
        tasks: TaskTracker,
        bus: Option<Arc<dyn Bus>>,
    ) -> Result<Arc<Room>, LoadError> {
        let doc = Doc::new();
        let head = stored.last_seq();
        let tail = stored.updates.len() as u64;
        let tail_bytes: u64 = stored.updates.iter().map(|(_, u)| u.len() as u64).sum();
        let applied = catch_unwind(AssertUnwindSafe(|| -> Result<(), LoadError> {
            let mut txn = doc.transact_mut();
            let parts = stored
                .snapshot
                .iter()
                .map(|s| (0, s))
                .chain(stored.updates.iter().map(|(seq, u)| (*seq, u)));
            for (seq, bytes) in parts {
                let update = Update::decode_v1(bytes)
                    .map_err(|e| LoadError::Corrupt(format!("entry {seq}: {e}")))?;
                apply_retrying(&mut txn, update)
                    .map_err(|e| LoadError::Corrupt(format!("entry {seq}: {e}")))?;
            }
            Ok(())
        }));
        match applied {
            Ok(r) => r?,
            Err(_) => return Err(LoadError::Corrupt("yrs panicked while loading".into())),
        }
        let mut items = 0u64;
        let mut bytes = 0u64;
        for part in stored
            .snapshot
            .iter()
            .chain(stored.updates.iter().map(|(_, u)| u))
        {
            items += nesting::count_structs(part).unwrap_or(0) as u64;
            bytes += part.len() as u64;
        }
        let mut depths = DepthCache::default();
        let deepest = nesting::deepest(&doc, &mut depths, config.max_nesting_depth);
        let frozen = deepest > config.max_nesting_depth;
        if frozen {
            tracing::warn!(room = %name, limit = config.max_nesting_depth,
                "stored document nests deeper than the limit; serving it read-only");
        }
        let shared = Arc::new(Shared {
            name: name.clone(),
            peers: Mutex::new(Peers::default()),
            journal,
            log_updates: AtomicU64::new(tail),
            log_bytes: AtomicU64::new(tail_bytes),
            full_state: Mutex::new(None),
        });
        let observer = shared.clone();
        doc.observe_update_v1("resonant-room", move |txn, event| {
            observer.on_update(txn.origin(), &event.update);
        })
        .map_err(|e| LoadError::Corrupt(format!("cannot observe document: {e}")))?;
        Ok(Arc::new(Room {
            name,
            state: Mutex::new(RoomState {
                doc,
                presence: Presence::default(),
                depths,
                frozen,
                items: AtomicU64::new(items),
                bytes: AtomicU64::new(bytes),
            }),
            shared,
            config,
            tasks,
            poisoned: AtomicBool::new(false),
            clustered: bus.is_some(),
            bus,
            wm: Mutex::new(Watermark::new(head)),
            stop: CancellationToken::new(),
            heal: Notify::new(),
            #[cfg(feature = "fault-injection")]
            inject_panic: AtomicBool::new(false),
        }))
    }

    /// The room name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.peers.lock().closed
    }

    /// Makes the next document operation in this room panic, as a yrs bug would (tests of
    /// the panic containment only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self) {
        self.inject_panic.store(true, Ordering::Relaxed);
    }

    fn maybe_injected_panic(&self) {
        #[cfg(feature = "fault-injection")]
        if self.inject_panic.swap(false, Ordering::Relaxed) {
            panic!("injected panic in room {}", self.name);
        }
    }

    /// Runs `f` (which takes the room's locks itself); a panic in it closes the room with
    /// 1011 and is reported as [`ApplyError::Internal`].
    fn contained<R>(&self, what: &str, f: impl FnOnce() -> R) -> Result<R, ApplyError> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Ok(r),
            Err(_) => {
                ROOM_PANICS.increment(1);
                tracing::error!(room = %self.name, "panic in {what}; closing the room");
                self.poisoned.store(true, Ordering::Relaxed);
                self.close_all(Close::new(
                    close_code::INTERNAL_ERROR,
                    "internal error; reconnect",
                ));
                Err(ApplyError::Internal)
            }
        }
    }

    /// Adds a peer and queues the greeting: our step 1 and everyone's presence.
    pub(crate) fn add_peer(&self, peer: Arc<Peer>) -> Result<(), AddPeerError> {
        let added = self.contained("add_peer", || {
            let st = self.state.lock();
            {
                let mut peers = self.shared.peers.lock();
                if peers.closed {
                    return Err(AddPeerError::Closed);
                }
                if peers.list.len() >= self.config.max_peers_per_room {
                    return Err(AddPeerError::Full);
                }
                peers.list.push(peer.clone());
                peers.generation += 1;
            }
            self.maybe_injected_panic();
            let sv = st.doc.transact().state_vector();
            peer.send(&protocol::encode_sync_step1(&sv));
            if let Some(msg) = st.presence.encode_all() {
                peer.send(&msg);
            }
            Ok(())
        });
        added.unwrap_or(Err(AddPeerError::Closed))
    }

    /// Removes a peer; returns the peer generation if the room is now empty (for the unload
    /// timer to check that nobody came back).
    pub(crate) fn remove_peer(&self, id: u64) -> Option<u64> {
        let mut peers = self.shared.peers.lock();
        peers.list.retain(|p| p.id() != id);
        peers.list.is_empty().then_some(peers.generation)
    }

    /// If the room is still empty at `generation`, queues its final snapshot and marks it
    /// closed, in one step: a joiner who finds it closed loads a fresh instance, and that
    /// load (which flushes the journal first) sees the snapshot.
    pub(crate) fn close_if_idle(&self, generation: u64) -> Unload {
        let st = self.state.lock();
        let mut peers = self.shared.peers.lock();
        if peers.closed || !peers.list.is_empty() || peers.generation != generation {
            return Unload::Busy;
        }
        peers.closed = true;
        drop(peers);
        self.stop.cancel();
        Unload::Closed(self.final_snapshot(&st))
    }

    /// Closes the room, asks every peer's transport to close with `close`, and queues the
    /// final snapshot; returns its ticket. Nothing is applied in the room after this.
    pub(crate) fn close_all(&self, close: Close) -> Option<Ticket> {
        let st = self.state.lock();
        {
            let mut peers = self.shared.peers.lock();
            peers.closed = true;
            for p in &peers.list {
                p.close(close.clone());
            }
        }
        self.stop.cancel();
        self.final_snapshot(&st)
    }

    /// Closes the room like [`Room::close_all`], without a final snapshot.
    pub(crate) fn abandon(&self, close: Close) {
        self.poisoned.store(true, Ordering::Relaxed);
        self.close_all(close);
    }

    fn final_snapshot(&self, st: &RoomState) -> Option<Ticket> {
        if self.poisoned.load(Ordering::Relaxed)
            || self.shared.log_updates.load(Ordering::Relaxed) == 0
        {
            return None;
        }
        match catch_unwind(AssertUnwindSafe(|| self.snapshot_locked(st))) {
            Ok(ticket) => Some(ticket),
            Err(_) => {
                ROOM_PANICS.increment(1);
                self.poisoned.store(true, Ordering::Relaxed);
                tracing::error!(room = %self.name, "panic while snapshotting; the log stays the truth");
                None
            }
        }
    }

    /// The answer to a client's step 1.
    pub fn step2_for(&self, sv: &StateVector) -> Result<Bytes, ApplyError> {
        self.contained("step2", || {
            let st = self.state.lock();
            self.maybe_injected_panic();
            if sv.is_empty() {
                let mut cache = self.shared.full_state.lock();
                if let Some(msg) = cache.as_ref() {
                    return msg.clone();
                }
                let update = st.doc.transact().encode_diff_v1(sv);
                let msg = protocol::encode_sync_step2(&update);
                *cache = Some(msg.clone());
                return msg;
            }
            let update = st.doc.transact().encode_diff_v1(sv);
            protocol::encode_sync_step2(&update)
        })
    }

    /// Applies a client's update (step 2 or update) on behalf of peer `origin`. The observer
    /// logs it and fans it out to every other peer.
    pub fn apply_update(&self, origin: u64, bytes: &[u8]) -> Result<(), ApplyError> {
        let started = Instant::now();
        crate::validate::validate_update_v1(bytes)
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let update = match catch_unwind(|| Update::decode_v1(bytes)) {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => return Err(ApplyError::Invalid(e.to_string())),
            Err(_) => return Err(ApplyError::Invalid("undecodable update".into())),
        };
        self.contained("apply_update", || {
            let mut st = self.state.lock();
            if self.shared.peers.lock().closed {
                return Err(ApplyError::Closed);
            }
            self.maybe_injected_panic();
            // Clients send their (usually empty) step 2 on every connect: that changes nothing.
            if st.frozen && !update.is_empty() {
                return Err(ApplyError::Invalid(format!(
                    "this document nests shared types deeper than the limit of {} levels and \
                     is read-only; restore a version to edit it",
                    self.config.max_nesting_depth
                )));
            }
            let structs = {
                let RoomState { doc, depths, .. } = &mut *st;
                nesting::check(
                    &doc.transact(),
                    depths,
                    bytes,
                    self.config.max_nesting_depth,
                )
                .map_err(|e| ApplyError::Invalid(e.to_string()))?
            } as u64;
            // Only what adds to the document is refused: a client's empty step 2 on connect
            // and deletes must still pass in a room already past a (lowered) limit.
            if structs > 0
                && st.items.load(Ordering::Relaxed) + structs > self.config.max_room_items
            {
                return Err(ApplyError::Full(format!(
                    "the document would hold more than {} items; it is full",
                    self.config.max_room_items
                )));
            }
            if !update.is_empty()
                && st.bytes.load(Ordering::Relaxed) + bytes.len() as u64
                    > self.config.max_room_bytes
            {
                return Err(ApplyError::Full(format!(
                    "the document would grow past {} bytes; it is full",
                    self.config.max_room_bytes
                )));
            }
            st.items.fetch_add(structs, Ordering::Relaxed);
            st.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let pending = {
                let mut txn = st.doc.transact_mut_with(origin);
                apply_retrying(&mut txn, update).map_err(|e| ApplyError::Invalid(e.to_string()))?;
                let store = txn.store();
                store.pending_update().is_some() || store.pending_ds().is_some()
            };
            if pending {
                // Part of this update waits for changes we have not seen. The observer only
                // logs what was integrated, so log the raw update too: it is acknowledged,
                // and must survive a restart to integrate once its dependencies arrive.
                self.shared.append(Bytes::copy_from_slice(bytes));
            }
            UPDATES_APPLIED.increment(1);
            FANOUT_SECONDS.record(started.elapsed().as_secs_f64());
            if self.shared.log_updates.load(Ordering::Relaxed) >= self.config.compact_after_updates
                || self.shared.log_bytes.load(Ordering::Relaxed) >= self.config.compact_after_bytes
            {
                self.snapshot_locked(&st);
            }
            Ok(())
        })?
    }

    fn snapshot_locked(&self, st: &RoomState) -> Ticket {
        // Holding the state lock: no update can be applied (and so none logged) while we
        // encode, so the log up to where the journal queues this snapshot is exactly what it
        // contains — the store resolves `up_to_seq: None` to that point, as this process is
        // the room's only writer. The encoding includes
        // structs and deletes still waiting for their dependencies (yrs merges the pending
        // update and delete set into it), so nothing acknowledged but not yet integrated is
        // lost with the log entries the snapshot replaces.
        let state = st
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        st.bytes.store(state.len() as u64, Ordering::Relaxed);
        if let Ok(n) = nesting::count_structs(&state) {
            st.items.store(n as u64, Ordering::Relaxed);
        }
        self.shared.log_updates.store(0, Ordering::Relaxed);
        self.shared.log_bytes.store(0, Ordering::Relaxed);
        tracing::debug!(room = %self.name, bytes = state.len(), "snapshot");
        // On a cluster the log may hold other nodes' rows this document lacks: the
        // snapshot covers only what W says it has.
        let up_to_seq = self.clustered.then(|| self.wm.lock().w());
        self.shared.journal.snapshot(Snapshot {
            room: self.name.clone(),
            state: state.into(),
            up_to_seq,
        })
    }

    /// Applies a client's presence update and relays the change. `owned` holds the client
    /// ids this connection introduced (grown within the limit). Returns the first refusal if
    /// part of the message was over a limit (the rest is applied).
    pub fn apply_awareness(
        self: &Arc<Self>,
        origin: u64,
        update: AwarenessUpdate,
        owned: &mut HashSet<ClientID>,
    ) -> Option<AwarenessRefusal> {
        let mut st = self.state.lock();
        let (changed, refusal) =
            st.presence
                .apply(update, owned, &self.config.awareness, Instant::now());
        if !changed.is_empty() {
            self.publish_awareness(&st, &changed);
            self.broadcast_awareness(&mut st, changed, Some(origin));
        }
        refusal
    }

    /// Removes presence states (a peer left) and relays the removal.
    pub(crate) fn remove_awareness(self: &Arc<Self>, ids: impl IntoIterator<Item = ClientID>) {
        let mut st = self.state.lock();
        let removed = st.presence.remove(ids, Instant::now());
        if !removed.is_empty() {
            self.publish_awareness(&st, &removed);
            self.broadcast_awareness(&mut st, removed, None);
        }
    }

    /// Drops presence not renewed within the timeout (and forgets old removals), as one step
    /// under the lock, so a renewal cannot land between finding and removing an entry.
    pub(crate) fn expire_awareness(self: &Arc<Self>) {
        let mut st = self.state.lock();
        let expired = st
            .presence
            .expire(Instant::now(), self.config.awareness_timeout);
        if !expired.is_empty() {
            tracing::debug!(room = %self.name, count = expired.len(), "awareness entries expired");
            self.broadcast_awareness(&mut st, expired, None);
        }
    }

    /// The number of presence entries held (removed ones included until they are forgotten).
    pub fn awareness_entries(&self) -> usize {
        self.state.lock().presence.len()
    }

    /// Everyone's presence, for a query-awareness message.
    pub fn awareness_message(&self) -> Option<Bytes> {
        self.state.lock().presence.encode_all()
    }

    /// Sends a change at once in a quiet room; in a busy one, collects changes and sends them
    /// as one message per tick, so N cursors cost N messages per tick, not N² frames.
    fn broadcast_awareness(
        self: &Arc<Self>,
        st: &mut RoomState,
        changed: Vec<ClientID>,
        exclude: Option<u64>,
    ) {
        let now = Instant::now();
        let p = &mut st.presence;
        // While a flush is scheduled the change only joins it: the tick (a lock on the peer
        // list) is needed only to decide between sending now and scheduling.
        let tick = (!p.flush_scheduled).then(|| self.awareness_tick());
        let quiet =
            tick.is_some_and(|tick| p.last_flush.is_none_or(|t| now.duration_since(t) >= tick));
        if quiet {
            p.last_flush = Some(now);
            if let Some(msg) = p.encode(changed) {
                self.shared.send_all(&msg, exclude);
            }
            return;
        }
        p.dirty.extend(changed);
        if let Some(tick) = tick.filter(|_| !self.tasks.is_closed()) {
            p.flush_scheduled = true;
            let due = p.last_flush.map_or(now, |t| t + tick);
            let room = Arc::clone(self);
            let flush = async move {
                tokio::time::sleep_until(due.into()).await;
                room.flush_awareness();
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(self.tasks.spawn_on(flush, &rt)),
                // Outside a runtime (a session dropped at teardown) nobody is left to tell.
                Err(_) => p.flush_scheduled = false,
            }
        }
    }

    /// The coalescing tick for this room's size. A flush costs one frame per peer, so the
    /// tick grows with the room ([`AWARENESS_TICK_PER_PEER`], from 1 ms up to the configured
    /// tick): a room of up to ~100 peers sends at most ~6,700 awareness frames a second (a
    /// larger one is held to the configured tick, as before), and a small busy room still gets
    /// cursors within a few ms. Measured (docs/benchmarks.md):
    /// 20 clients at 20 Hz, a fixed 16 ms tick gave p99 17.4 ms for 0.29–0.44 s of CPU, 3 ms
    /// gave 4.8 ms for 0.46 s; 50 clients at 10 Hz, 16 ms: 17.6 ms for 0.43 s, 8 ms: 9.5 ms
    /// for 0.50 s, 3 ms: 4.5 ms for 0.91 s.
    fn awareness_tick(&self) -> Duration {
        let peers = self.shared.peers.lock().list.len() as u32;
        (AWARENESS_TICK_PER_PEER * peers)
            .max(Duration::from_millis(1))
            .min(self.config.awareness_tick)
    }

    fn flush_awareness(&self) {
        let mut st = self.state.lock();
        let p = &mut st.presence;
        p.flush_scheduled = false;
        p.last_flush = Some(Instant::now());
        let dirty: Vec<ClientID> = p.dirty.drain().collect();
        // Coalesced changes come from many peers; echoing a peer its own state is harmless
        // (y-protocols ignores an equal clock), so everyone gets the same bytes.
        if let Some(msg) = p.encode(dirty) {
            self.shared.send_all(&msg, None);
        }
    }

    /// Sends `msg` to every connection in the room that opted into the extensions, except
    /// `from`: a client's broadcast event reaches the others, never a stock client.
    pub fn send_to_extended_peers(&self, msg: &Bytes, from: u64) {
        let peers = self.shared.peers.lock();
        for p in &peers.list {
            if p.id() != from && p.extensions() {
                p.send(msg);
            }
        }
    }

    /// Tells the other nodes serving this room what this node's peers changed in its
    /// presence (never persisted; lost messages are renewed by the clients within 15 s).
    fn publish_awareness(&self, st: &RoomState, ids: &[ClientID]) {
        let Some(bus) = &self.bus else { return };
        if let Some(update) = st.presence.update_for(ids.iter().copied()) {
            let mut payload = vec![cluster::AW_UPDATE];
            payload.extend(update.encode_v1());
            bus.publish(
                &cluster::aw_topic(&self.name),
                payload.into(),
                cluster::aw_publish_options(),
            );
        }
    }

    /// Asks the other nodes serving this room to announce their peers' presence (a node
    /// that just loaded the room has none of it).
    pub(crate) fn ask_for_presence(&self) {
        if let Some(bus) = &self.bus {
            bus.publish(
                &cluster::aw_topic(&self.name),
                Bytes::from_static(&[cluster::AW_QUERY]),
                cluster::aw_publish_options(),
            );
        }
    }

    /// Applies a presence message from another node: states are relayed to the local
    /// peers; a query is answered with this node's peers' states. False when malformed.
    pub(crate) fn apply_remote_awareness(self: &Arc<Self>, origin: u64, payload: &[u8]) -> bool {
        match payload.split_first() {
            Some((&cluster::AW_UPDATE, body)) => {
                if crate::validate::validate_awareness_v1(body).is_err() {
                    return false;
                }
                let Ok(update) = AwarenessUpdate::decode_v1(body) else {
                    return false;
                };
                // Other nodes enforced their peers' limits; the state size is checked again,
                // and all other nodes' entries together are held to what this room's own
                // peers could hold (their per-node limits add up with the number of nodes).
                let limits = crate::AwarenessLimits {
                    max_ids_per_connection: self
                        .config
                        .max_peers_per_room
                        .saturating_mul(self.config.awareness.max_ids_per_connection),
                    max_entries_per_message: usize::MAX,
                    ..self.config.awareness
                };
                let mut st = self.state.lock();
                let (changed, refusal) = st.presence.apply_from(
                    update,
                    &mut HashSet::new(),
                    &limits,
                    Instant::now(),
                    Some(origin),
                );
                if refusal.is_some() {
                    metrics::counter!("resonant_bus_presence_refused_total").increment(1);
                }
                if !changed.is_empty() {
                    self.broadcast_awareness(&mut st, changed, None);
                }
                true
            }
            Some((&cluster::AW_QUERY, [])) => {
                let st = self.state.lock();
                let local = st.presence.local_present();
                if !local.is_empty() {
                    self.publish_awareness(&st, &local);
                }
                true
            }
            _ => false,
        }
    }

    /// The other nodes whose peers have presence in this room.
    pub(crate) fn presence_origins(&self) -> std::collections::HashSet<u64> {
        self.state.lock().presence.origins()
    }

    /// Removes the presence of every peer of node `origin`, which died, and tells the local
    /// peers (no ghost cursors until the awareness timeout).
    pub(crate) fn remove_node_presence(self: &Arc<Self>, origin: u64) -> usize {
        let mut st = self.state.lock();
        let removed = st.presence.remove_origin(origin, Instant::now());
        let n = removed.len();
        if n > 0 {
            self.broadcast_awareness(&mut st, removed, None);
        }
        n
    }

    /// Records seqs the store gave this room's own updates (they are in the document since
    /// before they were journaled).
    pub(crate) fn committed_own(&self, seqs: impl IntoIterator<Item = i64>) {
        let mut wm = self.wm.lock();
        for seq in seqs {
            wm.mark(seq);
        }
    }

    /// Every seq up to this one is in the document.
    pub fn watermark(&self) -> i64 {
        self.wm.lock().w()
    }

    pub(crate) fn gap_since(&self) -> Option<Instant> {
        self.wm.lock().gap_since()
    }

    pub(crate) fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    pub(crate) fn heal_requested(&self) -> &Notify {
        &self.heal
    }

    /// Applies committed updates from the log that other nodes wrote (from the bus or a
    /// heal), skipping seqs already applied; every local peer gets what they change, and
    /// nothing is journaled. Returns how many were new.
    pub(crate) fn apply_remote(&self, entries: &[(i64, Bytes)]) -> Result<usize, ApplyError> {
        self.contained("apply_remote", || {
            let st = self.state.lock();
            if self.shared.peers.lock().closed {
                return Err(ApplyError::Closed);
            }
            let mut wm = self.wm.lock();
            let mut applied = 0;
            for (seq, bytes) in entries {
                if wm.is_applied(*seq) {
                    continue;
                }
                // Bytes from the bus that are no update at all are the bus's fault (the store's
                // copy is read instead), not a sign that this document is corrupt.
                let update =
                    Update::decode_v1(bytes).map_err(|e| ApplyError::Invalid(e.to_string()))?;
                self.apply_decoded(&st, *seq, bytes, update)?;
                wm.mark(*seq);
                applied += 1;
            }
            Ok(applied)
        })?
    }

    /// Applies a heal read: the snapshot (when compaction removed rows this document
    /// lacks) in place, then the rows; afterwards everything up to `tail.head_seq` is in.
    pub(crate) fn apply_tail(&self, tail: &resonant_store::Tail) -> Result<usize, ApplyError> {
        self.contained("apply_tail", || {
            let st = self.state.lock();
            if self.shared.peers.lock().closed {
                return Err(ApplyError::Closed);
            }
            let mut wm = self.wm.lock();
            let mut applied = 0;
            if let Some((up_to, state)) = &tail.snapshot {
                self.apply_stored(&st, *up_to, state)?;
                wm.raise_to(*up_to);
                applied += 1;
            }
            for (seq, bytes) in &tail.updates {
                if wm.is_applied(*seq) {
                    continue;
                }
                self.apply_stored(&st, *seq, bytes)?;
                wm.mark(*seq);
                applied += 1;
            }
            wm.raise_to(tail.head_seq);
            Ok(applied)
        })?
    }

    /// Applies one committed log entry with the remote origin. The origin node checked it;
    /// bytes that do not decode are a corrupt log, and the room closes (1011) as a load of
    /// it would fail.
    fn apply_stored(&self, st: &RoomState, seq: i64, bytes: &[u8]) -> Result<(), ApplyError> {
        let update = Update::decode_v1(bytes).map_err(|e| self.corrupt(seq, e.to_string()))?;
        self.apply_decoded(st, seq, bytes, update)
    }

    /// A committed update that does not apply: the document can no longer be trusted.
    fn corrupt(&self, seq: i64, e: String) -> ApplyError {
        tracing::error!(room = %self.name, seq, error = %e, "a committed update from another node does not apply; closing the room");
        self.poisoned.store(true, Ordering::Relaxed);
        ApplyError::Internal
    }

    /// Applies committed update `seq` (`bytes`, decoded as `update`) with the remote origin.
    fn apply_decoded(
        &self,
        st: &RoomState,
        seq: i64,
        bytes: &[u8],
        update: Update,
    ) -> Result<(), ApplyError> {
        st.items.fetch_add(
            nesting::count_structs(bytes).unwrap_or(0) as u64,
            Ordering::Relaxed,
        );
        st.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut txn = st.doc.transact_mut_with(REMOTE_ORIGIN);
        apply_retrying(&mut txn, update).map_err(|e| self.corrupt(seq, e.to_string()))
    }

    /// Runs `f` with read access to the document (for tests and, later, executions).
    pub fn with_doc<R>(&self, f: impl FnOnce(&Doc) -> R) -> R {
        f(&self.state.lock().doc)
    }
}

impl Shared {
    /// The room's single update observer: called inside the committing transaction, with
    /// the room's state lock held, so the journal gets updates in the order of application.
    fn on_update(&self, origin: Option<&Origin>, update: &[u8]) {
        let msg = protocol::encode_sync_update(update);
        let exclude = origin.and_then(origin_peer);
        if exclude == Some(REMOTE_ORIGIN) {
            // Another node's committed update: already in the log, so only the local peers
            // need it.
            *self.full_state.lock() = None;
            self.send_all(&msg, None);
            return;
        }
        let body = msg.slice(msg.len() - update.len()..);
        self.log_updates.fetch_add(1, Ordering::Relaxed);
        self.log_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        self.journal.append(self.name.clone(), body);
        *self.full_state.lock() = None;
        self.send_all(&msg, exclude);
    }

    /// Appends an update to the room's log. Callers hold the room's state lock.
    fn append(&self, update: Bytes) -> Ticket {
        self.log_updates.fetch_add(1, Ordering::Relaxed);
        self.log_bytes
            .fetch_add(update.len() as u64, Ordering::Relaxed);
        self.journal.append(self.name.clone(), update)
    }

    fn send_all(&self, msg: &Bytes, exclude: Option<u64>) {
        let peers = self.peers.lock();
        for p in &peers.list {
            if Some(p.id()) != exclude {
                p.send(msg);
            }
        }
    }
}

/// Applies `update`, then, if it brought structs with the same ids as structs waiting in the
/// pending update, retries the pending update at once.
///
/// yrs retries pending structs only when the client they wait for advances. When a client
/// re-sends ids with different content (fuzz/findings/reload_diverges_reused_ids_no_subdoc),
/// the new copy integrates, the stale pending copy stays, and the structs queued behind it
/// wait although nothing blocks them any more; a snapshot, which merges the pending structs
/// in, then loads them: the reloaded document differed from the served one. Retrying trims
/// the stale copy (yrs excludes what is now known) and integrates what can be. Loading
/// applies stored entries the same way, so a log replays into the document that was served.
fn apply_retrying(txn: &mut TransactionMut, update: Update) -> Result<(), UpdateError> {
    let overlaps = txn.store().pending_update().is_some_and(|pending| {
        // Cheap test first (where each pending client starts), the id sets only when a client
        // of the update reaches into the pending structs' range.
        let lower = pending.update.state_vector_lower();
        let ins = update.insertions(true);
        ins.iter().any(|(client, ranges)| {
            lower.contains_client(client) && ranges.iter().any(|r| r.end > lower.get(client))
        }) && !pending.update.insertions(true).intersect(&ins).is_empty()
    });
    txn.apply_update(update)?;
    if overlaps {
        if let Some(pending) = txn.prune_pending() {
            txn.apply_update(pending)?;
        }
    }
    Ok(())
}

/// The origin of transactions that apply other nodes' committed updates: never a peer id
/// (those count up from 1).
const REMOTE_ORIGIN: u64 = u64::MAX;

/// Transactions applied for a peer carry its id (big-endian u64) as origin.
fn origin_peer(origin: &Origin) -> Option<u64> {
    let bytes: [u8; 8] = origin.as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}
