//! The embedded default backend: one SQLite file in the data directory, in WAL mode.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row};

use crate::fault::{full_disk_error, FullAt};
use crate::{now_millis, BatchId, LastCommit, Store, StoreError, StoredDoc, WriteOp};

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    /// fsync the WAL on every commit: survives power loss (the default).
    #[default]
    Full,
    /// fsync only at checkpoints: survives a process crash, not a power cut.
    Normal,
}

/// Connections per pool: writes are serialised by the journal, so a few are enough for
/// concurrent room loads.
const DEFAULT_POOL_SIZE: u32 = 8;

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file (None for in-memory databases).
    path: Option<PathBuf>,
    /// The open lock file while this process holds the database (see `lock_exclusive`).
    lock: Arc<Mutex<Option<std::fs::File>>>,
    /// A simulated full disk for the next write transaction (see [`Store::inject_full_disk`]).
    full_disk: Arc<Mutex<Option<FullAt>>>,
    last: Arc<LastCommit>,
}

impl SqliteStore {
    /// Opens (creating if needed) `resonant.db` inside `dir` and applies migrations.
    pub async fn open_dir(dir: &Path, sync: SqliteSync) -> Result<Self, StoreError> {
        Self::open_dir_with_pool(dir, sync, DEFAULT_POOL_SIZE).await
    }

