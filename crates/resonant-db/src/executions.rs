//! Executions in the database: the `executions` row, one `execution_blocks` row per block
//! state (the resume point after a restart), and the `execution_events` log editors replay.

use serde::Serialize;
use utoipa::ToSchema;

use super::{now_ms, Db, DbError};
use crate::with_pool;

type Result<T> = std::result::Result<T, DbError>;

const EXEC_COLS: &str = "id, workflow_id, workspace_id, user_id, status, input, options, output, graph, \
    state_vector, current_block_id, tokens_used, cost_usd, started_at, completed_at, duration_ms, error, \
    idempotency_key, rerun_of, created_at, trigger_id, version_id, pruned_at";

const BLOCK_COLS: &str =
    "execution_id, block_id, status, attempt, output, error, provider, model, \
    tokens_used, cost_usd, wake_at, decision, started_at, completed_at";

/// An `executions` row as stored (JSON columns as text).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ExecutionRow {
    /// Id (UUIDv7).
    pub id: String,
    /// The workflow that ran.
    pub workflow_id: String,
    /// Its workspace.
    pub workspace_id: String,
    /// Who started it.
    pub user_id: String,
    /// pending, running, completed, failed or cancelled.
    pub status: String,
    /// The input object, as JSON.
    pub input: String,
    /// The start options, as JSON.
    pub options: String,
    /// The outputs (output block id → value), as JSON.
    pub output: Option<String>,
    /// The blocks and connections that ran, as JSON.
    pub graph: String,
    /// The document's state vector when it started.
    pub state_vector: Vec<u8>,
    /// The block that last started.
    pub current_block_id: Option<String>,
    /// Tokens used by its AI calls.
    pub tokens_used: i64,
    /// Their cost in US dollars.
    pub cost_usd: f64,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms, once finished.
    pub completed_at: Option<i64>,
    /// Run time, once finished.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// The execution this one re-runs.
    pub rerun_of: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// The trigger that started it (`None`: a user did).
    pub trigger_id: Option<String>,
    /// The published version it ran (`None`: the live document).
    pub version_id: Option<String>,
    /// When retention removed its events, block rows and large values (Unix ms).
    pub pruned_at: Option<i64>,
}

/// An `execution_blocks` row: one block's (or one loop iteration's block's) state.
#[derive(Clone, Debug, sqlx::FromRow, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockRow {
    /// The execution.
    #[serde(skip)]
    pub execution_id: String,
    /// The block's key: its id, prefixed by `<loop>[<i>]/` inside a loop iteration.
    pub block_id: String,
    /// running, waiting, completed, failed or skipped.
    pub status: String,
    /// The attempt (1-based).
    pub attempt: i64,
    /// Its output, as JSON text.
    #[serde(skip)]
    pub output: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The AI provider that answered.
    pub provider: Option<String>,
    /// The model.
    pub model: Option<String>,
    /// Tokens used.
    pub tokens_used: i64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// A delay's or human block's deadline (Unix ms).
    pub wake_at: Option<i64>,
    /// A human decision or a condition's branch.
    pub decision: Option<String>,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub completed_at: Option<i64>,
}

/// A change to persist, in order, through the event log's writer.
#[derive(Clone, Debug)]
pub enum Write {
    /// An event with its seq.
    Event {
        /// The execution.
        execution: String,
        /// Its per-execution sequence number.
        seq: i64,
        /// The event as JSON.
        json: String,
    },
    /// A block's new state (insert or replace).
    Block(BlockRow),
    /// The execution's new status and totals.
    Status(StatusUpdate),
    /// One provider call's usage record (and the user's token count).
    Usage(UsageRow),
}

/// A usage record to write (owned [`crate::usage::NewUsage`]).
#[derive(Clone, Debug)]
pub struct UsageRow {
    /// Its id.
    pub id: String,
    /// The workspace that pays.
    pub workspace_id: String,
    /// The user who ran it.
    pub user_id: String,
    /// The execution.
    pub execution_id: String,
    /// Provider id.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// US dollars.
    pub cost_usd: f64,
    /// Unix ms.
    pub created_at: i64,
}

