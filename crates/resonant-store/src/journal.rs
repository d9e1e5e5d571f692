//! Group commit: many rooms' appends and snapshots, one transaction per commit.
//!
//! Callers enqueue writes without waiting (the room's update observer is synchronous) and get
//! a [`Ticket`]; one writer task drains whatever queued up while the previous commit ran and
//! writes it as one batch. Commits start at most once per `min_commit_interval` (2 ms), so
//! the commit window is that interval plus one commit, and batches grow under load. Tickets are handed out in queue order and batches commit in that
//! order, so "committed through ticket N" means every write enqueued up to N is durable.
//!
//! Failures come in two kinds. A transient one (lost connection, timeout, busy database) is
//! retried with backoff, keeping the batch in memory: nothing is dropped while the process
//! lives, readiness reports the store as unhealthy meanwhile, and a retry of a batch whose
//! first attempt did commit is harmless (the batch keeps its id across retries, and the store
//! answers a retry of a batch that did commit with the seqs it got). A permanent one
//! (a conflicting log entry, data the database refuses) would fail forever and stall every
//! room behind it, so the batch is split by room: every other room commits, and the rooms
//! whose writes cannot commit are dropped from the batch and reported to the failure
//! handler, which closes and reloads them (their clients resync and re-send what was not
//! acknowledged).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::{BatchId, Snapshot, Store, StoreError, WriteOp};

/// Called with each room whose writes failed permanently and were dropped, before the batch
/// they were part of is reported committed.
pub type FailureHandler = Box<dyn Fn(&str, &StoreError) + Send + Sync>;

/// One append of a committed batch: its room, the seq the store gave it, and its bytes.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The room.
    pub room: Arc<str>,
    /// The sequence number the store assigned.
    pub seq: i64,
    /// The update bytes, as stored.
    pub data: Bytes,
}

/// Called with every append of each committed batch, in commit order, before the batch is
/// reported committed (so whatever it records is in place before any acknowledgement).
pub type CommitHandler = Box<dyn Fn(&[Committed]) + Send + Sync>;

/// Position of a write in the journal; committed tickets only ever grow.
pub type Ticket = u64;

/// Limits for the group-commit writer.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Most writes in one transaction.
    pub max_batch_ops: usize,
    /// Most payload bytes in one transaction (a single larger write still goes alone).
    pub max_batch_bytes: usize,
    /// Backlog size past which [`Journal::throttle`] makes writers wait.
    pub max_backlog_bytes: usize,
    /// Shortest time between the starts of two commits. Under load, writes arriving in the
    /// meantime share the next commit, which cuts per-update commit cost; when idle, a write
    /// is committed at once.
    pub min_commit_interval: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_batch_ops: 4096,
            max_batch_bytes: 16 << 20,
            max_backlog_bytes: 256 << 20,
            min_commit_interval: Duration::from_millis(2),
        }
    }
}

/// Handle to the group-commit writer; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Mutex<Queue>,
    wake_writer: Notify,
    committed: watch::Sender<Ticket>,
    healthy: AtomicBool,
    /// The writer task ended without being closed (it panicked): nothing commits any more.
    dead: AtomicBool,
    on_failure: OnceLock<FailureHandler>,
    on_commit: OnceLock<CommitHandler>,
    /// Payload bytes enqueued and not yet committed (read on every incoming message, so
    /// kept outside the queue's lock).
    backlog_bytes: AtomicUsize,
    /// When the oldest write of the batch being committed was enqueued (None when idle).
    in_flight_since: Mutex<Option<Instant>>,
    config: JournalConfig,
    backend: &'static str,
}

#[derive(Default)]
struct Queue {
    /// Each write with its ticket and when it was enqueued.
    ops: VecDeque<(Ticket, Instant, WriteOp)>,
    last_ticket: Ticket,
    closed: bool,
}

