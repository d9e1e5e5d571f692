//! The demo editor: the Vite build in `client-sdk/demo/dist`, compiled into the binary, served
//! at `/` with its hashed assets under `/assets/`. Any other extension-less GET outside the
//! server's own prefixes gets `index.html`, so the editor's client-side routes (`/w/abc`)
//! survive a reload. Everything else stays the API's JSON 404.

use std::borrow::Cow;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rust_embed::{EmbeddedFile, RustEmbed};

use crate::api::ApiError;

/// The built editor. `allow_missing`: a checkout without a front-end build still compiles,
/// and serves [`PLACEHOLDER`] instead.
#[derive(RustEmbed)]
#[folder = "client-sdk/demo/dist"]
#[allow_missing = true]
struct Dist;

/// Served at `/` when the editor was not built before the server was compiled.
const PLACEHOLDER: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Resonant</title></head>\n<body><p>demo editor not built: run <code>cd client-sdk &amp;&amp; npm ci &amp;&amp; npm run build</code>, then rebuild the server.</p></body></html>\n";

/// First path segments that belong to the server: never answered with the editor, so a
/// mistyped API path stays a JSON 404 rather than a page of HTML.
const RESERVED: &[&str] = &["api", "sync", "webhooks", "metrics", "healthz", "readyz"];

/// Hashed names change with their content, so a browser may keep them for good.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The router's fallback: the editor for GETs it owns, the API's 404 for everything else.
pub async fn fallback(req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::NotFound.into_response();
    }
    let path = req.uri().path().trim_start_matches('/');
    let first = path.split('/').next().unwrap_or("");
    if RESERVED.contains(&first) {
        return ApiError::NotFound.into_response();
    }
    let last = path.rsplit('/').next().unwrap_or("");
    if path.is_empty() || !last.contains('.') {
        return index(req.headers());
    }
    match Dist::get(path) {
        Some(file) => {
            let cache = if path.starts_with("assets/") {
                IMMUTABLE
            } else {
                "no-cache"
            };
            let mime = file.metadata.mimetype().to_owned();
            respond(req.headers(), file, &mime, cache)
        }
        // Not index.html: a missing script served as HTML fails far less clearly than a 404.
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// `index.html` (or the placeholder), revalidated on every load so a new build is picked up
/// at once; its assets' names change with their content.
fn index(headers: &HeaderMap) -> Response {
    match Dist::get("index.html") {
        Some(file) => respond(headers, file, "text/html", "no-cache"),
        None => send(
            headers,
            Bytes::from_static(PLACEHOLDER.as_bytes()),
            "text/html",
            "no-cache",
            "\"placeholder\"",
        ),
    }
}

/// An embedded file, without copying it (it is `'static` data in the binary).
fn respond(headers: &HeaderMap, file: EmbeddedFile, mime: &str, cache: &'static str) -> Response {
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let body = match file.data {
        Cow::Borrowed(b) => Bytes::from_static(b),
        Cow::Owned(v) => Bytes::from(v),
    };
    send(headers, body, mime, cache, &etag)
}

/// The body, or 304 when the browser's copy is current (`no-cache` revalidates every load).
fn send(headers: &HeaderMap, body: Bytes, mime: &str, cache: &'static str, etag: &str) -> Response {
    let current = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let content_type = if mime.starts_with("text/") || mime == "application/javascript" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    let mut response = if current {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let h = response.headers_mut();
    if !current {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        );
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    response
}
