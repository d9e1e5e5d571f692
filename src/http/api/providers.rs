//! AI provider configurations per workspace, with the workspace's own API keys (BYOK).
//!
//! Keys are sealed with AES-256-GCM ([`crate::crypto::KeyCipher`]) before they reach the
//! database, with the row's id as associated data, and are never returned: the API shows the
//! last four characters only. `db::providers::provider_keys` is the one way back to a
//! plaintext key, for the executions engine.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{require, role_in, ApiError, Caller, Json, Page, Path};
use crate::crypto::last_four;
use crate::db::providers::{self, ProviderChange, ProviderConfig};
use crate::db::{new_id, Action};
use crate::engine::ai::key_families;
use crate::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(set_provider, delete_provider))
}

/// The AI providers a workspace can configure: the key families of the engine's provider
/// families ([`key_families`]), so that the API lists none of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider(&'static str);

impl Provider {
    /// Every provider, in the engine's order.
    pub fn all() -> impl Iterator<Item = Provider> {
        key_families().map(Provider)
    }

    /// The name stored in the database and used in paths.
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Parses a provider name.
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::all().find(|p| p.as_str() == s)
    }

    /// "claude, openai, gemini or llama" (`last` is the word before the last name).
    fn names(last: &str) -> String {
        let names: Vec<&str> = key_families().collect();
        match names.split_last() {
            Some((tail, [])) => tail.to_string(),
            Some((tail, rest)) => format!("{}{last}{tail}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// The schema a derived `ToSchema` gave the enum this was: a string, one of the names.
impl utoipa::PartialSchema for Provider {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("The AI providers a workspace can configure."))
            .enum_values(Some(key_families()))
            .into()
    }
}

impl ToSchema for Provider {}

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
    Provider::parse(name).ok_or_else(|| {
        ApiError::field(
            "provider",
            format!("must be one of {}", Provider::names(", ")),
        )
    })
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
    let items = providers::providers(&app.db, &id).await?;
    // One row per provider at most: one page always holds them all.
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
           ("provider" = inline(Provider), Path, description = Provider::names(" or "))),
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
    let change = |row_id: &str| ProviderChange {
        key: key
            .zip(cipher)
            .map(|(key, c)| (c.encrypt(row_id, key), last_four(key))),
        is_enabled: body.is_enabled,
        priority: body.priority,
        max_tokens_per_request: body.max_tokens_per_request,
    };
    // The key is sealed to the row id, so the id must be known before writing: update the
    // existing row, or insert with a fresh id. A concurrent insert or delete of the same
    // provider sends us round again.
    for _ in 0..3 {
        match providers::provider_id(&app.db, &id, provider.as_str()).await? {
            Some(row_id) => {
                let row = providers::update_provider(&app.db, &row_id, &change(&row_id)).await?;
                if let Some(row) = row {
                    return Ok((StatusCode::OK, axum::Json(row)));
                }
            }
            None => {
                let row_id = new_id();
                let change = change(&row_id);
                if change.key.is_none() {
                    return Err(ApiError::field("apiKey", "required when adding a provider"));
                }
                let row =
                    providers::insert_provider(&app.db, &row_id, &id, provider.as_str(), &change)
                        .await?;
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
           ("provider" = inline(Provider), Path, description = Provider::names(" or "))),
    responses((status = 204, description = "Deleted")))]
async fn delete_provider(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, provider)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    let provider = provider_param(&provider)?;
    if !providers::delete_provider(&app.db, &id, provider.as_str()).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_providers_are_the_engines_key_families_under_their_old_names() {
        let names: Vec<&str> = Provider::all().map(Provider::as_str).collect();
        assert_eq!(names, ["claude", "openai", "gemini", "llama"]);
        assert_eq!(Provider::names(" or "), "claude, openai, gemini or llama");
        assert_eq!(Provider::parse("gemini"), Some(Provider("gemini")));
        // The demo takes no key.
        assert_eq!(Provider::parse("demo"), None);
    }
}
