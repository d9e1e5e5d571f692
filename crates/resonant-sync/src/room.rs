//! One workflow document held in memory: the yrs doc, its awareness, and its peers.
//!
//! Locking: `state` (doc + awareness) is taken first, `peers` second, never the other way
//! round. Both are `std` mutexes held for short, non-async sections: applying a small update
//! takes microseconds, and fan-out only pushes `Bytes` clones onto unbounded queues. The doc
//! has exactly one update observer, which encodes each change once, appends it to the
//! journal, and hands the same bytes to every peer but the sender.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use bytes::Bytes;
use resonant_store::{Journal, Snapshot, StoredDoc, Ticket};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry, AwarenessUpdateSummary};
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, Origin, ReadTxn, StateVector, Transact, Update};

use crate::peer::{close_code, Close, Peer};
use crate::protocol;
use crate::SyncConfig;

static FANOUT_SECONDS: LazyLock<metrics::Histogram> =
    LazyLock::new(|| metrics::histogram!("resonant_fanout_seconds"));
static UPDATES_APPLIED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_updates_applied_total"));

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
    /// yrs failed internally; the room has been closed for safety.
    #[error("internal error while applying update")]
    Internal,
}

pub(crate) enum AddPeerError {
    Closed,
    Full,
}

/// A loaded room.
pub struct Room {
    name: Arc<str>,
    state: Mutex<RoomState>,
    shared: Arc<Shared>,
    config: Arc<SyncConfig>,
}

struct RoomState {
    awareness: Awareness,
    /// Awareness client ids changed since the last broadcast (coalescing).
    aw_dirty: HashSet<ClientID>,
    aw_last_flush: Option<Instant>,
    aw_flush_scheduled: bool,
}

