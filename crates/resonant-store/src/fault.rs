//! A fault-injecting [`Store`] wrapper for tests: transient errors, permanent failures for
//! chosen rooms, commits that succeed but report failure, slow commits and panics. Not for
//! production use; it exists so the journal's and the rooms' failure handling can be tested
//! against the real backends.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::{Store, StoreError, StoredDoc, WriteOp};

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

    async fn write_batch(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let poisoned = {
            let rooms = self.poisoned_rooms.lock().unwrap();
            ops.iter()
                .find(|op| rooms.contains(&**op.room()))
                .map(|op| {
                    let seq = match op {
                        WriteOp::Append { seq, .. } => *seq,
                        WriteOp::Snapshot(s) => s.up_to_seq,
                    };
                    (op.room().to_string(), seq)
                })
        };
        if let Some((room, seq)) = poisoned {
            return Err(StoreError::Conflict { room, seq });
        }
        let fault = self.script.lock().unwrap().pop_front();
        match fault {
            None => self.inner.write_batch(ops).await,
            Some(Fault::Transient) => Err(lost_connection()),
            Some(Fault::CommitThenFail) => {
                self.inner.write_batch(ops).await?;
                Err(lost_connection())
            }
            Some(Fault::Slow(d)) => {
                tokio::time::sleep(d).await;
                self.inner.write_batch(ops).await
            }
            Some(Fault::Panic) => panic!("injected store panic"),
        }
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
