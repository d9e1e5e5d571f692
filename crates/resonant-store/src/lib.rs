//! Durable storage for Resonant.
//!
//! The [`Store`] trait hides the backend (SQLite in a data directory by default, Postgres in
//! production); [`Journal`] sits in front of it and turns many small appends from many rooms
//! into one transaction per commit (group commit). This crate knows nothing about Yjs: it
//! stores opaque update and snapshot bytes per room, ordered by a per-room sequence number.

#![warn(missing_docs)]

pub mod fault;
mod journal;
mod memory;
mod postgres;
mod sqlite;
mod sqlite_writer;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use journal::{CommitHandler, Committed, FailureHandler, Journal, JournalConfig, Ticket};
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, SqliteSync};

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database rejected a query or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory that could not be created.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A room's write was refused for good (the fault store's poisoned room; data the
    /// database will never take). Retrying cannot help; the room must be reloaded.
    #[error("room {room} refused log entry {seq}")]
    Conflict {
        /// The room.
        room: String,
        /// The sequence number.
        seq: i64,
    },
    /// The room's workflow was deleted: its log takes nothing more.
    #[error("room {0} was deleted")]
    RoomDeleted(String),
    /// Another server process holds this database (see [`PostgresStore::lock_exclusive`]).
    #[error("another resonant process is already serving this database ({0}); two processes must not serve the same rooms until scale-out exists")]
    Locked(String),
    /// This process lost its single-process lock on the database (its session ended, as when
    /// Postgres restarts), so another process may be serving the same rooms: every write is
    /// refused (and kept, unacknowledged) until the process is restarted.
    #[error("store fenced, refusing writes: {0}; restart this process")]
    Fenced(String),
    /// The database URL names a backend we do not support.
    #[error("unsupported database URL (expected postgres://…, sqlite:… or memory:): {0}")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// Whether retrying the same write may succeed: lost connections, timeouts, lock and
    /// serialization failures, a full disk. Everything else (constraint violations, conflicts,
    /// undecodable data) fails again however often it is retried.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_code(&c)),
                _ => false,
            },
            // Kept in the journal and retried, never dropped or acknowledged: the writes stay
            // in memory until the process is restarted.
            StoreError::DataDir { .. } | StoreError::Fenced(_) => true,
            StoreError::Migrate(_)
            | StoreError::Conflict { .. }
            | StoreError::RoomDeleted(_)
            | StoreError::Locked(_)
            | StoreError::UnsupportedUrl(_) => false,
        }
    }
}

/// Database error codes worth retrying. Postgres SQLSTATE classes: 08 connection, 40
/// transaction rollback (serialization failure, deadlock), 53 insufficient resources, 57
/// operator intervention (server shutting down), 58 system error, and 55P03 lock not
/// available. SQLite (numeric, extended): BUSY, LOCKED, IOERR, FULL, CANTOPEN.
fn transient_code(code: &str) -> bool {
    if let Ok(n) = code.parse::<u32>() {
        return matches!(n & 0xff, 5 | 6 | 10 | 13 | 14);
    }
    ["08", "40", "53", "57", "58"]
        .iter()
        .any(|c| code.starts_with(c))
        || code == "55P03"
}

/// What the store holds for one room: the latest snapshot and the log written after it.
#[derive(Debug, Default, Clone)]
pub struct StoredDoc {
    /// The highest sequence number the room's log has used, read in the same view as the
    /// rest: every seq up to it is in `snapshot` or `updates`.
    pub head_seq: i64,
    /// The compacted state (a Yjs v1 update), if the room was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// The sequence number of the last update the snapshot includes (0 when there is none).
    pub snapshot_seq: i64,
    /// Updates appended after the snapshot, in sequence order.
    pub updates: Vec<(i64, Vec<u8>)>,
}

impl StoredDoc {
    /// The highest sequence number this room has used so far.
    pub fn last_seq(&self) -> i64 {
        self.updates
            .last()
            .map(|(seq, _)| *seq)
            .unwrap_or(self.snapshot_seq)
            .max(self.snapshot_seq)
            .max(self.head_seq)
    }
}

