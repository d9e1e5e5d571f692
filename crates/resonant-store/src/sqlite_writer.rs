//! The SQLite store's write side: one thread that owns one connection and runs every write
//! transaction with prepared statements.
//!
//! Through sqlx a single-update commit cost about five round trips to the connection's worker
//! thread (the pool's release check, `BEGIN`, `INSERT`, `COMMIT`, the autocommit check), each a
//! channel send and two thread wake-ups: ~85 µs of CPU per update at 10 rooms × 50 updates/s,
//! as much as all of fan-out (docs/benchmarks.md, *Performance pass*). Here a batch is one
//! hand-off to this thread and one reply. Reads stay on sqlx's pool; WAL lets them run beside
//! the writer.
//!
//! The thread also owns the rooms' heads (the numbering), so a batch whose caller went away
//! still leaves them consistent with what it committed.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::fault::{full_disk_error, FullAt};
use crate::sqlite::SqliteSync;
use crate::{now_millis, BatchId, LastCommit, StoreError, WriteOp};

/// Rooms whose heads are kept in memory at most (about 100 bytes each).
const MAX_CACHED_HEADS: usize = 65_536;

/// A room's numbering: its head seq and whether it was marked deleted.
#[derive(Debug, Clone, Copy)]
struct Head {
    seq: i64,
    deleted: bool,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Batch {
        batch: BatchId,
        ops: Vec<WriteOp>,
        reply: Reply<Vec<Option<i64>>>,
    },
    DeleteRoom {
        room: String,
        reply: Reply<()>,
    },
}

/// Handle to the writer thread; the thread ends (closing its connection) when the last
/// handle is dropped and the jobs already sent are done.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the thread for the database file at `path` (which must exist and be migrated).
    pub(crate) fn start(
        path: PathBuf,
        sync: SqliteSync,
        full_disk: Arc<Mutex<Option<FullAt>>>,
    ) -> Result<Writer, StoreError> {
        let mut state = State {
            path,
            sync,
            conn: None,
            heads: HashMap::new(),
            full_disk,
            last: LastCommit::default(),
        };
        // Open now, so that a database the writer cannot open fails at start, not at the
        // first edit.
        state.conn = Some(state.open().map_err(db_error)?);
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || state.run(rx))
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        Ok(Writer { jobs })
    }

    /// Writes `ops` in one transaction; the seq of each append (None for snapshots).
    pub(crate) async fn write_batch(
        &self,
        batch: BatchId,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Batch { batch, ops, reply })?;
        rx.await.map_err(|_| crashed())?
    }

    /// Deletes a room's log and snapshot, and forgets its head.
    pub(crate) async fn delete_room(&self, room: &str) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::DeleteRoom {
            room: room.to_string(),
            reply,
        })?;
        rx.await.map_err(|_| crashed())?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).map_err(|_| crashed())
    }
}

/// The writer thread is gone: worth retrying (the journal keeps the batch, readiness fails).
fn crashed() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

struct State {
    path: PathBuf,
    sync: SqliteSync,
    /// None after an error: the connection was closed, which rolls back whatever SQLite still
    /// held open, and the next job opens a fresh one. A connection is only reused after a
    /// `COMMIT` that succeeded and left it in autocommit mode.
    conn: Option<Connection>,
    /// Each room's head seq as this thread last committed it, read from the database on a
    /// room's first write. SQLite is only ever written by one process (`lock_exclusive`), and
    /// in it only by this thread, so numbering from memory is exact.
    heads: HashMap<String, Head>,
    full_disk: Arc<Mutex<Option<FullAt>>>,
    /// The last committed batch's seqs, for a retry whose first reply was lost.
    last: LastCommit,
}

impl State {
    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // The journal mode (WAL) is a property of the file, set when the pool created it;
        // `synchronous` and foreign keys are per connection.
        let sync = match self.sync {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Batch { batch, ops, reply } => {
                    let result = self.guarded(|s| s.write_batch(batch, &ops));
                    let _ = reply.send(result);
                }
                Job::DeleteRoom { room, reply } => {
                    let result = self.guarded(|s| s.delete_room(&room));
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Runs `f`; after any error or panic the connection is closed (rolling back) and the
    /// heads are forgotten: whether a failed transaction left rows behind is the database's
    /// to say, so every room's head is read again at its next write.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(self)))
            .unwrap_or_else(|_| Err(crashed()));
        if result.is_err() {
            self.conn = None;
            self.heads.clear();
        }
        result
    }

    fn conn(&mut self) -> Result<Connection, StoreError> {
        match self.conn.take() {
            Some(c) => Ok(c),
            None => self.open().map_err(db_error),
        }
    }

    fn write_batch(
        &mut self,
        batch: BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        // A retry of a batch whose COMMIT succeeded but whose reply was lost.
        if let Some(seqs) = self.last.get(batch) {
            return Ok(seqs);
        }
        let conn = self.conn()?;
        let now = now_millis();
        // IMMEDIATE takes the write lock now (waiting up to the busy timeout: the pool
        // writes the application's tables), so no statement can fail on a lock upgrade.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db_error)?;
        let mut moved = HashMap::new();
        let seqs = write_ops(&conn, ops, now, &self.heads, &mut moved)?;
        self.commit(conn)?;
        // A cache, not the authority: forgetting it costs one read per room written next,
        // and keeps a process that has written millions of rooms from holding all their names.
        if self.heads.len() + moved.len() > MAX_CACHED_HEADS {
            self.heads.clear();
        }
        self.heads.extend(moved);
        self.last.set(batch, &seqs);
        Ok(seqs)
    }

    fn delete_room(&mut self, room: &str) -> Result<(), StoreError> {
        // Numbering goes on from the database's view of what is left.
        self.heads.remove(room);
        let conn = self.conn()?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db_error)?;
        for table in ["doc_updates", "doc_snapshots"] {
            conn.execute(&format!("DELETE FROM {table} WHERE room = ?1"), [room])
                .map_err(db_error)?;
        }
        self.commit(conn)
    }

