//! The embedded default backend: one SQLite file in the data directory, in WAL mode.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};

use crate::fault::FullAt;
use crate::sqlite_writer::Writer;
use crate::{BatchId, Store, StoreError, StoredDoc, WriteOp};

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    /// fsync the WAL on every commit: survives power loss (the default).
    #[default]
    Full,
    /// fsync only at checkpoints: survives a process crash, not a power cut.
    Normal,
}

/// Connections for the log's reads: its writes go through the writer thread's own
/// connection, so a few are enough for concurrent room loads.
const DEFAULT_POOL_SIZE: u32 = 8;

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    /// Reads of the document log.
    pool: SqlitePool,
    /// The application's tables (workspaces, executions, events...): one connection, so
    /// their write transactions take SQLite's write lock in the order they asked for it.
    /// With several, the losers wait in SQLite's busy handler, which retries by sleeping up
    /// to 100 ms a try and lets a writer that commits and begins again at once go first: a
    /// run's event commits behind a 10,000-iteration loop took up to 2.7 s. sqlx's pool
    /// hands its connection out first come, first served.
    app: SqlitePool,
    /// The database file.
    path: PathBuf,
    /// The open lock file while this process holds the database (see `lock_exclusive`).
    lock: Arc<Mutex<Option<std::fs::File>>>,
    /// A simulated full disk for the next write transaction (see [`Store::inject_full_disk`]).
    full_disk: Arc<Mutex<Option<FullAt>>>,
    /// The thread that runs every write transaction (see `sqlite_writer`).
    writer: Arc<Writer>,
}

impl SqliteStore {
    /// Opens (creating if needed) `resonant.db` inside `dir` and applies migrations.
    pub async fn open_dir(dir: &Path, sync: SqliteSync) -> Result<Self, StoreError> {
        Self::open_dir_with_pool(dir, sync, DEFAULT_POOL_SIZE).await
    }

    /// [`SqliteStore::open_dir`] with at most `max_connections` pooled connections (the
    /// writer thread's connection comes on top).
    pub async fn open_dir_with_pool(
        dir: &Path,
        sync: SqliteSync,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let opts = SqliteConnectOptions::new().filename(dir.join("resonant.db"));
        Self::open_with(opts, sync, max_connections).await
    }

