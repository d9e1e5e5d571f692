//! Webhook triggers: `POST /hooks/{triggerId}` starts the trigger's workflow with the
//! request as its input.
//!
//! No bearer token of a user: the trigger's own secret is the authentication, as a bearer
//! (`Authorization: Bearer <secret>`) or as an HMAC-SHA256 signature over the timestamp and
//! the raw body (`X-Resonant-Signature: t=<unix seconds>,v1=<hex>`, the scheme Stripe
//! uses), which must be within 5 minutes and is accepted once: a captured request replayed
//! is refused (409), even with another `Idempotency-Key`. A trigger that does not exist, is
//! disabled or is a schedule answers 404, and so does a malformed id: the URL tells nothing.
//!
//! The input is `{body, headers, query, trigger}`: the body parsed as JSON when it is JSON
//! (else as text), the request headers the trigger passes on, the query string without
//! `wait`/`timeout`. The answer is 202 with the execution's id, or with `?wait=true` the
//! execution's result once it finishes (200), or 202 again when `timeout` seconds pass first.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::limits::ratelimit::Bucket;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::auth::webhook_sig::{self, SignatureError};
use crate::db::triggers::{self as store, TriggerRow};
use crate::db::{self, now_ms};
use crate::http::api::ApiError;
use crate::AppState;

/// How far a signature's timestamp may be from now, in seconds.
const TOLERANCE_SECS: i64 = 5 * 60;
/// The wait when `?wait=true` gives no `timeout`.
const DEFAULT_WAIT_SECS: u64 = 10;

/// The hook route. Its body limit is `--hook-body-bytes`, checked by the handler (which
/// answers 413 in the API's error shape).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/hooks/{id}", post(hook))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

async fn hook(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    if !db::valid_id(&id) {
        return Err(ApiError::NotFound);
    }
    // In Redis with --redis-url, so a cluster shares one budget per trigger.
    if let Some(wait) = app.limit(Bucket::HookTrigger, &id).await {
        return Err(ApiError::TooManyRequests(wait));
    }
    // Looked up before the body is read: a made-up id costs one indexed read, not a body.
    let trigger = store::trigger(&app.db, &id)
        .await?
        .filter(|t| t.kind == "webhook" && t.enabled)
        .ok_or(ApiError::NotFound)?;
    let secret = trigger_secret(&app, &trigger)?;
    // A bearer is checked before anything is read: a caller without it costs nothing more.
    if trigger.auth.as_deref() == Some("bearer") {
        check_bearer(&headers, &secret)?;
    }
    let limit = app.config.hook_body_bytes;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge(format!(
            "the body is larger than {limit} bytes"
        )));
    }
    // The bodies arriving at once share one budget (`--hook-inflight-bytes`): many slow
    // senders cannot hold the server's memory, and a body that does not arrive within the
    // header timeout gives its share back.
    let _share = body_share(&app, declared.unwrap_or(limit))?;
    let deadline = crate::config::secs(app.config.header_read_timeout_secs);
    let body = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::bad_request(None, format!("the body did not arrive within {deadline:?}"))
        })?
        .map_err(|_| ApiError::TooLarge(format!("the body is larger than {limit} bytes")))?;
    let claimed = authenticate(&app, &trigger, &secret, &headers, &body).await?;
    let workflow = db::workflow(&app.db, &trigger.workflow_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (wait, timeout) = wait_of(&app, &query)?;
    let input = input_of(&trigger, &headers, &query, &body);
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| {
                    ApiError::field(
                        "Idempotency-Key",
                        "must be 1 to 200 visible ASCII characters",
                    )
                })?
                .to_owned(),
        ),
    };
    let started = app
        .engine
        .start_triggered(&workflow, &trigger, input, key)
        .await;
    let (execution, created) = match started {
        Ok(started) => started,
        Err(e) => {
            // Nothing started: the sender may send the same signed request again.
            if let Some(signature) = claimed {
                store::forget_signature(&app.db, &trigger.id, &signature).await?;
            }
            return Err(e.into());
        }
    };
    if !wait {
        let status = if created {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        return Ok((status, axum::Json(json!({"executionId": execution}))).into_response());
    }
    let row = app.engine.wait_finished(&execution, timeout).await?;
    let Some(row) = row.filter(|r| !matches!(r.status.as_str(), "pending" | "running")) else {
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"executionId": execution, "status": "running"})),
        )
            .into_response());
    };
    let output = row
        .output
        .as_deref()
        .and_then(|o| serde_json::from_str::<Value>(o).ok());
    Ok(axum::Json(json!({
        "executionId": execution,
        "status": row.status,
        "output": output,
        "error": row.error,
    }))
    .into_response())
}