    /// Commits and keeps the connection, or fails (and the caller's guard drops it). A
    /// simulated full disk strikes here (see [`crate::Store::inject_full_disk`]).
    fn commit(&mut self, conn: Connection) -> Result<(), StoreError> {
        let full = self
            .full_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(at) = full {
            // What SQLite does: a COMMIT that runs out of space rolls back by itself; a
            // statement that does leaves the transaction open (closing the connection
            // rolls it back).
            if at == FullAt::Commit {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err(full_disk_error());
        }
        conn.execute_batch("COMMIT").map_err(db_error)?;
        // Trust nothing: only a connection that is demonstrably out of any transaction may
        // report success and serve the next batch.
        if !conn.is_autocommit() {
            return Err(StoreError::Database(sqlx::Error::Protocol(
                "COMMIT returned success but the SQLite connection is still inside a \
                 transaction; the batch is not durable"
                    .into(),
            )));
        }
        self.conn = Some(conn);
        Ok(())
    }
}

/// Writes `ops` inside the open transaction; returns the seq of each append. Heads are read
/// from `committed` (or the database) and what the batch moves goes into `moved`, for the
/// caller to keep once the batch committed.
fn write_ops(
    conn: &Connection,
    ops: &[WriteOp],
    now: i64,
    committed: &HashMap<String, Head>,
    moved: &mut HashMap<String, Head>,
) -> Result<Vec<Option<i64>>, StoreError> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO doc_updates (room, seq, data, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(db_error)?;
    let mut seqs = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            WriteOp::Append { room, data } => {
                let head = head_of(conn, room, committed, moved)?;
                if head.deleted {
                    return Err(StoreError::RoomDeleted(room.to_string()));
                }
                let seq = head.seq + 1;
                insert
                    .execute(params![&**room, seq, &data[..], now])
                    .map_err(db_error)?;
                let next = Head {
                    seq,
                    deleted: false,
                };
                match moved.get_mut(&**room) {
                    Some(h) => *h = next,
                    None => {
                        moved.insert(room.to_string(), next);
                    }
                }
                seqs.push(Some(seq));
            }
            WriteOp::Snapshot(s) => {
                let up_to_seq = match s.up_to_seq {
                    Some(seq) => seq,
                    None => head_of(conn, &s.room, committed, moved)?.seq,
                };
                // Never move a snapshot backwards: an older compaction that lost a race
                // must not replace a newer one.
                conn.prepare_cached(
                    "INSERT INTO doc_snapshots (room, state, up_to_seq, updated_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (room) DO UPDATE SET state = excluded.state,
                       up_to_seq = excluded.up_to_seq,
                       updated_at = excluded.updated_at
                     WHERE excluded.up_to_seq >= doc_snapshots.up_to_seq",
                )
                .and_then(|mut st| st.execute(params![&*s.room, &s.state[..], up_to_seq, now]))
                .map_err(db_error)?;
                conn.prepare_cached("DELETE FROM doc_updates WHERE room = ?1 AND seq <= ?2")
                    .and_then(|mut st| st.execute(params![&*s.room, up_to_seq]))
                    .map_err(db_error)?;
                seqs.push(None);
            }
        }
    }
    Ok(seqs)
}

/// A room's head for this batch: as moved by it so far, as committed, or from the database.
fn head_of(
    conn: &Connection,
    room: &str,
    committed: &HashMap<String, Head>,
    moved: &mut HashMap<String, Head>,
) -> Result<Head, StoreError> {
    if let Some(h) = moved.get(room).or_else(|| committed.get(room)) {
        return Ok(*h);
    }
    let h = conn
        .prepare_cached(crate::sqlite::READ_HEAD_SQL)
        .and_then(|mut st| {
            st.query_row([room], |row| {
                Ok(Head {
                    seq: row.get(0)?,
                    deleted: row.get(1)?,
                })
            })
        })
        .map_err(db_error)?;
    moved.insert(room.to_string(), h);
    Ok(h)
}

/// A rusqlite error as the rest of the store reports database errors: SQLite's extended
/// result code is kept, so [`StoreError::is_transient`] tells a full disk or a busy database
/// (retried) from a constraint violation (not).
fn db_error(e: rusqlite::Error) -> StoreError {
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    };
    SqliteError::store_error(&e.to_string(), code)
}

/// An SQLite error that did not come through sqlx (the writer thread's, or an injected one),
/// in sqlx's shape.
#[derive(Debug)]
pub(crate) struct SqliteError {
    message: String,
    code: Option<i32>,
}

impl SqliteError {
    /// `message` with SQLite's (extended) result `code`, as a [`StoreError::Database`].
    pub(crate) fn store_error(message: &str, code: Option<i32>) -> StoreError {
        StoreError::Database(sqlx::Error::Database(Box::new(SqliteError {
            message: message.to_string(),
            code,
        })))
    }
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "(code: {code}) {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SqliteError {}

impl sqlx::error::DatabaseError for SqliteError {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.map(|c| c.to_string().into())
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        match self.code {
            // SQLITE_CONSTRAINT_UNIQUE / _PRIMARYKEY.
            Some(2067) | Some(1555) => sqlx::error::ErrorKind::UniqueViolation,
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}
