//! Usage records: one row per provider call, written with the user's token count in one
//! transaction, and a workspace's usage grouped by user, provider and model.

use super::{new_id, Db, DbError};
use crate::with_pool;

/// One provider call to record.
#[derive(Debug, Clone)]
pub struct NewUsage<'a> {
    /// The workspace that pays for it.
    pub workspace_id: &'a str,
    /// The user who ran it.
    pub user_id: &'a str,
    /// The execution it belongs to, if any.
    pub execution_id: Option<&'a str>,
    /// The provider (claude, openai, gemini, llama).
    pub provider: &'a str,
    /// The model.
    pub model: &'a str,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// When the call was made (Unix ms).
    pub created_at: i64,
}

/// Inserts one usage record (`$id`, `$u`: a [`NewUsage`]) and adds its tokens to the user's
/// `tokens_used` on `$tx`, a transaction of either backend: shared by [`record_usage`] and the
/// executions' batched writer. The keyless `demo` provider is recorded but free: its tokens
/// do not count against the plan.
#[macro_export]
macro_rules! write_usage {
    ($tx:ident, $id:expr, $u:expr) => {{
        let u: &$crate::usage::NewUsage<'_> = $u;
        let total = u.input_tokens.saturating_add(u.output_tokens);
        sqlx::query(
            "INSERT INTO usage_records (id, workspace_id, user_id, execution_id, provider, model, \
             input_tokens, output_tokens, total_tokens, cost_usd, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind($id)
        .bind(u.workspace_id)
        .bind(u.user_id)
        .bind(u.execution_id)
        .bind(u.provider)
        .bind(u.model)
        .bind(u.input_tokens)
        .bind(u.output_tokens)
        .bind(total)
        .bind(u.cost_usd)
        .bind(u.created_at)
        .execute(&mut *$tx)
        .await?;
        sqlx::query(
            "UPDATE users SET tokens_used = tokens_used + $2, updated_at = $3 WHERE id = $1",
        )
        .bind(u.user_id)
        .bind(if u.provider == "demo" { 0 } else { total })
        .bind($crate::now_ms())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Records one provider call and adds its tokens to the user's `tokens_used`, in one
/// transaction. Returns the new row's id.
pub async fn record_usage(db: &Db, usage: &NewUsage<'_>) -> Result<String, DbError> {
    let id = new_id();
    with_pool!(db, p => {
        let mut tx = p.begin().await?;
        crate::write_usage!(tx, &id, usage);
        tx.commit().await?;
    });
    Ok(id)
}

/// The sums of a group: input, output, total, cost, requests. SUM of BIGINT is NUMERIC on
/// Postgres and of no declared type on SQLite, hence the casts.
const SUMS: &str = "CAST(COALESCE(SUM(r.input_tokens), 0) AS BIGINT), \
    CAST(COALESCE(SUM(r.output_tokens), 0) AS BIGINT), \
    CAST(COALESCE(SUM(r.total_tokens), 0) AS BIGINT), \
    CAST(COALESCE(SUM(r.cost_usd), 0) AS DOUBLE PRECISION), COUNT(*)";

/// One (user, provider, model) group of a range: user id, email, name, provider, model,
/// input, output and total tokens, cost, requests.
pub type UsageGroup = (
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    i64,
    i64,
    i64,
    f64,
    i64,
);

/// A workspace's usage over `[from, to)` per (user, provider, model), in one statement so that
/// every group comes from the same snapshot (a row recorded meanwhile is in all or none).
pub async fn usage_groups(
    db: &Db,
    workspace: &str,
    from: i64,
    to: i64,
) -> Result<Vec<UsageGroup>, DbError> {
    let sql = format!(
        "SELECT r.user_id, u.email, u.name, r.provider, r.model, {SUMS} \
         FROM usage_records r LEFT JOIN users u ON u.id = r.user_id \
         WHERE r.workspace_id = $1 AND r.created_at >= $2 AND r.created_at < $3 \
         GROUP BY r.user_id, u.email, u.name, r.provider, r.model"
    );
    Ok(with_pool!(db, p => sqlx::query_as(&sql)
        .bind(workspace).bind(from).bind(to)
        .fetch_all(p).await?))
}