/// Where a room's log stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The highest seq it has used.
    pub seq: i64,
    /// Its workflow was deleted: it takes no more appends.
    pub deleted: bool,
}

/// What a room's log holds after a given seq, for a copy of the room that has applied every
/// seq up to it (another node's updates it missed).
#[derive(Debug, Default, Clone)]
pub struct Tail {
    /// The room's head when read: with what is returned, the copy has every seq up to it.
    pub head_seq: i64,
    /// The snapshot and the seq it covers, when compaction removed rows past `after`: applied
    /// in place (a full state merges into a document holding part of it).
    pub snapshot: Option<(i64, Vec<u8>)>,
    /// The rows after `after` (and after the snapshot, when there is one), in seq order.
    pub updates: Vec<(i64, Vec<u8>)>,
}

/// A snapshot of a room: its full state, covering updates up to `up_to_seq`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The room the snapshot belongs to.
    pub room: Arc<str>,
    /// The full document state as a Yjs v1 update.
    pub state: Bytes,
    /// Every update with a sequence number up to this one is contained in `state`. `None`:
    /// every update the room's log holds where the snapshot stands in its batch — true only
    /// when this process is the room's one writer (a single node), since the log then holds
    /// nothing the state has not applied.
    pub up_to_seq: Option<i64>,
}

/// Identifies a group-commit batch across its retries, so a store can tell a retry of a
/// batch whose first attempt did commit (its reply was lost) from a new batch.
pub type BatchId = u64;

/// One write in a group-commit batch.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Append one update to a room's log. The store gives it the room's next sequence number
    /// when the batch commits: seqs are gapless per room and commit in seq order, whichever
    /// process wrote them.
    Append {
        /// The room.
        room: Arc<str>,
        /// The update bytes (Yjs v1).
        data: Bytes,
    },
    /// Replace a room's snapshot and drop the log entries it covers.
    Snapshot(Snapshot),
}

impl WriteOp {
    /// The room this op writes to.
    pub fn room(&self) -> &Arc<str> {
        match self {
            WriteOp::Append { room, .. } => room,
            WriteOp::Snapshot(s) => &s.room,
        }
    }

    /// Bytes this op carries, for batch sizing and metrics.
    pub fn payload_len(&self) -> usize {
        match self {
            WriteOp::Append { data, .. } => data.len(),
            WriteOp::Snapshot(s) => s.state.len(),
        }
    }
}

