//! The demo editor served at `/` from the binary, next to (never instead of) the API.

mod common;

use common::*;
use reqwest::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, VARY,
};
use reqwest::{Response, StatusCode};
use std::io::Read;

/// What `/` serves: the Vite build's page, or the placeholder when none was built.
fn is_editor_page(body: &str) -> bool {
    body.contains("<div id=\"root\">") || body.contains("demo editor not built")
}

fn header(r: &Response, name: reqwest::header::HeaderName) -> &str {
    r.headers()
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers()))
}

#[tokio::test]
async fn the_editor_is_served_beside_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    let page = get("/").await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(header(&page, CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header(&page, CACHE_CONTROL), "no-cache");
    let etag = header(&page, ETAG).to_owned();
    let html = page.text().await.unwrap();
    assert!(is_editor_page(&html), "{html}");

    // `no-cache` revalidates on every load: an unchanged page costs a 304.
    let again = http
        .get(format!("{base}/"))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // The editor's own routes load the same page.
    let route = get("/w/abc").await.unwrap();
    assert_eq!(route.status(), StatusCode::OK);
    assert!(header(&route, CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(route.text().await.unwrap(), html);

    // Hashed assets the page names are served for good, with their types.
    for asset in html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/assets/"))
    {
        let r = get(asset).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        assert_eq!(
            header(&r, CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        let ct = header(&r, CONTENT_TYPE);
        if asset.ends_with(".js") {
            assert!(ct.contains("javascript"), "{asset}: {ct}");
        } else if asset.ends_with(".css") {
            assert!(ct.starts_with("text/css"), "{asset}: {ct}");
        }
    }

    // A missing file is a 404, not the page (a script served as HTML fails obscurely).
    for path in ["/assets/nope.js", "/nope.css"] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(!is_editor_page(&r.text().await.unwrap()), "{path}");
    }

    // The server's own paths are untouched: JSON API, JSON 404s, operator endpoints.
    let api = get("/api/v1/workspaces").await.unwrap();
    assert_eq!(api.status(), StatusCode::OK);
    assert!(header(&api, CONTENT_TYPE).starts_with("application/json"));
    for path in [
        "/api/v1/nope",
        "/api",
        "/sync",
        "/metrics/x",
        "/webhooks/nope",
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            header(&r, CONTENT_TYPE).starts_with("application/"),
            "{path}: {:?}",
            r.headers()
        );
    }
    assert_eq!(get("/healthz").await.unwrap().text().await.unwrap(), "ok");
    assert!(header(&get("/metrics").await.unwrap(), CONTENT_TYPE).starts_with("text/plain"));
    assert_eq!(
        get("/sync/workflow-1").await.unwrap().status(),
        StatusCode::UPGRADE_REQUIRED
    );
    // Only GET and HEAD reach the editor.
    let post = http.post(format!("{base}/")).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::NOT_FOUND);
    let head = http.head(format!("{base}/w/abc")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);

    // The OpenAPI document lists API operations only, so schemathesis never sees the page.
    let doc: serde_json::Value = get("/api/v1/openapi.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(!paths.is_empty());
    for path in paths.keys() {
        assert!(path.starts_with("/api/"), "{path} in the OpenAPI document");
    }
    server.shutdown().await.unwrap();
}

/// One GET of `path` with `Accept-Encoding: accept` (none if `None`), checked for the headers
/// every encoding shares; returns the response's headers and raw body.
async fn fetch_encoded(
    http: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = http.get(url);
    if let Some(accept) = accept {
        req = req.header(ACCEPT_ENCODING, accept);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{url} {accept:?}");
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap().to_vec();
    let len: usize = headers[CONTENT_LENGTH].to_str().unwrap().parse().unwrap();
    assert_eq!(len, body.len(), "{url} {accept:?}: Content-Length");
    assert_eq!(headers[VARY], "accept-encoding", "{url} {accept:?}");
    (headers, body)
}

#[tokio::test]
async fn assets_are_sent_compressed_as_the_browser_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let html = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    assert!(
        !assets.is_empty(),
        "the committed demo build names no assets: {html}"
    );
    for asset in assets {
        let url = format!("{base}{asset}");
        let (plain_h, plain) = fetch_encoded(&http, &url, None).await;
        assert!(plain_h.get(CONTENT_ENCODING).is_none(), "{asset}");

        let (br_h, br) = fetch_encoded(&http, &url, Some("gzip, deflate, br, zstd")).await;
        assert_eq!(br_h[CONTENT_ENCODING], "br", "{asset}");
        let mut decoded = Vec::new();
        brotli_decompressor::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain, "{asset}: brotli body");
        assert!(br.len() < plain.len(), "{asset}");

        let (gz_h, gz) = fetch_encoded(&http, &url, Some("br;q=0, gzip")).await;
        assert_eq!(gz_h[CONTENT_ENCODING], "gzip", "{asset}");
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain, "{asset}: gzip body");

        let (none_h, none) = fetch_encoded(&http, &url, Some("br;q=0, gzip;q=0")).await;
        assert!(none_h.get(CONTENT_ENCODING).is_none(), "{asset}");
        assert_eq!(none, plain);

        // Each representation has its own tag: a brotli tag does not revalidate a gzip copy.
        let (plain_tag, br_tag) = (&plain_h[ETAG], &br_h[ETAG]);
        assert_ne!(plain_tag, br_tag);
        assert_ne!(br_tag, &gz_h[ETAG]);
        let revalidate = |accept: &'static str| {
            http.get(&url)
                .header(ACCEPT_ENCODING, accept)
                .header(IF_NONE_MATCH, br_tag.clone())
                .send()
        };
        let same = revalidate("br").await.unwrap();
        assert_eq!(same.status(), StatusCode::NOT_MODIFIED, "{asset}");
        assert!(same.headers().get(CONTENT_ENCODING).is_none());
        assert_eq!(revalidate("gzip").await.unwrap().status(), StatusCode::OK);
    }
    server.shutdown().await.unwrap();
}
