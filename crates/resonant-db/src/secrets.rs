//! Workspace secrets: values a webhook block reaches as `{{ secrets.NAME }}`, sealed like
//! provider keys ([`KeyCipher`], to the row id) and never handed back over the API.
//! [`secret_values`] is the one way back to plaintext, for the engine at call time.

use serde::Serialize;
use utoipa::ToSchema;

use super::{now_ms, Db, DbError};
use crate::crypto::KeyCipher;
use crate::with_pool;

/// A secret as the API shows it: its name and dates, never its value.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    /// The name templates use (`secrets.NAME`).
    pub name: String,
    /// Who set it first.
    pub created_by: String,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last time its value was set (Unix ms).
    pub updated_at: i64,
}

/// A workspace's secrets, by name.
pub async fn secrets(db: &Db, workspace: &str) -> Result<Vec<SecretInfo>, DbError> {
    Ok(with_pool!(db, p => sqlx::query_as(
        "SELECT name, created_by, created_at, updated_at FROM workspace_secrets \
         WHERE workspace_id = $1 ORDER BY name")
        .bind(workspace).fetch_all(p).await?))
}

/// Sets secret `name` of `workspace` to `value`, sealing it to its row; the stored secret
/// and whether it was added (false: its value was replaced).
pub async fn set_secret(
    db: &Db,
    cipher: &KeyCipher,
    workspace: &str,
    name: &str,
    value: &str,
    user: &str,
) -> Result<(SecretInfo, bool), DbError> {
    // The value is sealed to the row id, so the id must be known before writing: replace
    // the existing row's value, or insert with a fresh id. A concurrent insert or delete of
    // the same name sends us round again.
    for _ in 0..3 {
        let existing: Option<(String,)> = with_pool!(db, p => sqlx::query_as(
            "SELECT id FROM workspace_secrets WHERE workspace_id = $1 AND name = $2")
            .bind(workspace).bind(name).fetch_optional(p).await?);
        let now = now_ms();
        match existing {
            Some((id,)) => {
                let row: Option<SecretInfo> = with_pool!(db, p => sqlx::query_as(
                    "UPDATE workspace_secrets SET value = $2, updated_at = $3 WHERE id = $1 \
                     RETURNING name, created_by, created_at, updated_at")
                    .bind(&id).bind(cipher.encrypt(&id, value)).bind(now)
                    .fetch_optional(p).await?);
                if let Some(row) = row {
                    return Ok((row, false));
                }
            }
            None => {
                let id = super::new_id();
                let row: Option<SecretInfo> = with_pool!(db, p => sqlx::query_as(
                    "INSERT INTO workspace_secrets (id, workspace_id, name, value, created_by, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                     ON CONFLICT (workspace_id, name) DO NOTHING \
                     RETURNING name, created_by, created_at, updated_at")
                    .bind(&id).bind(workspace).bind(name).bind(cipher.encrypt(&id, value))
                    .bind(user).bind(now)
                    .fetch_optional(p).await?);
                if let Some(row) = row {
                    return Ok((row, true));
                }
            }
        }
    }
    Err(DbError::Conflict(
        "this secret is being changed concurrently; retry".into(),
    ))
}

/// Removes a secret; whether there was one.
pub async fn delete_secret(db: &Db, workspace: &str, name: &str) -> Result<bool, DbError> {
    let n = with_pool!(db, p => sqlx::query(
        "DELETE FROM workspace_secrets WHERE workspace_id = $1 AND name = $2")
        .bind(workspace).bind(name).execute(p).await?.rows_affected());
    Ok(n > 0)
}

/// A workspace's secrets, decrypted, as `(name, value)`: for an execution about to send a
/// request that names them. A value that does not decrypt is left out (and logged by name),
/// so a template naming it fails as if it were not set.
pub async fn secret_values(
    db: &Db,
    cipher: &KeyCipher,
    workspace: &str,
) -> Result<Vec<(String, String)>, DbError> {
    let rows: Vec<(String, String, String)> = with_pool!(db, p => sqlx::query_as(
        "SELECT id, name, value FROM workspace_secrets WHERE workspace_id = $1")
        .bind(workspace).fetch_all(p).await?);
    Ok(rows
        .into_iter()
        .filter_map(|(id, name, sealed)| match cipher.decrypt(&id, &sealed) {
            Ok(v) => Some((name, v)),
            Err(e) => {
                tracing::error!(workspace, secret = %name, error = %e, "a secret does not decrypt");
                None
            }
        })
        .collect())
}
