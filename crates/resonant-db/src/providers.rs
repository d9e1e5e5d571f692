//! AI provider configurations per workspace: the REST view (never the key) and the engine's
//! view (enabled ones, decrypted). Keys are sealed to their row id ([`KeyCipher`]), so a row's
//! id is known before its key is written.

use serde::Serialize;
use utoipa::ToSchema;

use super::{now_ms, Db, DbError};
use crate::crypto::KeyCipher;
use crate::with_pool;

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

/// A change to a provider's configuration; `None` fields keep their value (on insert: the
/// defaults).
#[derive(Debug, Default)]
pub struct ProviderChange {
    /// The sealed key and its last four characters.
    pub key: Option<(String, String)>,
    /// Whether executions may use it.
    pub is_enabled: Option<bool>,
    /// Order of preference.
    pub priority: Option<i64>,
    /// `Some(None)` removes the cap.
    pub max_tokens_per_request: Option<Option<i64>>,
}

/// A workspace's provider configurations, in order of preference.
pub async fn providers(db: &Db, workspace: &str) -> Result<Vec<ProviderConfig>, DbError> {
    let sql = format!(
        "SELECT {COLS} FROM ai_provider_configs WHERE workspace_id = $1 ORDER BY priority, provider"
    );
    Ok(with_pool!(db, p => sqlx::query_as(&sql).bind(workspace).fetch_all(p).await?))
}

/// The row id of a workspace's configuration of `provider`, if it has one.
pub async fn provider_id(
    db: &Db,
    workspace: &str,
    provider: &str,
) -> Result<Option<String>, DbError> {
    let row: Option<(String,)> = with_pool!(db, p => sqlx::query_as(
        "SELECT id FROM ai_provider_configs WHERE workspace_id = $1 AND provider = $2")
        .bind(workspace).bind(provider)
        .fetch_optional(p).await?);
    Ok(row.map(|(id,)| id))
}

/// Changes row `id`; `None` when it no longer exists.
pub async fn update_provider(
    db: &Db,
    id: &str,
    change: &ProviderChange,
) -> Result<Option<ProviderConfig>, DbError> {
    let sql = format!(
        "UPDATE ai_provider_configs SET api_key = COALESCE($2, api_key), \
         api_key_last4 = COALESCE($3, api_key_last4), is_enabled = COALESCE($4, is_enabled), \
         priority = COALESCE($5, priority), \
         max_tokens_per_request = CASE WHEN $6 THEN $7 ELSE max_tokens_per_request END, \
         updated_at = $8 WHERE id = $1 RETURNING {COLS}"
    );
    let (secret, last4) = change.key.clone().unzip();
    Ok(with_pool!(db, p => sqlx::query_as(&sql)
        .bind(id)
        .bind(secret)
        .bind(last4)
        .bind(change.is_enabled)
        .bind(change.priority)
        .bind(change.max_tokens_per_request.is_some())
        .bind(change.max_tokens_per_request.flatten())
        .bind(now_ms())
        .fetch_optional(p).await?))
}

/// Adds row `id` (a fresh [`super::new_id`], which the key was sealed to; enabled and priority 0 unless the change says otherwise); `None` when the
/// workspace has this provider already (a concurrent insert won).
pub async fn insert_provider(
    db: &Db,
    id: &str,
    workspace: &str,
    provider: &str,
    change: &ProviderChange,
) -> Result<Option<ProviderConfig>, DbError> {
    let sql = format!(
        "INSERT INTO ai_provider_configs (id, workspace_id, provider, api_key, api_key_last4, \
         is_enabled, priority, max_tokens_per_request, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (workspace_id, provider) DO NOTHING RETURNING {COLS}"
    );
    let (secret, last4) = change.key.clone().unzip();
    Ok(with_pool!(db, p => sqlx::query_as(&sql)
        .bind(id)
        .bind(workspace)
        .bind(provider)
        .bind(secret)
        .bind(last4)
        .bind(change.is_enabled.unwrap_or(true))
        .bind(change.priority.unwrap_or(0))
        .bind(change.max_tokens_per_request.flatten())
        .bind(now_ms())
        .fetch_optional(p).await?))
}

/// Removes a workspace's configuration of `provider`; whether there was one.
pub async fn delete_provider(db: &Db, workspace: &str, provider: &str) -> Result<bool, DbError> {
    let n = with_pool!(db, p => sqlx::query(
        "DELETE FROM ai_provider_configs WHERE workspace_id = $1 AND provider = $2")
        .bind(workspace).bind(provider)
        .execute(p).await?.rows_affected());
    Ok(n > 0)
}

/// A usable provider key, decrypted, as the AI router takes it: a workspace's (from
/// [`provider_keys`]) or the server's own ([`ProviderKey::new`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderKey {
    /// claude, openai, gemini or llama.
    pub provider: String,
    /// Order of preference: lower numbers are tried first.
    pub priority: i64,
    /// Cap on the tokens of one request to this provider.
    pub max_tokens_per_request: Option<i64>,
    /// The plaintext key.
    pub api_key: String,
    /// Replaces the provider's base URL, when set.
    pub base_url: Option<String>,
}

impl ProviderKey {
    /// A key that is not a workspace's (the server's flags, the router's config file):
    /// priority 0, no token cap.
    pub fn new(
        provider: impl Into<String>,
        api_key: impl Into<String>,
        base_url: Option<String>,
    ) -> ProviderKey {
        ProviderKey {
            provider: provider.into(),
            priority: 0,
            max_tokens_per_request: None,
            api_key: api_key.into(),
            base_url,
        }
    }
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself: these end up in logs.
        f.debug_struct("ProviderKey")
            .field("provider", &self.provider)
            .field("priority", &self.priority)
            .field("max_tokens_per_request", &self.max_tokens_per_request)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// A workspace's usable keys: its enabled providers with a key, lowest priority number
/// first. The one way back to a plaintext key. A stored key that does not decrypt (another
/// server key, a tampered row) is left out and logged, never returned.
pub async fn provider_keys(
    db: &Db,
    cipher: &KeyCipher,
    workspace: &str,
) -> Result<Vec<ProviderKey>, DbError> {
    type Stored = (String, String, i64, Option<i64>, String, Option<String>);
    let rows: Vec<Stored> = with_pool!(db, p => sqlx::query_as(
        "SELECT id, provider, priority, max_tokens_per_request, api_key, base_url \
         FROM ai_provider_configs \
         WHERE workspace_id = $1 AND is_enabled = TRUE AND api_key IS NOT NULL \
         ORDER BY priority, provider")
        .bind(workspace)
        .fetch_all(p)
        .await?);
    Ok(rows
        .into_iter()
        .filter_map(|(id, provider, priority, max_tokens_per_request, sealed, base_url)| {
            match cipher.decrypt(&id, &sealed) {
                Ok(api_key) => Some(ProviderKey {
                    provider,
                    priority,
                    max_tokens_per_request,
                    api_key,
                    base_url,
                }),
                Err(e) => {
                    tracing::error!(workspace, provider, error = %e, "stored provider key unusable");
                    None
                }
            }
        })
        .collect())
}