/// The trigger's secret, decrypted.
fn trigger_secret(app: &AppState, t: &TriggerRow) -> Result<String, ApiError> {
    match (&t.secret, &app.cipher) {
        (Some(sealed), Some(cipher)) => cipher.decrypt(&t.id, sealed).map_err(|e| {
            tracing::error!(trigger = %t.id, error = %e, "a trigger's secret does not decrypt");
            ApiError::Unavailable("this trigger's secret cannot be read".into())
        }),
        _ => Err(ApiError::Unavailable(
            "this server has no encryption key to check the trigger's secret".into(),
        )),
    }
}

fn refused(why: &str) -> ApiError {
    ApiError::Unauthorized(format!("webhook refused: {why}"))
}

/// `Authorization: Bearer <secret>`, compared in constant time.
fn check_bearer(headers: &HeaderMap, secret: &str) -> Result<(), ApiError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refused("missing Authorization: Bearer <secret>"))?;
    if webhook_sig::same_secret(given.trim(), secret) {
        Ok(())
    } else {
        Err(refused("the secret does not match"))
    }
}

/// A share of the bodies' budget for `bytes`, given back on drop; 503 when it is spent.
fn body_share(app: &AppState, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    // In KiB, so a 4 GiB budget still fits a permit count.
    let kib = u32::try_from(bytes.max(1).div_ceil(1024)).unwrap_or(u32::MAX);
    app.hook_bodies
        .clone()
        .try_acquire_many_owned(kib)
        .map_err(|_| {
            metrics::counter!("resonant_hook_bodies_refused_total").increment(1);
            ApiError::Busy(
                "too many webhook bodies are arriving at once; retry shortly".into(),
                Duration::from_secs(1),
            )
        })
}

/// Checks the caller knows the trigger's secret (and has not sent this signature before);
/// the signature it claimed, to give back if nothing starts.
async fn authenticate(
    app: &AppState,
    t: &TriggerRow,
    secret: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<String>, ApiError> {
    if t.auth.as_deref() == Some("bearer") {
        // Checked before the body was read.
        return Ok(None);
    }
    let header = headers
        .get("x-resonant-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            refused("missing X-Resonant-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>")
        })?;
    let now = now_ms();
    webhook_sig::verify_stripe(secret, header, body, now.div_euclid(1000), TOLERANCE_SECS)
        .map_err(|e| match e {
            SignatureError::Stale => {
                refused("the signature's timestamp is more than 5 minutes from now")
            }
            SignatureError::NoMatch => refused("the signature does not match the body"),
            _ => refused("X-Resonant-Signature must be t=<unix seconds>,v1=<hex HMAC-SHA256>"),
        })?;
    let fresh = store::remember_signature(
        &app.db,
        &t.id,
        header.trim(),
        now - 2 * TOLERANCE_SECS * 1000,
    )
    .await?;
    if !fresh {
        return Err(ApiError::Conflict(
            "webhook refused: this signature was used before (a replayed request)".into(),
        ));
    }
    Ok(Some(header.trim().to_owned()))
}

/// `?wait=true&timeout=<seconds>`; the other query parameters go to the input.
fn wait_of(app: &AppState, q: &BTreeMap<String, String>) -> Result<(bool, Duration), ApiError> {
    let wait = match q.get("wait").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(_) => return Err(ApiError::field("wait", "must be true or false")),
    };
    let max = app.config.hook_wait_max_secs;
    let secs = match q.get("timeout") {
        None => DEFAULT_WAIT_SECS.min(max),
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=max).contains(s))
            .ok_or_else(|| ApiError::field("timeout", format!("must be 1 to {max} seconds")))?,
    };
    Ok((wait, Duration::from_secs(secs)))
}

/// The execution's input: `{body, headers, query, trigger}`.
fn input_of(
    t: &TriggerRow,
    headers: &HeaderMap,
    q: &BTreeMap<String, String>,
    body: &Bytes,
) -> Value {
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice::<Value>(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    let names: Vec<String> = t
        .pass_headers
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    let passed: serde_json::Map<String, Value> = names
        .into_iter()
        .filter_map(|n| {
            let v = headers.get(n.as_str())?.to_str().ok()?.to_owned();
            Some((n, Value::String(v)))
        })
        .collect();
    let query: serde_json::Map<String, Value> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "wait" && k.as_str() != "timeout")
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "body": body,
        "headers": passed,
        "query": query,
        "trigger": {"id": t.id, "kind": "webhook", "name": t.name},
    })
}
