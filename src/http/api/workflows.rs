//! Workflows (metadata, content, deletion) and their named versions.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    require, role_in, text, ApiError, Caller, ErrorBody, Json, Page, PageQuery, Path, Query,
};
use crate::db::{self, room_of, Action, Role, VersionInfo, Workflow};
use crate::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows, create_workflow))
        .routes(routes!(get_workflow, update_workflow, delete_workflow))
        .routes(routes!(get_content))
        .routes(routes!(list_versions, create_version))
        .routes(routes!(get_version))
        .routes(routes!(restore_version))
}

/// A workflow the caller can see, with its role; 404 otherwise (including for a workflow
/// that does not exist: the two look the same).
pub(crate) async fn visible(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(Workflow, Role), ApiError> {
    if !db::valid_id(id) {
        return Err(ApiError::NotFound);
    }
    match db::workflow_with_role(&app.db, id, caller.id()).await? {
        Some((wf, Some(role))) => Ok((wf, role)),
        _ => Err(ApiError::NotFound),
    }
}

/// `POST /workspaces/{id}/workflows` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWorkflow {
    /// Display name (1–200 characters).
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// Description (up to 2000 characters).
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

/// `?status=` filter of the workflow list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListWorkflows {
    /// Only workflows with this status.
    pub status: Option<Status>,
    /// Items per page, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A workflow's lifecycle status.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being designed.
    Draft,
    /// In use.
    Active,
    /// Kept but hidden from day-to-day lists.
    Archived,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Active => "active",
            Status::Archived => "archived",
        }
    }
}

/// A workspace's workflows, newest first.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/workflows", tag = "workflows",
    params(("id" = String, Path, description = "Workspace id"), ListWorkflows),
    responses((status = 200, body = Page<Workflow>)))]
async fn list_workflows(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ListWorkflows>,
) -> Result<axum::Json<Page<Workflow>>, ApiError> {
    role_in(&app, &caller, &id).await?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let items = db::workflows(
        &app.db,
        &id,
        q.status.map(Status::as_str),
        page.id_cursor()?,
        limit,
    )
    .await?;
    Ok(axum::Json(Page::new(items, limit, |w| w.id.clone())))
}

/// Creates a workflow (and so its collaborative room, `workflow-<id>`).
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/workflows", tag = "workflows",
    params(("id" = String, Path, description = "Workspace id")), request_body = CreateWorkflow,
    responses((status = 201, body = Workflow)))]
async fn create_workflow(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateWorkflow>,
) -> Result<(StatusCode, axum::Json<Workflow>), ApiError> {
    let role = role_in(&app, &caller, &id).await?;
    require(role, Action::Edit)?;
    let name = text("name", &body.name, 200)?;
    let description = description(body.description)?;
    let wf = db::create_workflow(&app.db, &id, caller.id(), &name, description.as_deref()).await?;
    Ok((StatusCode::CREATED, axum::Json(wf)))
}

fn description(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d {
        Some(d) if d.chars().count() > 2000 => Err(ApiError::field(
            "description",
            "must be at most 2000 characters",
        )),
        other => Ok(other),
    }
}

/// A workflow's metadata.
#[utoipa::path(get, path = "/api/v1/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses((status = 200, body = Workflow)))]
async fn get_workflow(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Workflow>, ApiError> {
    Ok(axum::Json(visible(&app, &caller, &id).await?.0))
}

/// `PATCH /workflows/{id}` body: the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWorkflow {
    /// New name.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    /// New description (null clears it).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(nullable)]
    pub description: Option<Option<String>>,
    /// New status (`archived` archives it).
    pub status: Option<Status>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Renames, re-describes or archives a workflow (editors).
#[utoipa::path(patch, path = "/api/v1/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")), request_body = UpdateWorkflow,
    responses((status = 200, body = Workflow)))]
async fn update_workflow(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateWorkflow>,
) -> Result<axum::Json<Workflow>, ApiError> {
    let (_, role) = visible(&app, &caller, &id).await?;
    require(role, Action::Edit)?;
    let name = body.name.map(|n| text("name", &n, 200)).transpose()?;
    let desc = match body.description {
        Some(d) => Some(description(d)?),
        None => None,
    };
    let wf = db::update_workflow(
        &app.db,
        &id,
        name.as_deref(),
        desc.as_ref().map(|d| d.as_deref()),
        body.status.map(Status::as_str),
    )
    .await?
    .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(wf))
}

