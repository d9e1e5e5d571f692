//! The embedded default backend: one SQLite file in the data directory, in WAL mode.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use crate::{now_millis, Store, StoreError, StoredDoc, WriteOp};

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    /// fsync the WAL on every commit: survives power loss (the default).
    #[default]
    Full,
    /// fsync only at checkpoints: survives a process crash, not a power cut.
    Normal,
}

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The database file (None for in-memory databases).
    path: Option<PathBuf>,
    /// The open lock file while this process holds the database (see `lock_exclusive`).
    lock: Arc<Mutex<Option<std::fs::File>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) `resonant.db` inside `dir` and applies migrations.
    pub async fn open_dir(dir: &Path, sync: SqliteSync) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let opts = SqliteConnectOptions::new().filename(dir.join("resonant.db"));
        Self::open_with(opts, sync).await
    }

    /// Opens a `sqlite:` URL and applies migrations.
    pub async fn open_url(url: &str, sync: SqliteSync) -> Result<Self, StoreError> {
        Self::open_with(SqliteConnectOptions::from_str(url)?, sync).await
    }

    async fn open_with(opts: SqliteConnectOptions, sync: SqliteSync) -> Result<Self, StoreError> {
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
        // Writes are serialised by the journal, so a few connections are enough for
        // concurrent room loads.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore {
            pool,
            path,
            lock: Arc::default(),
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
        conn.commit().await?;
        Ok(StoredDoc {
            snapshot,
            snapshot_seq,
            updates,
        })
    }

    async fn write_batch(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        // Runs of appends go in as multi-row INSERTs: one statement per row costs ~25 µs in
        // sqlx, which would cap the journal far below what the sync path produces.
        let mut run: Vec<(&str, i64, &[u8])> = Vec::new();
        for op in ops {
            match op {
                WriteOp::Append { room, seq, data } => {
                    run.push((room, *seq, data));
                    if run.len() == APPEND_ROWS_PER_STATEMENT {
                        insert_appends(&mut tx, &mut run, now).await?;
                    }
                }
                WriteOp::Snapshot(s) => {
                    insert_appends(&mut tx, &mut run, now).await?;
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
                    .bind(s.up_to_seq)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM doc_updates WHERE room = ? AND seq <= ?")
                        .bind(&*s.room)
                        .bind(s.up_to_seq)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        insert_appends(&mut tx, &mut run, now).await?;
        tx.commit().await?;
        Ok(())
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

    fn db(&self) -> Option<crate::Db> {
        Some(crate::Db::Sqlite(self.pool.clone()))
    }

    async fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM doc_updates WHERE room = ?")
            .bind(room)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM doc_snapshots WHERE room = ?")
            .bind(room)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Rows per multi-row INSERT (4 bound parameters each, far below SQLite's limit).
const APPEND_ROWS_PER_STATEMENT: usize = 256;

async fn insert_appends(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    run: &mut Vec<(&str, i64, &[u8])>,
    now: i64,
) -> Result<(), StoreError> {
    if run.is_empty() {
        return Ok(());
    }
    // A retried batch that did commit meets its own rows: skip them here and check below
    // that they hold the same bytes.
    let mut builder =
        sqlx::QueryBuilder::new("INSERT INTO doc_updates (room, seq, data, created_at) ");
    builder.push_values(run.iter(), |mut row, (room, seq, data)| {
        row.push_bind(*room)
            .push_bind(*seq)
            .push_bind(*data)
            .push_bind(now);
    });
    builder.push(" ON CONFLICT (room, seq) DO NOTHING");
    let inserted = builder.build().execute(&mut **tx).await?.rows_affected();
    if inserted < run.len() as u64 {
        for (room, seq, data) in run.iter() {
            let stored: Vec<u8> =
                sqlx::query_scalar("SELECT data FROM doc_updates WHERE room = ? AND seq = ?")
                    .bind(*room)
                    .bind(*seq)
                    .fetch_one(&mut **tx)
                    .await?;
            if stored != *data {
                return Err(StoreError::Conflict {
                    room: room.to_string(),
                    seq: *seq,
                });
            }
        }
    }
    run.clear();
    Ok(())
}
