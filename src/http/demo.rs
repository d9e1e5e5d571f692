//! The demo editor: the Vite build in `client-sdk/demo/dist`, compiled into the binary, served
//! at `/` with its hashed assets under `/assets/`. Any other extension-less GET outside the
//! server's own prefixes gets `index.html`, so the editor's client-side routes (`/w/abc`)
//! survive a reload. Everything else stays the API's JSON 404. Files are sent brotli- or
//! gzip-compressed when the browser accepts it, from copies compressed when the demo was
//! built (see `client-sdk/scripts/precompress.mjs` for why then and not here).

use std::borrow::Cow;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rust_embed::{EmbeddedFile, RustEmbed};

use crate::http::api::ApiError;

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
            respond(req.headers(), path, file, &mime, cache)
        }
        // Not index.html: a missing script served as HTML fails far less clearly than a 404.
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// `index.html` (or the placeholder), revalidated on every load so a new build is picked up
/// at once; its assets' names change with their content.
fn index(headers: &HeaderMap) -> Response {
    match Dist::get("index.html") {
        Some(file) => respond(headers, "index.html", file, "text/html", "no-cache"),
        None => send(
            headers,
            Bytes::from_static(PLACEHOLDER.as_bytes()),
            "text/html",
            "no-cache",
            "\"placeholder\"",
        ),
    }
}

/// An embedded file, without copying it (it is `'static` data in the binary), in the best
/// content coding the request accepts of those precompressed next to it (`NAME.br`,
/// `NAME.gz`, written by `client-sdk/scripts/precompress.mjs` when the demo is built).
fn respond(
    headers: &HeaderMap,
    path: &str,
    file: EmbeddedFile,
    mime: &str,
    cache: &'static str,
) -> Response {
    let br = Dist::get(&format!("{path}.br"));
    let gz = Dist::get(&format!("{path}.gz"));
    let varies = br.is_some() || gz.is_some();
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let coding = choose_coding(accept, br.is_some(), gz.is_some());
    // One strong ETag per representation: the same tag for two encodings would let a cache
    // answer a gzip request's revalidation with a brotli body.
    let tag = hex::encode(&file.metadata.sha256_hash()[..16]);
    let (body, etag, encoding) = match (coding, br, gz) {
        (Coding::Br, Some(f), _) => (f.data, format!("\"{tag}-br\""), Some("br")),
        (Coding::Gzip, _, Some(f)) => (f.data, format!("\"{tag}-gz\""), Some("gzip")),
        _ => (file.data, format!("\"{tag}\""), None),
    };
    let body = match body {
        Cow::Borrowed(b) => Bytes::from_static(b),
        Cow::Owned(v) => Bytes::from(v),
    };
    let mut response = send(headers, body, mime, cache, &etag);
    let ok = response.status() == StatusCode::OK;
    let h = response.headers_mut();
    if varies {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let (Some(encoding), true) = (encoding, ok) {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    response
}

/// A content coding a file may be sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Br,
    Gzip,
    Identity,
}

/// The coding to send, given the request's `Accept-Encoding` and which precompressed copies
/// exist: the acceptable one (q > 0) with the highest q-value, the smaller body on a tie
/// (brotli, then gzip, then identity). A coding not listed takes `*`'s q-value; identity is
/// acceptable unless excluded (RFC 9110 §12.5.3), at the lowest weight unless listed. When nothing is acceptable the file goes
/// out uncompressed rather than as a 406, which no browser sends a request to provoke.
fn choose_coding(accept: Option<&str>, has_br: bool, has_gzip: bool) -> Coding {
    let Some(accept) = accept else {
        return Coding::Identity;
    };
    let (mut br, mut gzip, mut identity, mut star) = (None, None, None, None);
    for entry in accept.split(',') {
        let mut parts = entry.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    // An unreadable weight counts as a refusal: better uncompressed than a
                    // coding the client did not ask for.
                    q = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|q: &f32| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0);
                }
            }
        }
        match name.as_str() {
            "br" => br = Some(q),
            "gzip" | "x-gzip" => gzip = Some(q),
            "identity" => identity = Some(q),
            "*" => star = Some(q),
            _ => {}
        }
    }
    let br = br.or(star).unwrap_or(0.0);
    let gzip = gzip.or(star).unwrap_or(0.0);
    // Unlisted, identity is acceptable but last: a client that lists a coding at any weight
    // would rather have it than the uncompressed file.
    let identity = identity.or(star).unwrap_or(f32::MIN_POSITIVE);
    let mut best = (Coding::Identity, 0.0f32);
    for (coding, q, available) in [
        (Coding::Br, br, has_br),
        (Coding::Gzip, gzip, has_gzip),
        (Coding::Identity, identity, true),
    ] {
        if available && q > best.1 {
            best = (coding, q);
        }
    }
    best.0
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

#[cfg(test)]
mod tests {
    use super::{choose_coding, Coding};

    #[test]
    fn the_coding_follows_accept_encoding_and_its_q_values() {
        let cases = [
            (None, Coding::Identity),
            (Some(""), Coding::Identity),
            (Some("gzip, deflate, br, zstd"), Coding::Br),
            (Some("gzip"), Coding::Gzip),
            (Some("x-gzip"), Coding::Gzip),
            (Some("BR"), Coding::Br),
            (Some("br;q=0, gzip"), Coding::Gzip),
            (Some("br; q=0.0, gzip;q=0.1"), Coding::Gzip),
            (Some("br;q=0.4, gzip;q=0.5"), Coding::Gzip),
            (Some("gzip;q=0.5, br;q=0.5"), Coding::Br),
            (Some("br;q=0, gzip;q=0"), Coding::Identity),
            (Some("identity;q=1, br;q=0.9"), Coding::Identity),
            (Some("*"), Coding::Br),
            (Some("*;q=0.5, br;q=0"), Coding::Gzip),
            (Some("deflate, zstd"), Coding::Identity),
            (Some("br;q=abc, gzip"), Coding::Gzip),
            (Some("br;q=2"), Coding::Identity),
            // Nothing acceptable: sent as is rather than refused.
            (Some("identity;q=0"), Coding::Identity),
        ];
        for (accept, want) in cases {
            assert_eq!(choose_coding(accept, true, true), want, "{accept:?}");
        }
        // Only what exists is chosen.
        assert_eq!(choose_coding(Some("br, gzip"), false, true), Coding::Gzip);
        assert_eq!(choose_coding(Some("br"), false, true), Coding::Identity);
        assert_eq!(
            choose_coding(Some("br, gzip"), false, false),
            Coding::Identity
        );
    }
}