/// What the update observer needs; shared with the closure registered on the doc.
struct Shared {
    name: Arc<str>,
    peers: Mutex<Peers>,
    journal: Journal,
    /// Last sequence number appended for this room.
    last_seq: AtomicI64,
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
    ) -> Result<Arc<Room>, LoadError> {
        let doc = Doc::new();
        let last_seq = stored.last_seq();
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
                txn.apply_update(update)
                    .map_err(|e| LoadError::Corrupt(format!("entry {seq}: {e}")))?;
            }
            Ok(())
        }));
        match applied {
            Ok(r) => r?,
            Err(_) => return Err(LoadError::Corrupt("yrs panicked while loading".into())),
        }
        let shared = Arc::new(Shared {
            name: name.clone(),
            peers: Mutex::new(Peers::default()),
            journal,
            last_seq: AtomicI64::new(last_seq),
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
                awareness: Awareness::new(doc),
                aw_dirty: HashSet::new(),
                aw_last_flush: None,
                aw_flush_scheduled: false,
            }),
            shared,
            config,
        }))
    }

    /// The room name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.shared.peers.lock().unwrap().list.len()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.peers.lock().unwrap().closed
    }

    /// Adds a peer and queues the greeting: our step 1 and everyone's awareness.
    pub(crate) fn add_peer(&self, peer: Arc<Peer>) -> Result<(), AddPeerError> {
        let st = self.state.lock().unwrap();
        {
            let mut peers = self.shared.peers.lock().unwrap();
            if peers.closed {
                return Err(AddPeerError::Closed);
            }
            if peers.list.len() >= self.config.max_peers_per_room {
                return Err(AddPeerError::Full);
            }
            peers.list.push(peer.clone());
            peers.generation += 1;
        }
        let sv = st.awareness.doc().transact().state_vector();
        peer.send(&protocol::encode_sync_step1(&sv));
        if let Some(msg) = full_awareness(&st.awareness) {
            peer.send(&msg);
        }
        Ok(())
    }

    /// Removes a peer; returns the peer generation if the room is now empty (for the unload
    /// timer to check that nobody came back).
    pub(crate) fn remove_peer(&self, id: u64) -> Option<u64> {
        let mut peers = self.shared.peers.lock().unwrap();
        peers.list.retain(|p| p.id() != id);
        peers.list.is_empty().then_some(peers.generation)
    }

    /// Marks the room closed if it is still empty at `generation`. A closed room accepts no
    /// peers; joiners load a fresh instance.
    pub(crate) fn close_if_idle(&self, generation: u64) -> bool {
        let mut peers = self.shared.peers.lock().unwrap();
        if peers.closed || !peers.list.is_empty() || peers.generation != generation {
            return false;
        }
        peers.closed = true;
        true
    }

    /// Closes the room and asks every peer's transport to close with `close`.
    pub(crate) fn close_all(&self, close: Close) {
        let mut peers = self.shared.peers.lock().unwrap();
        peers.closed = true;
        for p in &peers.list {
            p.close(close.clone());
        }
    }

    /// The answer to a client's step 1.
    pub fn step2_for(&self, sv: &StateVector) -> Bytes {
        let st = self.state.lock().unwrap();
        if sv.is_empty() {
            let mut cache = self.shared.full_state.lock().unwrap();
            if let Some(msg) = cache.as_ref() {
                return msg.clone();
            }
            let update = st.awareness.doc().transact().encode_diff_v1(sv);
            let msg = protocol::encode_sync_step2(&update);
            *cache = Some(msg.clone());
            return msg;
        }
        let update = st.awareness.doc().transact().encode_diff_v1(sv);
        protocol::encode_sync_step2(&update)
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
        let st = self.state.lock().unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = st.awareness.doc().transact_mut_with(origin);
            txn.apply_update(update)?;
            let store = txn.store();
            Ok::<_, yrs::error::UpdateError>(
                store.pending_update().is_some() || store.pending_ds().is_some(),
            )
        }));
        match result {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                // Part of this update waits for changes we have not seen. The observer only
                // logs what was integrated, so log the raw update too: it is acknowledged,
                // and must survive a restart to integrate once its dependencies arrive.
                self.shared.append(Bytes::copy_from_slice(bytes));
            }
            Ok(Err(e)) => return Err(ApplyError::Invalid(e.to_string())),
            Err(_) => {
                drop(st);
                tracing::error!(room = %self.name, "yrs panicked applying an update; closing room");
                self.close_all(Close::new(
                    close_code::INTERNAL_ERROR,
                    "internal error; reconnect",
                ));
                return Err(ApplyError::Internal);
            }
        }
        UPDATES_APPLIED.increment(1);
        FANOUT_SECONDS.record(started.elapsed().as_secs_f64());
        if self.shared.log_updates.load(Ordering::Relaxed) >= self.config.compact_after_updates
            || self.shared.log_bytes.load(Ordering::Relaxed) >= self.config.compact_after_bytes
        {
            self.snapshot_locked(&st);
        }
        Ok(())
    }

    /// Enqueues a snapshot if anything was logged since the last one; returns its ticket.
    pub(crate) fn snapshot(&self) -> Option<Ticket> {
        let st = self.state.lock().unwrap();
        if self.shared.log_updates.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(self.snapshot_locked(&st))
    }

    fn snapshot_locked(&self, st: &RoomState) -> Ticket {
        // Holding the state lock: no update can be applied (and so none logged) while we
        // encode, so `last_seq` is exactly what the snapshot contains.
        let txn = st.awareness.doc().transact();
        let state = txn.encode_state_as_update_v1(&StateVector::default());
        let state_vector = txn.state_vector().encode_v1();
        // Structs still waiting for their dependencies must outlive the log entries this
        // snapshot replaces; re-logging them is harmless if the state already carries them.
        let pending = txn.store().pending_update().map(|p| p.update.encode_v1());
        drop(txn);
        let up_to_seq = self.shared.last_seq.load(Ordering::Relaxed);
        self.shared.log_updates.store(0, Ordering::Relaxed);
        self.shared.log_bytes.store(0, Ordering::Relaxed);
        tracing::debug!(room = %self.name, up_to_seq, bytes = state.len(), "snapshot");
        let ticket = self.shared.journal.snapshot(Snapshot {
            room: self.name.clone(),
            state: state.into(),
            state_vector: state_vector.into(),
            up_to_seq,
        });
        match pending {
            Some(p) => self.shared.append(p.into()),
            None => ticket,
        }
    }

    /// Applies a client's awareness update and relays the change; returns what changed.
    pub fn apply_awareness(
        self: &Arc<Self>,
        origin: u64,
        update: AwarenessUpdate,
    ) -> Option<AwarenessUpdateSummary> {
        let mut st = self.state.lock().unwrap();
        let summary = st.awareness.apply_update_summary(update).ok()??;
        self.broadcast_awareness(&mut st, summary.all_changes(), Some(origin));
        Some(summary)
    }

    /// Removes awareness states (a peer left, or its entries expired) and relays the removal.
    pub(crate) fn remove_awareness(self: &Arc<Self>, ids: impl IntoIterator<Item = ClientID>) {
        let mut st = self.state.lock().unwrap();
        // As y-protocols does for remote clients: a null state at the *current* clock. (yrs's
        // `remove_state` bumps the clock, which would make the client's next real change,
        // sent with that same clock after a reconnect, look stale everywhere.)
        let mut removal = AwarenessUpdate {
            clients: Default::default(),
        };
        for id in ids {
            if let Some((clock, _)) = st.awareness.meta(id) {
                removal.clients.insert(
                    id,
                    AwarenessUpdateEntry {
                        clock,
                        json: "null".into(),
                    },
                );
            }
        }
        if removal.clients.is_empty() {
            return;
        }
        if let Ok(Some(summary)) = st.awareness.apply_update_summary(removal) {
            if !summary.removed.is_empty() {
                self.broadcast_awareness(&mut st, summary.removed, None);
            }
        }
    }

    /// Drops awareness entries not renewed within the timeout, as y-protocols does.
    pub(crate) fn expire_awareness(self: &Arc<Self>, now_ms: u64) {
        let timeout = self.config.awareness_timeout.as_millis() as u64;
        let expired: Vec<ClientID> = {
            let st = self.state.lock().unwrap();
            st.awareness
                .iter()
                .filter(|(_, s)| {
                    s.data.is_some() && now_ms.saturating_sub(s.last_updated) >= timeout
                })
                .map(|(id, _)| id)
                .collect()
        };
        if !expired.is_empty() {
            tracing::debug!(room = %self.name, count = expired.len(), "awareness entries expired");
            self.remove_awareness(expired);
        }
    }

    /// The full awareness state, for a query-awareness message.
    pub fn awareness_message(&self) -> Option<Bytes> {
        full_awareness(&self.state.lock().unwrap().awareness)
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
        let tick = self.config.awareness_tick;
        let quiet = !st.aw_flush_scheduled
            && st
                .aw_last_flush
                .is_none_or(|t| now.duration_since(t) >= tick);
        if quiet {
            st.aw_last_flush = Some(now);
            if let Ok(update) = st.awareness.update_with_clients(changed) {
                self.shared
                    .send_all(&protocol::encode_awareness(&update), exclude);
            }
            return;
        }
        st.aw_dirty.extend(changed);
        if !st.aw_flush_scheduled {
            st.aw_flush_scheduled = true;
            let due = st.aw_last_flush.map_or(now, |t| t + tick);
            let room = Arc::clone(self);
            let flush = async move {
                tokio::time::sleep_until(due.into()).await;
                room.flush_awareness();
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(flush)),
                // Outside a runtime (a session dropped at teardown) nobody is left to tell.
                Err(_) => st.aw_flush_scheduled = false,
            }
        }
    }

    fn flush_awareness(&self) {
        let mut st = self.state.lock().unwrap();
        st.aw_flush_scheduled = false;
        st.aw_last_flush = Some(Instant::now());
        let dirty: Vec<ClientID> = st.aw_dirty.drain().collect();
        if dirty.is_empty() {
            return;
        }
        if let Ok(update) = st.awareness.update_with_clients(dirty) {
            // Coalesced changes come from many peers; echoing a peer its own state is
            // harmless (y-protocols ignores an equal clock), so everyone gets the same bytes.
            self.shared
                .send_all(&protocol::encode_awareness(&update), None);
        }
    }

    /// Runs `f` with read access to the document (for tests and, later, executions).
    pub fn with_doc<R>(&self, f: impl FnOnce(&Doc) -> R) -> R {
        f(self.state.lock().unwrap().awareness.doc())
    }
}

