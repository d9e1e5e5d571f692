//! The REST API under `/api/v1`: JSON in and out, one error shape, cursor pagination, and
//! an OpenAPI 3.1 document generated from the handlers (`/api/v1/openapi.json`).

mod comments;
mod error;
mod executions;
pub mod providers;
mod secrets;
mod templates;
mod triggers;
pub mod usage;
pub(crate) mod version_state;
pub(crate) mod workflows;
mod workspaces;

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, ErrorBody};

use crate::auth::identity::Principal;
use crate::db::{self, Action, Role};
use crate::AppState;

/// The API router and its OpenAPI document.
pub fn router() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(workspaces::router())
        .merge(workflows::router())
        .merge(comments::router())
        .merge(templates::router())
        .merge(providers::router())
        .merge(secrets::router())
        .merge(triggers::router())
        .merge(usage::router())
        .merge(executions::router())
        .split_for_parts();
    let mut api = api;
    // After the merge: the modifiers of `ApiDoc` run before any path is registered.
    CommonErrors.modify(&mut api);
    (router, api)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Resonant API", version = "1", description = "Workspaces, members, workflows, versions, comments and more. Errors always have the shape of `ErrorBody`."),
    modifiers(&Security),
    components(schemas(ErrorBody)),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Adds the error responses every operation can give, so clients (and schemathesis) know
/// every status the API may answer with.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |desc: &str| {
            ResponseBuilder::new()
                .description(desc)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in api.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                for (status, desc) in [
                    ("400", "Invalid request: the error names the field"),
                    ("401", "Missing, invalid or expired token"),
                    ("403", "The caller's role does not allow this"),
                    ("404", "Not found, or not visible to the caller"),
                    ("409", "Conflicts with the current state"),
                    ("413", "Request body too large"),
                    ("415", "Request body is not JSON"),
                    ("429", "Rate limited: see Retry-After"),
                    (
                        "503",
                        "A dependency (database, signing keys) is unavailable",
                    ),
                ] {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(desc).into());
                }
            }
        }
    }
}

/// The authenticated caller of a REST request (`Authorization: Bearer <token>`).
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let principal = app.auth.authenticate(token).await.map_err(ApiError::auth)?;
        // Keyed by the identity provider's id: the same on every node, whatever its database.
        if let Some(retry) = app
            .limit(
                crate::limits::ratelimit::Bucket::ApiUser,
                &principal.user.external_id,
            )
            .await
        {
            return Err(ApiError::TooManyRequests(retry));
        }
        Ok(Caller(principal))
    }
}

impl Caller {
    /// The caller's user id.
    pub fn id(&self) -> &str {
        &self.0.user.id
    }
}

/// A JSON body whose rejections use the API's error shape (naming the field at fault).
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state)
            .await
            .map_err(ApiError::from_json)?;
        Ok(Json(value))
    }
}

/// Query parameters whose rejections use the API's error shape.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::invalid_query(&e.body_text()))?;
        Ok(Query(value))
    }
}

/// Path parameters whose rejections use the API's error shape.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(None, e.body_text()))?;
        Ok(Path(value))
    }
}

/// `?limit=&cursor=`: which page of a list to return.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The validated page size.
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=100).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::field("limit", "must be from 1 to 100")),
        }
    }

    /// The validated cursor (an id we issued).
    pub fn id_cursor(&self) -> Result<Option<&str>, ApiError> {
        match self.cursor.as_deref() {
            None => Ok(None),
            Some(c) if db::valid_id(c) => Ok(Some(c)),
            Some(_) => Err(ApiError::field("cursor", "not a cursor this API returned")),
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page of at most `limit` items; the cursor is the last item's key if the page is full.
    pub fn new(items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
        let next_cursor = (items.len() as i64 >= limit)
            .then(|| items.last().map(&key))
            .flatten();
        Page { items, next_cursor }
    }
}

/// The caller's role in `workspace`, or 404 if not a member (a workspace the caller cannot
/// see does not exist for it).
pub async fn role_in(app: &AppState, caller: &Caller, workspace: &str) -> Result<Role, ApiError> {
    if !db::valid_id(workspace) {
        return Err(ApiError::NotFound);
    }
    db::member_role(&app.db, workspace, caller.id())
        .await?
        .ok_or(ApiError::NotFound)
}

/// Checks that `role` allows `action`: 403 otherwise.
pub fn require(role: Role, action: Action) -> Result<(), ApiError> {
    if role.allows(action) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "your role ({}) does not allow this",
            role.as_str()
        )))
    }
}

/// Trims a required text field and checks its length.
pub fn text(field: &'static str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::field(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(ApiError::field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(v.to_string())
}
