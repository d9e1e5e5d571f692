//! The embedded default backend: one SQLite file in the data directory, in WAL mode.

use std::collections::HashMap;
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
    /// Each room's head seq as this process last committed it, read from the database on a
    /// room's first write. SQLite is only ever written by one process (`lock_exclusive`), so
    /// numbering from memory is exact and saves the `rooms` upsert every commit paid (60–90 µs
    /// of a single-update commit). Held across a whole batch: writes are serial anyway
    /// (`BEGIN IMMEDIATE`), and the heads only advance once their batch committed.
    heads: Arc<tokio::sync::Mutex<HashMap<String, Head>>>,
}

/// Rooms whose heads are kept in memory at most (about 100 bytes each).
const MAX_CACHED_HEADS: usize = 65_536;

/// A room's numbering: its head seq and whether it was marked deleted.
#[derive(Debug, Clone, Copy)]
struct Head {
    seq: i64,
    deleted: bool,
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
            heads: Arc::default(),
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
        let head_seq = read_head(&mut conn, room).await?.seq;
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
        if let Some(seqs) = self.last.get(batch) {
            return Ok(seqs);
        }
        let now = now_millis();
        let mut heads = self.heads.lock().await;
        let mut tx = WriteTx::begin(&self.pool).await?;
        let mut moved = HashMap::new();
        match write_ops(tx.conn(), ops, now, &heads, &mut moved).await {
            Ok(seqs) => {
                if let Err(e) = self.commit(tx).await {
                    // Whether a failed COMMIT left rows behind is the database's to say:
                    // these rooms' heads are read again at their next write.
                    for room in moved.keys() {
                        heads.remove(room);
                    }
                    return Err(e);
                }
                // A cache, not the authority: forgetting it costs one read per room written
                // next, and keeps a process that has written millions of rooms from holding
                // all their names.
                if heads.len() + moved.len() > MAX_CACHED_HEADS {
                    heads.clear();
                }
                heads.extend(moved);
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
        // Numbering goes on from the database's view of what is left.
        let mut heads = self.heads.lock().await;
        heads.remove(room);
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

/// A room's head as the database has it: the highest of its last stored update, its
/// snapshot's seq and its `rooms` row (which databases written before heads were kept in
/// memory carry, and which a test may mark deleted).
async fn read_head(conn: &mut SqliteConnection, room: &str) -> Result<Head, StoreError> {
    let (seq, deleted): (i64, bool) = sqlx::query_as(
        "SELECT MAX(COALESCE((SELECT MAX(seq) FROM doc_updates WHERE room = ?1), 0),
                    COALESCE((SELECT up_to_seq FROM doc_snapshots WHERE room = ?1), 0),
                    COALESCE((SELECT head_seq FROM rooms WHERE room = ?1), 0)),
                EXISTS (SELECT 1 FROM rooms WHERE room = ?1 AND deleted_at IS NOT NULL)",
    )
    .bind(room)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Head { seq, deleted })
}

/// A room's head for this batch: as moved by it so far, as committed, or from the database.
async fn head_of(
    conn: &mut SqliteConnection,
    room: &str,
    committed: &HashMap<String, Head>,
    moved: &mut HashMap<String, Head>,
) -> Result<Head, StoreError> {
    if let Some(h) = moved.get(room).or_else(|| committed.get(room)) {
        return Ok(*h);
    }
    let h = read_head(conn, room).await?;
    moved.insert(room.to_string(), h);
    Ok(h)
}

/// Writes `ops` inside the open transaction on `conn`; returns the seq of each append.
/// Heads are read from `committed` (or the database) and what the batch moves goes into
/// `moved`, for the caller to keep once the batch committed.
async fn write_ops(
    conn: &mut SqliteConnection,
    ops: &[WriteOp],
    now: i64,
    committed: &HashMap<String, Head>,
    moved: &mut HashMap<String, Head>,
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
                    insert_appends(conn, &mut run, now, &mut seqs, committed, moved).await?;
                }
            }
            WriteOp::Snapshot(s) => {
                insert_appends(conn, &mut run, now, &mut seqs, committed, moved).await?;
                let up_to_seq = match s.up_to_seq {
                    Some(seq) => seq,
                    None => head_of(conn, &s.room, committed, moved).await?.seq,
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
    insert_appends(conn, &mut run, now, &mut seqs, committed, moved).await?;
    Ok(seqs)
}

/// Rows per multi-row INSERT (4 bound parameters each, far below SQLite's limit).
const APPEND_ROWS_PER_STATEMENT: usize = 256;

/// Numbers a run of appends from their rooms' heads and inserts them; pushes each one's seq
/// onto `seqs` and the rooms' new heads into `moved`.
async fn insert_appends(
    conn: &mut SqliteConnection,
    run: &mut Vec<(&str, &[u8])>,
    now: i64,
    seqs: &mut Vec<Option<i64>>,
    committed: &HashMap<String, Head>,
    moved: &mut HashMap<String, Head>,
) -> Result<(), StoreError> {
    if run.is_empty() {
        return Ok(());
    }
    // Each room's next seq.
    let mut next: Vec<(&str, i64)> = Vec::new();
    for (room, _) in run.iter() {
        if next.iter().any(|(r, _)| r == room) {
            continue;
        }
        let head = head_of(conn, room, committed, moved).await?;
        // The caller rolls the transaction back, and `moved` is dropped with it.
        if head.deleted {
            return Err(StoreError::RoomDeleted(room.to_string()));
        }
        next.push((room, head.seq + 1));
    }
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
    for (room, after) in next {
        let head = Head {
            seq: after - 1,
            deleted: false,
        };
        match moved.get_mut(room) {
            Some(h) => *h = head,
            None => {
                moved.insert(room.to_string(), head);
            }
        }
    }
    run.clear();
    Ok(())
}