impl Journal {
    /// Starts the writer task for `store`. The task ends after [`Journal::close`] once the
    /// queue is drained.
    pub fn start(store: Arc<dyn Store>, config: JournalConfig) -> (Journal, JoinHandle<()>) {
        let (committed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake_writer: Notify::new(),
            committed,
            healthy: AtomicBool::new(true),
            dead: AtomicBool::new(false),
            on_failure: OnceLock::new(),
            on_commit: OnceLock::new(),
            backlog_bytes: AtomicUsize::new(0),
            in_flight_since: Mutex::new(None),
            config,
            backend: store.backend(),
        });
        let watched = inner.clone();
        let task = tokio::spawn(async move {
            let run = std::panic::AssertUnwindSafe(writer(watched.clone(), store));
            if run.catch_unwind().await.is_err() {
                watched.dead.store(true, Ordering::Relaxed);
                watched.healthy.store(false, Ordering::Relaxed);
                tracing::error!(
                    "the store writer task panicked: nothing will be committed any more; \
                     readiness reports 503"
                );
            }
        });
        (Journal { inner }, task)
    }

    /// Sets what happens to rooms whose writes fail permanently (only the first call counts).
    pub fn set_failure_handler(&self, handler: FailureHandler) {
        let _ = self.inner.on_failure.set(handler);
    }

    /// Sets what is told of every committed append (only the first call counts).
    pub fn set_commit_handler(&self, handler: CommitHandler) {
        let _ = self.inner.on_commit.set(handler);
    }

    /// Enqueues one update for `room`; the store numbers it when it commits.
    pub fn append(&self, room: Arc<str>, data: Bytes) -> Ticket {
        self.push(WriteOp::Append { room, data })
    }

    /// Enqueues a snapshot that replaces the log up to `snapshot.up_to_seq`.
    pub fn snapshot(&self, snapshot: Snapshot) -> Ticket {
        self.push(WriteOp::Snapshot(snapshot))
    }

    fn push(&self, op: WriteOp) -> Ticket {
        let len = op.payload_len();
        let ticket = {
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.last_ticket += 1;
            let t = q.last_ticket;
            q.ops.push_back((t, Instant::now(), op));
            // Counted under the lock, before the writer can take (and subtract) the op.
            self.inner.backlog_bytes.fetch_add(len, Ordering::Relaxed);
            t
        };
        self.inner.wake_writer.notify_one();
        ticket
    }

    /// The newest ticket handed out; waiting for it covers everything enqueued so far.
    pub fn last_ticket(&self) -> Ticket {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_ticket
    }

    /// The newest committed ticket.
    pub fn committed(&self) -> Ticket {
        *self.inner.committed.borrow()
    }

    /// A receiver that changes whenever a batch commits (its value: the last committed ticket).
    pub fn subscribe(&self) -> watch::Receiver<Ticket> {
        self.inner.committed.subscribe()
    }

    /// Waits until `ticket` is committed.
    pub async fn wait(&self, ticket: Ticket) {
        let mut rx = self.inner.committed.subscribe();
        // The sender lives in `inner`, which we hold, so this cannot fail.
        let _ = rx.wait_for(|c| *c >= ticket).await;
    }

    /// Waits until everything enqueued before this call is committed.
    pub async fn flush(&self) {
        self.wait(self.last_ticket()).await
    }

    /// Bytes enqueued but not yet committed.
    pub fn backlog_bytes(&self) -> usize {
        self.inner.backlog_bytes.load(Ordering::Relaxed)
    }

    /// Whether the backlog is over its limit (writers should wait in [`Journal::throttle`]).
    pub fn is_throttling(&self) -> bool {
        self.backlog_bytes() > self.inner.config.max_backlog_bytes
    }

    /// Waits while the backlog is over its limit, so a store that falls behind slows writers
    /// down instead of growing memory without bound.
    pub async fn throttle(&self) {
        if !self.is_throttling() {
            return;
        }
        let mut rx = self.inner.committed.subscribe();
        while self.backlog_bytes() > self.inner.config.max_backlog_bytes {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// How long the oldest write not yet committed (so not yet acknowledged) has waited;
    /// zero when everything is committed. Readiness fails when this grows past a few
    /// seconds: commits are stuck even if each attempt looks fine.
    pub fn oldest_unacknowledged(&self) -> Duration {
        let in_flight = *self
            .inner
            .in_flight_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let since = in_flight.or_else(|| {
            let q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.ops.front().map(|(_, at, _)| *at)
        });
        since.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Whether the last commit attempt succeeded and the writer is alive.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed) && !self.is_dead()
    }

    /// Whether the writer task died (panicked); a dead journal never commits again.
    pub fn is_dead(&self) -> bool {
        self.inner.dead.load(Ordering::Relaxed)
    }

    /// Asks the writer to finish once the queue is empty.
    pub fn close(&self) {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.inner.wake_writer.notify_one();
    }
}

