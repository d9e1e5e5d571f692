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
use crate::db;
use crate::db::templates::{NewTemplate, TemplateRow};
use crate::engine::block::BlockKind;
use crate::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates, publish_template))
        .routes(routes!(get_template))
        .routes(routes!(download_template))
}

/// Largest accepted `config`, serialised as JSON.
const MAX_CONFIG_BYTES: usize = 64 * 1024;

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
    pub block_type: BlockKind,
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

/// Reads a stored row back.
fn from_row(row: TemplateRow) -> Result<BlockTemplate, ApiError> {
    // Both only fail if the row was written by something other than this module.
    let config = serde_json::from_str(&row.config).map_err(|e| {
        tracing::error!(template = %row.id, error = %e, "stored template config is not JSON");
        ApiError::Internal
    })?;
    let block_type = BlockKind::parse(&row.block_type).ok_or_else(|| {
        tracing::error!(template = %row.id, "stored template has an unknown block type");
        ApiError::Internal
    })?;
    Ok(BlockTemplate {
        id: row.id,
        created_by: row.created_by,
        name: row.name,
        description: row.description,
        category: row.category,
        block_type,
        config,
        is_public: row.is_public,
        downloads: row.downloads,
        rating: row.rating,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
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
    pub block_type: BlockKind,
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
    let row = db::templates::insert_template(
        &app.db,
        &NewTemplate {
            created_by: caller.id(),
            name: &name,
            description: &description,
            category: &category,
            block_type: body.block_type.as_str(),
            config: &config,
            is_public: body.is_public,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(from_row(row)?)))
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
    let rows = db::templates::list_templates(&app.db, mine, category, cursor, limit).await?;
    let items = rows
        .into_iter()
        .map(from_row)
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
    let row = db::templates::template(&app.db, &id, caller.id()).await?;
    Ok(axum::Json(from_row(row.ok_or(ApiError::NotFound)?)?))
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
    let row = db::templates::download_template(&app.db, &id, caller.id()).await?;
    Ok(axum::Json(from_row(row.ok_or(ApiError::NotFound)?)?))
}
