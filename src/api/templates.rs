//! Block templates: the marketplace of reusable, preconfigured blocks. Anyone signed in may
//! publish one; public templates are listed by category and counted as they are downloaded,
//! private ones are visible to their creator only.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{text, ApiError, Caller, Json, Page, PageQuery, Path, Query};
use crate::db::{self, new_id, now_ms, DbError};
use crate::{with_pool, AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates, publish_template))
        .routes(routes!(get_template))
        .routes(routes!(download_template))
}

/// Largest accepted `config`, serialised as JSON.
const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// The kind of block a template configures (the seed's block types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BlockType {
    /// Takes the workflow's input.
    Input,
    /// Calls an AI model.
    Ai,
    /// Produces the workflow's output.
    Output,
    /// Branches on a condition.
    Condition,
    /// Reshapes data.
    Transform,
}

impl BlockType {
    fn as_str(self) -> &'static str {
        match self {
            BlockType::Input => "input",
            BlockType::Ai => "ai",
            BlockType::Output => "output",
            BlockType::Condition => "condition",
            BlockType::Transform => "transform",
        }
    }

    fn parse(s: &str) -> Option<BlockType> {
        Some(match s {
            "input" => BlockType::Input,
            "ai" => BlockType::Ai,
            "output" => BlockType::Output,
            "condition" => BlockType::Condition,
            "transform" => BlockType::Transform,
            _ => return None,
        })
    }
}

/// A published block template.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockTemplate {
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
    /// The block type it configures.
    #[serde(rename = "type")]
    pub block_type: BlockType,
    /// The block's configuration (a JSON object).
    #[schema(value_type = Object)]
    pub config: Value,
    /// Whether everyone may see and download it.
    pub is_public: bool,
    /// How many times it was downloaded.
    pub downloads: i64,
    /// Average rating, once rated.
    pub rating: Option<f64>,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

/// The row as stored: `config` is JSON text.
#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    created_by: String,
    name: String,
    description: String,
    category: String,
    block_type: String,
    config: String,
    is_public: bool,
    downloads: i64,
    rating: Option<f64>,
    created_at: i64,
    updated_at: i64,
}

const COLS: &str = "id, created_by, name, description, category, block_type, config, is_public, \
    downloads, rating, created_at, updated_at";

impl Row {
    fn into_template(self) -> Result<BlockTemplate, ApiError> {
        // Both only fail if the row was written by something other than this module.
        let config = serde_json::from_str(&self.config).map_err(|e| {
            tracing::error!(template = %self.id, error = %e, "stored template config is not JSON");
            ApiError::Internal
        })?;
        let block_type = BlockType::parse(&self.block_type).ok_or_else(|| {
            tracing::error!(template = %self.id, "stored template has an unknown block type");
            ApiError::Internal
        })?;
        Ok(BlockTemplate {
            id: self.id,
            created_by: self.created_by,
            name: self.name,
            description: self.description,
            category: self.category,
            block_type,
            config,
            is_public: self.is_public,
            downloads: self.downloads,
            rating: self.rating,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// `POST /templates` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishTemplate {
    /// Display name (1–100 characters).
    pub name: String,
    /// What it does (1–2000 characters).
    pub description: String,
    /// Marketplace category (1–50 characters), e.g. `writing`.
    pub category: String,
    /// The block type it configures.
    #[serde(rename = "type")]
    pub block_type: BlockType,
    /// The block's configuration: a JSON object of at most 64 KiB.
    #[schema(value_type = Object)]
    pub config: Value,
    /// Whether everyone may see and download it (default false: only you).
    #[serde(default)]
    pub is_public: bool,
}

/// Publishes a template; the caller is its creator.
#[utoipa::path(post, path = "/api/v1/templates", tag = "templates", request_body = PublishTemplate,
    responses((status = 201, body = BlockTemplate)))]
async fn publish_template(
    State(app): State<AppState>,
    caller: Caller,
    Json(body): Json<PublishTemplate>,
) -> Result<(StatusCode, axum::Json<BlockTemplate>), ApiError> {
    let name = text("name", &body.name, 100)?;
    let description = text("description", &body.description, 2000)?;
    let category = text("category", &body.category, 50)?;
    if !body.config.is_object() {
        return Err(ApiError::field("config", "must be a JSON object"));
    }
    let config = body.config.to_string();
    if config.len() > MAX_CONFIG_BYTES {
        return Err(ApiError::field(
            "config",
            format!("must be at most {MAX_CONFIG_BYTES} bytes as JSON"),
        ));
    }
    let now = now_ms();
    let sql = format!(
        "INSERT INTO block_templates (id, created_by, name, description, category, block_type, config, \
         is_public, downloads, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9) \
         RETURNING {COLS}"
    );
    let row: Row = with_pool!(&app.db, p => sqlx::query_as(&sql)
        .bind(new_id())
        .bind(caller.id())
        .bind(&name)
        .bind(&description)
        .bind(&category)
        .bind(body.block_type.as_str())
        .bind(&config)
        .bind(body.is_public)
        .bind(now)
        .fetch_one(p)
        .await
        .map_err(DbError::from)?);
    Ok((StatusCode::CREATED, axum::Json(row.into_template()?)))
}

/// Filters of the template list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTemplates {
    /// Only templates in this category.
    pub category: Option<String>,
    /// `true`: the caller's own templates, private ones included; otherwise public ones.
    pub mine: Option<bool>,
    /// Items per page, 1–100 (default 50).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// Public templates (or, with `mine=true`, the caller's own), newest first.
#[utoipa::path(get, path = "/api/v1/templates", tag = "templates", params(ListTemplates),
    responses((status = 200, body = Page<BlockTemplate>)))]