async fn writer(inner: Arc<Inner>, store: Arc<dyn Store>) {
    let commit_seconds =
        metrics::histogram!("resonant_store_commit_seconds", "backend" => inner.backend);
    let batch_ops = metrics::histogram!("resonant_store_batch_ops", "backend" => inner.backend);
    let commit_errors =
        metrics::counter!("resonant_store_commit_errors_total", "backend" => inner.backend);
    let backlog_gauge = metrics::gauge!("resonant_store_backlog_bytes");
    let mut ops: Vec<WriteOp> = Vec::new();
    let mut last_start: Option<tokio::time::Instant> = None;
    let mut done: Vec<Committed> = Vec::new();
    loop {
        if let Some(due) = last_start.map(|t| t + inner.config.min_commit_interval) {
            if due > tokio::time::Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        let (last, bytes) = match take_batch(&inner, &mut ops) {
            Batch::Ready { last, bytes } => (last, bytes),
            Batch::Empty => {
                inner.wake_writer.notified().await;
                continue;
            }
            Batch::Closed => return,
        };
        last_start = Some(tokio::time::Instant::now());
        let started = Instant::now();
        if ops.iter().any(|op| matches!(op, WriteOp::Append { .. })) {
            resonant_failpoint::hit("journal.before-commit").await;
        }
        let failed = match commit(&inner, &*store, next_batch_id(), &ops, &commit_errors).await {
            Ok(seqs) => {
                collect_appends(&ops, &seqs, &mut done);
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, ops = ops.len(), "batch cannot commit; committing room by room");
                commit_by_room(&inner, &*store, &ops, &commit_errors, &mut done).await
            }
        };
        commit_seconds.record(started.elapsed().as_secs_f64());
        batch_ops.record(ops.len() as f64);
        inner.healthy.store(true, Ordering::Relaxed);
        // Before `committed` moves: the failed rooms' connections must be closed before any
        // acknowledgement covering their dropped writes can be sent.
        for (room, error) in &failed {
            if let Some(handler) = inner.on_failure.get() {
                handler(room, error);
            }
        }
        if let Some(handler) = inner.on_commit.get() {
            if !done.is_empty() {
                handler(&done);
            }
        }
        done.clear();
        ops.clear();
        *inner
            .in_flight_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let backlog = inner
            .backlog_bytes
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        backlog_gauge.set(backlog as f64);
        inner.committed.send_replace(last);
    }
}

/// A batch id no other batch of this process has: a store shared by several journals (tests
/// that restart a journal over the same store) must not take one journal's batch for a retry
/// of another's.
fn next_batch_id() -> BatchId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The appends of a committed batch with the seqs the store gave them.
fn collect_appends(ops: &[WriteOp], seqs: &[Option<i64>], into: &mut Vec<Committed>) {
    for (op, seq) in ops.iter().zip(seqs) {
        if let (WriteOp::Append { room, data }, Some(seq)) = (op, seq) {
            into.push(Committed {
                room: room.clone(),
                seq: *seq,
                data: data.clone(),
            });
        }
    }
}

/// Writes `ops` in one transaction, retrying transient failures with backoff (under the same
/// batch id, so a store can recognise a retry of a batch that did commit) until it commits;
/// returns the seqs per op, or the first permanent failure.
async fn commit(
    inner: &Inner,
    store: &dyn Store,
    batch: BatchId,
    ops: &[WriteOp],
    errors: &metrics::Counter,
) -> Result<Vec<Option<i64>>, StoreError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.write_batch(batch, ops).await {
            Ok(seqs) => return Ok(seqs),
            Err(e) => {
                errors.increment(1);
                inner.healthy.store(false, Ordering::Relaxed);
                if !e.is_transient() {
                    return Err(e);
                }
                tracing::error!(error = %e, ops = ops.len(), retry_in = ?backoff, "store commit failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// After a permanent failure: commits each room's writes on their own (in their order), so
/// one room's bad write cannot hold back the others. Returns the rooms that failed.
async fn commit_by_room(
    inner: &Inner,
    store: &dyn Store,
    ops: &[WriteOp],
    errors: &metrics::Counter,
    done: &mut Vec<Committed>,
) -> Vec<(Arc<str>, StoreError)> {
    let mut groups: Vec<(Arc<str>, Vec<WriteOp>)> = Vec::new();
    for op in ops {
        let room = op.room();
        match groups.iter_mut().find(|(r, _)| r == room) {
            Some((_, group)) => group.push(op.clone()),
            None => groups.push((room.clone(), vec![op.clone()])),
        }
    }
    let mut failed = Vec::new();
    for (room, group) in groups {
        match commit(inner, store, next_batch_id(), &group, errors).await {
            Ok(seqs) => collect_appends(&group, &seqs, done),
            Err(e) => {
                tracing::error!(room = %room, error = %e, ops = group.len(), "room's writes cannot commit; dropping them and reloading the room");
                metrics::counter!("resonant_store_room_failures_total").increment(1);
                failed.push((room, e));
            }
        }
    }
    failed
}

enum Batch {
    Ready { last: Ticket, bytes: usize },
    Empty,
    Closed,
}

/// Moves the next batch from the queue into `ops`.
fn take_batch(inner: &Inner, ops: &mut Vec<WriteOp>) -> Batch {
    let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
    if q.ops.is_empty() {
        return if q.closed {
            Batch::Closed
        } else {
            Batch::Empty
        };
    }
    let mut bytes = 0;
    let mut last = 0;
    if let Some((_, at, _)) = q.ops.front() {
        // Set under the queue's lock, so a reader never sees neither the queue's front nor
        // the batch's start.
        *inner
            .in_flight_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(*at);
    }
    while let Some((ticket, _, op)) = q.ops.front() {
        let len = op.payload_len();
        if !ops.is_empty()
            && (ops.len() >= inner.config.max_batch_ops
                || bytes + len > inner.config.max_batch_bytes)
        {
            break;
        }
        last = *ticket;
        bytes += len;
        let (_, _, op) = q.ops.pop_front().expect("front exists");
        ops.push(op);
    }
    Batch::Ready { last, bytes }
}