/// The mutable part of an `executions` row.
#[derive(Clone, Debug)]
pub struct StatusUpdate {
    /// The execution.
    pub execution: String,
    /// The new status.
    pub status: &'static str,
    /// The block that last started.
    pub current_block: Option<String>,
    /// Total tokens.
    pub tokens: i64,
    /// Total cost.
    pub cost: f64,
    /// Outputs, when finished.
    pub output: Option<String>,
    /// The error, when failed.
    pub error: Option<String>,
    /// Unix ms, when finished.
    pub completed_at: Option<i64>,
    /// Run time, when finished.
    pub duration_ms: Option<i64>,
}

/// Applies `writes` in one transaction, in order.
pub async fn apply(db: &Db, writes: &[Write]) -> Result<()> {
    apply_fenced(db, writes, None).await.map(|_| ())
}

/// The leases a node holds, for [`apply_fenced`]: its node id and, per execution it runs,
/// the epoch it runs it at.
#[derive(Clone, Copy, Debug)]
pub struct Fence<'a> {
    /// The node.
    pub owner: &'a str,
    /// Execution id → the epoch of the lease its run was started or taken over with.
    pub epochs: &'a std::collections::HashMap<String, i64>,
}

impl Write {
    /// The execution the write belongs to.
    pub fn execution(&self) -> &str {
        match self {
            Write::Event { execution, .. } => execution,
            Write::Block(b) => &b.execution_id,
            Write::Status(s) => &s.execution,
            Write::Usage(u) => &u.execution_id,
        }
    }
}

/// Applies `writes` in one transaction, in order, and says which were applied. With a
/// `fence` (cluster mode), the writes of an execution are applied only if the fence's node
/// still holds its lease at the epoch the fence gives; the others are left out (`false`):
/// their execution was taken over, and its new owner continues from what is stored. The lease
/// rows are read `FOR SHARE`, so a takeover waits for this transaction and its new owner then
/// reads everything it stored.
pub async fn apply_fenced(
    db: &Db,
    writes: &[Write],
    fence: Option<Fence<'_>>,
) -> Result<Vec<bool>> {
    let mut ids: Vec<&str> = Vec::new();
    if fence.is_some() {
        ids = writes.iter().map(Write::execution).collect();
        ids.sort_unstable();
        ids.dedup();
    }
    let lock = match db {
        Db::Postgres(_) => " ORDER BY execution_id FOR SHARE",
        // One writer at a time on SQLite: nothing to lock against.
        Db::Sqlite(_) => "",
    };
    let mut kept = vec![true; writes.len()];
    with_pool!(db, p => {
        let mut tx = p.begin().await?;
        if let Some(f) = fence {
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT execution_id, epoch FROM execution_leases WHERE owner = $1                  AND execution_id IN ({}){lock}",
                if marks.is_empty() { "NULL".to_string() } else { marks.join(", ") }
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql).bind(f.owner);
            for id in &ids {
                q = q.bind(*id);
            }
            let held: std::collections::HashMap<String, i64> =
                q.fetch_all(&mut *tx).await?.into_iter().collect();
            for (w, k) in writes.iter().zip(kept.iter_mut()) {
                let id = w.execution();
                *k = matches!((held.get(id), f.epochs.get(id)), (Some(a), Some(b)) if a == b);
            }
        }
        for (w, _) in writes.iter().zip(&kept).filter(|(_, k)| **k) {
            match w {
                Write::Event { execution, seq, json } => {
                    // A retried batch after a lost commit reply re-inserts the same rows.
                    sqlx::query("INSERT INTO execution_events (execution_id, seq, event) VALUES ($1, $2, $3) \
                                 ON CONFLICT (execution_id, seq) DO NOTHING")
                        .bind(execution).bind(seq).bind(json).execute(&mut *tx).await?;
                }
                Write::Block(b) => {
                    sqlx::query(&format!("INSERT INTO execution_blocks ({BLOCK_COLS}) \
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                        ON CONFLICT (execution_id, block_id) DO UPDATE SET status = excluded.status, \
                        attempt = excluded.attempt, output = excluded.output, error = excluded.error, \
                        provider = excluded.provider, model = excluded.model, tokens_used = excluded.tokens_used, \
                        cost_usd = excluded.cost_usd, wake_at = excluded.wake_at, decision = excluded.decision, \
                        started_at = excluded.started_at, completed_at = excluded.completed_at"))
                        .bind(&b.execution_id).bind(&b.block_id).bind(&b.status).bind(b.attempt)
                        .bind(&b.output).bind(&b.error).bind(&b.provider).bind(&b.model)
                        .bind(b.tokens_used).bind(b.cost_usd).bind(b.wake_at).bind(&b.decision)
                        .bind(b.started_at).bind(b.completed_at)
                        .execute(&mut *tx).await?;
                }
                Write::Usage(r) => {
                    let u = crate::usage::NewUsage {
                        workspace_id: &r.workspace_id,
                        user_id: &r.user_id,
                        execution_id: Some(&r.execution_id),
                        provider: &r.provider,
                        model: &r.model,
                        input_tokens: r.input_tokens,
                        output_tokens: r.output_tokens,
                        cost_usd: r.cost_usd,
                        created_at: r.created_at,
                    };
                    crate::write_usage!(tx, &r.id, &u);
                }
                Write::Status(s) => {
                    sqlx::query("UPDATE executions SET status = $2, current_block_id = COALESCE($3, current_block_id), \
                                 tokens_used = $4, cost_usd = $5, output = COALESCE($6, output), error = $7, \
                                 completed_at = $8, duration_ms = $9 \
                                 WHERE id = $1 AND status IN ('pending', 'running')")
                        .bind(&s.execution).bind(s.status).bind(&s.current_block).bind(s.tokens)
                        .bind(s.cost).bind(&s.output).bind(&s.error).bind(s.completed_at).bind(s.duration_ms)
                        .execute(&mut *tx).await?;
                }
            }
        }
        tx.commit().await?;
    });
    Ok(kept)
}