/// Deletes a workflow (owner or admin): its live sockets are closed with 4410 and its
/// document, versions and comments are removed.
#[utoipa::path(delete, path = "/api/v1/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_workflow(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, role) = visible(&app, &caller, &id).await?;
    require(role, Action::Delete)?;
    // Its executions stop first (their rows go with the workflow's).
    app.engine.cancel_workflow(&id);
    // The row first: from here on nobody can join the room again.
    db::delete_workflow(&app.db, &id).await?;
    app.rooms
        .delete(
            &room_of(&id),
            resonant_sync::Close::new(resonant_sync::close_code::GONE, "workflow deleted"),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, workflow = %id, "deleting the document failed");
            ApiError::Internal
        })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn live_state(app: &AppState, id: &str) -> Result<Vec<u8>, ApiError> {
    app.rooms.document_state(&room_of(id)).await.map_err(|e| {
        tracing::error!(error = %e, workflow = %id, "reading the document failed");
        ApiError::Unavailable("the document could not be loaded".into())
    })
}

/// The answer to a document that cannot be read as JSON: a stored document too deep to walk
/// is the caller's (or an attacker's) content, not a server fault.
pub(super) fn content_error(e: crate::content::ContentError, workflow: &str) -> ApiError {
    use crate::content::ContentError;
    match e {
        ContentError::TooDeep | ContentError::TextInList => ApiError::Conflict(e.to_string()),
        ContentError::Decode(_) => {
            tracing::error!(error = %e, workflow, "document does not decode");
            ApiError::Internal
        }
    }
}

/// A workflow's content as JSON: `{blocks, connections, viewport, meta}`, read from the
/// live document (or the store when nobody is editing).
#[utoipa::path(get, path = "/api/v1/workflows/{id}/content", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses((status = 200, body = Object, description = "The document's content")))]
async fn get_content(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    visible(&app, &caller, &id).await?;
    let state = live_state(&app, &id).await?;
    let json = crate::content::to_json(&state).map_err(|e| content_error(e, &id))?;
    Ok(axum::Json(json))
}

/// `POST /workflows/{id}/versions` body.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVersion {
    /// A short name ("Before the big refactor").
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    /// A longer message.
    #[schema(max_length = 2000)]
    pub message: Option<String>,
}

/// A version with its content.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionDetail {
    /// The version.
    #[serde(flatten)]
    pub info: VersionInfo,
    /// Its content: `{blocks, connections, viewport, meta}`, derived from the stored state
    /// (serialised, never re-parsed, so no parser's nesting limit can make it unreadable).
    #[schema(value_type = Object)]
    pub content: Box<serde_json::value::RawValue>,
}

async fn snapshot_version(
    app: &AppState,
    id: &str,
    user: &str,
    name: Option<&str>,
    message: Option<&str>,
) -> Result<VersionInfo, ApiError> {
    let state = live_state(app, id).await?;
    let base = db::latest_version_state(&app.db, id).await?;
    // Decoding, hashing and walking a large document is CPU work: off the async workers.
    let prepared = tokio::task::spawn_blocking(move || {
        let (prepared, doc) = crate::http::api::version_state::prepare(&state, base.as_ref())?;
        // The content is derived on read; reading it now refuses, as before, a document no
        // one could read back.
        crate::content::doc_to_json(&doc)?;
        Ok::<_, crate::content::ContentError>(prepared)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, workflow = %id, "preparing a version panicked");
        ApiError::Internal
    })?
    .map_err(|e| content_error(e, id))?;
    let quota = db::VersionQuota {
        workspace_bytes: i64::try_from(app.config.max_workspace_stored_bytes).unwrap_or(i64::MAX),
        versions_per_workflow: i64::try_from(app.config.max_versions_per_workflow)
            .unwrap_or(i64::MAX),
    };
    Ok(db::create_version(&app.db, id, user, name, message, &prepared, quota).await?)
}

/// Saves the current document as a new named version (editors).
#[utoipa::path(post, path = "/api/v1/workflows/{id}/versions", tag = "versions",
    params(("id" = String, Path, description = "Workflow id")), request_body = CreateVersion,
    responses((status = 201, body = VersionInfo),
        (status = 409, body = ErrorBody, description = "`quota_exceeded`: the workflow has \
            `--max-versions-per-workflow` versions already, or the new version's state would take \
            the workspace's stored version bytes past `--max-workspace-stored-bytes` (an unchanged \
            document stores nothing new); or `conflict`: the document nests too deep to read")))]
