//! Token and cost usage: one row per provider call ([`record_usage`], called by the
//! executions engine), and a workspace's totals over a time range, per user and per
//! provider and model.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{role_in, ApiError, Caller, Path, Query};
use crate::db::{new_id, now_ms, Db, DbError};
use crate::{with_pool, AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(workspace_usage))
}

/// The default range of the usage report: the last 30 days.
const DEFAULT_RANGE_MS: i64 = 30 * 24 * 3600 * 1000;

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
        let u: &$crate::api::usage::NewUsage<'_> = $u;
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
        .bind($crate::db::now_ms())
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

/// `?from=&to=`: the range of the usage report.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start, inclusive (Unix ms). Default: 30 days before `to`.
    pub from: Option<i64>,
    /// End, exclusive (Unix ms). Default: now.
    pub to: Option<i64>,
}

/// Sums over a set of usage rows.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Input plus output tokens.
    pub total_tokens: i64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Number of provider calls.
    pub requests: i64,
}

/// One user's share of a workspace's usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserUsage {
    /// The user's id.
    pub user_id: String,
    /// The user's email.
    pub email: Option<String>,
    /// The user's name.
    pub name: Option<String>,
    /// The user's totals.
    pub totals: UsageTotals,
}

/// One provider and model's share of a workspace's usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    /// The provider.
    pub provider: String,
    /// The model.
    pub model: String,
    /// The model's totals.
    pub totals: UsageTotals,
}

/// A workspace's usage over `[from, to)`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// The workspace.
    pub workspace_id: String,
    /// Start, inclusive (Unix ms).
    pub from: i64,
    /// End, exclusive (Unix ms).
    pub to: i64,
    /// The whole workspace.
    pub totals: UsageTotals,
    /// Per user, largest total first.
    pub by_user: Vec<UserUsage>,
    /// Per provider and model, largest total first.
    pub by_model: Vec<ModelUsage>,
}

/// The sums of a group: input, output, total, cost, requests. SUM of BIGINT is NUMERIC on
/// Postgres and of no declared type on SQLite, hence the casts.
const SUMS: &str = "CAST(COALESCE(SUM(r.input_tokens), 0) AS BIGINT), \
    CAST(COALESCE(SUM(r.output_tokens), 0) AS BIGINT), \
    CAST(COALESCE(SUM(r.total_tokens), 0) AS BIGINT), \
    CAST(COALESCE(SUM(r.cost_usd), 0) AS DOUBLE PRECISION), COUNT(*)";

/// One (user, provider, model) group of the range.
type Group = (
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

impl UsageTotals {
    fn add(&mut self, other: &UsageTotals) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.cost_usd += other.cost_usd;
        self.requests = self.requests.saturating_add(other.requests);
    }
}

/// A workspace's token and cost usage over a time range, in total, per user and per
/// provider and model (any member).
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "Workspace id"), UsageQuery),
    responses((status = 200, body = UsageReport)))]
async fn workspace_usage(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<axum::Json<UsageReport>, ApiError> {
    role_in(&app, &caller, &id).await?;
    let to = q.to.unwrap_or_else(now_ms);
    let from = q.from.unwrap_or(to.saturating_sub(DEFAULT_RANGE_MS));
    if from < 0 {
        return Err(ApiError::field("from", "must not be negative"));
    }
    if from >= to {
        return Err(ApiError::field("from", "must be before `to`"));
    }
    // One statement, so the totals and both breakdowns come from the same snapshot (a row
    // recorded meanwhile is in all three or in none); the groups are few (users × models).
    let sql = format!(
        "SELECT r.user_id, u.email, u.name, r.provider, r.model, {SUMS} \
         FROM usage_records r LEFT JOIN users u ON u.id = r.user_id \
         WHERE r.workspace_id = $1 AND r.created_at >= $2 AND r.created_at < $3 \
         GROUP BY r.user_id, u.email, u.name, r.provider, r.model"
    );
    let groups: Vec<Group> = with_pool!(&app.db, p => sqlx::query_as(&sql)
        .bind(&id).bind(from).bind(to)
        .fetch_all(p).await.map_err(DbError::from)?);
    let mut all = UsageTotals::default();
    let mut users: BTreeMap<String, UserUsage> = BTreeMap::new();
    let mut models: BTreeMap<(String, String), ModelUsage> = BTreeMap::new();
    for (user_id, email, name, provider, model, i, o, t, c, n) in groups {
        let sums = UsageTotals {
            input_tokens: i,
            output_tokens: o,
            total_tokens: t,
            cost_usd: c,
            requests: n,
        };
        all.add(&sums);
        users
            .entry(user_id.clone())
            .or_insert_with(|| UserUsage {
                user_id,
                email,
                name,
                totals: UsageTotals::default(),
            })
            .totals
            .add(&sums);
        models
            .entry((provider.clone(), model.clone()))
            .or_insert_with(|| ModelUsage {
                provider,
                model,
                totals: UsageTotals::default(),
            })
            .totals
            .add(&sums);
    }
    // Largest first; the maps' key order breaks ties, so the order is stable.
    let mut by_user: Vec<UserUsage> = users.into_values().collect();
    by_user.sort_by_key(|u| std::cmp::Reverse(u.totals.total_tokens));
    let mut by_model: Vec<ModelUsage> = models.into_values().collect();
    by_model.sort_by_key(|m| std::cmp::Reverse(m.totals.total_tokens));
    Ok(axum::Json(UsageReport {
        workspace_id: id,
        from,
        to,
        totals: all,
        by_user,
        by_model,
    }))
}