    /// Opens a `sqlite:` URL and applies migrations.
    pub async fn open_url(url: &str, sync: SqliteSync) -> Result<Self, StoreError> {
        // The writer thread opens the same file a second time; an in-memory database would
        // be a different, empty one for it.
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::UnsupportedUrl(format!(
                "{url}: an in-memory SQLite database (use `memory:` for a store that keeps \
                 nothing)"
            )));
        }
        Self::open_with(
            SqliteConnectOptions::from_str(url)?,
            sync,
            DEFAULT_POOL_SIZE,
        )
        .await
    }

    async fn open_with(
        opts: SqliteConnectOptions,
        sync: SqliteSync,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let path = opts.get_filename().to_path_buf();
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SqliteSync::Full => SqliteSynchronous::Full,
                SqliteSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10));
        let pool = checked_pool(max_connections)
            .connect_with(opts.clone())
            .await?;
        let app = checked_pool(1).connect_with(opts).await?;
        // The application's tables share this database and its migration history but are
        // migrated by resonant-db (0003 onwards): their versions are not missing, just not ours.
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let full_disk: Arc<Mutex<Option<FullAt>>> = Arc::default();
        let writer = Writer::start(path.clone(), sync, full_disk.clone())?;
        Ok(SqliteStore {
            pool,
            app,
            path,
            lock: Arc::default(),
            full_disk,
            writer: Arc::new(writer),
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        // One read transaction: in WAL mode it sees one snapshot of the database from its
        // first read on, so a compaction committing between the two reads cannot hide updates.
        let mut conn = self.pool.begin().await?;
        let snap = sqlx::query("SELECT state, up_to_seq FROM doc_snapshots WHERE room = ?")
            .bind(room)
            .fetch_optional(&mut *conn)
            .await?;
        let (snapshot, snapshot_seq) = match snap {
            Some(row) => (
                Some(row.try_get::<Vec<u8>, _>(0)?),
                row.try_get::<i64, _>(1)?,
            ),
            None => (None, 0),
        };
        let rows = sqlx::query(
            "SELECT seq, data FROM doc_updates WHERE room = ? AND seq > ? ORDER BY seq",
        )
        .bind(room)
        .bind(snapshot_seq)
        .fetch_all(&mut *conn)
        .await?;
        let updates = rows
            .into_iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let head_seq = read_head(&mut conn, room).await?;
        conn.commit().await?;
        Ok(StoredDoc {
            head_seq,
            snapshot,
            snapshot_seq,
            updates,
        })
    }

    async fn write_batch(
        &self,
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        self.writer.write_batch(batch, ops.to_vec()).await
    }

    async fn lock_exclusive(&self, wait: Duration) -> Result<(), StoreError> {
        let path = &self.path;
        if self.lock.lock().unwrap().is_some() {
            return Ok(());
        }
        // SQLite's own locks are per transaction; an advisory lock on a file beside the
        // database, held for the process's life, keeps a second server out.
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::DataDir {
                path: lock_path.display().to_string(),
                source,
            })?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => {
                    *self.lock.lock().unwrap() = Some(file);
                    return Ok(());
                }
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked(format!(
                        "SQLite database {}",
                        path.display()
                    )))
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(StoreError::DataDir {
                        path: lock_path.display().to_string(),
                        source,
                    })
                }
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn inject_full_disk(&self, at: FullAt) -> bool {
        *self.full_disk.lock().unwrap() = Some(at);
        true
    }

    fn db(&self) -> Option<crate::Db> {
        Some(crate::Db::Sqlite(self.app.clone()))
    }

    async fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        self.writer.delete_room(room).await
    }
}

/// Whether SQLite (autocommit off) or sqlx (its transaction depth) thinks `conn` is inside a
/// transaction. Either means the connection must not be reused.
/// A pool whose connections are checked as they come back: one still inside a transaction,
/// as SQLite or sqlx sees it, is closed rather than reused. After a COMMIT that failed and
/// rolled back by itself (a full disk), sqlx-sqlite 0.8 still counts the transaction as open,
/// and the connection's next `begin` would send `SAVEPOINT`, nesting every later transaction
/// in one that never commits (docs/upstream/).
fn checked_pool(max_connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .after_release(|conn, _| Box::pin(async move { Ok(!in_transaction(conn).await?) }))
}

async fn in_transaction(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let autocommit = {
        let mut handle = conn.lock_handle().await?;
        // SAFETY: the handle is locked for us, so no other thread uses the sqlite3 pointer
        // meanwhile; sqlite3_get_autocommit only reads a flag.
        unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) }
    };
    // After the lock, which queued behind any rollback the worker still had to run.
    Ok(autocommit == 0 || conn.is_in_transaction())
}

/// A room's head as the database has it: the highest of its last stored update, its
/// snapshot's seq and its `rooms` row (which databases written before heads were kept in
/// memory carry, and which a test may mark deleted).
async fn read_head(conn: &mut SqliteConnection, room: &str) -> Result<i64, StoreError> {
    let (seq, _deleted): (i64, bool) = sqlx::query_as(READ_HEAD_SQL)
        .bind(room)
        .fetch_one(&mut *conn)
        .await?;
    Ok(seq)
}

/// The query behind [`read_head`], shared with the writer thread: the head seq, and whether
/// the room was marked deleted.
pub(crate) const READ_HEAD_SQL: &str =
    "SELECT MAX(COALESCE((SELECT MAX(seq) FROM doc_updates WHERE room = ?1), 0),
                COALESCE((SELECT up_to_seq FROM doc_snapshots WHERE room = ?1), 0),
                COALESCE((SELECT head_seq FROM rooms WHERE room = ?1), 0)),
            EXISTS (SELECT 1 FROM rooms WHERE room = ?1 AND deleted_at IS NOT NULL)";
