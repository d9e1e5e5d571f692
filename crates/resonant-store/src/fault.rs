//! A fault-injecting [`Store`] wrapper for tests: transient errors, permanent failures for
//! chosen rooms, commits that succeed but report failure, slow commits, panics and a full
//! disk. Not for
//! production use; it exists so the journal's and the rooms' failure handling can be tested
//! against the real backends.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::{BatchId, Store, StoreError, StoredDoc, WriteOp};

/// One fault, applied to the next `write_batch` call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Fail without writing, with an error worth retrying (a lost connection).
    Transient,
    /// Write the batch, then report a transient failure (a COMMIT whose reply was lost).
    CommitThenFail,
    /// Wait this long, then write.
    Slow(Duration),
    /// Panic inside the store call.
    Panic,
    /// The transaction's `COMMIT` fails with SQLITE_FULL and the database rolls the
    /// transaction back by itself (what SQLite does when the disk fills during a commit).
    CommitFull,
    /// A write statement inside the transaction fails with SQLITE_FULL; the transaction stays
    /// open (only the statement is undone), as SQLite does when a statement's pages spill.
    WriteFull,
}

/// Where a simulated full disk strikes inside a write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullAt {
    /// At `COMMIT`, which fails and rolls the whole transaction back.
    Commit,
    /// At a write statement, which fails; the transaction stays open.
    Write,
}

/// An SQLITE_FULL error (extended code 13), as the SQLite driver reports it.
pub fn full_disk_error() -> StoreError {
    crate::sqlite_writer::SqliteError::store_error("database or disk is full (injected)", Some(13))
}

/// Wraps a store and injects [`Fault`]s into its writes.
pub struct FaultStore {
    inner: Arc<dyn Store>,
    script: Mutex<VecDeque<Fault>>,
    poisoned_rooms: Mutex<HashSet<String>>,
    writes: AtomicUsize,
    load_delay: Mutex<Duration>,
}

impl FaultStore {
    /// Wraps `inner` with no faults scheduled.
    pub fn new(inner: Arc<dyn Store>) -> Arc<FaultStore> {
        Arc::new(FaultStore {
            inner,
            script: Mutex::new(VecDeque::new()),
            poisoned_rooms: Mutex::new(HashSet::new()),
            writes: AtomicUsize::new(0),
            load_delay: Mutex::new(Duration::ZERO),
        })
    }

    /// The wrapped store (to read or write behind the journal's back).
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// Schedules faults for the next write calls, in order.
    pub fn push(&self, faults: impl IntoIterator<Item = Fault>) {
        self.script.lock().unwrap().extend(faults);
    }

    /// Makes every batch that writes to `room` fail permanently until [`FaultStore::heal`].
    pub fn poison_room(&self, room: &str) {
        self.poisoned_rooms.lock().unwrap().insert(room.to_string());
    }

    /// Stops failing writes to `room`.
    pub fn heal(&self, room: &str) {
        self.poisoned_rooms.lock().unwrap().remove(room);
    }

    /// Makes every room load take at least `delay` (to catch events during a load).
    pub fn slow_loads(&self, delay: Duration) {
        *self.load_delay.lock().unwrap() = delay;
    }

    /// How many `write_batch` calls were made so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::Relaxed)
    }
}

impl FaultStore {
    async fn full_disk(
        &self,
        at: FullAt,
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        if self.inner.inject_full_disk(at) {
            self.inner.write_batch(batch, ops).await
        } else {
            Err(full_disk_error())
        }
    }
}

fn lost_connection() -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "injected: connection reset",
    )))
}

#[async_trait]
impl Store for FaultStore {
    async fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        let delay = *self.load_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.inner.load(room).await
    }

    async fn write_batch(
        &self,
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let poisoned = {
            let rooms = self.poisoned_rooms.lock().unwrap();
            ops.iter()
                .position(|op| rooms.contains(&**op.room()))
                .map(|i| (ops[i].room().to_string(), i as i64))
        };
        if let Some((room, seq)) = poisoned {
            return Err(StoreError::Conflict { room, seq });
        }
        let fault = self.script.lock().unwrap().pop_front();
        match fault {
            None => self.inner.write_batch(batch, ops).await,
            Some(Fault::Transient) => Err(lost_connection()),
            Some(Fault::CommitThenFail) => {
                self.inner.write_batch(batch, ops).await?;
                Err(lost_connection())
            }
            Some(Fault::Slow(d)) => {
                tokio::time::sleep(d).await;
                self.inner.write_batch(batch, ops).await
            }
            Some(Fault::Panic) => panic!("injected store panic"),
            Some(Fault::CommitFull) => self.full_disk(FullAt::Commit, batch, ops).await,
            Some(Fault::WriteFull) => self.full_disk(FullAt::Write, batch, ops).await,
        }
    }

    async fn read_since(&self, room: &str, after: i64) -> Result<crate::Tail, StoreError> {
        self.inner.read_since(room, after).await
    }

    async fn heads(&self, rooms: &[Arc<str>]) -> Result<Vec<crate::Head>, StoreError> {
        self.inner.heads(rooms).await
    }

    async fn lock_exclusive(&self, wait: Duration) -> Result<(), StoreError> {
        self.inner.lock_exclusive(wait).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn db(&self) -> Option<crate::Db> {
        self.inner.db()
    }

    async fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        self.inner.delete_room(room).await
    }
}