async fn create_version(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateVersion>,
) -> Result<(StatusCode, axum::Json<VersionInfo>), ApiError> {
    let (_, role) = visible(&app, &caller, &id).await?;
    require(role, Action::Edit)?;
    let name = body.name.map(|n| text("name", &n, 200)).transpose()?;
    if body
        .message
        .as_ref()
        .is_some_and(|m| m.chars().count() > 2000)
    {
        return Err(ApiError::field(
            "message",
            "must be at most 2000 characters",
        ));
    }
    let info = snapshot_version(
        &app,
        &id,
        caller.id(),
        name.as_deref(),
        body.message.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

/// `?limit=&cursor=` for versions (the cursor is a version number).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionPage {
    #[param(minimum = 1, maximum = 100)]
    /// Items per page, 1–100 (default 50).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A workflow's versions, newest first.
#[utoipa::path(get, path = "/api/v1/workflows/{id}/versions", tag = "versions",
    params(("id" = String, Path, description = "Workflow id"), VersionPage),
    responses((status = 200, body = Page<VersionInfo>)))]
async fn list_versions(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<VersionPage>,
) -> Result<axum::Json<Page<VersionInfo>>, ApiError> {
    visible(&app, &caller, &id).await?;
    let limit = PageQuery {
        limit: q.limit,
        cursor: None,
    }
    .limit()?;
    let cursor = q
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::field("cursor", "not a cursor this API returned"))
        })
        .transpose()?;
    let items = db::versions(&app.db, &id, cursor, limit).await?;
    Ok(axum::Json(Page::new(items, limit, |v| {
        v.version.to_string()
    })))
}

/// A version and its document state, rebuilt from its stored chain.
pub(super) async fn find_version(
    app: &AppState,
    id: &str,
    version: i64,
) -> Result<(VersionInfo, Vec<u8>), ApiError> {
    let (info, chain) = db::version(&app.db, id, version)
        .await?
        .ok_or(ApiError::NotFound)?;
    let workflow = id.to_string();
    tokio::task::spawn_blocking(move || {
        // States moved from before B16 have keys that are not hashes: nothing to check.
        let key = (!chain.key.starts_with("legacy:")).then_some(chain.key.as_str());
        crate::http::api::version_state::rebuild(&chain.parts, key)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, workflow, "rebuilding a version panicked");
        ApiError::Internal
    })?
    .map(|state| (info, state))
    .map_err(|e| content_error(e, id))
}

/// One version with its content.
#[utoipa::path(get, path = "/api/v1/workflows/{id}/versions/{version}", tag = "versions",
    params(("id" = String, Path, description = "Workflow id"), ("version" = i64, Path, description = "Version number")),
    responses((status = 200, body = VersionDetail)))]
async fn get_version(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, i64)>,
) -> Result<axum::Json<VersionDetail>, ApiError> {
    visible(&app, &caller, &id).await?;
    let (info, state) = find_version(&app, &id, version).await?;
    let json = tokio::task::spawn_blocking(move || crate::content::to_json(&state))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, workflow = %id, version, "reading a version panicked");
            ApiError::Internal
        })?
        .map_err(|e| content_error(e, &id))?;
    // Serialised, not re-parsed: no parser's nesting limit can make a version unreadable.
    let content = serde_json::value::to_raw_value(&json).map_err(|e| {
        tracing::error!(error = %e, workflow = %id, version, "version content does not serialise");
        ApiError::Internal
    })?;
    Ok(axum::Json(VersionDetail { info, content }))
}

/// Restores a version (editors): the live document becomes equal to it through an ordinary
/// change every connected editor receives. The state before the restore is saved first as
/// a new version, so nothing is lost. Returns that backup version.
#[utoipa::path(post, path = "/api/v1/workflows/{id}/versions/{version}/restore", tag = "versions",
    params(("id" = String, Path, description = "Workflow id"), ("version" = i64, Path, description = "Version number")),
    responses((status = 200, body = VersionInfo, description = "The version saved from the state before the restore"),
        (status = 409, body = ErrorBody, description = "`quota_exceeded`: the backup version would exceed \
            `--max-versions-per-workflow` or `--max-workspace-stored-bytes`; nothing was restored")))]
async fn restore_version(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, i64)>,
) -> Result<axum::Json<VersionInfo>, ApiError> {
    let (_, role) = visible(&app, &caller, &id).await?;
    require(role, Action::Edit)?;
    let (target, target_state) = find_version(&app, &id, version).await?;
    let backup = snapshot_version(
        &app,
        &id,
        caller.id(),
        Some(&format!("Before restoring version {version}")),
        None,
    )
    .await?;
    let current = live_state(&app, &id).await?;
    let update = crate::content::restore_update(&current, &target_state)
        .map_err(|e| content_error(e, &id))?;
    app.rooms
        .apply_server_update(&room_of(&id), &update)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, workflow = %id, "applying the restore failed");
            ApiError::Unavailable("the document could not be updated".into())
        })?;
    db::set_parent_version(&app.db, &id, &target.id).await?;
    Ok(axum::Json(backup))
}
