//! Incoming webhooks: Clerk (users, delivered through Svix) at `POST /webhooks/clerk` and
//! Stripe (subscriptions) at `POST /webhooks/stripe`.
//!
//! Neither takes a bearer token: the signature over the raw body ([`crate::auth::webhook_sig`]) is
//! the authentication, and a request whose signature or timestamp does not check out is a
//! 400 that changes nothing. An endpoint whose secret is not configured does not exist (404).
//!
//! Senders retry, and a captured request could be replayed within the signature's window, so
//! every event id is recorded in `webhook_events` in the same transaction as the change it
//! makes: an id seen before is answered `{"status":"duplicate"}` and changes nothing, and a
//! change that fails leaves the id unrecorded so the retry can apply it.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::webhook_sig::{self, SignatureError};
use crate::db::now_ms;
use crate::db::webhooks::{apply_clerk, apply_stripe, ClerkChange, Outcome, Subscription};
use crate::http::api::ApiError;
use crate::AppState;

/// Largest accepted webhook body (Clerk and Stripe events are a few KiB).
const MAX_BODY: usize = 256 * 1024;

/// Longest accepted event or object id.
const MAX_ID: usize = 255;

/// The webhook routes, with their own body limit.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/clerk", post(clerk))
        .route("/webhooks/stripe", post(stripe))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

type Reply = Result<axum::Json<Value>, ApiError>;

fn reply(outcome: Outcome) -> Reply {
    let status = match outcome {
        Outcome::Processed => "processed",
        Outcome::Duplicate => "duplicate",
        Outcome::Ignored => "ignored",
    };
    Ok(axum::Json(json!({ "status": status })))
}

fn now_unix() -> i64 {
    now_ms().div_euclid(1000)
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("webhook body larger than {MAX_BODY} bytes"))
        } else {
            ApiError::bad_request(None, e.body_text())
        }
    })
}

