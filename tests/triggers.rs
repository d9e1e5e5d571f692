//! Workflows in production (issue 20): secrets, webhook triggers, schedules and published
//! versions, against a real server over real HTTP, on SQLite and (with `TEST_DATABASE_URL`)
//! Postgres.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::api::{backends, invite_and_accept, now_secs, random_hex, sign_in, Backend};
use common::exec::*;
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use resonant::crypto::KeyCipher;
use serde_json::{json, Value};
use yrs::{Array, WriteTxn};

/// A server with an encryption key and loopback webhooks allowed.
async fn env(backend: Backend, tweak: impl FnOnce(&mut resonant::ServeConfig)) -> Env {
    Env::with(backend, |c| {
        c.encryption_key = Some(KeyCipher::generate().1);
        c.webhook_allow = vec!["127.0.0.1/32".into()];
        tweak(c);
    })
    .await
}

/// A loopback HTTP server that answers every request with what it received (method, path
/// with query, headers, body) and keeps a copy.
async fn echo_server() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: String| {
            let s = s.clone();
            async move {
                let headers: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value::String(v.to_str().unwrap_or("").into()),
                        )
                    })
                    .collect();
                let got = json!({"method": method.as_str(), "uri": uri.to_string(),
                                 "headers": headers, "body": body});
                s.lock().push(got.clone());
                axum::Json(got)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Every text the database holds, table by table (SQLite: the database files' bytes,
/// write-ahead log included; Postgres: every row of the schema as text).
async fn database_text(env: &Env, data_dir: &std::path::Path) -> String {
    match env.database_url() {
        None => {
            let mut all = String::new();
            for entry in std::fs::read_dir(data_dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    all.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
                }
            }
            all
        }
        Some(url) => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            assert!(tables.len() > 10, "{tables:?}");
            let mut all = String::new();
            for (t,) in tables {
                let rows: Vec<(String,)> =
                    sqlx::query_as(&format!("SELECT t::text FROM \"{t}\" t"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                rows.into_iter().for_each(|(r,)| all.push_str(&r));
            }
            all
        }
    }
}

/// Everything every test of this binary logs, at debug level for every crate (ours, the HTTP
/// client's, the database driver's), from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("one subscriber per test binary");
        buf
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_secret_reaches_the_request_and_nothing_that_is_stored_or_shown() {
    let logs = captured_logs();
    for backend in backends() {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_path_buf();
        let env = env(backend, |c| c.data_dir = data_dir.clone()).await;
        let (mock, seen) = echo_server().await;
        let value = format!("sk-live-{}", random_hex(12));
        let path = format!("/api/v1/workspaces/{}/secrets/API_TOKEN", env.ws);
        let (s, set) = env
            .call(
                &env.owner,
                Method::PUT,
                &path,
                Some(json!({"value": value})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{set}");
        assert_eq!(set["name"], "API_TOKEN");
        assert!(!set.to_string().contains(&value), "{set}");
        // Replacing keeps one secret under the name.
        let (s, _) = env
            .call(
                &env.owner,
                Method::PUT,
                &path,
                Some(json!({"value": value})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, list) = env
            .get(&format!("/api/v1/workspaces/{}/secrets", env.ws))
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
        assert!(list["items"][0].get("value").is_none(), "{list}");
        // Bad names and short values are refused with the field named.
        let (s, e) = env
            .call(
                &env.owner,
                Method::PUT,
                &format!("/api/v1/workspaces/{}/secrets/1bad", env.ws),
                Some(json!({"value": "long enough"})),
            )
            .await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("name"))
        );
        let (s, e) = env
            .call(
                &env.owner,
                Method::PUT,
                &path,
                Some(json!({"value": "abc"})),
            )
            .await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("value"))
        );
        // A member may use secrets but not set them.
        let member = sign_in(&env.http, env.addr(), SECRET, "member").await;
        invite_and_accept(
            &env.http,
            env.addr(),
            &env.owner.token,
            &env.ws,
            &member,
            "member",
        )
        .await;
        let (s, _) = env
            .call(
                &member,
                Method::PUT,
                &path,
                Some(json!({"value": "member-value"})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        let wf = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("call", "webhook", json!({
                        "url": format!("http://{mock}/echo?key={{{{ secrets.API_TOKEN }}}}"),
                        "method": "POST",
                        "headers": {"authorization": "Bearer {{ secrets.API_TOKEN }}"},
                        "body": "{\"token\": \"{{ secrets.API_TOKEN }}\", \"n\": {{ input.n }}}",
                    })),
                    block("out", "output", json!({"template": "{{ upstream.body | json }}"})),
                ],
                "connections": [edge("in", "call"), edge("call", "out")],
            }))
            .await;
        let mut w = env.watcher(&wf).await;
        let id = env.run(&wf, json!({"n": 7})).await;
        let events = until_finished(&mut w, &id).await;
        assert_eq!(
            events.last().unwrap()["type"],
            "execution.completed",
            "{events:?}"
        );
        // The receiver got the value, at call time, in the URL, a header and the body.
        let got = seen.lock().last().cloned().unwrap();
        assert_eq!(got["headers"]["authorization"], format!("Bearer {value}"));
        assert!(got["uri"].as_str().unwrap().contains(&value), "{got}");
        assert!(got["body"].as_str().unwrap().contains(&value), "{got}");
        // The same request carries a stable idempotency key: execution / block.
        assert_eq!(got["headers"]["idempotency-key"], format!("{id}/call"));
        // What the run stored and sent shows the name, never the value: the echo came back
        // redacted in the block's output, the events and the execution.
        let shown = serde_json::to_string(&events).unwrap();
        assert!(!shown.contains(&value), "an event holds the secret");
        assert!(shown.contains("[secret:API_TOKEN]"), "{shown}");
        let exec = env.execution(&id).await;
        assert!(
            !exec.to_string().contains(&value),
            "the execution holds the secret"
        );
        // A version of the workflow holds the reference only.
        let (s, v) = env
            .post(
                &format!("/api/v1/workflows/{wf}/versions"),
                Some(json!({"name": "v"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (_, version) = env
            .get(&format!("/api/v1/workflows/{wf}/versions/{}", v["version"]))
            .await;
        assert!(version.to_string().contains("secrets.API_TOKEN"));
        assert!(!version.to_string().contains(&value));
        // Nor does any row or file of the database: the value is sealed.
        let stored = database_text(&env, &data_dir).await;
        assert!(
            stored.contains("[secret:API_TOKEN]"),
            "the redacted output is stored"
        );
        assert!(
            !stored.contains(&value),
            "the database holds the secret in clear"
        );
        // Nor any log line, at debug level, of ours or of the HTTP client that sent it.
        let logged = String::from_utf8_lossy(&logs.lock()).into_owned();
        assert!(
            logged.contains("DEBUG"),
            "the capture works: {} bytes",
            logged.len()
        );
        assert!(!logged.contains(&value), "a log line holds the secret");

        // Anywhere else a secret is refused before the run: an AI prompt would send it to
        // a provider and store the answer.
        let bad = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("ai", "ai", json!({"userPromptTemplate": "Use {{ secrets.API_TOKEN }}"})),
                    block("out", "output", json!({})),
                ],
                "connections": [edge("in", "ai"), edge("ai", "out")],
            }))
            .await;
        let (s, e) = env.start(&bad, json!({})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        let problem = &e["error"]["problems"][0];
        assert_eq!(
            (problem["block"].as_str(), problem["field"].as_str()),
            (Some("ai"), Some("userPromptTemplate"))
        );
        assert!(
            problem["message"]
                .as_str()
                .unwrap()
                .contains("only in a webhook"),
            "{problem}"
        );
        // A secret that is not set fails the block with its name.
        let missing = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("call", "webhook", json!({"url": format!("http://{mock}/x"),
                        "headers": {"x-key": "{{ secrets.NOPE }}"}, "retry": {"attempts": 1}})),
                    block("out", "output", json!({})),
                ],
                "connections": [edge("in", "call"), edge("call", "out")],
            }))
            .await;
        let mut w2 = env.watcher(&missing).await;
        let id = env.run(&missing, json!({})).await;
        let events = until_finished(&mut w2, &id).await;
        let last = events.last().unwrap();
        assert_eq!(last["type"], "execution.failed", "{last}");
        assert!(
            last["error"].as_str().unwrap().contains("secrets.NOPE"),
            "{last}"
        );
        env.cleanup().await;
    }
}

