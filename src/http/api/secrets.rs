//! Workspace secrets: credentials a webhook block sends as `{{ secrets.NAME }}`, so they are
//! not written into the shared document (which every viewer reads) or copied into every
//! execution's pinned graph and every version.
//!
//! Write-only: values are sealed with AES-256-GCM like provider keys and never returned;
//! the API lists names. The engine decrypts them at call time and redacts their values from
//! everything a run stores or sends (`crates/resonant-engine/src/block/webhook.rs`).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{require, role_in, ApiError, Caller, Json, Page, Path};
use crate::db::secrets::{self, SecretInfo};
use crate::db::Action;
use crate::AppState;

/// Most secrets one workspace may hold.
const MAX_SECRETS: usize = 200;
/// The longest secret value, in bytes.
const MAX_VALUE_BYTES: usize = 16 << 10;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_secrets))
        .routes(routes!(set_secret, delete_secret))
}

/// `PUT /workspaces/{id}/secrets/{name}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetSecret {
    /// The value (4 characters to 16 KiB). It is never shown again.
    #[schema(min_length = 4)]
    pub value: String,
}

/// The validated name of a secret: what a template writes after `secrets.`.
fn secret_name(name: &str) -> Result<&str, ApiError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || name.len() > 64 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ApiError::field(
            "name",
            "must be 1-64 letters, digits or underscores, not starting with a digit",
        ));
    }
    Ok(name)
}

/// A workspace's secrets by name (any member; never their values).
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/secrets", tag = "secrets",
    params(("id" = String, Path, description = "Workspace id")),
    responses((status = 200, body = Page<SecretInfo>)))]
async fn list_secrets(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Page<SecretInfo>>, ApiError> {
    role_in(&app, &caller, &id).await?;
    let items = secrets::secrets(&app.db, &id).await?;
    // At most MAX_SECRETS: one page holds them all.
    Ok(axum::Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Adds a secret or replaces its value (owner or admin). 201 when added, 200 when replaced.
/// Storing one needs the server's encryption key (`--encryption-key`): without it, 409.
#[utoipa::path(put, path = "/api/v1/workspaces/{id}/secrets/{name}", tag = "secrets",
    params(("id" = String, Path, description = "Workspace id"),
           ("name" = String, Path, description = "The name templates use: `secrets.NAME`")),
    request_body = SetSecret,
    responses((status = 200, body = SecretInfo, description = "Replaced"),
              (status = 201, body = SecretInfo, description = "Added")))]
async fn set_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    Json(body): Json<SetSecret>,
) -> Result<(StatusCode, axum::Json<SecretInfo>), ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    let name = secret_name(&name)?;
    let len = body.value.chars().count();
    if len < crate::engine::block::MIN_SECRET_CHARS || body.value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::field(
            "value",
            format!(
                "must be {} characters to {MAX_VALUE_BYTES} bytes",
                crate::engine::block::MIN_SECRET_CHARS
            ),
        ));
    }
    let cipher = app.cipher.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "secrets cannot be stored: this server has no encryption key \
             (--encryption-key / RESONANT_ENCRYPTION_KEY)"
                .into(),
        )
    })?;
    let existing = secrets::secrets(&app.db, &id).await?;
    if !existing.iter().any(|s| s.name == name) && existing.len() >= MAX_SECRETS {
        return Err(ApiError::QuotaExceeded(format!(
            "a workspace may hold at most {MAX_SECRETS} secrets"
        )));
    }
    let (info, added) =
        secrets::set_secret(&app.db, cipher, &id, name, &body.value, caller.id()).await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(info)))
}

/// Removes a secret (owner or admin). Webhook blocks naming it fail from then on.
#[utoipa::path(delete, path = "/api/v1/workspaces/{id}/secrets/{name}", tag = "secrets",
    params(("id" = String, Path, description = "Workspace id"),
           ("name" = String, Path, description = "The secret's name")),
    responses((status = 204, description = "Deleted")))]
async fn delete_secret(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::ManageMembers)?;
    let name = secret_name(&name)?;
    if !secrets::delete_secret(&app.db, &id, name).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_template_identifiers() {
        for ok in ["TOKEN", "api_key", "_x", "A1"] {
            assert!(secret_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "a-b", "a.b", "a b", &"x".repeat(65)] {
            assert!(secret_name(bad).is_err(), "{bad}");
        }
    }
}
