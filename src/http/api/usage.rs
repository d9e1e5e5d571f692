//! Token and cost usage: a workspace's totals over a time range, per user and per provider
//! and model (the rows are written by the executions engine through [`crate::db::usage`]).

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{role_in, ApiError, Caller, Path, Query};
use crate::db::{self, now_ms};
use crate::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(workspace_usage))
}

/// The default range of the usage report: the last 30 days.
const DEFAULT_RANGE_MS: i64 = 30 * 24 * 3600 * 1000;

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
    let groups = db::usage::usage_groups(&app.db, &id, from, to).await?;
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
