//! Execution leases (issue 18, docs/scale-out.md §7): when several nodes share one Postgres,
//! a node runs an execution only while it holds the execution's lease row, renews it every
//! few seconds, and takes over executions whose lease lapsed. Every time is read from the
//! DATABASE's clock (`clock_timestamp()`, not the statement's start), so the nodes' clocks
//! never have to agree; only their rates matter.
//!
//! Postgres only: a SQLite server is one process, which its file lock already proves, so it
//! never calls these (they return an error there). The lease of a new execution is written
//! with it, in [`crate::executions::insert`]; the event writer's check is
//! [`crate::executions::apply_fenced`].

use std::time::Duration;

use sqlx::PgPool;

use super::{Db, DbError};

type Result<T> = std::result::Result<T, DbError>;

/// Now in ms by the database's clock (Postgres).
pub(crate) const PG_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
/// Now in ms by the database's clock (SQLite; only the lease insert runs there).
pub(crate) const SQLITE_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

/// A lease to write with a new execution: held by `owner` for `ttl` from the insert.
#[derive(Clone, Copy, Debug)]
pub struct NewLease<'a> {
    /// The node that runs the execution.
    pub owner: &'a str,
    /// How long the lease holds unless renewed.
    pub ttl: Duration,
}

/// A renewed lease, as the renewal answers for each execution it still holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// The execution.
    pub execution: String,
    /// The lease's epoch (unchanged by a renewal).
    pub epoch: i64,
    /// Someone asked (on any node) to cancel it.
    pub cancel_requested: bool,
}

/// Who holds an execution's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The node.
    pub owner: String,
    /// The epoch it holds.
    pub epoch: i64,
    /// Whether the lease has not expired yet (by the database's clock).
    pub live: bool,
}

/// A stored decision on a human block that still waits: its owner wakes the block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDecision {
    /// The execution.
    pub execution: String,
    /// The block's key.
    pub block: String,
    /// The decision, as JSON.
    pub decision: String,
}

fn pg(db: &Db) -> Result<&PgPool> {
    match db {
        Db::Postgres(p) => Ok(p),
        Db::Sqlite(_) => Err(DbError::Sqlx(sqlx::Error::Configuration(
            "execution leases need Postgres (a SQLite server runs alone)".into(),
        ))),
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Extends `owner`'s leases on `executions` to now + `ttl`, and answers for each one it
/// still holds (whether or not it had expired: nobody took it). An execution missing from
/// the answer was taken over (or deleted with its workflow): its owner must stop it and
/// record nothing.
pub async fn renew(
    db: &Db,
    owner: &str,
    executions: &[String],
    ttl: Duration,
) -> Result<Vec<Renewed>> {
    if executions.is_empty() {
        return Ok(Vec::new());
    }
    // Rows locked in id order, as the takeover and the event writer lock them, so the three
    // cannot deadlock on each other.
    let sql = format!(
        "WITH mine AS (SELECT execution_id FROM execution_leases \
           WHERE owner = $1 AND execution_id = ANY($2) ORDER BY execution_id FOR UPDATE) \
         UPDATE execution_leases l SET expires_at = {PG_NOW} + $3 \
         FROM mine, executions x \
         WHERE l.execution_id = mine.execution_id AND x.id = l.execution_id \
         RETURNING l.execution_id, l.epoch, x.cancel_requested_at IS NOT NULL"
    );
    let rows: Vec<(String, i64, bool)> = sqlx::query_as(&sql)
        .bind(owner)
        .bind(executions)
        .bind(ms(ttl))
        .fetch_all(pg(db)?)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(execution, epoch, cancel_requested)| Renewed {
            execution,
            epoch,
            cancel_requested,
        })
        .collect())
}

