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

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use journal::{FailureHandler, Journal, JournalConfig, Ticket};
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
    /// An append reused a sequence number the room's log already holds with different bytes
    /// (another writer served the room). Retrying cannot help; the room must be reloaded.
    #[error("room {room} already has a different log entry {seq}")]
    Conflict {
        /// The room.
        room: String,
        /// The sequence number.
        seq: i64,
    },
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
    }
}

/// A snapshot of a room: its full state, covering updates up to `up_to_seq`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The room the snapshot belongs to.
    pub room: Arc<str>,
    /// The full document state as a Yjs v1 update.
    pub state: Bytes,
    /// Every update with a sequence number up to this one is contained in `state`.
    pub up_to_seq: i64,
}

/// One write in a group-commit batch.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Append one update to a room's log. Appending the same bytes at the same sequence
    /// number again is a no-op (a retried commit whose first attempt did succeed); different
    /// bytes fail with [`StoreError::Conflict`].
    Append {
        /// The room.
        room: Arc<str>,
        /// Its per-room sequence number.
        seq: i64,
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
    /// Applies a batch of writes atomically, in order.
    async fn write_batch(&self, ops: &[WriteOp]) -> Result<(), StoreError>;
    /// Claims the database for this process until it exits, so that a second server pointed
    /// at the same data cannot serve (and corrupt) the same rooms. Waits up to `wait` for a
    /// previous process that is still going away; then fails with [`StoreError::Locked`].
    async fn lock_exclusive(&self, wait: std::time::Duration) -> Result<(), StoreError> {
        let _ = wait;
        Ok(())
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

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
