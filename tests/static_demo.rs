//! The demo editor served at `/` from the binary, next to (never instead of) the API.

mod common;

use common::*;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::{Response, StatusCode};

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
