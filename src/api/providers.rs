//! AI provider configurations per workspace, with the workspace's own API keys (BYOK).
//!
//! Keys are sealed with AES-256-GCM ([`crate::crypto::KeyCipher`]) before they reach the
//! database, with the row's id as associated data, and are never returned: the API shows the
//! last four characters only. [`provider_keys`] is the one way back to a plaintext key, for
//! the executions engine.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{require, role_in, ApiError, Caller, Json, Page, Path};
use crate::crypto::{last_four, KeyCipher};
use crate::db::{new_id, now_ms, Action, Db, DbError};
use crate::{with_pool, AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(set_provider, delete_provider))
}

/// The AI providers a workspace can configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Anthropic Claude.
    Claude,
    /// OpenAI.
    Openai,
    /// Google Gemini.
    Gemini,
    /// Meta Llama (through a hosted API).
    Llama,
}

impl Provider {
    /// Every provider, in the order of the documentation.
    pub const ALL: [Provider; 4] = [
        Provider::Claude,
        Provider::Openai,
        Provider::Gemini,
        Provider::Llama,
    ];

    /// The name stored in the database and used in paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Claude => "claude",
            Provider::Openai => "openai",
            Provider::Gemini => "gemini",
            Provider::Llama => "llama",
        }
    }

    /// Parses a provider name.
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A workspace's configuration of one provider. The key itself is never shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfig {
    /// Id.
    pub id: String,
    /// The workspace.
    pub workspace_id: String,
    /// claude, openai, gemini or llama.
    pub provider: String,
    /// The last four characters of the stored API key (empty for a key under eight
    /// characters; absent without a key).
    pub api_key_last4: Option<String>,
    /// Whether executions may use it.
    pub is_enabled: bool,
    /// Order of preference: lower numbers are tried first.
    pub priority: i64,
    /// Cap on the tokens of one request to this provider.
    pub max_tokens_per_request: Option<i64>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

const COLS: &str = "id, workspace_id, provider, api_key_last4, is_enabled, priority, \
    max_tokens_per_request, created_at, updated_at";

/// `PUT /workspaces/{id}/providers/{provider}` body. Absent fields keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetProvider {
    /// The provider's API key (8–1000 characters). Required when adding a provider;
    /// on an existing one, a new key replaces (rotates) the old.
    pub api_key: Option<String>,
    /// Order of preference, 0–1000: lower numbers are tried first (default 0).
    pub priority: Option<i64>,
    /// Whether executions may use it (default true).
    pub is_enabled: Option<bool>,
    /// Cap on the tokens of one request, 1–10000000; `null` removes the cap.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub max_tokens_per_request: Option<Option<i64>>,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`, by `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The validated provider named in a path.
fn provider_param(name: &str) -> Result<Provider, ApiError> {
    Provider::parse(name)
        .ok_or_else(|| ApiError::field("provider", "must be one of claude, openai, gemini, llama"))
}

/// The validated API key: surrounding whitespace (a pasted newline) is dropped.
fn api_key(value: &str) -> Result<&str, ApiError> {
    let key = value.trim();
    let len = key.chars().count();
    if !(8..=1000).contains(&len) {
        return Err(ApiError::field("apiKey", "must be 8-1000 characters"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::field(
            "apiKey",
            "must not contain spaces or control characters",
        ));
    }
    Ok(key)
}

/// A workspace's provider configurations, in order of preference (any member).
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/providers", tag = "providers",
    params(("id" = String, Path, description = "Workspace id")),
    responses((status = 200, body = Page<ProviderConfig>)))]