fn signature_error(sender: &str, e: SignatureError) -> ApiError {
    match e {
        SignatureError::BadSecret => {
            tracing::error!(
                sender,
                "webhook signing secret is invalid: fix the configuration"
            );
            ApiError::Unavailable("webhook signing secret is misconfigured".into())
        }
        e => {
            tracing::warn!(sender, error = %e, "webhook refused");
            ApiError::bad_request(None, format!("webhook refused: {e}"))
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A non-empty id of at most [`MAX_ID`] bytes, or a 400 naming `field`.
fn id_field<'a>(field: &str, value: Option<&'a str>) -> Result<&'a str, ApiError> {
    match value {
        Some(v) if !v.is_empty() && v.len() <= MAX_ID => Ok(v),
        _ => Err(ApiError::field(
            field,
            format!("must be a non-empty id of at most {MAX_ID} bytes"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Clerk

#[derive(Debug, Deserialize)]
struct ClerkEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Deserialize)]
struct ClerkUser {
    id: String,
    #[serde(default)]
    email_addresses: Vec<ClerkEmail>,
    primary_email_address_id: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    image_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ClerkEmail {
    id: String,
    email_address: String,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// What a Clerk event asks of the users table.
fn clerk_change(event: ClerkEvent) -> Result<ClerkChange, ApiError> {
    let bad =
        |e: serde_json::Error| ApiError::bad_request(Some("data".into()), format!("data: {e}"));
    Ok(match event.kind.as_str() {
        "user.created" | "user.updated" => {
            let user: ClerkUser = serde_json::from_value(event.data).map_err(bad)?;
            id_field("data.id", Some(&user.id))?;
            let email = user
                .primary_email_address_id
                .as_deref()
                .and_then(|primary| {
                    user.email_addresses
                        .iter()
                        .find(|e| e.id == primary)
                        .map(|e| e.email_address.clone())
                });
            let name = [user.first_name, user.last_name]
                .into_iter()
                .filter_map(non_empty)
                .collect::<Vec<_>>()
                .join(" ");
            ClerkChange::Upsert {
                restore: event.kind == "user.created",
                external_id: user.id,
                email: non_empty(email),
                name: Some(name).filter(|n| !n.is_empty()),
                image_url: non_empty(user.image_url),
            }
        }
        "user.deleted" => {
            let id = event.data.get("id").and_then(Value::as_str);
            ClerkChange::Delete {
                external_id: id_field("data.id", id)?.to_string(),
            }
        }
        _ => ClerkChange::Ignore,
    })
}

/// `POST /webhooks/clerk`: keeps users in step with Clerk.
async fn clerk(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let secret = app
        .config
        .clerk_webhook_secret
        .as_deref()
        .ok_or(ApiError::NotFound)?;
    let body = body_of(body)?;
    let event_id = header(&headers, "svix-id");
    webhook_sig::verify_svix(
        secret,
        event_id,
        header(&headers, "svix-timestamp"),
        header(&headers, "svix-signature"),
        &body,
        now_unix(),
    )
    .map_err(|e| signature_error("clerk", e))?;
    let event_id = id_field("svix-id", Some(event_id))?;
    let event: ClerkEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(None, format!("not a Clerk event: {e}")))?;
    let kind = event.kind.clone();
    let change = clerk_change(event)?;
    let free_tokens = app.config.plan_tokens.tokens("free");
    let (outcome, changed) = apply_clerk(&app.db, event_id, &change, free_tokens).await?;
    if let Some(external_id) = changed {
        app.auth.forget(&external_id);
        match &change {
            // Its open sockets close now (4401), not when their tokens expire.
            ClerkChange::Delete { .. } => app.access.kick(&external_id),
            ClerkChange::Upsert { restore: true, .. } => app.access.restored(&external_id),
            _ => {}
        }
    }
    tracing::info!(event = event_id, kind, ?outcome, "clerk webhook");
    reply(outcome)
}

// ---------------------------------------------------------------------------------------
// Stripe

#[derive(Debug, Deserialize)]
struct StripeEvent {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    /// When Stripe created the event (Unix seconds): events arrive in any order, and one
    /// older than the last applied to its user changes nothing.
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    data: Value,
}

/// The subscription statuses that grant the subscribed plan; any other (`incomplete`,
/// `incomplete_expired`, `unpaid`, `canceled`, `paused`) leaves the user on the free plan.
const PAYING_STATUSES: [&str; 3] = ["active", "trialing", "past_due"];

fn text_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_ID)
        .map(str::to_string)
}

/// What a subscription event says, or `None` for other events.
fn subscription(
    app: &AppState,
    kind: &str,
    data: &Value,
) -> Result<Option<Subscription>, ApiError> {
    let deleted = match kind {
        "customer.subscription.created" | "customer.subscription.updated" => false,
        "customer.subscription.deleted" => true,
        _ => return Ok(None),
    };
    let object = data
        .get("object")
        .filter(|o| o.is_object())
        .ok_or_else(|| ApiError::field("data.object", "must be a subscription object"))?;
    let id = id_field("data.object.id", object.get("id").and_then(Value::as_str))?;
    // `customer` is an id, or the customer object when the event was expanded.
    let customer = text_at(object, "/customer").or_else(|| text_at(object, "/customer/id"));
    let plans = &app.config.plan_tokens;
    let status = if deleted {
        Some("canceled".to_string())
    } else {
        text_at(object, "/status")
    };
    let paying = status
        .as_deref()
        .is_some_and(|s| PAYING_STATUSES.contains(&s));
    let plan = if deleted || !paying {
        Some(("free".to_string(), plans.tokens("free")))
    } else {
        let candidates = [
            text_at(object, "/items/data/0/price/lookup_key"),
            text_at(object, "/items/data/0/price/metadata/plan"),
            text_at(object, "/metadata/plan"),
        ];
        let known = candidates
            .iter()
            .flatten()
            .find(|c| plans.0.iter().any(|(name, _)| name == *c));
        if known.is_none() && candidates.iter().any(Option::is_some) {
            tracing::warn!(
                subscription = id,
                ?candidates,
                "subscription names no plan of the plan table; plan left unchanged"
            );
        }
        known.map(|p| (p.clone(), plans.tokens(p)))
    };
    Ok(Some(Subscription {
        id: id.to_string(),
        customer,
        user_id: text_at(object, "/metadata/userId"),
        clerk_id: text_at(object, "/metadata/clerkId"),
        status,
        plan,
        deleted,
    }))
}

/// `POST /webhooks/stripe`: keeps subscriptions, plans and token allowances in step with
/// Stripe.
async fn stripe(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let secret = app
        .config
        .stripe_webhook_secret
        .as_deref()
        .ok_or(ApiError::NotFound)?;
    let body = body_of(body)?;
    webhook_sig::verify_stripe(
        secret,
        header(&headers, "stripe-signature"),
        &body,
        now_unix(),
        webhook_sig::STRIPE_DEFAULT_TOLERANCE_SECS,
    )
    .map_err(|e| signature_error("stripe", e))?;
    let event: StripeEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(None, format!("not a Stripe event: {e}")))?;
    let event_id = id_field("id", event.id.as_deref())?;
    let subscription = subscription(&app, &event.kind, &event.data)?;
    let (outcome, changed) =
        apply_stripe(&app.db, event_id, event.created, subscription.as_ref()).await?;
    if let Some(external_id) = changed {
        app.auth.forget(&external_id);
    }
    tracing::info!(
        event = event_id,
        kind = event.kind,
        ?outcome,
        "stripe webhook"
    );
    reply(outcome)
}
