//! HTTP: the accept loop, the REST API, incoming webhooks and the demo editor's files.

pub mod api;
mod demo;
pub(crate) mod hooks;
pub(crate) mod serve;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::origins;
use crate::{ws, AppState};

/// Every route of the server: the REST API, webhooks, the sync socket, the operators'
/// endpoints and the demo editor, under the request-id, tracing and origin layers.
pub(crate) fn router(state: AppState) -> Router {
    let (api, openapi) = api::router();
    let openapi = Arc::new(openapi);
    let api = api
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20));
    // Every request gets an `x-request-id` (the caller's, or a new UUID), echoed in the
    // response and carried by the request's log span, so a client's report can be matched to
    // the server's logs. The layers wrap everything, fallbacks included, so they come last;
    // the last added runs first.
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let guard = axum::middleware::from_fn_with_state(state.clone(), origins::guard);
    Router::new()
        .merge(api)
        .merge(webhooks::router())
        .merge(hooks::router())
        .route("/sync/{room}", get(ws::sync_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The demo editor answers the GETs no route took (outside the prefixes above); it is
        // not an API route, so it stays out of the OpenAPI document.
        .fallback(demo::fallback)
        .method_not_allowed_fallback(|| async { api::ApiError::MethodNotAllowed })
        // Before any route: development mode serves loopback pages only (see origins.rs).
        .layer(guard)
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::extract::Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Readiness fails once a write has waited this long for its commit.
const MAX_UNACKNOWLEDGED_AGE: Duration = Duration::from_secs(5);

async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    if app.rooms.journal().is_dead() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "store writer died: nothing is being committed; restart the process".to_string(),
        );
    }
    // Each commit attempt may look fine while nothing gets acknowledged (a stuck connection,
    // a full disk being retried): the age of the oldest unacknowledged write catches both.
    let oldest = app.rooms.journal().oldest_unacknowledged();
    if oldest > MAX_UNACKNOWLEDGED_AGE {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store commits are stuck: the oldest unacknowledged write is {:.1} s old",
                oldest.as_secs_f64()
            ),
        );
    }
    let ping = tokio::time::timeout(Duration::from_secs(2), app.rooms.store().ping()).await;
    match ping {
        // Redis down does not make a cluster node unready: it keeps serving correctly from
        // Postgres (rooms heal from it), and failing here would take every node out at once.
        Ok(Ok(())) if app.rooms.journal().is_healthy() => match app.rooms.bus() {
            Some(bus) if bus.is_up() => (StatusCode::OK, "ready\nbus: up".to_string()),
            Some(_) => (
                StatusCode::OK,
                "ready\nbus: down (rooms catch up from the store instead)".to_string(),
            ),
            None => (StatusCode::OK, "ready".to_string()),
        },
        Ok(Ok(())) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store commits are failing".to_string(),
        ),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store error: {e}")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store did not answer within 2 s".to_string(),
        ),
    }
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