async fn list_providers(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Page<ProviderConfig>>, ApiError> {
    role_in(&app, &caller, &id).await?;
    let sql = format!(
        "SELECT {COLS} FROM ai_provider_configs WHERE workspace_id = $1 ORDER BY priority, provider"
    );
    let items: Vec<ProviderConfig> = with_pool!(&app.db, p => sqlx::query_as(&sql)
        .bind(&id)
        .fetch_all(p)
        .await
        .map_err(DbError::from)?);
    // Four providers at most: one page always holds them all.
    Ok(axum::Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Adds or changes a provider's configuration, setting or rotating its API key (owner or
/// admin). 201 when added, 200 when changed. Storing a key needs the server's encryption
/// key (`--encryption-key`): without it, 409.
#[utoipa::path(put, path = "/api/v1/workspaces/{id}/providers/{provider}", tag = "providers",
    params(("id" = String, Path, description = "Workspace id"),
           ("provider" = inline(Provider), Path, description = "claude, openai, gemini or llama")),
    request_body = SetProvider,
    responses((status = 200, body = ProviderConfig, description = "Changed"),
              (status = 201, body = ProviderConfig, description = "Added")))]
async fn set_provider(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, provider)): Path<(String, String)>,
    Json(body): Json<SetProvider>,
) -> Result<(StatusCode, axum::Json<ProviderConfig>), ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    let provider = provider_param(&provider)?;
    let key = body.api_key.as_deref().map(api_key).transpose()?;
    if body.priority.is_some_and(|p| !(0..=1000).contains(&p)) {
        return Err(ApiError::field("priority", "must be from 0 to 1000"));
    }
    if let Some(Some(max)) = body.max_tokens_per_request {
        if !(1..=10_000_000).contains(&max) {
            return Err(ApiError::field(
                "maxTokensPerRequest",
                "must be from 1 to 10000000",
            ));
        }
    }
    let cipher = match key {
        Some(_) => Some(app.cipher.as_ref().ok_or_else(|| {
            ApiError::Conflict(
                "provider keys cannot be stored: this server has no encryption key \
                 (--encryption-key / RESONANT_ENCRYPTION_KEY)"
                    .into(),
            )
        })?),
        None => None,
    };
    let sealed = |row_id: &str| -> Option<(String, String)> {
        let key = key?;
        Some((cipher?.encrypt(row_id, key), last_four(key)))
    };
    // The key is sealed to the row id, so the id must be known before writing: update the
    // existing row, or insert with a fresh id. A concurrent insert or delete of the same
    // provider sends us round again.
    for _ in 0..3 {
        let existing: Option<(String,)> = with_pool!(&app.db, p => sqlx::query_as(
            "SELECT id FROM ai_provider_configs WHERE workspace_id = $1 AND provider = $2")
            .bind(&id).bind(provider.as_str())
            .fetch_optional(p).await.map_err(DbError::from)?);
        let now = now_ms();
        match existing {
            Some((row_id,)) => {
                let (secret, last4) = sealed(&row_id).unzip();
                let sql = format!(
                    "UPDATE ai_provider_configs SET api_key = COALESCE($2, api_key), \
                     api_key_last4 = COALESCE($3, api_key_last4), is_enabled = COALESCE($4, is_enabled), \
                     priority = COALESCE($5, priority), \
                     max_tokens_per_request = CASE WHEN $6 THEN $7 ELSE max_tokens_per_request END, \
                     updated_at = $8 WHERE id = $1 RETURNING {COLS}"
                );
                let row: Option<ProviderConfig> = with_pool!(&app.db, p => sqlx::query_as(&sql)
                    .bind(&row_id)
                    .bind(secret)
                    .bind(last4)
                    .bind(body.is_enabled)
                    .bind(body.priority)
                    .bind(body.max_tokens_per_request.is_some())
                    .bind(body.max_tokens_per_request.flatten())
                    .bind(now)
                    .fetch_optional(p).await.map_err(DbError::from)?);
                if let Some(row) = row {
                    return Ok((StatusCode::OK, axum::Json(row)));
                }
            }
            None => {
                let row_id = new_id();
                let (secret, last4) = sealed(&row_id)
                    .ok_or_else(|| ApiError::field("apiKey", "required when adding a provider"))?;
                let sql = format!(
                    "INSERT INTO ai_provider_configs (id, workspace_id, provider, api_key, api_key_last4, \
                     is_enabled, priority, max_tokens_per_request, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                     ON CONFLICT (workspace_id, provider) DO NOTHING RETURNING {COLS}"
                );
                let row: Option<ProviderConfig> = with_pool!(&app.db, p => sqlx::query_as(&sql)
                    .bind(&row_id)
                    .bind(&id)
                    .bind(provider.as_str())
                    .bind(secret)
                    .bind(last4)
                    .bind(body.is_enabled.unwrap_or(true))
                    .bind(body.priority.unwrap_or(0))
                    .bind(body.max_tokens_per_request.flatten())
                    .bind(now)
                    .fetch_optional(p).await.map_err(DbError::from)?);
                if let Some(row) = row {
                    return Ok((StatusCode::CREATED, axum::Json(row)));
                }
            }
        }
    }
    Err(ApiError::Conflict(
        "this provider is being changed concurrently; retry".into(),
    ))
}

/// Removes a provider's configuration and its key (owner or admin).
#[utoipa::path(delete, path = "/api/v1/workspaces/{id}/providers/{provider}", tag = "providers",
    params(("id" = String, Path, description = "Workspace id"),
           ("provider" = inline(Provider), Path, description = "claude, openai, gemini or llama")),
    responses((status = 204, description = "Deleted")))]
async fn delete_provider(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, provider)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    let provider = provider_param(&provider)?;
    let deleted = with_pool!(&app.db, p => sqlx::query(
        "DELETE FROM ai_provider_configs WHERE workspace_id = $1 AND provider = $2")
        .bind(&id).bind(provider.as_str())
        .execute(p).await.map_err(DbError::from)?.rows_affected());
    if deleted == 0 {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A workspace's usable keys for the executions engine: `(provider, priority,
/// max_tokens_per_request, plaintext key)` of its enabled providers, lowest priority number
/// first. A stored key that does not decrypt (another server key, a tampered row) is left
/// out and logged, never returned.
pub async fn provider_keys(
    db: &Db,
    cipher: &KeyCipher,
    workspace: &str,
) -> Result<Vec<(String, i64, Option<i64>, String)>, DbError> {
    type Stored = (String, String, i64, Option<i64>, String);
    let rows: Vec<Stored> = with_pool!(db, p => sqlx::query_as(
        "SELECT id, provider, priority, max_tokens_per_request, api_key FROM ai_provider_configs \
         WHERE workspace_id = $1 AND is_enabled = TRUE AND api_key IS NOT NULL \
         ORDER BY priority, provider")
        .bind(workspace)
        .fetch_all(p)
        .await?);
    Ok(rows
        .into_iter()
        .filter_map(
            |(id, provider, priority, max, sealed)| match cipher.decrypt(&id, &sealed) {
                Ok(key) => Some((provider, priority, max, key)),
                Err(e) => {
                    tracing::error!(workspace, provider, error = %e, "stored provider key unusable");
                    None
                }
            },
        )
        .collect())
}
