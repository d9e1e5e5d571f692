//! Triggers: what starts a workflow without an editor (a webhook URL or a cron schedule),
//! and the workflow's published version they run.
//!
//! A schedule's next tick is a column, `next_fire_at`, that a node advances with a
//! compare-and-set ([`advance`]) after it has started (or skipped) that tick; the execution
//! of a tick is inserted under the idempotency key [`tick_key`], unique per workflow and
//! user, so two nodes that see the same due tick start one execution between them, and a
//! node that dies between the start and the advance repeats the start harmlessly.

use super::{now_ms, Db, DbError};
use crate::with_pool;

/// A `triggers` row as stored (the webhook secret sealed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TriggerRow {
    /// Id; a webhook's URL is `/hooks/{id}`.
    pub id: String,
    /// The workflow it starts.
    pub workflow_id: String,
    /// Its workspace.
    pub workspace_id: String,
    /// `webhook` or `schedule`.
    pub kind: String,
    /// A label.
    pub name: Option<String>,
    /// Whether it fires.
    pub enabled: bool,
    /// `published` (the published version) or `draft` (the live document).
    pub target: String,
    /// The user its executions run as (who created it).
    pub run_as: String,
    /// Webhook: `hmac` or `bearer`.
    pub auth: Option<String>,
    /// Webhook: the secret, sealed to the row id.
    pub secret: Option<String>,
    /// Webhook: the secret's last four characters.
    pub secret_last4: Option<String>,
    /// Webhook: the request headers passed to the input, as a JSON list of names.
    pub pass_headers: Option<String>,
    /// Schedule: the cron expression.
    pub cron: Option<String>,
    /// Schedule: the IANA time zone.
    pub timezone: Option<String>,
    /// Schedule: `skip` or `run-once`.
    pub missed: Option<String>,
    /// Schedule: the next tick not yet fired (Unix ms).
    pub next_fire_at: Option<i64>,
    /// The last tick fired (Unix ms).
    pub last_fired_at: Option<i64>,
    /// Why its last firing started nothing (`None` after one that started).
    pub last_error: Option<String>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

const COLS: &str = "id, workflow_id, workspace_id, kind, name, enabled, target, run_as, auth, \
    secret, secret_last4, pass_headers, cron, timezone, missed, next_fire_at, last_fired_at, \
    last_error, created_at, updated_at";

/// The idempotency key of a schedule's tick: one execution per trigger and tick.
pub fn tick_key(trigger: &str, tick_ms: i64) -> String {
    format!("schedule:{trigger}:{tick_ms}")
}

/// Inserts a trigger (its id, sealed secret and first tick chosen by the caller).
pub async fn insert_trigger(db: &Db, t: &TriggerRow) -> Result<TriggerRow, DbError> {
    let sql = format!(
        "INSERT INTO triggers ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13, $14, $15, $16, $17, $18, $19, $20) RETURNING {COLS}"
    );
    Ok(with_pool!(db, p => sqlx::query_as(&sql)
        .bind(&t.id).bind(&t.workflow_id).bind(&t.workspace_id).bind(&t.kind).bind(&t.name)
        .bind(t.enabled).bind(&t.target).bind(&t.run_as).bind(&t.auth).bind(&t.secret)
        .bind(&t.secret_last4).bind(&t.pass_headers).bind(&t.cron).bind(&t.timezone)
        .bind(&t.missed).bind(t.next_fire_at).bind(t.last_fired_at).bind(&t.last_error)
        .bind(t.created_at)
        .bind(t.updated_at)
        .fetch_one(p).await?))
}

/// Writes every changeable field of `t` back (name, enabled, target, headers, schedule,
/// secret); `None` when the trigger no longer exists.
pub async fn update_trigger(db: &Db, t: &TriggerRow) -> Result<Option<TriggerRow>, DbError> {
    let sql = format!(
        "UPDATE triggers SET name = $2, enabled = $3, target = $4, auth = $5, secret = $6, \
         secret_last4 = $7, pass_headers = $8, cron = $9, timezone = $10, missed = $11, \
         next_fire_at = $12, updated_at = $13 WHERE id = $1 RETURNING {COLS}"
    );
    Ok(with_pool!(db, p => sqlx::query_as(&sql)
        .bind(&t.id).bind(&t.name).bind(t.enabled).bind(&t.target).bind(&t.auth)
        .bind(&t.secret).bind(&t.secret_last4).bind(&t.pass_headers).bind(&t.cron)
        .bind(&t.timezone).bind(&t.missed).bind(t.next_fire_at).bind(now_ms())
        .fetch_optional(p).await?))
}

/// One trigger.
pub async fn trigger(db: &Db, id: &str) -> Result<Option<TriggerRow>, DbError> {
    let sql = format!("SELECT {COLS} FROM triggers WHERE id = $1");
    Ok(with_pool!(db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await?))
}

/// A workflow's triggers, oldest first.
pub async fn triggers(db: &Db, workflow: &str) -> Result<Vec<TriggerRow>, DbError> {
    let sql = format!("SELECT {COLS} FROM triggers WHERE workflow_id = $1 ORDER BY id");
    Ok(with_pool!(db, p => sqlx::query_as(&sql).bind(workflow).fetch_all(p).await?))
}

