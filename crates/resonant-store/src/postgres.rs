//! The production backend: Postgres, shared by every node.

use std::str::FromStr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};

use crate::{now_millis, BatchId, LastCommit, Store, StoreError, StoredDoc, WriteOp};

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
    /// The lock is a cluster node's shared one (taken again when lost, not fenced).
    shared: Arc<std::sync::atomic::AtomicBool>,
    /// The last batch that committed, answered again if the journal retries it.
    last: Arc<LastCommit>,
    /// A batch whose COMMIT was sent but whose reply never came: it may have committed.
    uncertain: Arc<StdMutex<Option<Uncertain>>>,
}

/// What settles whether a batch whose COMMIT reply was lost did commit.
#[derive(Clone)]
struct Uncertain {
    batch: BatchId,
    /// Its transaction id (`pg_current_xact_id`), for `pg_xact_status`.
    xid: String,
    /// Its session, ended if the transaction is still in progress.
    pid: i32,
    /// The seqs it would have given, which are the answer if it committed.
    seqs: Vec<Option<i64>>,
}

/// How many times a still-running uncertain transaction is waited for (its session is told
/// to end between checks) before the attempt gives up and the journal retries later.
const RESOLVE_TRIES: u32 = 20;

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
            shared: Arc::default(),
            last: Arc::default(),
            uncertain: Arc::default(),
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
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        if writer.is_none() {
            *writer = Some(PgConnection::connect_with(&self.opts).await?);
        }
        let conn = writer.as_mut().expect("just opened");
        if self.lock_pid.load(Ordering::Relaxed) == REJOINING {
            return Err(rejoining());
        }
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        let seqs = write_ops(conn, ops, now_millis()).await?;
        // Fencing: commit only while the lock's session still holds the lock, checked in
        // this very transaction (the watchdog alone would leave a second's window). The same
        // round trip names the transaction, in case its COMMIT reply is lost.
        let lock_pid = self.lock_pid.load(Ordering::Relaxed);
        let (xid, pid, held): (String, i32, bool) = sqlx::query_as(
            "SELECT pg_current_xact_id()::text, pg_backend_pid(),
                    $1 = 0 OR EXISTS (SELECT 1 FROM pg_locks
                      WHERE locktype = 'advisory' AND pid = $1 AND granted)",
        )
        .bind(lock_pid)
        .fetch_one(&mut *conn)
        .await?;
        if !held {
            // A cluster node's watchdog takes a lost shared lock again; meanwhile the batch
            // waits (a single node's lost lock means another process may be writing).
            if self.shared.load(Ordering::Relaxed) {
                return Err(rejoining());
            }
            self.fence(format!(
                "the advisory lock's session (backend {lock_pid}) no longer holds it"
            ));
        }
        self.check_fence()?;
        // From here until the reply, the batch may commit without our knowing: a retry must
        // first find out (see `resolve`), or it would write every row again under new seqs.
        *self.uncertain.lock().unwrap() = Some(Uncertain {
            batch,
            xid,
            pid,
            seqs: seqs.clone(),
        });
        // The simple protocol: one message holding the text, one reply (a prepared COMMIT
        // is a Parse, then a Bind/Execute by name), which the lost-reply test relies on.
        match sqlx::Executor::execute(&mut *conn, "COMMIT").await {
            Ok(_) => {
                self.uncertain.lock().unwrap().take();
                Ok(seqs)
            }
            // The server answered with an error: the transaction did not commit.
            Err(e @ sqlx::Error::Database(_)) => {
                self.uncertain.lock().unwrap().take();
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Finds out whether the uncertain batch committed: `Ok(true)` it did, `Ok(false)` it did
    /// not and never will. A transaction still in progress (its session has not noticed the
    /// lost connection yet) has its session ended first, so the answer is final.
    async fn resolve(
        &self,
        writer: &mut Option<PgConnection>,
        u: &Uncertain,
    ) -> Result<bool, StoreError> {
        if writer.is_none() {
            *writer = Some(PgConnection::connect_with(&self.opts).await?);
        }
        let conn = writer.as_mut().expect("just opened");
        for _ in 0..RESOLVE_TRIES {
            let status: Option<String> =
                sqlx::query_scalar("SELECT pg_xact_status($1::xid8)::text")
                    .bind(&u.xid)
                    .fetch_one(&mut *conn)
                    .await?;
            match status.as_deref() {
                Some("committed") => return Ok(true),
                // NULL: too old to know, or never assigned — it wrote nothing we could see.
                Some("aborted") | None => return Ok(false),
                _ => {
                    sqlx::query("SELECT pg_terminate_backend($1)")
                        .bind(u.pid)
                        .execute(&mut *conn)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "transaction {} of an unacknowledged commit is still in progress",
                u.xid
            ),
        ))))
    }

    /// One attempt at `batch`, settling first whether an earlier attempt of it committed.
    async fn attempt_once(
        &self,
        writer: &mut Option<PgConnection>,
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        // Cloned, not taken: this attempt may be cut short by its timeout mid-resolution,
        // and the next one must still know to ask.
        let pending = {
            let mut slot = self.uncertain.lock().unwrap();
            if slot.as_ref().is_some_and(|u| u.batch != batch) {
                // A batch the journal gave up on (it split the batch after a permanent
                // failure) is not retried under this id: nothing to settle for it any more.
                *slot = None;
            }
            slot.clone()
        };
        if let Some(u) = pending {
            let committed = self.resolve(writer, &u).await?;
            self.uncertain.lock().unwrap().take();
            if committed {
                tracing::warn!(batch, xid = %u.xid, "a commit whose reply was lost did commit; not writing it again");
                metrics::counter!("resonant_store_uncertain_commits_total", "outcome" => "committed").increment(1);
                return Ok(u.seqs);
            }
            metrics::counter!("resonant_store_uncertain_commits_total", "outcome" => "aborted")
                .increment(1);
        }
        self.attempt(writer, batch, ops).await
    }

    /// Takes the process's advisory lock (shared by cluster nodes, or exclusive) on a
    /// session of its own, and starts the watchdog that fences the store if it is lost.
    async fn take_lock(&self, wait: Duration, shared: bool) -> Result<(), StoreError> {
        let mut held = self.lock.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let mut conn = PgConnection::connect_with(&self.opts).await?;
        // Keyed by schema, so separate schemas (separate deployments, parallel tests) in one
        // database do not exclude each other.
        let started = Instant::now();
        loop {
            let (got, schema): (bool, String) = sqlx::query_as(if shared {
                "SELECT pg_try_advisory_lock_shared(hashtextextended('resonant-server:' || current_schema(), 0)),
                        current_database() || '.' || current_schema()"
            } else {
                "SELECT pg_try_advisory_lock(hashtextextended('resonant-server:' || current_schema(), 0)),
                        current_database() || '.' || current_schema()"
            })
            .fetch_one(&mut conn)
            .await?;
            if got {
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut conn)
                    .await?;
                *held = Some(conn);
                self.lock_pid.store(pid, Ordering::Relaxed);
                self.shared.store(shared, Ordering::Relaxed);
                tokio::spawn(lock_watchdog(
                    Arc::downgrade(&self.lock),
                    self.fenced.clone(),
                    shared.then(|| (self.opts.clone(), self.lock_pid.clone())),
                ));
                return Ok(());
            }
            if started.elapsed() >= wait {
                return Err(StoreError::Locked(format!("Postgres schema {schema}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn rejoining() -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the cluster's shared store lock is being taken again",
    )))
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
/// A cluster node's shared lock (`rejoin`: how to reconnect, and where the lock's pid is
/// published) is taken again when its session is lost — a Postgres restart must not fence
/// every node of the cluster — unless an exclusive holder got in meanwhile.
async fn lock_watchdog(
    lock: Weak<tokio::sync::Mutex<Option<PgConnection>>>,
    fenced: Arc<StdMutex<Option<String>>>,
    rejoin: Option<(PgConnectOptions, Arc<AtomicI32>)>,
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
        // The session is gone or useless; closing it releases whatever it still holds.
        held.take();
        let Some((opts, lock_pid)) = &rejoin else {
            fence(&fenced, why);
            return;
        };
        // Writes wait (a transient error, retried by the journal) while the lock is retaken.
        lock_pid.store(REJOINING, Ordering::Relaxed);
        tracing::warn!(reason = %why, "lost the cluster's shared store lock; taking it again");
        loop {
            tokio::time::sleep(LOCK_CHECK_INTERVAL).await;
            let attempt = async {
                let mut conn = PgConnection::connect_with(opts).await?;
                let (got, pid): (bool, i32) = sqlx::query_as(
                    "SELECT pg_try_advisory_lock_shared(hashtextextended('resonant-server:' || current_schema(), 0)),
                            pg_backend_pid()",
                )
                .fetch_one(&mut conn)
                .await?;
                Ok::<_, sqlx::Error>((got, pid, conn))
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok((true, pid, conn))) => {
                    *held = Some(conn);
                    lock_pid.store(pid, Ordering::Relaxed);
                    tracing::info!("took the cluster's shared store lock again");
                    metrics::counter!("resonant_store_lock_rejoined_total").increment(1);
                    break;
                }
                Ok(Ok((false, _, _))) => {
                    fence(
                        &fenced,
                        format!("{why}, and a single-node process holds it now"),
                    );
                    return;
                }
                // Postgres is still away: keep trying; writes keep waiting.
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }
}

/// `lock_pid` while a cluster node takes its lost shared lock again.
const REJOINING: i32 = -1;

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

    async fn read_since(&self, room: &str, after: i64) -> Result<crate::Tail, StoreError> {
        let mut conn = self.pool.acquire().await?;
        match tokio::time::timeout(LOAD_TIMEOUT, read_since_on(&mut conn, room, after)).await {
            Ok(Ok(tail)) => Ok(tail),
            Ok(Err(e)) => {
                drop(conn.detach());
                Err(e)
            }
            Err(_) => {
                drop(conn.detach());
                Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("reading a room's tail took longer than {LOAD_TIMEOUT:?}"),
                ))))
            }
        }
    }

    async fn heads(&self, rooms: &[Arc<str>]) -> Result<Vec<crate::Head>, StoreError> {
        let names: Vec<&str> = rooms.iter().map(|r| &**r).collect();
        let found: Vec<(String, i64, bool)> = sqlx::query_as(
            "SELECT room, head_seq, deleted_at IS NOT NULL FROM rooms WHERE room = ANY($1)",
        )
        .bind(&names[..])
        .fetch_all(&self.pool)
        .await?;
        Ok(rooms
            .iter()
            .map(|r| {
                found.iter().find(|(name, _, _)| name == &**r).map_or(
                    crate::Head::default(),
                    |(_, seq, deleted)| crate::Head {
                        seq: *seq,
                        deleted: *deleted,
                    },
                )
            })
            .collect())
    }

    async fn write_batch(
        &self,
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        if let Some(seqs) = self.last.get(batch) {
            return Ok(seqs);
        }
        self.check_fence()?;
        let mut writer = self.writer.lock().await;
        match tokio::time::timeout(
            self.attempt_timeout,
            self.attempt_once(&mut writer, batch, ops),
        )
        .await
        {
            Ok(Ok(seqs)) => {
                self.last.set(batch, &seqs);
                Ok(seqs)
            }
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
        self.take_lock(wait, false).await
    }

    async fn lock_shared(&self, wait: Duration) -> Result<(), StoreError> {
        self.take_lock(wait, true).await
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
        // The tombstone: from now on appends to the room are refused (`resonant_append`
        // leaves it out), on every node, so one that missed the deletion cannot bring the
        // document back; its probe finds the room deleted and closes it. The row lock also
        // waits for appends in flight.
        sqlx::query(
            "INSERT INTO rooms (room, deleted_at) VALUES ($1, $2)
             ON CONFLICT (room) DO UPDATE SET deleted_at = excluded.deleted_at",
        )
        .bind(room)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
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

/// Reads what a room's log holds after `after`, in one read-only snapshot: the snapshot
/// state only when it covers seqs the reader lacks, and the rows after both.
async fn read_since_on(
    conn: &mut PgConnection,
    room: &str,
    after: i64,
) -> Result<crate::Tail, StoreError> {
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await?;
    let head_seq: Option<i64> = sqlx::query_scalar("SELECT head_seq FROM rooms WHERE room = $1")
        .bind(room)
        .fetch_optional(&mut *conn)
        .await?;
    let snap: Option<(i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT up_to_seq, CASE WHEN up_to_seq > $2 THEN state END
         FROM doc_snapshots WHERE room = $1",
    )
    .bind(room)
    .bind(after)
    .fetch_optional(&mut *conn)
    .await?;
    let snapshot = snap.and_then(|(seq, state)| state.map(|s| (seq, s)));
    let from = after.max(snapshot.as_ref().map_or(0, |(seq, _)| *seq));
    let updates: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, data FROM doc_updates WHERE room = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(room)
    .bind(from)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(crate::Tail {
        head_seq: head_seq.unwrap_or(0),
        snapshot,
        updates,
    })
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
    let head_seq: Option<i64> = sqlx::query_scalar("SELECT head_seq FROM rooms WHERE room = $1")
        .bind(room)
        .fetch_optional(&mut *conn)
        .await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    let updates = rows
        .into_iter()
        .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(StoredDoc {
        head_seq: head_seq.unwrap_or(0),
        snapshot,
        snapshot_seq,
        updates,
    })
}

/// Writes `ops` inside the open transaction on `conn`; returns the seq of each append.
async fn write_ops(
    conn: &mut PgConnection,
    ops: &[WriteOp],
    now: i64,
) -> Result<Vec<Option<i64>>, StoreError> {
    // Consecutive appends go in as one `resonant_append` call; snapshots break the run so
    // that ops keep their order.
    let mut seqs = Vec::with_capacity(ops.len());
    let mut rooms: Vec<&str> = Vec::new();
    let mut datas: Vec<&[u8]> = Vec::new();
    for op in ops {
        match op {
            WriteOp::Append { room, data } => {
                rooms.push(room);
                datas.push(data);
            }
            WriteOp::Snapshot(s) => {
                insert_appends(conn, &mut rooms, &mut datas, now, &mut seqs).await?;
                seqs.push(None);
                // One compactor per room at a time across the cluster: a node whose snapshot
                // meets another node's compaction of the same room in flight leaves it out
                // (the log stays the truth; its next trigger tries again). A single node
                // always gets the lock.
                let ours: bool = sqlx::query_scalar(
                    "SELECT pg_try_advisory_xact_lock(
                        hashtextextended('resonant-compact:' || current_schema() || ':' || $1, 0))",
                )
                .bind(&*s.room)
                .fetch_one(&mut *conn)
                .await?;
                if !ours {
                    metrics::counter!("resonant_compactions_skipped_total").increment(1);
                    continue;
                }
                let up_to_seq = match s.up_to_seq {
                    Some(seq) => seq,
                    None => sqlx::query_scalar("SELECT head_seq FROM rooms WHERE room = $1")
                        .bind(&*s.room)
                        .fetch_optional(&mut *conn)
                        .await?
                        .unwrap_or(0),
                };
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
                .bind(up_to_seq)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                sqlx::query("DELETE FROM doc_updates WHERE room = $1 AND seq <= $2")
                    .bind(&*s.room)
                    .bind(up_to_seq)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    insert_appends(conn, &mut rooms, &mut datas, now, &mut seqs).await?;
    Ok(seqs)
}

/// Appends a run of updates through `resonant_append` (numbered under the rooms' row locks)
/// and pushes each one's seq onto `seqs`.
async fn insert_appends(
    conn: &mut PgConnection,
    rooms: &mut Vec<&str>,
    datas: &mut Vec<&[u8]>,
    now: i64,
    seqs: &mut Vec<Option<i64>>,
) -> Result<(), StoreError> {
    if rooms.is_empty() {
        return Ok(());
    }
    let firsts: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT out_room, out_first, out_count FROM resonant_append($1, $2, $3)")
            .bind(&rooms[..])
            .bind(&datas[..])
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
    let mut next: Vec<(&str, i64)> = Vec::with_capacity(firsts.len());
    for room in rooms.iter() {
        let seq = match next.iter_mut().find(|(r, _)| r == room) {
            Some(slot) => {
                slot.1 += 1;
                slot.1
            }
            None => {
                let Some((_, first, _)) = firsts.iter().find(|(r, _, _)| r == room) else {
                    return Err(StoreError::RoomDeleted(room.to_string()));
                };
                next.push((room, *first));
                *first
            }
        };
        seqs.push(Some(seq));
    }
    rooms.clear();
    datas.clear();
    Ok(())
}