/// A storage backend for room documents. Implementations must apply a whole batch in one
/// transaction: either every op of it is durable or none is; and applying a batch that
/// already committed again must change nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads a room's snapshot and the log tail after it, both from one consistent view of the
    /// database (a snapshot committed between the two reads must not hide the tail).
    async fn load(&self, room: &str) -> Result<StoredDoc, StoreError>;
    /// What the room's log holds after seq `after`, read in one consistent view.
    async fn read_since(&self, room: &str, after: i64) -> Result<Tail, StoreError> {
        let doc = self.load(room).await?;
        let head_seq = doc.last_seq();
        let snapshot = doc
            .snapshot
            .filter(|_| doc.snapshot_seq > after)
            .map(|s| (doc.snapshot_seq, s));
        let from = after.max(snapshot.as_ref().map_or(0, |(seq, _)| *seq));
        Ok(Tail {
            head_seq,
            snapshot,
            updates: doc.updates.into_iter().filter(|(s, _)| *s > from).collect(),
        })
    }
    /// The head of each of `rooms` (seq 0 for a room with no log), in their order.
    async fn heads(&self, rooms: &[Arc<str>]) -> Result<Vec<Head>, StoreError> {
        let mut heads = Vec::with_capacity(rooms.len());
        for room in rooms {
            heads.push(Head {
                seq: self.load(room).await?.last_seq(),
                deleted: false,
            });
        }
        Ok(heads)
    }
    /// Applies a batch of writes atomically, in order; returns, per op, the sequence number
    /// an append got (`None` for snapshots). Called again with the same `batch` after an
    /// error, it must not write the batch twice: a first attempt that did commit (its reply
    /// was lost) is answered with the seqs it got.
    async fn write_batch(
        &self,
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError>;
    /// Claims the database for this process until it exits, so that a second server pointed
    /// at the same data cannot serve (and corrupt) the same rooms. Waits up to `wait` for a
    /// previous process that is still going away; then fails with [`StoreError::Locked`].
    async fn lock_exclusive(&self, wait: std::time::Duration) -> Result<(), StoreError> {
        let _ = wait;
        Ok(())
    }
    /// Like [`Store::lock_exclusive`], for a node of a cluster: any number of cluster nodes
    /// hold it together, while a single-node process (which asks for the exclusive lock) is
    /// kept out, and keeps them out. Backends that cannot be shared take it exclusively.
    async fn lock_shared(&self, wait: std::time::Duration) -> Result<(), StoreError> {
        self.lock_exclusive(wait).await
    }
    /// Checks that the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), StoreError>;
    /// The backend's name, for logs.
    fn backend(&self) -> &'static str;
    /// The relational database behind this store (users, workspaces, workflows…), if any.
    fn db(&self) -> Option<Db> {
        None
    }
    /// Test hook for [`fault::FaultStore`]: makes the next write transaction run into a full
    /// disk the way the real database would. Returns false when the backend cannot simulate
    /// it (the fault store then fails the write itself, writing nothing).
    #[doc(hidden)]
    fn inject_full_disk(&self, _at: fault::FullAt) -> bool {
        false
    }
    /// Removes every update and snapshot of `room` (its workflow was deleted). The caller
    /// has closed the room and flushed the journal first, so nothing re-creates the rows.
    async fn delete_room(&self, room: &str) -> Result<(), StoreError>;
}

/// A handle on the relational tables, on either backend: the same SQL (written to run on
/// both, with `$n` placeholders) is sent through whichever pool this is.
#[derive(Clone, Debug)]
pub enum Db {
    /// The embedded SQLite database.
    Sqlite(sqlx::SqlitePool),
    /// A Postgres database.
    Postgres(sqlx::PgPool),
}

impl Db {
    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }
}

/// Opens the store a server is configured for: Postgres when `database_url` is a
/// `postgres://` URL, nothing durable for `memory:` (benchmarks only), otherwise SQLite
/// (`sqlite:` URL, or `resonant.db` in `data_dir`).
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    sqlite_sync: SqliteSync,
) -> Result<Arc<dyn Store>, StoreError> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PostgresStore::connect(url).await?))
        }
        Some(url) if url.starts_with("sqlite:") => {
            Ok(Arc::new(SqliteStore::open_url(url, sqlite_sync).await?))
        }
        Some("memory:") => {
            tracing::warn!("memory: store — nothing is persisted; for benchmarks only");
            Ok(Arc::new(MemoryStore::default()))
        }
        Some(url) => Err(StoreError::UnsupportedUrl(url.to_string())),
        None => Ok(Arc::new(
            SqliteStore::open_dir(data_dir, sqlite_sync).await?,
        )),
    }
}

/// The outcome of the last batch this store committed, so that a retry of it (its success
/// reply was lost on the way to the journal) is answered with the seqs it got instead of
/// being written a second time under new seqs.
#[derive(Default)]
pub(crate) struct LastCommit(std::sync::Mutex<Option<(BatchId, Vec<Option<i64>>)>>);

impl LastCommit {
    pub(crate) fn get(&self, batch: BatchId) -> Option<Vec<Option<i64>>> {
        match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((b, seqs)) if *b == batch => Some(seqs.clone()),
            _ => None,
        }
    }

    pub(crate) fn set(&self, batch: BatchId, seqs: &[Option<i64>]) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((batch, seqs.to_vec()));
    }
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
