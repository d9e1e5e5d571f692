//! Comment threads on workflows and their blocks.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::workflows::visible;
use super::{text, ApiError, Caller, Json, Page, PageQuery, Path, Query};
use crate::db::{self, Action, Comment};
use crate::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_comments, create_comment))
        .routes(routes!(update_comment, delete_comment))
}

/// Filters of the comment list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ListComments {
    /// Only comments on this block.
    pub block_id: Option<String>,
    /// Items per page, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A workflow's comments, oldest first (replies carry `parentId`).
#[utoipa::path(get, path = "/api/v1/workflows/{id}/comments", tag = "comments",
    params(("id" = String, Path, description = "Workflow id"), ListComments),
    responses((status = 200, body = Page<Comment>)))]
async fn list_comments(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ListComments>,
) -> Result<axum::Json<Page<Comment>>, ApiError> {
    visible(&app, &caller, &id).await?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let items = db::comments(
        &app.db,
        &id,
        q.block_id.as_deref(),
        page.id_cursor()?,
        limit,
    )
    .await?;
    Ok(axum::Json(Page::new(items, limit, |c| c.id.clone())))
}

/// `POST /workflows/{id}/comments` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateComment {
    /// Text (1–10000 characters).
    #[schema(min_length = 1, max_length = 10000, pattern = r"\S")]
    pub content: String,
    /// The block the comment is about.
    #[schema(min_length = 1, max_length = 200)]
    pub block_id: Option<String>,
    /// The comment this one replies to (same workflow).
    pub parent_id: Option<String>,
}

/// Adds a comment or a reply (anyone who can see the workflow).
#[utoipa::path(post, path = "/api/v1/workflows/{id}/comments", tag = "comments",
    params(("id" = String, Path, description = "Workflow id")), request_body = CreateComment,
    responses((status = 201, body = Comment)))]
async fn create_comment(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateComment>,
) -> Result<(StatusCode, axum::Json<Comment>), ApiError> {
    visible(&app, &caller, &id).await?;
    let content = text("content", &body.content, 10_000)?;
    if body
        .block_id
        .as_ref()
        .is_some_and(|b| b.is_empty() || b.len() > 200)
    {
        return Err(ApiError::field("blockId", "must be 1-200 characters"));
    }
    let mut block = body.block_id;
    if let Some(parent) = &body.parent_id {
        let parent = match db::valid_id(parent) {
            true => db::comment(&app.db, parent).await?,
            false => None,
        }
        .filter(|p| p.workflow_id == id)
        .ok_or_else(|| ApiError::field("parentId", "no such comment on this workflow"))?;
        // A reply belongs to its thread's block.
        block = parent.block_id.or(block);
    }
    let comment = db::create_comment(
        &app.db,
        &id,
        caller.id(),
        block.as_deref(),
        body.parent_id.as_deref(),
        &content,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(comment)))
}

/// `PATCH /comments/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateComment {
    /// New text (author only).
    pub content: Option<String>,
    /// Resolve or reopen the thread (the author, or anyone who can edit the workflow).
    pub resolved: Option<bool>,
}

async fn own_or_visible(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(Comment, db::Role), ApiError> {
    let comment = match db::valid_id(id) {
        true => db::comment(&app.db, id).await?,
        false => None,
    }
    .ok_or(ApiError::NotFound)?;
    let (_, role) = visible(app, caller, &comment.workflow_id).await?;
    Ok((comment, role))
}

/// Edits a comment's text (author) or resolves/reopens it.
#[utoipa::path(patch, path = "/api/v1/comments/{id}", tag = "comments",
    params(("id" = String, Path, description = "Comment id")), request_body = UpdateComment,
    responses((status = 200, body = Comment)))]
async fn update_comment(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateComment>,
) -> Result<axum::Json<Comment>, ApiError> {
    let (comment, role) = own_or_visible(&app, &caller, &id).await?;
    let mine = comment.user_id == caller.id();
    let content = body
        .content
        .map(|c| text("content", &c, 10_000))
        .transpose()?;
    if content.is_some() && !mine {
        return Err(ApiError::Forbidden(
            "only the author can edit a comment".into(),
        ));
    }
    if body.resolved.is_some() && !mine && !role.allows(Action::Edit) {
        return Err(ApiError::Forbidden(
            "your role does not allow resolving comments".into(),
        ));
    }
    let updated = db::update_comment(&app.db, &id, content.as_deref(), body.resolved)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(updated))
}

/// Deletes a comment and its replies (author only).
#[utoipa::path(delete, path = "/api/v1/comments/{id}", tag = "comments",
    params(("id" = String, Path, description = "Comment id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_comment(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (comment, _) = own_or_visible(&app, &caller, &id).await?;
    if comment.user_id != caller.id() {
        return Err(ApiError::Forbidden(
            "only the author can delete a comment".into(),
        ));
    }
    db::delete_comment(&app.db, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
