//! The API's one error shape: `{"error": {"code", "message", "field"?}}` with a fitting status.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::identity::AuthFailure;
use crate::db::DbError;
use crate::email::MailError;

/// An API error; every handler returns `Result<_, ApiError>`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; `field` names the offending field when there is one.
    #[error("{message}")]
    BadRequest {
        /// The field at fault.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// No valid token.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's role does not allow the action.
    #[error("{0}")]
    Forbidden(String),
    /// Not found, or not visible to the caller (the two are indistinguishable on purpose).
    #[error("not found")]
    NotFound,
    /// The path exists, the method does not.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// Conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A storage quota (versions per workflow, version bytes per workspace) is used up.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is too large.
    #[error("{0}")]
    TooLarge(String),
    /// A service we depend on (email) failed.
    #[error("{0}")]
    BadGateway(String),
    /// Rate limited.
    #[error("too many requests: retry in {} ms", .0.as_millis())]
    TooManyRequests(Duration),
    /// A dependency is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// The server is busy with others' requests; retry after the given time (503).
    #[error("{0}")]
    Busy(String, Duration),
    /// A workflow did not validate: every problem names its block or connection.
    #[error("the workflow is not valid: {} problem(s)", .0.len())]
    InvalidWorkflow(Vec<crate::engine::graph::Problem>),
    /// The caller has used their plan's tokens.
    #[error("{0}")]
    TokenLimit(String),
    /// The user or workspace already has as many executions running as it may.
    #[error("{0}")]
    TooManyExecutions(String),
    /// An idempotency key was used before with a different request.
    #[error("{0}")]
    KeyReused(String),
    /// A failure on our side; the details are in the log, not the response.
    #[error("internal error")]
    Internal,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: bad_request, unauthorized, forbidden, not_found,
    /// conflict, quota_exceeded, unsupported_media_type, payload_too_large, rate_limited, unavailable,
    /// invalid_workflow, token_limit, too_many_executions, idempotency_key_reused, internal.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `invalid_workflow`: every problem found, each naming its block or connection
    /// (see docs/workflow-schema.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub problems: Option<serde_json::Value>,
}

impl ApiError {
    /// A validation error on `field`.
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field: Some(field.to_string()),
            message: format!("{field}: {}", message.into()),
        }
    }

    /// A bad request, optionally naming a field.
    pub fn bad_request(field: Option<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field,
            message: message.into(),
        }
    }

    /// Maps an authentication failure: 401, or 503 when we could not check.
    pub fn auth(e: AuthFailure) -> ApiError {
        if e.is_unavailable() {
            tracing::error!(error = %e, "authentication unavailable");
            ApiError::Unavailable("authentication is temporarily unavailable".into())
        } else {
            ApiError::Unauthorized(e.to_string())
        }
    }

    /// Maps a JSON body rejection, naming the field serde complained about.
    pub fn from_json(e: JsonRejection) -> ApiError {
        match e {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a JSON body with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::TooLarge("request body too large".into())
            }
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&text)
                    .to_string();
                ApiError::BadRequest {
                    field: field_of(&detail),
                    message: detail,
                }
            }
            other => ApiError::BadRequest {
                field: None,
                message: other.body_text(),
            },
        }
    }

    /// Maps a query-string rejection.
    pub fn invalid_query(text: &str) -> ApiError {
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(text)
            .to_string();
        ApiError::BadRequest {
            field: field_of(&detail),
            message: detail,
        }
    }

    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::QuotaExceeded(_) => (StatusCode::CONFLICT, "quota_exceeded"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::Unavailable(_) | ApiError::Busy(..) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::InvalidWorkflow(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow"),
            ApiError::TokenLimit(_) => (StatusCode::PAYMENT_REQUIRED, "token_limit"),
            ApiError::TooManyExecutions(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_executions")
            }
            ApiError::KeyReused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The field serde named: `name: invalid type…` or "missing field `name`".
fn field_of(detail: &str) -> Option<String> {
    if let Some(rest) = detail.split("missing field `").nth(1) {
        return rest.split('`').next().map(str::to_string);
    }
    let (path, _) = detail.split_once(": ")?;
    (!path.contains(' ') && path != ".").then(|| path.to_string())
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Duplicate(what) => ApiError::Conflict(format!("{what} already exists")),
            DbError::Quota(message) => ApiError::QuotaExceeded(message),
            DbError::Conflict(message) => ApiError::Conflict(message),
            DbError::Sqlx(e) => {
                tracing::error!(error = %e, "database error");
                if matches!(
                    e,
                    sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
                ) {
                    ApiError::Unavailable("database unavailable".into())
                } else {
                    ApiError::Internal
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let field = match &self {
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.to_string(),
                field,
                problems: match &self {
                    ApiError::InvalidWorkflow(p) => serde_json::to_value(p).ok(),
                    _ => None,
                },
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        match &self {
            ApiError::TooManyRequests(retry) => {
                let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::Busy(_, retry) => {
                let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::TooManyExecutions(_) => {
                // No time is known: one of the running executions has to end first.
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(5));
            }
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<MailError> for ApiError {
    fn from(e: MailError) -> Self {
        tracing::warn!(error = %e, "invitation email not sent");
        match e {
            MailError::NotConfigured => ApiError::Conflict(e.to_string()),
            other => ApiError::BadGateway(other.to_string()),
        }
    }
}