/// A new execution to insert.
pub struct NewExecution<'a> {
    /// Id.
    pub id: &'a str,
    /// The workflow.
    pub workflow_id: &'a str,
    /// Its workspace.
    pub workspace_id: &'a str,
    /// Who starts it.
    pub user_id: &'a str,
    /// Input JSON.
    pub input: &'a str,
    /// Options JSON.
    pub options: &'a str,
    /// Graph JSON.
    pub graph: &'a str,
    /// The document's state vector.
    pub state_vector: &'a [u8],
    /// Idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// The execution re-run.
    pub rerun_of: Option<&'a str>,
    /// The trigger that starts it.
    pub trigger_id: Option<&'a str>,
    /// The published version it runs.
    pub version_id: Option<&'a str>,
    /// Its lease, written in the same transaction (cluster mode): no other node's takeover
    /// sweep can see the execution without it.
    pub lease: Option<crate::leases::NewLease<'a>>,
    /// Running caps counted in the same transaction (cluster mode on Postgres): several
    /// nodes start executions, and no node's own count sees the others'.
    pub caps: Option<RunningCaps>,
}

/// Most executions running at once (pending or running; 0: no cap).
#[derive(Debug, Clone, Copy)]
pub struct RunningCaps {
    /// Per user.
    pub per_user: usize,
    /// Per workspace.
    pub per_workspace: usize,
}

/// Why [`insert`] started nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotInserted {
    /// The idempotency key was used before: the earlier execution's id.
    Existing(String),
    /// A running cap is reached: the workspace's (`workspace`) or the user's.
    OverCap {
        /// Whether it is the workspace's cap rather than the user's.
        workspace: bool,
        /// The cap.
        cap: usize,
    },
}

