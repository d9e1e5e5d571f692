//! What authentication adds to a REST call and to a socket upgrade, as p50/p99.
//!
//! Two in-process servers on SQLite, one in development mode (no auth) and one verifying
//! HS256 tokens, answer the same requests; the difference is the cost of auth: verifying the
//! token, the user lookup (cached after the first call), the rate-limit check, and for a
//! socket the workflow and role lookup. Run with `cargo bench --bench auth_latency`;
//! `AUTH_BENCH_ITERS` sets the number of requests (default 2000 REST calls, 500 upgrades).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resonant_client::ws::{ConnectOptions, WsClient};
use serde_json::{json, Value};

struct Target {
    name: &'static str,
    server: resonant::Server,
    token: Option<String>,
    workflow: String,
    _dir: tempfile::TempDir,
}

fn token(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "exp": now + 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn target(name: &'static str, secret: Option<String>) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let mut config = resonant::ServeConfig::for_tests(dir.path().to_path_buf());
    config.jwt_secret = secret.clone();
    // The budgets would otherwise stop a benchmark that calls as fast as it can.
    config.rate_api_per_sec = 1e9;
    config.rate_api_burst = u32::MAX;
    config.rate_connect_per_sec = 1e9;
    config.rate_connect_burst = u32::MAX;
    let server = resonant::start(config).await.unwrap();
    let token = secret.map(|s| token(&s, "bench-user"));
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr());
    let auth = |r: reqwest::RequestBuilder| match &token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let ws: Value = auth(http.post(format!("{base}/api/v1/workspaces")))
        .json(&json!({ "name": "bench" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let wf: Value = auth(http.post(format!(
        "{base}/api/v1/workspaces/{}/workflows",
        ws["id"].as_str().unwrap()
    )))
    .json(&json!({ "name": "bench" }))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    Target {
        name,
        server,
        token,
        workflow: wf["id"].as_str().unwrap().to_string(),
        _dir: dir,
    }
}

async fn rest(t: &Target, iters: usize) -> Histogram<u64> {
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/v1/workflows/{}", t.server.addr(), t.workflow);
    let mut h = Histogram::<u64>::new(3).unwrap();
    for i in 0..iters + iters / 10 {
        let mut req = http.get(&url);
        if let Some(tok) = &t.token {
            req = req.bearer_auth(tok);
        }
        let started = Instant::now();
        let res = req.send().await.unwrap();
        assert!(res.status().is_success());
        res.bytes().await.unwrap();
        // The first tenth warms connections and caches.
        if i >= iters / 10 {
            h.record(started.elapsed().as_micros() as u64).unwrap();
        }
    }
    h
}

async fn upgrade(t: &Target, iters: usize) -> Histogram<u64> {
    let mut url = format!("ws://{}/sync/workflow-{}", t.server.addr(), t.workflow);
    if let Some(tok) = &t.token {
        url = format!("{url}?token={tok}");
    }
    let options = ConnectOptions {
        timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    };
    let mut h = Histogram::<u64>::new(3).unwrap();
    for i in 0..iters + iters / 10 {
        // Upgrade until the server's first step 2: the connection is authorised, joined
        // and usable.
        let started = Instant::now();
        let mut c = WsClient::connect(&url, &options).await.unwrap();
        c.sync().await.unwrap();
        if i >= iters / 10 {
            h.record(started.elapsed().as_micros() as u64).unwrap();
        }
        let _ = c.close().await;
    }
    h
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let iters: usize = std::env::var("AUTH_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    rt.block_on(async {
        let secret: String = (0..48).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let targets = [
            target("no auth (dev mode)", None).await,
            target("HS256 JWT", Some(secret)).await,
        ];
        println!(
            "{:<22} {:>10} {:>10} {:>12} {:>12}",
            "", "REST p50", "REST p99", "upgrade p50", "upgrade p99"
        );
        let mut rows = Vec::new();
        for t in &targets {
            let r = rest(t, iters).await;
            let u = upgrade(t, iters / 4).await;
            let row = [
                r.value_at_quantile(0.5),
                r.value_at_quantile(0.99),
                u.value_at_quantile(0.5),
                u.value_at_quantile(0.99),
            ];
            println!(
                "{:<22} {:>8}µs {:>8}µs {:>10}µs {:>10}µs",
                t.name, row[0], row[1], row[2], row[3]
            );
            rows.push(row);
        }
        let d: Vec<i64> = (0..4)
            .map(|i| rows[1][i] as i64 - rows[0][i] as i64)
            .collect();
        println!(
            "{:<22} {:>8}µs {:>8}µs {:>10}µs {:>10}µs",
            "added by auth", d[0], d[1], d[2], d[3]
        );
        for t in targets {
            t.server.shutdown().await.unwrap();
        }
    });
}
