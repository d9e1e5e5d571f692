//! The production backend: Postgres, shared by every node.

use std::str::FromStr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};

use crate::{now_millis, Store, StoreError, StoredDoc, WriteOp};

/// Longest one `write_batch` attempt may take (connect, write, commit) before its connection
/// is closed and the journal retries: a connection that went silent (a half-dead NAT, a
/// proxy that stopped forwarding) would otherwise hold every commit for ever.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a room load may take before its connection is closed.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the watchdog checks that this process still holds its advisory lock.
const LOCK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Server-side limits on every session: a statement cannot run for ever, a session left
/// inside a transaction by a vanished client is ended (releasing its row locks, which a
/// retried batch waits for), and the server probes idle client sockets.
const SESSION_OPTIONS: &[(&str, &str)] = &[
    ("statement_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "15s"),
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// Postgres-backed [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Options for the connections this store opens itself (writer and lock).
    opts: PgConnectOptions,
    /// The connection group commits go through (one writer: the journal). Dropped after any
    /// failed or timed-out attempt, so a retry always starts on a fresh connection.
    writer: Arc<tokio::sync::Mutex<Option<PgConnection>>>,
    attempt_timeout: Duration,
    /// The connection holding the process's advisory lock (see `lock_exclusive`); the lock
    /// lives exactly as long as this session.
    lock: Arc<tokio::sync::Mutex<Option<PgConnection>>>,
    /// The backend pid of the lock's session (0 before `lock_exclusive`), checked inside
    /// every write transaction.
    lock_pid: Arc<AtomicI32>,
    /// Why this process lost its lock, once it has: every write is refused from then on.
    fenced: Arc<StdMutex<Option<String>>>,
}

impl PostgresStore {
    /// Connects to `url` and applies migrations (serialised across nodes by sqlx's advisory
    /// lock).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)?.options(SESSION_OPTIONS.iter().copied());
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.clone())
            .await?;
        // The application's tables share this database and its migration history but are
        // migrated by resonant-db (0003 onwards): their versions are not missing, just not ours.
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(PostgresStore {
            pool,
            opts,
            writer: Arc::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            lock: Arc::default(),
            lock_pid: Arc::default(),
            fenced: Arc::default(),
        })
    }

    /// Sets how long one `write_batch` attempt may take (default
    /// [`DEFAULT_ATTEMPT_TIMEOUT`]).
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The backend pid of the session holding this process's advisory lock, if it took one
    /// (for tests and diagnostics).
    pub fn lock_backend_pid(&self) -> Option<i32> {
        Some(self.lock_pid.load(Ordering::Relaxed)).filter(|p| *p != 0)
    }

    /// Why this store refuses writes, once it lost its lock.
    pub fn fenced(&self) -> Option<String> {
        self.fenced.lock().unwrap().clone()
    }

    fn fence(&self, why: String) {
        fence(&self.fenced, why);
    }

    fn check_fence(&self) -> Result<(), StoreError> {
        match self.fenced() {
            Some(why) => Err(StoreError::Fenced(why)),
            None => Ok(()),
        }
    }

    /// One attempt at a batch on the writer connection (opened if needed).
    async fn attempt(
        &self,
        writer: &mut Option<PgConnection>,
        ops: &[WriteOp],
    ) -> Result<(), StoreError> {
        if writer.is_none() {
            *writer = Some(PgConnection::connect_with(&self.opts).await?);
        }
        let conn = writer.as_mut().expect("just opened");
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        write_ops(conn, ops, now_millis()).await?;
        // Fencing: commit only while the lock's session still holds the lock, checked in
        // this very transaction (the watchdog alone would leave a second's window).
        let lock_pid = self.lock_pid.load(Ordering::Relaxed);
        if lock_pid != 0 {
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks
                  WHERE locktype = 'advisory' AND pid = $1 AND granted)",
            )
            .bind(lock_pid)
            .fetch_one(&mut *conn)
            .await?;
            if !held {
                self.fence(format!(
                    "the advisory lock's session (backend {lock_pid}) no longer holds it"
                ));
            }
            self.check_fence()?;
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(())
    }
}