/// Inserts a pending execution and counts it on the workflow. With an idempotency key that
/// this user already used on this workflow, inserts nothing and returns the earlier one's id,
/// so a retried request starts one execution; over a cap in `e.caps`, inserts nothing.
pub async fn insert(db: &Db, e: &NewExecution<'_>) -> Result<std::result::Result<(), NotInserted>> {
    let now = now_ms();
    let db_now = match db {
        Db::Postgres(_) => crate::leases::PG_NOW,
        Db::Sqlite(_) => crate::leases::SQLITE_NOW,
    };
    // SQLite serves one node, whose own count is exact.
    let caps = e.caps.filter(|_| matches!(db, Db::Postgres(_)));
    with_pool!(db, p => {
        // Looked up before the transaction: on SQLite a transaction that reads first and
        // writes later fails (SQLITE_BUSY_SNAPSHOT, 517) whenever another connection commits
        // in between, which the event writer does all the time. Starting with the write takes
        // the lock up front (and waits for it); the unique index settles a race.
        if let Some(key) = e.idempotency_key {
            let existing: Option<(String,)> = sqlx::query_as(
                "SELECT id FROM executions WHERE workflow_id = $1 AND user_id = $2 AND idempotency_key = $3")
                .bind(e.workflow_id).bind(e.user_id).bind(key).fetch_optional(p).await?;
            if let Some((id,)) = existing {
                return Ok(Err(NotInserted::Existing(id)));
            }
        }
        let mut tx = p.begin().await?;
        if let Some(caps) = caps {
            // Counted under a transaction lock per user and per workspace (always in that
            // order, so two starts cannot deadlock): a start waits for the one before it to
            // commit, and its count then sees that one's row.
            for (workspace, column, id, cap) in [
                (false, "user_id", e.user_id, caps.per_user),
                (true, "workspace_id", e.workspace_id, caps.per_workspace),
            ] {
                if cap == 0 {
                    continue;
                }
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(format!("resonant-running:{column}:{id}"))
                    .execute(&mut *tx).await?;
                let (n,): (i64,) = sqlx::query_as(&format!(
                    "SELECT count(*) FROM executions WHERE {column} = $1 AND status IN ('pending', 'running')"))
                    .bind(id).fetch_one(&mut *tx).await?;
                if usize::try_from(n).unwrap_or(usize::MAX) >= cap {
                    return Ok(Err(NotInserted::OverCap { workspace, cap }));
                }
            }
        }
        let inserted = sqlx::query(&format!("INSERT INTO executions ({EXEC_COLS}) VALUES \
            ($1, $2, $3, $4, 'pending', $5, $6, NULL, $7, $8, NULL, 0, 0, $9, NULL, NULL, NULL, $10, $11, $9, $12, $13, NULL)"))
            .bind(e.id).bind(e.workflow_id).bind(e.workspace_id).bind(e.user_id).bind(e.input)
            .bind(e.options).bind(e.graph).bind(e.state_vector).bind(now).bind(e.idempotency_key)
            .bind(e.rerun_of).bind(e.trigger_id).bind(e.version_id)
            .execute(&mut *tx).await;
        if let Err(err) = inserted {
            // Two requests with the same key raced: the other one's row is the answer.
            if let (Some(key), sqlx::Error::Database(d)) = (e.idempotency_key, &err) {
                if d.is_unique_violation() {
                    drop(tx);
                    let (id,): (String,) = sqlx::query_as(
                        "SELECT id FROM executions WHERE workflow_id = $1 AND user_id = $2 AND idempotency_key = $3")
                        .bind(e.workflow_id).bind(e.user_id).bind(key).fetch_one(p).await?;
                    return Ok(Err(NotInserted::Existing(id)));
                }
            }
            return Err(err.into());
        }
        sqlx::query("UPDATE workflows SET execution_count = execution_count + 1, last_executed_at = $2 WHERE id = $1")
            .bind(e.workflow_id).bind(now).execute(&mut *tx).await?;
        if let Some(lease) = &e.lease {
            sqlx::query(&format!("INSERT INTO execution_leases (execution_id, owner, epoch, expires_at) \
                                  VALUES ($1, $2, 1, {db_now} + $3)"))
                .bind(e.id).bind(lease.owner)
                .bind(i64::try_from(lease.ttl.as_millis()).unwrap_or(i64::MAX))
                .execute(&mut *tx).await?;
        }
        tx.commit().await?;
    });
    Ok(Ok(()))
}

/// One execution.
pub async fn execution(db: &Db, id: &str) -> Result<Option<ExecutionRow>> {
    let sql = format!("SELECT {EXEC_COLS} FROM executions WHERE id = $1");
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(p).await?))
}

/// Which trigger started the executions a list shows.
#[derive(Debug, Clone, Copy)]
pub enum TriggerFilter<'a> {
    /// Any, or none.
    Any,
    /// Only those a user started.
    Manual,
    /// Only those this trigger started.
    Trigger(&'a str),
}