async fn list_templates(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<ListTemplates>,
) -> Result<axum::Json<Page<BlockTemplate>>, ApiError> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let cursor = page.id_cursor()?;
    let category = q
        .category
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let mine = q.mine.unwrap_or(false).then(|| caller.id());
    // Public ones, or the caller's own: the caller's id decides which.
    let sql = format!(
        "SELECT {COLS} FROM block_templates \
         WHERE (CASE WHEN $1 IS NULL THEN is_public = TRUE ELSE created_by = $1 END) \
         AND ($2 IS NULL OR category = $2) AND ($3 IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4"
    );
    let rows: Vec<Row> = with_pool!(&app.db, p => sqlx::query_as(&sql)
        .bind(mine)
        .bind(category)
        .bind(cursor)
        .bind(limit)
        .fetch_all(p)
        .await
        .map_err(DbError::from)?);
    let items = rows
        .into_iter()
        .map(Row::into_template)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(Page::new(items, limit, |t| t.id.clone())))
}

/// One template: public ones for anyone, private ones for their creator only (404 for
/// everyone else).
#[utoipa::path(get, path = "/api/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses((status = 200, body = BlockTemplate)))]
async fn get_template(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<BlockTemplate>, ApiError> {
    if !db::valid_id(&id) {
        return Err(ApiError::NotFound);
    }
    let sql = format!(
        "SELECT {COLS} FROM block_templates WHERE id = $1 AND (is_public = TRUE OR created_by = $2)"
    );
    let row: Option<Row> = with_pool!(&app.db, p => sqlx::query_as(&sql)
        .bind(&id)
        .bind(caller.id())
        .fetch_optional(p)
        .await
        .map_err(DbError::from)?);
    Ok(axum::Json(row.ok_or(ApiError::NotFound)?.into_template()?))
}

/// Downloads a template: counts the download (once per user) and returns the template with
/// the new count.
#[utoipa::path(post, path = "/api/v1/templates/{id}/download", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses((status = 200, body = BlockTemplate)))]
async fn download_template(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<BlockTemplate>, ApiError> {
    if !db::valid_id(&id) {
        return Err(ApiError::NotFound);
    }
    // Counted once per user, so one account cannot inflate a template's popularity: the
    // (template, user) row and the count change in one transaction, and concurrent
    // downloads by different users each add one. The template's `updatedAt` is about its
    // content, so a download leaves it alone.
    // The first statement writes, so SQLite takes the write lock at once (waiting its
    // turn) rather than upgrading a read lock, which concurrent downloads deadlock on.
    let select = format!(
        "SELECT {COLS} FROM block_templates WHERE id = $1 AND (is_public = TRUE OR created_by = $2)"
    );
    let row: Option<Row> = with_pool!(&app.db, p => {
        let mut tx = p.begin().await.map_err(DbError::from)?;
        let first = sqlx::query(
            "INSERT INTO template_downloads (template_id, user_id, downloaded_at) \
             SELECT id, $2, $3 FROM block_templates WHERE id = $1 AND (is_public = TRUE OR created_by = $2) \
             ON CONFLICT (template_id, user_id) DO NOTHING")
            .bind(&id).bind(caller.id()).bind(db::now_ms())
            .execute(&mut *tx).await.map_err(DbError::from)?.rows_affected() == 1;
        if first {
            sqlx::query("UPDATE block_templates SET downloads = downloads + 1 WHERE id = $1")
                .bind(&id).execute(&mut *tx).await.map_err(DbError::from)?;
        }
        let row = sqlx::query_as(&select).bind(&id).bind(caller.id())
            .fetch_optional(&mut *tx).await.map_err(DbError::from)?;
        tx.commit().await.map_err(DbError::from)?;
        row
    });
    Ok(axum::Json(row.ok_or(ApiError::NotFound)?.into_template()?))
}