/// How many triggers a workflow has (for its cap).
pub async fn count_triggers(db: &Db, workflow: &str) -> Result<i64, DbError> {
    let (n,): (i64,) = with_pool!(db, p => sqlx::query_as(
        "SELECT count(*) FROM triggers WHERE workflow_id = $1")
        .bind(workflow).fetch_one(p).await?);
    Ok(n)
}

/// Removes a trigger; whether there was one.
pub async fn delete_trigger(db: &Db, id: &str) -> Result<bool, DbError> {
    let n = with_pool!(db, p => sqlx::query("DELETE FROM triggers WHERE id = $1")
        .bind(id).execute(p).await?.rows_affected());
    Ok(n > 0)
}

/// Records why a firing started nothing (`None`: the last one started).
pub async fn set_last_error(db: &Db, id: &str, error: Option<&str>) -> Result<(), DbError> {
    with_pool!(db, p => sqlx::query("UPDATE triggers SET last_error = $2 WHERE id = $1")
        .bind(id).bind(error).execute(p).await.map(drop)?);
    Ok(())
}

/// Records a webhook signature as used; false when it was used before (a replay). Drops
/// this trigger's signatures seen before `forget_before`, which are stale by then anyway.
pub async fn remember_signature(
    db: &Db,
    trigger: &str,
    signature: &str,
    forget_before: i64,
) -> Result<bool, DbError> {
    with_pool!(db, p => sqlx::query(
        "DELETE FROM hook_signatures WHERE trigger_id = $1 AND seen_at < $2")
        .bind(trigger).bind(forget_before).execute(p).await.map(drop)?);
    let n = with_pool!(db, p => sqlx::query(
        "INSERT INTO hook_signatures (trigger_id, signature, seen_at) VALUES ($1, $2, $3) \
         ON CONFLICT (trigger_id, signature) DO NOTHING")
        .bind(trigger).bind(signature).bind(now_ms())
        .execute(p).await?.rows_affected());
    Ok(n > 0)
}

/// Gives a claimed signature back (its request started nothing, so a resend may).
pub async fn forget_signature(db: &Db, trigger: &str, signature: &str) -> Result<(), DbError> {
    with_pool!(db, p => sqlx::query(
        "DELETE FROM hook_signatures WHERE trigger_id = $1 AND signature = $2")
        .bind(trigger).bind(signature).execute(p).await.map(drop)?);
    Ok(())
}

/// Enabled schedules whose next tick is at or before `now`, earliest first.
pub async fn due_schedules(db: &Db, now: i64, limit: i64) -> Result<Vec<TriggerRow>, DbError> {
    let sql = format!(
        "SELECT {COLS} FROM triggers WHERE kind = 'schedule' AND enabled \
         AND next_fire_at IS NOT NULL AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2"
    );
    Ok(with_pool!(db, p => sqlx::query_as(&sql).bind(now).bind(limit).fetch_all(p).await?))
}

/// The earliest next tick of any enabled schedule (how long the ticker may sleep).
pub async fn next_due(db: &Db) -> Result<Option<i64>, DbError> {
    let (at,): (Option<i64>,) = with_pool!(db, p => sqlx::query_as(
        "SELECT min(next_fire_at) FROM triggers WHERE kind = 'schedule' AND enabled")
        .fetch_one(p).await?);
    Ok(at)
}

/// Moves a schedule's next tick from `from` to `to`, recording `fired` as its last fired
/// tick (when one fired); false when another node (or an edit) moved it first.
pub async fn advance(
    db: &Db,
    id: &str,
    from: i64,
    to: Option<i64>,
    fired: Option<i64>,
) -> Result<bool, DbError> {
    let n = with_pool!(db, p => sqlx::query(
        "UPDATE triggers SET next_fire_at = $3, last_fired_at = COALESCE($4, last_fired_at) \
         WHERE id = $1 AND next_fire_at = $2")
        .bind(id).bind(from).bind(to).bind(fired)
        .execute(p).await?.rows_affected());
    Ok(n > 0)
}

/// Marks version `version_id` of a workflow published, pinning its blocks and connections
/// (`graph`, JSON) for the triggers; `None` unpublishes.
pub async fn publish(
    db: &Db,
    workflow: &str,
    version: Option<(&str, &str)>,
) -> Result<(), DbError> {
    let (id, graph) = version.unzip();
    with_pool!(db, p => sqlx::query(
        "UPDATE workflows SET published_version_id = $2, published_graph = $3, updated_at = $4 \
         WHERE id = $1")
        .bind(workflow).bind(id).bind(graph).bind(now_ms()).execute(p).await.map(drop)?);
    Ok(())
}

/// A workflow's published version: its id and pinned graph (JSON).
pub async fn published(db: &Db, workflow: &str) -> Result<Option<(String, String)>, DbError> {
    let row: Option<(Option<String>, Option<String>)> = with_pool!(db, p => sqlx::query_as(
        "SELECT published_version_id, published_graph FROM workflows WHERE id = $1")
        .bind(workflow).fetch_optional(p).await?);
    Ok(row.and_then(|(id, graph)| id.zip(graph)))
}