/// A workflow's executions, newest first, after the cursor (an execution id).
pub async fn executions(
    db: &Db,
    workflow: &str,
    status: Option<&str>,
    trigger: TriggerFilter<'_>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<ExecutionRow>> {
    let (manual, trigger) = match trigger {
        TriggerFilter::Any => (false, None),
        TriggerFilter::Manual => (true, None),
        TriggerFilter::Trigger(t) => (false, Some(t)),
    };
    let sql = format!(
        "SELECT {EXEC_COLS} FROM executions WHERE workflow_id = $1 AND ($2 IS NULL OR status = $2) \
         AND ($3 IS NULL OR id < $3) AND ($5 IS NULL OR trigger_id = $5) \
         AND (NOT $6 OR trigger_id IS NULL) ORDER BY id DESC LIMIT $4"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql)
        .bind(workflow).bind(status).bind(before).bind(limit).bind(trigger).bind(manual)
        .fetch_all(p).await?))
}

/// Executions that were pending or running, oldest first: resumed at start.
pub async fn unfinished(db: &Db) -> Result<Vec<ExecutionRow>> {
    let sql = format!(
        "SELECT {EXEC_COLS} FROM executions WHERE status IN ('pending', 'running') ORDER BY id"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).fetch_all(p).await?))
}

/// An execution's block states.
pub async fn blocks(db: &Db, execution: &str) -> Result<Vec<BlockRow>> {
    let sql = format!(
        "SELECT {BLOCK_COLS} FROM execution_blocks WHERE execution_id = $1 ORDER BY started_at, block_id"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(execution).fetch_all(p).await?))
}

/// One page of an execution's block states, in the order of [`blocks`], after the
/// `(started_at, block_id)` of the previous page's last row.
pub async fn blocks_page(
    db: &Db,
    execution: &str,
    after: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<BlockRow>> {
    let (at, id) = after.unwrap_or((i64::MIN, ""));
    let sql = format!(
        "SELECT {BLOCK_COLS} FROM execution_blocks WHERE execution_id = $1 \
         AND (started_at > $2 OR (started_at = $2 AND block_id > $3)) \
         ORDER BY started_at, block_id LIMIT $4"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(execution).bind(at).bind(id).bind(limit)
        .fetch_all(p).await?))
}

