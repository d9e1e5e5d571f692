//! Block templates: published, listed, read and downloaded (counted once per user).

use super::{new_id, now_ms, Db, DbError};
use crate::with_pool;

/// A template row as stored: `block_type` is the type's name and `config` JSON text, read
/// back by the API layer, which knows the block types.
#[derive(Debug, sqlx::FromRow)]
pub struct TemplateRow {
    /// Id.
    pub id: String,
    /// The user who published it.
    pub created_by: String,
    /// Display name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Marketplace category.
    pub category: String,
    /// The block type's name.
    pub block_type: String,
    /// The block's configuration as JSON text.
    pub config: String,
    /// Whether everyone may see and download it.
    pub is_public: bool,
    /// How many users downloaded it.
    pub downloads: i64,
    /// Average rating, once rated.
    pub rating: Option<f64>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

const COLS: &str = "id, created_by, name, description, category, block_type, config, is_public, \
    downloads, rating, created_at, updated_at";

/// A template to publish.
#[derive(Debug)]
pub struct NewTemplate<'a> {
    /// The publishing user.
    pub created_by: &'a str,
    /// Display name.
    pub name: &'a str,
    /// What it does.
    pub description: &'a str,
    /// Marketplace category.
    pub category: &'a str,
    /// The block type's name.
    pub block_type: &'a str,
    /// The block's configuration as JSON text.
    pub config: &'a str,
    /// Whether everyone may see and download it.
    pub is_public: bool,
}

/// Stores a new template and returns its row.
pub async fn insert_template(db: &Db, t: &NewTemplate<'_>) -> Result<TemplateRow, DbError> {
    let sql = format!(
        "INSERT INTO block_templates (id, created_by, name, description, category, block_type, config, \
         is_public, downloads, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9) \
         RETURNING {COLS}"
    );
    Ok(with_pool!(db, p => sqlx::query_as(&sql)
        .bind(new_id())
        .bind(t.created_by)
        .bind(t.name)
        .bind(t.description)
        .bind(t.category)
        .bind(t.block_type)
        .bind(t.config)
        .bind(t.is_public)
        .bind(now_ms())
        .fetch_one(p)
        .await?))
}

/// Public templates, or with `mine` that user's own (private ones included), newest first,
/// optionally in one category, below the cursor id.
pub async fn list_templates(
    db: &Db,
    mine: Option<&str>,
    category: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<TemplateRow>, DbError> {
    // Public ones, or the caller's own: the caller's id decides which.
    let sql = format!(
        "SELECT {COLS} FROM block_templates \
         WHERE (CASE WHEN $1 IS NULL THEN is_public = TRUE ELSE created_by = $1 END) \
         AND ($2 IS NULL OR category = $2) AND ($3 IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4"
    );
    Ok(with_pool!(db, p => sqlx::query_as(&sql)
        .bind(mine)
        .bind(category)
        .bind(cursor)
        .bind(limit)
        .fetch_all(p)
        .await?))
}

/// One template as `user` may see it: public, or theirs.
pub async fn template(db: &Db, id: &str, user: &str) -> Result<Option<TemplateRow>, DbError> {
    let sql = format!(
        "SELECT {COLS} FROM block_templates WHERE id = $1 AND (is_public = TRUE OR created_by = $2)"
    );
    Ok(with_pool!(db, p => sqlx::query_as(&sql)
        .bind(id)
        .bind(user)
        .fetch_optional(p)
        .await?))
}

/// Counts `user`'s download of a template they may see (once per user) and returns it with
/// the new count; `None` when they may not see it.
pub async fn download_template(
    db: &Db,
    id: &str,
    user: &str,
) -> Result<Option<TemplateRow>, DbError> {
    // Counted once per user, so one account cannot inflate a template's popularity: the
    // (template, user) row and the count change in one transaction, and concurrent
    // downloads by different users each add one. The template's `updatedAt` is about its
    // content, so a download leaves it alone.
    // The first statement writes, so SQLite takes the write lock at once (waiting its
    // turn) rather than upgrading a read lock, which concurrent downloads deadlock on.
    let select = format!(
        "SELECT {COLS} FROM block_templates WHERE id = $1 AND (is_public = TRUE OR created_by = $2)"
    );
    Ok(with_pool!(db, p => {
        let mut tx = p.begin().await?;
        let first = sqlx::query(
            "INSERT INTO template_downloads (template_id, user_id, downloaded_at) \
             SELECT id, $2, $3 FROM block_templates WHERE id = $1 AND (is_public = TRUE OR created_by = $2) \
             ON CONFLICT (template_id, user_id) DO NOTHING")
            .bind(id).bind(user).bind(now_ms())
            .execute(&mut *tx).await?.rows_affected() == 1;
        if first {
            sqlx::query("UPDATE block_templates SET downloads = downloads + 1 WHERE id = $1")
                .bind(id).execute(&mut *tx).await?;
        }
        let row = sqlx::query_as(&select).bind(id).bind(user)
            .fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        row
    }))
}