/// Takes the leases of up to `limit` unfinished executions that have none or an expired one
/// (oldest first), leaving out `except` (what `owner` runs already), and returns each taken
/// execution with its new epoch. Two nodes sweeping at once take disjoint sets: the
/// conflicting insert re-checks the expiry under the row lock.
pub async fn claim_expired(
    db: &Db,
    owner: &str,
    except: &[String],
    limit: i64,
    ttl: Duration,
) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "INSERT INTO execution_leases (execution_id, owner, epoch, expires_at) \
         SELECT x.id, $1, 1, {PG_NOW} + $2 FROM executions x \
         LEFT JOIN execution_leases l ON l.execution_id = x.id \
         WHERE x.status IN ('pending', 'running') \
           AND (l.execution_id IS NULL OR l.expires_at < {PG_NOW}) \
           AND x.id <> ALL($3) \
         ORDER BY x.id LIMIT $4 \
         ON CONFLICT (execution_id) DO UPDATE SET owner = excluded.owner, \
           epoch = execution_leases.epoch + 1, expires_at = excluded.expires_at \
         WHERE execution_leases.expires_at < {PG_NOW} \
         RETURNING execution_id, epoch"
    );
    let mut rows: Vec<(String, i64)> = sqlx::query_as(&sql)
        .bind(owner)
        .bind(ms(ttl))
        .bind(except)
        .bind(limit.max(0))
        .fetch_all(pg(db)?)
        .await?;
    rows.sort();
    Ok(rows)
}

/// Lets `owner`'s leases on `executions` expire now (a graceful shutdown), so another node
/// takes them at its next sweep instead of a lease period later.
pub async fn release(db: &Db, owner: &str, executions: &[String]) -> Result<u64> {
    if executions.is_empty() {
        return Ok(0);
    }
    // One ms in the past: a sweep in the same millisecond compares `expires_at < now` and
    // would otherwise see the released lease as still live.
    let sql = format!(
        "UPDATE execution_leases SET expires_at = {PG_NOW} - 1 \
         WHERE owner = $1 AND execution_id = ANY($2) AND expires_at > {PG_NOW}"
    );
    Ok(sqlx::query(&sql)
        .bind(owner)
        .bind(executions)
        .execute(pg(db)?)
        .await?
        .rows_affected())
}

/// Asks for a pending or running execution to be cancelled wherever it runs; false when it
/// is not pending or running. Works on both backends (the flag is only read in a cluster).
pub async fn request_cancel(db: &Db, execution: &str) -> Result<bool> {
    let done = crate::with_pool!(db, p => sqlx::query(
        "UPDATE executions SET cancel_requested_at = COALESCE(cancel_requested_at, $2) \
         WHERE id = $1 AND status IN ('pending', 'running')")
        .bind(execution).bind(crate::now_ms()).execute(p).await?.rows_affected());
    Ok(done == 1)
}

/// Who holds `execution`'s lease, if anyone ever did.
pub async fn owner_of(db: &Db, execution: &str) -> Result<Option<Owner>> {
    let sql = format!(
        "SELECT owner, epoch, expires_at > {PG_NOW} FROM execution_leases WHERE execution_id = $1"
    );
    let row: Option<(String, i64, bool)> = sqlx::query_as(&sql)
        .bind(execution)
        .fetch_optional(pg(db)?)
        .await?;
    Ok(row.map(|(owner, epoch, live)| Owner { owner, epoch, live }))
}

/// The decisions stored (by any node) on human blocks of `executions` that still wait: the
/// owner hands each to its waiting block.
pub async fn pending_decisions(db: &Db, executions: &[String]) -> Result<Vec<StoredDecision>> {
    if executions.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT execution_id, block_id, decision FROM execution_blocks \
         WHERE execution_id = ANY($1) AND status = 'waiting' AND decision IS NOT NULL \
         ORDER BY execution_id, block_id",
    )
    .bind(executions)
    .fetch_all(pg(db)?)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(execution, block, decision)| StoredDecision {
            execution,
            block,
            decision,
        })
        .collect())
}