fn fence(fenced: &StdMutex<Option<String>>, why: String) {
    let mut f = fenced.lock().unwrap();
    if f.is_none() {
        tracing::error!(reason = %why, "lost the store's single-process lock: refusing every write until restarted");
        metrics::counter!("resonant_store_fenced_total").increment(1);
        *f = Some(why);
    }
}

/// Every second: does the lock's session still hold the lock? Ends when the store is dropped.
async fn lock_watchdog(
    lock: Weak<tokio::sync::Mutex<Option<PgConnection>>>,
    fenced: Arc<StdMutex<Option<String>>>,
) {
    loop {
        tokio::time::sleep(LOCK_CHECK_INTERVAL).await;
        let Some(lock) = lock.upgrade() else { return };
        let mut held = lock.lock().await;
        let Some(conn) = held.as_mut() else { return };
        let check = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks
                  WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted)",
            )
            .fetch_one(conn),
        )
        .await;
        let why = match check {
            Ok(Ok(true)) => continue,
            Ok(Ok(false)) => "the lock's session no longer holds the advisory lock".to_string(),
            Ok(Err(e)) => format!("the lock's session failed: {e}"),
            Err(_) => "the lock's session did not answer within 5 s".to_string(),
        };
        fence(&fenced, why);
        // The session is gone or useless; closing it releases whatever it still holds.
        held.take();
        return;
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self, room: &str) -> Result<StoredDoc, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // Time-boxed like writes: a pooled connection that went silent mid-read would
        // otherwise hang the room's load for ever. After an error or timeout the connection
        // is closed, not returned to the pool.
        match tokio::time::timeout(LOAD_TIMEOUT, load_on(&mut conn, room)).await {
            Ok(Ok(doc)) => Ok(doc),
            Ok(Err(e)) => {
                drop(conn.detach());
                Err(e)
            }
            Err(_) => {
                drop(conn.detach());
                Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("room load took longer than {LOAD_TIMEOUT:?}; connection closed"),
                ))))
            }
        }
    }

    async fn write_batch(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        self.check_fence()?;
        let mut writer = self.writer.lock().await;
        match tokio::time::timeout(self.attempt_timeout, self.attempt(&mut writer, ops)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // Never reuse a connection after an error inside a write transaction: its
                // state is unknown. Dropping it closes the socket; the server rolls back.
                writer.take();
                Err(e)
            }
            Err(_) => {
                writer.take();
                Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "commit attempt took longer than {:?}; connection closed",
                        self.attempt_timeout
                    ),
                ))))
            }
        }
    }

    async fn lock_exclusive(&self, wait: Duration) -> Result<(), StoreError> {
        let mut held = self.lock.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let mut conn = PgConnection::connect_with(&self.opts).await?;
        // Keyed by schema, so separate schemas (separate deployments, parallel tests) in one
        // database do not exclude each other.
        let started = Instant::now();
        loop {
            let (got, schema): (bool, String) = sqlx::query_as(
                "SELECT pg_try_advisory_lock(hashtextextended('resonant-server:' || current_schema(), 0)),
                        current_database() || '.' || current_schema()",
            )
            .fetch_one(&mut conn)
            .await?;
            if got {
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut conn)
                    .await?;
                *held = Some(conn);
                self.lock_pid.store(pid, Ordering::Relaxed);
                tokio::spawn(lock_watchdog(
                    Arc::downgrade(&self.lock),
                    self.fenced.clone(),
                ));
                return Ok(());
            }
            if started.elapsed() >= wait {
                return Err(StoreError::Locked(format!("Postgres schema {schema}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A fenced store is not ready even when no write has failed yet (the watchdog found
        // the lock gone while nothing was being written).
        self.check_fence()?;
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn db(&self) -> Option<crate::Db> {
        Some(crate::Db::Postgres(self.pool.clone()))
    }

    async fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM doc_updates WHERE room = $1")
            .bind(room)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM doc_snapshots WHERE room = $1")
            .bind(room)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Reads a room in one read-only transaction on `conn`.
async fn load_on(conn: &mut PgConnection, room: &str) -> Result<StoredDoc, StoreError> {
    // One snapshot of the database for both reads, so a compaction committing between them
    // cannot hide updates.
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await?;
    let snap = sqlx::query("SELECT state, up_to_seq FROM doc_snapshots WHERE room = $1")
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
    let rows =
        sqlx::query("SELECT seq, data FROM doc_updates WHERE room = $1 AND seq > $2 ORDER BY seq")
            .bind(room)
            .bind(snapshot_seq)
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    let updates = rows
        .into_iter()
        .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(StoredDoc {
        snapshot,
        snapshot_seq,
        updates,
    })
}

/// Writes `ops` inside the open transaction on `conn`.
async fn write_ops(conn: &mut PgConnection, ops: &[WriteOp], now: i64) -> Result<(), StoreError> {
    // Consecutive appends go in as one multi-row insert (UNNEST); snapshots break the run so
    // that ops keep their order.
    let mut rooms: Vec<&str> = Vec::new();
    let mut seqs: Vec<i64> = Vec::new();
    let mut datas: Vec<&[u8]> = Vec::new();
    for op in ops {
        match op {
            WriteOp::Append { room, seq, data } => {
                rooms.push(room);
                seqs.push(*seq);
                datas.push(data);
            }
            WriteOp::Snapshot(s) => {
                insert_appends(conn, &mut rooms, &mut seqs, &mut datas, now).await?;
                sqlx::query(
                    "INSERT INTO doc_snapshots (room, state, up_to_seq, updated_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (room) DO UPDATE SET state = excluded.state,
                       up_to_seq = excluded.up_to_seq,
                       updated_at = excluded.updated_at
                     WHERE excluded.up_to_seq >= doc_snapshots.up_to_seq",
                )
                .bind(&*s.room)
                .bind(&s.state[..])
                .bind(s.up_to_seq)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                sqlx::query("DELETE FROM doc_updates WHERE room = $1 AND seq <= $2")
                    .bind(&*s.room)
                    .bind(s.up_to_seq)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    insert_appends(conn, &mut rooms, &mut seqs, &mut datas, now).await
}

async fn insert_appends(
    tx: &mut PgConnection,
    rooms: &mut Vec<&str>,
    seqs: &mut Vec<i64>,
    datas: &mut Vec<&[u8]>,
    now: i64,
) -> Result<(), StoreError> {
    if rooms.is_empty() {
        return Ok(());
    }
    // A retried batch that did commit meets its own rows: skip them here and check below
    // that they hold the same bytes.
    let inserted = sqlx::query(
        "INSERT INTO doc_updates (room, seq, data, created_at)
         SELECT r, s, d, $4 FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS t(r, s, d)
         ON CONFLICT (room, seq) DO NOTHING",
    )
    .bind(&rooms[..])
    .bind(&seqs[..])
    .bind(&datas[..])
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted < rooms.len() as u64 {
        let conflict: Option<(String, i64)> = sqlx::query_as(
            "SELECT t.r, t.s FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS t(r, s, d)
             JOIN doc_updates u ON u.room = t.r AND u.seq = t.s
             WHERE u.data <> t.d LIMIT 1",
        )
        .bind(&rooms[..])
        .bind(&seqs[..])
        .bind(&datas[..])
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((room, seq)) = conflict {
            return Err(StoreError::Conflict { room, seq });
        }
    }
    rooms.clear();
    seqs.clear();
    datas.clear();
    Ok(())
}