    /// [`SqliteStore::open_dir`] with at most `max_connections` connections (tests use 1, so
    /// that the connection a failure left behind is the one the next write gets).
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
        let path = opts.get_filename();
        let path = (!path.as_os_str().is_empty() && path != Path::new(":memory:"))
            .then(|| path.to_path_buf());
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SqliteSync::Full => SqliteSynchronous::Full,
                SqliteSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            // Every connection coming back (also from the relational tables' code, which
            // uses sqlx transactions) is checked: one still inside a transaction, as SQLite
            // or sqlx sees it, is closed rather than reused (see `WriteTx`).
            .after_release(|conn, _| Box::pin(async move { Ok(!in_transaction(conn).await?) }))
            .connect_with(opts)
            .await?;
        // The application's tables share this database and its migration history but are
        // migrated by resonant-db (0003 onwards): their versions are not missing, just not ours.
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(SqliteStore {
            pool,
            path,
            lock: Arc::default(),
            full_disk: Arc::default(),
            last: Arc::default(),
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
        let head_seq: Option<i64> = sqlx::query_scalar("SELECT head_seq FROM rooms WHERE room = ?")
            .bind(room)
            .fetch_optional(&mut *conn)
            .await?;
        conn.commit().await?;
        Ok(StoredDoc {
            head_seq: head_seq.unwrap_or(0),
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
        if let Some(seqs) = self.last.get(batch) {
            return Ok(seqs);
        }
        let now = now_millis();
        let mut tx = WriteTx::begin(&self.pool).await?;
        match write_ops(tx.conn(), ops, now).await {
            Ok(seqs) => {
                self.commit(tx).await?;
                self.last.set(batch, &seqs);
                Ok(seqs)
            }
            Err(e) => {
                tx.abandon().await;
                Err(e)
            }
        }
    }

    async fn lock_exclusive(&self, wait: Duration) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
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
        Some(crate::Db::Sqlite(self.pool.clone()))
    }

    async fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        let mut tx = WriteTx::begin(&self.pool).await?;
        let deleted = async {
            for table in ["doc_updates", "doc_snapshots"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE room = ?"))
                    .bind(room)
                    .execute(tx.conn())
                    .await?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        match deleted {
            Ok(()) => self.commit(tx).await,
            Err(e) => {
                tx.abandon().await;
                Err(e)
            }
        }
    }
}

impl SqliteStore {
    /// Commits a write transaction, or fails and closes its connection. A simulated full disk
    /// strikes here (see [`Store::inject_full_disk`]).
    async fn commit(&self, mut tx: WriteTx) -> Result<(), StoreError> {
        let full = self.full_disk.lock().unwrap().take();
        if let Some(at) = full {
            // What SQLite does: a COMMIT that runs out of space rolls back by itself; a
            // statement that does leaves the transaction open.
            if at == FullAt::Commit {
                let _ = sqlx::query("ROLLBACK").execute(tx.conn()).await;
            }
            tx.abandon().await;
            return Err(full_disk_error());
        }
        tx.commit().await
    }
}

/// A write transaction on a connection taken out of the pool, begun with `BEGIN IMMEDIATE`
/// sent as plain SQL. sqlx's own transactions are not used for writes: when `COMMIT` fails
/// and SQLite rolls back by itself (a full disk), sqlx-sqlite 0.8 still counts the
/// transaction as open and the connection's next `begin` sends `SAVEPOINT`, nesting every
/// later batch in a transaction that never commits (docs/upstream/). Here sqlx never sees a
/// transaction, and a connection goes back to the pool only after a `COMMIT` that succeeded
/// and left it in autocommit mode; after any error it is closed, which rolls back whatever
/// SQLite still holds open.
struct WriteTx {
    conn: Option<PoolConnection<Sqlite>>,
}

impl WriteTx {
    async fn begin(pool: &SqlitePool) -> Result<WriteTx, StoreError> {
        let mut tx = WriteTx {
            conn: Some(pool.acquire().await?),
        };
        // IMMEDIATE takes the write lock now (waiting up to the busy timeout), so no
        // statement of the batch can fail on a lock upgrade halfway through.
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(tx.conn()).await {
            tx.abandon().await;
            return Err(e.into());
        }
        Ok(tx)
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("a live write transaction")
    }

    async fn commit(mut self) -> Result<(), StoreError> {
        if let Err(e) = sqlx::query("COMMIT").execute(self.conn()).await {
            self.abandon().await;
            return Err(e.into());
        }
        // Trust nothing: only a connection that is demonstrably out of any transaction may
        // report success and serve the next batch.
        match in_transaction(self.conn()).await {
            Ok(false) => {
                self.conn.take();
                Ok(())
            }
            Ok(true) => {
                self.abandon().await;
                Err(StoreError::Database(sqlx::Error::Protocol(
                    "COMMIT returned success but the SQLite connection is still inside a \
                     transaction; the batch is not durable"
                        .into(),
                )))
            }
            Err(e) => {
                self.abandon().await;
                Err(e.into())
            }
        }
    }

    /// Closes the connection instead of returning it to the pool; closing rolls back any
    /// transaction SQLite still has open on it.
    async fn abandon(mut self) {
        if let Some(conn) = self.conn.take() {
            if let Err(e) = conn.detach().close().await {
                tracing::debug!(error = %e, "closing an abandoned SQLite connection");
            }
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        // Dropped mid-transaction (the future was cancelled): never hand this connection
        // back; dropping it stops its worker, which closes it.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// Whether SQLite (autocommit off) or sqlx (its transaction depth) thinks `conn` is inside a
/// transaction. Either means the connection must not be reused.
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

/// Writes `ops` inside the open transaction on `conn`; returns the seq of each append.
async fn write_ops(
    conn: &mut SqliteConnection,
    ops: &[WriteOp],
    now: i64,
) -> Result<Vec<Option<i64>>, StoreError> {
    // Runs of appends go in as multi-row statements: one statement per row costs ~25 µs in
    // sqlx, which would cap the journal far below what the sync path produces.
    let mut seqs = Vec::with_capacity(ops.len());
    let mut run: Vec<(&str, &[u8])> = Vec::new();
    for op in ops {
        match op {
            WriteOp::Append { room, data } => {
                run.push((room, data));
                if run.len() == APPEND_ROWS_PER_STATEMENT {
                    insert_appends(conn, &mut run, now, &mut seqs).await?;
                }
            }
            WriteOp::Snapshot(s) => {
                insert_appends(conn, &mut run, now, &mut seqs).await?;
                let up_to_seq = match s.up_to_seq {
                    Some(seq) => seq,
                    None => sqlx::query_scalar("SELECT head_seq FROM rooms WHERE room = ?")
                        .bind(&*s.room)
                        .fetch_optional(&mut *conn)
                        .await?
                        .unwrap_or(0),
                };
                // Never move a snapshot backwards: an older compaction that lost a race
                // must not replace a newer one.
                sqlx::query(
                    "INSERT INTO doc_snapshots (room, state, up_to_seq, updated_at)
                     VALUES (?, ?, ?, ?)
                     ON CONFLICT (room) DO UPDATE SET state = excluded.state,
                       up_to_seq = excluded.up_to_seq,
                       updated_at = excluded.updated_at
                     WHERE excluded.up_to_seq >= doc_snapshots.up_to_seq",
                )
                .bind(&*s.room)
                .bind(&s.state[..])
                .bind(up_to_seq)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                sqlx::query("DELETE FROM doc_updates WHERE room = ? AND seq <= ?")
                    .bind(&*s.room)
                    .bind(up_to_seq)
                    .execute(&mut *conn)
                    .await?;
                seqs.push(None);
            }
        }
    }
    insert_appends(conn, &mut run, now, &mut seqs).await?;
    Ok(seqs)
}

/// Rows per multi-row INSERT (4 bound parameters each, far below SQLite's limit).
const APPEND_ROWS_PER_STATEMENT: usize = 256;

/// Numbers a run of appends from their rooms' `head_seq` (one upsert for every room of the
/// run) and inserts them; pushes each one's seq onto `seqs`.
async fn insert_appends(
    conn: &mut SqliteConnection,
    run: &mut Vec<(&str, &[u8])>,
    now: i64,
    seqs: &mut Vec<Option<i64>>,
) -> Result<(), StoreError> {
    if run.is_empty() {
        return Ok(());
    }
    let mut counts: Vec<(&str, i64)> = Vec::new();
    for (room, _) in run.iter() {
        match counts.iter_mut().find(|(r, _)| r == room) {
            Some((_, n)) => *n += 1,
            None => counts.push((room, 1)),
        }
    }
    let mut bump = sqlx::QueryBuilder::new("INSERT INTO rooms (room, head_seq) ");
    bump.push_values(counts.iter(), |mut row, (room, n)| {
        row.push_bind(*room).push_bind(*n);
    });
    bump.push(
        " ON CONFLICT (room) DO UPDATE SET head_seq = rooms.head_seq + excluded.head_seq
          RETURNING room, head_seq, deleted_at IS NOT NULL",
    );
    let heads: Vec<(String, i64, bool)> = bump.build_query_as().fetch_all(&mut *conn).await?;
    // The caller rolls the transaction back, bump included.
    if let Some((room, _, _)) = heads.iter().find(|(_, _, deleted)| *deleted) {
        return Err(StoreError::RoomDeleted(room.clone()));
    }
    // Each room's next seq: its new head minus what this run adds, plus one.
    let mut next: Vec<(&str, i64)> = counts
        .iter()
        .map(|(room, n)| {
            let head = heads
                .iter()
                .find(|(r, _, _)| r == room)
                .map(|(_, h, _)| *h)
                .ok_or_else(|| {
                    StoreError::Database(sqlx::Error::Protocol(format!(
                        "no head_seq returned for room {room}"
                    )))
                })?;
            Ok((*room, head - n + 1))
        })
        .collect::<Result<_, StoreError>>()?;
    let mut builder =
        sqlx::QueryBuilder::new("INSERT INTO doc_updates (room, seq, data, created_at) ");
    let numbered: Vec<(&str, i64, &[u8])> = run
        .iter()
        .map(|(room, data)| {
            let slot = next
                .iter_mut()
                .find(|(r, _)| r == room)
                .expect("every room of the run was counted");
            let seq = slot.1;
            slot.1 += 1;
            (*room, seq, *data)
        })
        .collect();
    builder.push_values(numbered.iter(), |mut row, (room, seq, data)| {
        row.push_bind(*room)
            .push_bind(*seq)
            .push_bind(*data)
            .push_bind(now);
    });
    builder.build().execute(&mut *conn).await?;
    seqs.extend(numbered.iter().map(|(_, seq, _)| Some(*seq)));
    run.clear();
    Ok(())
}