/// Signs `body` for a webhook trigger, `at` Unix seconds.
fn sign(secret: &str, at: i64, body: &str) -> String {
    resonant::auth::webhook_sig::sign_stripe(secret, at, body.as_bytes())
}

/// Replaces the document's blocks and connections with `graph`.
async fn replace_graph(env: &Env, wf: &str, graph: &Value) {
    let mut c = env.editor(wf, &env.owner).await;
    c.opt_in().await;
    c.edit(|_doc, txn| {
        for name in ["blocks", "connections"] {
            let a = txn.get_or_insert_array(name);
            let n = a.len(txn);
            a.remove_range(txn, 0, n);
        }
    })
    .await;
    put_graph(&mut c, graph).await;
    c.close().await;
}

fn doubling(label: &str) -> Value {
    json!({
        "blocks": [
            block("in", "input", json!({})),
            block("twice", "transform", json!({"template": format!("{label}:{{{{ input.body.n * 2 }}}}")})),
            block("out", "output", json!({})),
        ],
        "connections": [edge("in", "twice"), edge("twice", "out")],
    })
}

#[tokio::test]
async fn a_webhook_trigger_checks_its_caller_and_runs_the_published_version() {
    for backend in backends() {
        let env = env(backend, |c| c.hook_body_bytes = 4096).await;
        let wf = env.workflow(doubling("v1")).await;
        let (s, t) = env
            .post(
                &format!("/api/v1/workflows/{wf}/triggers"),
                Some(json!({"kind": "webhook", "name": "orders", "passHeaders": ["X-Source"]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        let secret = t["secret"].as_str().unwrap().to_string();
        let url = t["url"].as_str().unwrap().to_string();
        // The URL the API gives is the one to call: built from the address the API was asked at.
        let hook = url.clone();
        assert_eq!(
            url,
            format!("http://{}/hooks/{}", env.addr(), t["id"].as_str().unwrap())
        );
        let post = |body: String, sig: Option<String>, query: &str| {
            let mut r = env
                .http
                .post(format!("{hook}{query}"))
                .header("content-type", "application/json")
                .header("x-source", "shop")
                .body(body);
            if let Some(s) = sig {
                r = r.header("x-resonant-signature", s);
            }
            async move {
                let resp = r.send().await.unwrap();
                let status = resp.status();
                (status, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        // Every request has a body of its own: a signature covers the body and the second,
        // so two requests with one body in one second would be one request twice.
        let body_no = std::sync::atomic::AtomicU32::new(0);
        let body = || {
            let k = body_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            json!({"n": 21, "k": k}).to_string()
        };
        // Nothing published yet: the trigger cannot run.
        let b = body();
        let (s, e) = post(b.clone(), Some(sign(&secret, now_secs(), &b)), "").await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("published"),
            "{e}"
        );
        // Nothing started, so the same signed request may be sent again: it is no replay.
        let (s, e) = post(b.clone(), Some(sign(&secret, now_secs(), &b)), "").await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("published"),
            "{e}"
        );
        // Publish version 1, then change the live document: the trigger runs version 1.
        let (s, v) = env
            .post(
                &format!("/api/v1/workflows/{wf}/versions"),
                Some(json!({"name": "one"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, p) = env
            .post(
                &format!("/api/v1/workflows/{wf}/versions/{}/publish", v["version"]),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{p}");
        replace_graph(&env, &wf, &doubling("draft")).await;

        let b = body();
        let (s, r) = post(
            b.clone(),
            Some(sign(&secret, now_secs() - 1, &b)),
            "?wait=true",
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["output"]["out"], "v1:42", "{r}");
        let exec = env.execution(r["executionId"].as_str().unwrap()).await;
        assert_eq!(exec["triggerId"], t["id"]);
        assert_eq!(exec["versionId"], v["id"]);
        assert_eq!(exec["userId"], env.owner.id);
        assert_eq!(exec["input"]["headers"]["x-source"], "shop");
        assert_eq!(exec["input"]["trigger"]["kind"], "webhook");

        // Refused: no signature, a wrong one, one over another body, an old one, a replay.
        let b = body();
        let (s, _) = post(b.clone(), None, "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = post(b.clone(), Some(sign("whsec_wrong", now_secs(), &b)), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = post(b.clone(), Some(sign(&secret, now_secs(), "{\"n\":1}")), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, e) = post(b.clone(), Some(sign(&secret, now_secs() - 600, &b)), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
        let captured = sign(&secret, now_secs() - 2, &b);
        let (s, first) = post(b.clone(), Some(captured.clone()), "").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{first}");
        let (s, e) = post(b.clone(), Some(captured), "").await;
        assert_eq!(s, StatusCode::CONFLICT, "a replay: {e}");
        // The body limit: 413 before anything is read further.
        let big = json!({"n": 1, "pad": "x".repeat(5000)}).to_string();
        let (s, _) = post(big.clone(), Some(sign(&secret, now_secs(), &big)), "").await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

        // An Idempotency-Key starts one execution; the same key with another body is 422.
        let keyed = |body: String, at: i64, key: &str| {
            let r = env
                .http
                .post(&hook)
                .header("x-resonant-signature", sign(&secret, at, &body))
                .header("idempotency-key", key)
                .body(body);
            async move {
                let resp = r.send().await.unwrap();
                (resp.status(), resp.json::<Value>().await.unwrap())
            }
        };
        // The sender signs again when it retries (a new timestamp), with the same key.
        let b = body();
        let (s1, a) = keyed(b.clone(), now_secs(), "order-1").await;
        let (s2, c) = keyed(b.clone(), now_secs() - 3, "order-1").await;
        assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::OK), "{a} {c}");
        assert_eq!(a["executionId"], c["executionId"]);
        let (s, e) = keyed(body(), now_secs(), "order-1").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["error"]["code"], "idempotency_key_reused");

        // Rotation: the old secret stops working at once.
        let (s, rotated) = env
            .post(
                &format!(
                    "/api/v1/triggers/{}/rotate-secret",
                    t["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{rotated}");
        let new_secret = rotated["secret"].as_str().unwrap().to_string();
        assert_ne!(new_secret, secret);
        let b = body();
        let (s, _) = post(b.clone(), Some(sign(&secret, now_secs(), &b)), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = post(b.clone(), Some(sign(&new_secret, now_secs(), &b)), "").await;
        assert_eq!(s, StatusCode::ACCEPTED);

        // A bearer trigger set to the draft runs the live document.
        let (s, bt) = env
            .post(
                &format!("/api/v1/workflows/{wf}/triggers"),
                Some(json!({"kind": "webhook", "auth": "bearer", "target": "draft"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{bt}");
        let bearer_hook = format!("http://{}/hooks/{}", env.addr(), bt["id"].as_str().unwrap());
        let call = |token: String| {
            let r = env
                .http
                .post(format!("{bearer_hook}?wait=true&timeout=10"))
                .bearer_auth(token)
                .body(json!({"n": 5}).to_string());
            async move {
                let resp = r.send().await.unwrap();
                (resp.status(), resp.json::<Value>().await.unwrap())
            }
        };
        let (s, _) = call("whsec_not_it".into()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, r) = call(bt["secret"].as_str().unwrap().into()).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["output"]["out"], "draft:10", "{r}");
        // A disabled trigger, an unknown one and a malformed id look the same: 404.
        let (s, _) = env
            .call(
                &env.owner,
                Method::PATCH,
                &format!("/api/v1/triggers/{}", bt["id"].as_str().unwrap()),
                Some(json!({"enabled": false})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(bt["secret"].as_str().unwrap().into()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let r = env
            .http
            .post(format!("http://{}/hooks/nope", env.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        // The history shows which trigger started each run.
        let (_, list) = env.get(&format!("/api/v1/workflows/{wf}/executions")).await;
        let by_trigger = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["triggerId"] == t["id"])
            .count();
        assert_eq!(by_trigger, 4, "{list}");
        env.cleanup().await;
    }
}

#[tokio::test]
async fn waiting_for_a_hook_run_is_bounded_by_its_timeout() {
    let env = env(Backend::Sqlite, |_| {}).await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("wait", "delay", json!({"seconds": 4})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "wait"), edge("wait", "out")],
        }))
        .await;
    let (_, t) = env
        .post(
            &format!("/api/v1/workflows/{wf}/triggers"),
            Some(json!({"kind": "webhook", "auth": "bearer", "target": "draft"})),
        )
        .await;
    let hook = format!("http://{}/hooks/{}", env.addr(), t["id"].as_str().unwrap());
    let started = std::time::Instant::now();
    let r = env
        .http
        .post(format!("{hook}?wait=true&timeout=1"))
        .bearer_auth(t["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["status"], "running", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let r = env
        .http
        .post(format!("{hook}?wait=true&timeout=3600"))
        .bearer_auth(t["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "timeout past --hook-wait-max-secs"
    );
    env.cleanup().await;
}

/// A schedule's executions as `(trigger, tick, missed)`, read through `addr`.
async fn scheduled_runs(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    wf: &str,
) -> Vec<(String, i64, bool)> {
    let (s, list) = common::api::call(
        http,
        addr,
        Some(token),
        Method::GET,
        &format!("/api/v1/workflows/{wf}/executions?limit=100"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let t = &e["input"]["trigger"];
            let at = chrono_ms(t["scheduledFor"].as_str()?);
            Some((
                e["triggerId"].as_str()?.to_string(),
                at,
                t["missed"] == true,
            ))
        })
        .collect()
}

fn chrono_ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .timestamp_millis()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits (polling the history every 200 ms, 30 s at most) until `enough` holds.
async fn until_runs(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    wf: &str,
    what: &str,
    enough: impl Fn(&[(String, i64, bool)]) -> bool,
) -> Vec<(String, i64, bool)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let runs = scheduled_runs(http, addr, token, wf).await;
        if enough(&runs) {
            return runs;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {runs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A per-second schedule on `nodes` servers of one store, killed (-9) and started again
/// after a few seconds: every tick runs at most once, `skip` runs none of the ticks the
/// servers were down for, and `run-once` runs exactly one of them.
async fn per_second_schedule(store: Vec<String>, nodes: usize) {
    let args = |extra: &[String]| {
        let mut a: Vec<String> = [
            "--jwt-secret",
            SECRET,
            "--rate-api-per-sec",
            "0",
            "--rate-connect-per-sec",
            "0",
            "--rate-socket-per-sec",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(store.iter().cloned());
        a.extend(extra.iter().cloned());
        a
    };
    let start = || {
        (0..nodes)
            .map(|_| {
                let a = args(&[]);
                common::ServerProcess::start(&a.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>()
    };
    let http = reqwest::Client::new();
    let servers = start();
    let addr = servers[0].addr;
    let owner = sign_in(&http, addr, SECRET, "owner").await;
    let api = |method: Method, path: String, body: Option<Value>| {
        let (http, token) = (http.clone(), owner.token.clone());
        async move { common::api::call(&http, addr, Some(&token), method, &path, body).await }
    };
    let (_, ws) = api(
        Method::POST,
        "/api/v1/workspaces".into(),
        Some(json!({"name": "w"})),
    )
    .await;
    let (_, wf) = api(
        Method::POST,
        format!(
            "/api/v1/workspaces/{}/workflows",
            ws["id"].as_str().unwrap()
        ),
        Some(json!({"name": "ticks"})),
    )
    .await;
    let wf = wf["id"].as_str().unwrap().to_string();
    let url = format!(
        "{}?token={}",
        common::room_url(addr, &format!("workflow-{wf}")),
        owner.token
    );
    let mut c = common::Client::connect_synced(&url).await;
    c.opt_in().await;
    put_graph(
        &mut c,
        &json!({
            "blocks": [
                block("in", "input", json!({})),
                block("at", "transform", json!({"template": "{{ input.trigger.scheduledFor }}"})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "at"), edge("at", "out")],
        }),
    )
    .await;
    c.close().await;
    let mut ids = Vec::new();
    for missed in ["run-once", "skip"] {
        let (s, t) = api(
            Method::POST,
            format!("/api/v1/workflows/{wf}/triggers"),
            Some(
                json!({"kind": "schedule", "cron": "* * * * * *", "timezone": "Europe/Berlin",
                        "missed": missed, "target": "draft"}),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        assert_eq!(t["nextFireTimes"].as_array().unwrap().len(), 3, "{t}");
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let (once, skip) = (ids[0].clone(), ids[1].clone());
    let count = |runs: &[(String, i64, bool)], t: &str| runs.iter().filter(|r| r.0 == t).count();
    until_runs(
        &http,
        addr,
        &owner.token,
        &wf,
        "three ticks each before the crash",
        |r| count(r, &once) >= 3 && count(r, &skip) >= 3,
    )
    .await;
    for s in servers {
        s.kill9();
    }
    let killed_at = now_ms();
    // Down for four seconds: four ticks or so are missed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted_at = now_ms();
    let servers = start();
    let addr = servers[0].addr;
    let runs = until_runs(
        &http,
        addr,
        &owner.token,
        &wf,
        "three ticks each after the restart",
        |r| {
            let after = |t: &str| {
                r.iter()
                    .filter(|x| x.0 == t && x.1 >= restarted_at - 1000)
                    .count()
            };
            after(&once) >= 3 && after(&skip) >= 3
        },
    )
    .await;
    drop(servers);
    for t in [&once, &skip] {
        let mut ticks: Vec<i64> = runs.iter().filter(|r| &r.0 == t).map(|r| r.1).collect();
        let n = ticks.len();
        ticks.sort();
        ticks.dedup();
        assert_eq!(ticks.len(), n, "a tick ran twice: {runs:?}");
    }
    // Ticks in the gap: after the last one fired before the crash, before the restart.
    let last_before = |t: &str| {
        runs.iter()
            .filter(|r| r.0 == t && r.1 <= killed_at)
            .map(|r| r.1)
            .max()
            .unwrap()
    };
    let in_gap = |t: &str| {
        let from = last_before(t);
        runs.iter()
            .filter(|r| r.0 == t && r.1 > from && r.1 < restarted_at - 1000)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(in_gap(&skip), vec![], "skip ran a missed tick: {runs:?}");
    assert!(runs.iter().all(|r| !(r.0 == skip && r.2)), "{runs:?}");
    // run-once: one execution, marked missed, for a tick after the last one run before the
    // crash and before the first one run on time after the restart.
    let caught_up: Vec<_> = runs
        .iter()
        .filter(|r| r.0 == once && r.2)
        .cloned()
        .collect();
    assert_eq!(caught_up.len(), 1, "run-once ran one missed tick: {runs:?}");
    let first_after = runs
        .iter()
        .filter(|r| r.0 == once && !r.2 && r.1 >= restarted_at - 1000)
        .map(|r| r.1)
        .min()
        .unwrap();
    assert!(
        caught_up[0].1 > last_before(&once) && caught_up[0].1 < first_after,
        "{caught_up:?} {runs:?}"
    );
}

#[tokio::test]
async fn a_per_second_schedule_runs_each_tick_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    per_second_schedule(
        vec!["--data-dir".into(), dir.path().to_str().unwrap().into()],
        1,
    )
    .await;
}

#[tokio::test]
async fn two_nodes_of_a_cluster_run_each_tick_of_a_schedule_once() {
    let (Some(_), Ok(redis)) = (common::postgres_url(), std::env::var("TEST_REDIS_URL")) else {
        eprintln!("TEST_DATABASE_URL and TEST_REDIS_URL are not both set: skipping");
        return;
    };
    let (url, pool, schema) = common::api::fresh_schema().await;
    per_second_schedule(
        vec![
            "--database-url".into(),
            url,
            "--redis-url".into(),
            redis,
            "--redis-prefix".into(),
            format!("test-ticks-{}", random_hex(4)),
        ],
        2,
    )
    .await;
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await;
}

/// Reads a Server-Sent Events body into `(id, event, data)` triples.
fn sse_events(body: &str) -> Vec<(i64, String, Value)> {
    body.split("\n\n")
        .filter_map(|chunk| {
            let (mut id, mut event, mut data) = (None, None, None);
            for line in chunk.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<Value>(v.trim()).ok();
                }
            }
            Some((id?, event?, data?))
        })
        .collect()
}

#[tokio::test]
async fn an_api_caller_follows_a_run_over_server_sent_events_and_resumes_with_last_event_id() {
    let env = env(Backend::Sqlite, |_| {}).await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("wait", "delay", json!({"seconds": 1})),
                block("out", "output", json!({"template": "done {{ input.n }}"})),
            ],
            "connections": [edge("in", "wait"), edge("wait", "out")],
        }))
        .await;
    let id = env.run(&wf, json!({"n": 3})).await;
    let url = format!("http://{}/api/v1/executions/{id}/events", env.addr());
    // Opened while the run waits: the stream follows it live and ends with its last event.
    let body = env
        .http
        .get(&url)
        .bearer_auth(&env.owner.token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), StatusCode::OK);
    assert!(body.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&body.text().await.unwrap());
    let seqs: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{events:?}"
    );
    let (_, kind, data) = events.last().unwrap();
    assert_eq!(kind, "execution.completed");
    assert_eq!(data["outputs"]["out"], "done 3");
    assert!(events
        .iter()
        .all(|(seq, kind, data)| data["seq"] == *seq && data["type"] == *kind));
    // A reconnect with Last-Event-ID gets what came after it, then the stream ends.
    let resumed = env
        .http
        .get(&url)
        .bearer_auth(&env.owner.token)
        .header("accept", "text/event-stream")
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rest: Vec<i64> = sse_events(&resumed).iter().map(|e| e.0).collect();
    assert_eq!(rest, seqs[2..].to_vec());
    // Without the header it is the JSON page, as before.
    let (s, page) = env.get(&format!("/api/v1/executions/{id}/events")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["events"].as_array().unwrap().len(), seqs.len());
    env.cleanup().await;
}

#[tokio::test]
async fn retention_prunes_only_executions_older_than_it_and_keeps_their_history_row() {
    for backend in backends() {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_path_buf();
        let env = env(backend, |c| {
            c.data_dir = data_dir.clone();
            c.execution_retention_days = 30;
            c.retention_sweep_secs = 1;
        })
        .await;
        let wf = env.workflow(doubling("r")).await;
        let mut w = env.watcher(&wf).await;
        let old = env.run(&wf, json!({"body": {"n": 1}})).await;
        until_finished(&mut w, &old).await;
        let recent = env.run(&wf, json!({"body": {"n": 2}})).await;
        let recent_events = until_finished(&mut w, &recent).await;
        // Make one of them finish 40 days ago.
        let forty_days = 40 * 86_400_000i64;
        let sql = "UPDATE executions SET completed_at = completed_at - $1 WHERE id = $2";
        match env.database_url() {
            Some(url) => {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(sql)
                    .bind(forty_days)
                    .bind(&old)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            None => {
                let url = format!("sqlite://{}", data_dir.join("resonant.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query(sql)
                    .bind(forty_days)
                    .bind(&old)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }
        // The next pass (every second here) prunes it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let pruned = loop {
            let e = env.execution(&old).await;
            if e["prunedAt"].is_i64() {
                break e;
            }
            assert!(std::time::Instant::now() < deadline, "not pruned: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Its row stays for the history (status, trigger, tokens, cost); its details are gone.
        assert_eq!(pruned["status"], "completed");
        assert_eq!(
            pruned["blockResults"].as_array().unwrap().len(),
            0,
            "{pruned}"
        );
        assert_eq!(pruned["graph"], json!({}));
        let (_, events) = env.get(&format!("/api/v1/executions/{old}/events")).await;
        assert_eq!(events["events"], json!([]));
        let (_, list) = env.get(&format!("/api/v1/workflows/{wf}/executions")).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        let (s, e) = env
            .post(&format!("/api/v1/executions/{old}/rerun"), Some(json!({})))
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        // The recent one is untouched.
        let kept = env.execution(&recent).await;
        assert!(kept["prunedAt"].is_null(), "{kept}");
        assert_eq!(kept["blockResults"].as_array().unwrap().len(), 3);
        let (_, events) = env
            .get(&format!("/api/v1/executions/{recent}/events"))
            .await;
        assert_eq!(
            events["events"].as_array().unwrap().len(),
            recent_events.len()
        );
        env.cleanup().await;
    }
}

#[tokio::test]
async fn run_from_here_uses_the_live_document_and_pinned_data_skips_the_call() {
    let env = env(Backend::Sqlite, |_| {}).await;
    let graph = |suffix: &str, pinned: Option<&str>| {
        let mut gen = json!({"userPromptTemplate": "Say {{ input | json }}", "provider": "demo"});
        if let Some(p) = pinned {
            gen["pinnedOutput"] = json!(p);
        }
        json!({
            "blocks": [
                block("in", "input", json!({})),
                block("gen", "ai", gen),
                block("shout", "transform", json!({"template": format!("{{{{ upstream }}}}{suffix}")})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "gen"), edge("gen", "shout"), edge("shout", "out")],
        })
    };
    let wf = env.workflow(graph("!", None)).await;
    let mut w = env.watcher(&wf).await;
    let first = env.run(&wf, json!({"topic": "rivers"})).await;
    let events = until_finished(&mut w, &first).await;
    let generated = completed(&events, "gen")["output"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        events.last().unwrap()["outputs"]["out"],
        format!("{generated}!")
    );

    // The editors change the block after the AI call; run from it with the live document:
    // the call's result is reused, the changed block runs as it is now.
    replace_graph(&env, &wf, &graph("?", None)).await;
    let path = format!("/api/v1/executions/{first}/rerun");
    let env_ref = &env;
    let rerun = |body: Value| {
        let path = path.clone();
        async move { env_ref.post(&path, Some(body)).await }
    };
    let (s, re) =
        rerun(json!({"fromBlock": "shout", "document": "live", "idempotencyKey": "try-1"})).await;
    assert_eq!(s, StatusCode::CREATED, "{re}");
    let re_id = re["id"].as_str().unwrap().to_string();
    let events = until_finished(&mut w, &re_id).await;
    assert_eq!(
        events.last().unwrap()["outputs"]["out"],
        format!("{generated}?")
    );
    let k = kinds(&events);
    assert!(
        !k.contains(&"block.started:gen".to_string()),
        "the AI call is reused: {k:?}"
    );
    assert_eq!(completed(&events, "gen")["reused"], true);
    // The same key again: the same re-run, nothing new started.
    let (s, again) =
        rerun(json!({"fromBlock": "shout", "document": "live", "idempotencyKey": "try-1"})).await;
    assert_eq!((s, &again["id"]), (StatusCode::OK, &re["id"]));
    // The same key for another execution's re-run is a mistake.
    let (s, e) = env
        .post(
            &format!("/api/v1/executions/{re_id}/rerun"),
            Some(json!({"idempotencyKey": "try-1", "fromBlock": "shout"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    // A block no longer in the document cannot be run from.
    let (s, e) = rerun(json!({"fromBlock": "gone", "document": "live"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");

    // Pinned sample data: the block does not call anything; its pinned value goes on.
    replace_graph(&env, &wf, &graph("?", Some("PINNED"))).await;
    let pinned = env.run(&wf, json!({"topic": "rivers"})).await;
    let events = until_finished(&mut w, &pinned).await;
    assert_eq!(events.last().unwrap()["outputs"]["out"], "PINNED?");
    assert_eq!(completed(&events, "gen")["pinned"], true);
    assert!(!kinds(&events).contains(&"block.started:gen".to_string()));
    let e = env.execution(&pinned).await;
    assert_eq!(e["tokensUsed"], 0);
    // A trigger's run ignores it: production runs call for real.
    let (_, t) = env
        .post(
            &format!("/api/v1/workflows/{wf}/triggers"),
            Some(json!({"kind": "webhook", "auth": "bearer", "target": "draft"})),
        )
        .await;
    let r: Value = env
        .http
        .post(format!(
            "http://{}/hooks/{}?wait=true",
            env.addr(),
            t["id"].as_str().unwrap()
        ))
        .bearer_auth(t["secret"].as_str().unwrap())
        .json(&json!({"topic": "rivers"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "completed", "{r}");
    assert_ne!(r["output"]["out"], "PINNED?", "{r}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_webhook_trigger_is_rate_limited_per_trigger() {
    let env = env(Backend::Sqlite, |c| {
        c.rate_hook_per_sec = 0.5;
        c.rate_hook_burst = 2;
    })
    .await;
    let wf = env.workflow(doubling("rl")).await;
    let mut hooks = Vec::new();
    for _ in 0..2 {
        let (_, t) = env
            .post(
                &format!("/api/v1/workflows/{wf}/triggers"),
                Some(json!({"kind": "webhook", "auth": "bearer", "target": "draft"})),
            )
            .await;
        hooks.push((
            t["url"].as_str().unwrap().to_string(),
            t["secret"].as_str().unwrap().to_string(),
        ));
    }
    let call = |(url, secret): &(String, String)| {
        env.http
            .post(url)
            .bearer_auth(secret)
            .json(&json!({"n": 1}))
            .send()
    };
    assert_eq!(
        call(&hooks[0]).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        call(&hooks[0]).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let limited = call(&hooks[0]).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    // Another trigger has its own budget.
    assert_eq!(
        call(&hooks[1]).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    env.cleanup().await;
}

#[tokio::test]
async fn development_mode_seals_with_a_key_it_keeps_in_the_data_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data-dir", dir.path().to_str().unwrap()];
    let http = reqwest::Client::new();
    let server = common::ServerProcess::start(&args);
    let addr = server.addr;
    let api = |addr, method, path: String, body| {
        let http = http.clone();
        async move { common::api::call(&http, addr, None, method, &path, body).await }
    };
    let (_, list) = api(addr, Method::GET, "/api/v1/workspaces".into(), None).await;
    let ws = list["items"][0]["id"].as_str().unwrap().to_string();
    let (_, wf) = api(
        addr,
        Method::POST,
        format!("/api/v1/workspaces/{ws}/workflows"),
        Some(json!({"name": "dev"})),
    )
    .await;
    let wf = wf["id"].as_str().unwrap().to_string();
    let (s, t) = api(
        addr,
        Method::POST,
        format!("/api/v1/workflows/{wf}/triggers"),
        Some(json!({"kind": "webhook"})),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "no flag needed in development mode: {t}"
    );
    let key = dir.path().join("encryption.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A restart reads the same key: what it sealed still opens.
    drop(server);
    let server = common::ServerProcess::start(&args);
    let (s, again) = api(
        server.addr,
        Method::GET,
        format!("/api/v1/triggers/{}", t["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["secret"], t["secret"]);
}

#[tokio::test]
async fn event_streams_are_capped_and_a_closed_one_gives_its_place_back() {
    let env = env(Backend::Sqlite, |c| c.max_event_streams = 1).await;
    let wf = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), block("wait", "delay", json!({"seconds": 30})),
                       block("out", "output", json!({}))],
            "connections": [edge("in", "wait"), edge("wait", "out")],
        }))
        .await;
    let id = env.run(&wf, json!({})).await;
    let url = format!("http://{}/api/v1/executions/{id}/events", env.addr());
    let open = || {
        env.http
            .get(&url)
            .bearer_auth(&env.owner.token)
            .header("accept", "text/event-stream")
            .send()
    };
    let first = open().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = open().await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().contains_key("retry-after"));
    // The JSON page is not a stream: it is not capped.
    let (s, _) = env.get(&format!("/api/v1/executions/{id}/events")).await;
    assert_eq!(s, StatusCode::OK);
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = open().await.unwrap();
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = env
        .post(&format!("/api/v1/executions/{id}/cancel"), None)
        .await;
    env.cleanup().await;
}