impl Shared {
    /// The room's single update observer: called inside the committing transaction.
    fn on_update(&self, origin: Option<&Origin>, update: &[u8]) {
        let msg = protocol::encode_sync_update(update);
        let body = msg.slice(msg.len() - update.len()..);
        let seq = self.last_seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.log_updates.fetch_add(1, Ordering::Relaxed);
        self.log_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        self.journal.append(self.name.clone(), seq, body);
        *self.full_state.lock().unwrap() = None;
        let exclude = origin.and_then(origin_peer);
        self.send_all(&msg, exclude);
    }

    /// Appends an update to the room's log. Callers hold the room's state lock (the observer
    /// runs inside a transaction), so sequence numbers follow the order of application.
    fn append(&self, update: Bytes) -> Ticket {
        let seq = self.last_seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.log_updates.fetch_add(1, Ordering::Relaxed);
        self.log_bytes
            .fetch_add(update.len() as u64, Ordering::Relaxed);
        self.journal.append(self.name.clone(), seq, update)
    }

    fn send_all(&self, msg: &Bytes, exclude: Option<u64>) {
        let peers = self.peers.lock().unwrap();
        for p in &peers.list {
            if Some(p.id()) != exclude {
                p.send(msg);
            }
        }
    }
}

/// Transactions applied for a peer carry its id (big-endian u64) as origin.
fn origin_peer(origin: &Origin) -> Option<u64> {
    let bytes: [u8; 8] = origin.as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn full_awareness(awareness: &Awareness) -> Option<Bytes> {
    let update = awareness.update().ok()?;
    if update.clients.is_empty() {
        return None;
    }
    Some(protocol::encode_awareness(&update))
}