/// An execution of `workflow`: its events after `after`, in order, at most `limit`.
pub async fn events(
    db: &Db,
    workflow: &str,
    execution: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>> {
    // The workflow check keeps a client from replaying another workflow's execution.
    with_pool!(db, p => Ok(sqlx::query_as(
        "SELECT e.seq, e.event FROM execution_events e JOIN executions x ON x.id = e.execution_id \
         WHERE e.execution_id = $1 AND x.workflow_id = $2 AND e.seq > $3 ORDER BY e.seq LIMIT $4")
        .bind(execution).bind(workflow).bind(after).bind(limit).fetch_all(p).await?))
}

/// The last seq stored for an execution (0 before any).
pub async fn last_seq(db: &Db, execution: &str) -> Result<i64> {
    let row: (Option<i64>,) = with_pool!(db, p => sqlx::query_as(
        "SELECT MAX(seq) FROM execution_events WHERE execution_id = $1")
        .bind(execution).fetch_one(p).await?);
    Ok(row.0.unwrap_or(0))
}

/// Ids of a workflow's unfinished executions.
pub async fn running_in(db: &Db, workflow: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = with_pool!(db, p => sqlx::query_as(
        "SELECT id FROM executions WHERE workflow_id = $1 AND status IN ('pending', 'running') ORDER BY id")
        .bind(workflow).fetch_all(p).await?);
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// An execution's usage so far: `(tokens, cost)` over its usage records.
pub async fn execution_usage(db: &Db, execution: &str) -> Result<(i64, f64)> {
    let row: (Option<i64>, Option<f64>) = with_pool!(db, p => sqlx::query_as(
        "SELECT CAST(SUM(total_tokens) AS BIGINT), CAST(SUM(cost_usd) AS DOUBLE PRECISION) FROM usage_records WHERE execution_id = $1")
        .bind(execution).fetch_one(p).await?);
    Ok((row.0.unwrap_or(0), row.1.unwrap_or(0.0)))
}

/// Ends an execution that cannot run on: `status` with `error`, unless it already ended.
pub async fn finish(db: &Db, execution: &str, status: &str, error: Option<&str>) -> Result<()> {
    with_pool!(db, p => sqlx::query(
        "UPDATE executions SET status = $2, error = $3, completed_at = $4, \
         duration_ms = $4 - started_at WHERE id = $1 AND status IN ('pending', 'running')")
        .bind(execution).bind(status).bind(error).bind(now_ms()).execute(p).await.map(|_| ())?);
    Ok(())
}

/// The user's `(tokens_used, tokens_limit)`.
pub async fn user_tokens(db: &Db, user: &str) -> Result<(i64, i64)> {
    with_pool!(db, p => Ok(sqlx::query_as(
        "SELECT tokens_used, tokens_limit FROM users WHERE id = $1")
        .bind(user).fetch_one(p).await?))
}

/// Stores a human decision on a waiting block that has none yet, of an execution that is
/// still pending or running; false when there is no such block (already decided, not
/// waiting, or its execution ended: a cancelled run leaves its waiting rows as they were).
pub async fn set_decision(db: &Db, execution: &str, block: &str, decision: &str) -> Result<bool> {
    let done = with_pool!(db, p => sqlx::query(
        "UPDATE execution_blocks SET decision = $3 WHERE execution_id = $1 AND block_id = $2 \
         AND status = 'waiting' AND decision IS NULL \
         AND EXISTS (SELECT 1 FROM executions x WHERE x.id = $1 AND x.status IN ('pending', 'running'))")
        .bind(execution).bind(block).bind(decision).execute(p).await?.rows_affected());
    Ok(done == 1)
}

/// One block state of an execution.
pub async fn block(db: &Db, execution: &str, block: &str) -> Result<Option<BlockRow>> {
    let sql = format!(
        "SELECT {BLOCK_COLS} FROM execution_blocks WHERE execution_id = $1 AND block_id = $2"
    );
    with_pool!(db, p => Ok(sqlx::query_as(&sql).bind(execution).bind(block).fetch_optional(p).await?))
}

/// Values larger than this are dropped from a pruned execution's row (its input, output).
pub const PRUNED_VALUE_BYTES: i64 = 16 << 10;

/// What one pass of [`prune`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Executions pruned.
    pub executions: u64,
    /// Their events deleted.
    pub events: u64,
    /// Their block rows deleted.
    pub blocks: u64,
}

/// Prunes up to `batch` executions that finished before `cutoff` (Unix ms) and are not
/// pruned yet: deletes their events and block rows, and drops their graph, state vector and
/// any input or output over [`PRUNED_VALUE_BYTES`]; the row stays with its status, trigger,
/// times, tokens and cost. One transaction per batch, so a batch is pruned whole or not at
/// all, and other writers wait for one batch at most.
pub async fn prune(db: &Db, cutoff: i64, batch: i64) -> Result<Pruned> {
    let now = now_ms();
    with_pool!(db, p => {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM executions WHERE pruned_at IS NULL AND completed_at < $1 \
             AND status IN ('completed', 'failed', 'cancelled') ORDER BY completed_at LIMIT $2")
            .bind(cutoff).bind(batch).fetch_all(p).await?;
        if ids.is_empty() {
            return Ok(Pruned::default());
        }
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let list = marks.join(", ");
        let n = ids.len();
        let del_events = format!("DELETE FROM execution_events WHERE execution_id IN ({list})");
        let del_blocks = format!("DELETE FROM execution_blocks WHERE execution_id IN ({list})");
        let shrink = format!(
            "UPDATE executions SET graph = '{{}}', state_vector = ${a}, \
             output = CASE WHEN length(output) > ${b} THEN NULL ELSE output END, \
             input = CASE WHEN length(input) > ${b} THEN '{{}}' ELSE input END, \
             pruned_at = ${c} WHERE id IN ({list})",
            a = n + 1, b = n + 2, c = n + 3);
        let mut tx = p.begin().await?;
        let mut q = sqlx::query(&del_events);
        for (id,) in &ids {
            q = q.bind(id);
        }
        let events = q.execute(&mut *tx).await?.rows_affected();
        let mut q = sqlx::query(&del_blocks);
        for (id,) in &ids {
            q = q.bind(id);
        }
        let blocks = q.execute(&mut *tx).await?.rows_affected();
        let mut q = sqlx::query(&shrink);
        for (id,) in &ids {
            q = q.bind(id);
        }
        let executions = q
            .bind(Vec::<u8>::new()).bind(PRUNED_VALUE_BYTES).bind(now)
            .execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(Pruned { executions, events, blocks })
    })
}
