//! Issue 15, part B (the engine): what a signed-up user's workflow may cost the server. Each
//! test runs the release-style binary as a child process, so an abort or a crash loop shows
//! as a dead process and memory is the process's own peak RSS.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{call, sign_in, User};
use common::exec::{block, edge, put_graph, SECRET};
use common::{peak_rss_kib, room_url, Client, ServerProcess};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A server process with a signed-in owner and a workspace.
struct Proc {
    /// `None` for another user's view of the same server.
    server: Option<ServerProcess>,
    addr: SocketAddr,
    http: reqwest::Client,
    owner: User,
    ws: String,
}

/// Server arguments on `store`: a SQLite data directory, or a Postgres URL.
fn args<'a>(store: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let backend = if store.starts_with("postgres") {
        "--database-url"
    } else {
        "--data-dir"
    };
    let mut a = vec![
        "--jwt-secret",
        SECRET,
        "--rate-api-per-sec",
        "0",
        "--rate-socket-per-sec",
        "0",
        "--rate-connect-per-sec",
        "0",
        backend,
        store,
    ];
    a.extend_from_slice(extra);
    a
}

/// The stores a test runs on: SQLite in `dir`, and Postgres (a fresh schema) when
/// `TEST_DATABASE_URL` is set.
async fn stores(dir: &str) -> Vec<String> {
    let mut v = vec![dir.to_owned()];
    if common::postgres_url().is_some() {
        v.push(common::api::fresh_schema().await.0);
    }
    v
}

impl Proc {
    async fn start(dir: &str, extra: &[&str]) -> Proc {
        let server = ServerProcess::start(&args(dir, extra));
        let addr = server.addr;
        let http = reqwest::Client::new();
        let owner = sign_in(&http, addr, SECRET, "owner").await;
        let (s, ws) = call(
            &http,
            addr,
            Some(&owner.token),
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "w"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{ws}");
        let ws = ws["id"].as_str().unwrap().to_string();
        Proc {
            server: Some(server),
            addr,
            http,
            owner,
            ws,
        }
    }

    /// The same store, a new process, the same owner.
    fn restart(self, dir: &str, extra: &[&str]) -> Proc {
        let Proc {
            server,
            http,
            owner,
            ws,
            ..
        } = self;
        server.expect("owns its server").kill9();
        let server = ServerProcess::start(&args(dir, extra));
        Proc {
            addr: server.addr,
            server: Some(server),
            http,
            owner,
            ws,
        }
    }

    /// `user`'s view of the same server, in workspace `ws`.
    fn as_user(&self, user: User, ws: &str) -> Proc {
        Proc {
            server: None,
            addr: self.addr,
            http: self.http.clone(),
            owner: user,
            ws: ws.to_owned(),
        }
    }

    fn pid(&self) -> u32 {
        self.server.as_ref().expect("owns its server").pid()
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        call(
            &self.http,
            self.addr(),
            Some(&self.owner.token),
            method,
            path,
            body,
        )
        .await
    }

    async fn workflow(&self, graph: Value) -> String {
        let (s, wf) = self
            .call(
                Method::POST,
                &format!("/api/v1/workspaces/{}/workflows", self.ws),
                Some(json!({"name": "f"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{wf}");
        let wf = wf["id"].as_str().unwrap().to_string();
        let url = format!(
            "{}?token={}",
            room_url(self.addr(), &format!("workflow-{wf}")),
            self.owner.token
        );
        let mut c = Client::connect_synced(&url).await;
        c.opt_in().await;
        put_graph(&mut c, &graph).await;
        c.close().await;
        wf
    }

    async fn start_run(&self, wf: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/v1/workflows/{wf}/executions"),
            Some(json!({"input": {}})),
        )
        .await
    }

    async fn execution(&self, id: &str) -> Value {
        let (s, e) = self
            .call(Method::GET, &format!("/api/v1/executions/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{e}");
        e
    }

    async fn until_finished(&self, id: &str) -> Value {
        wait_for("the execution ends", || async {
            let e = self.execution(id).await;
            (!matches!(e["status"].as_str(), Some("pending" | "running"))).then_some(e)
        })
        .await
    }

    async fn alive(&self) {
        let r = self
            .http
            .get(format!("http://{}/healthz", self.addr()))
            .send()
            .await
            .expect("the server still answers");
        assert!(r.status().is_success());
    }
}

/// Polls `f` every 20 ms until it gives a value; fails after 60 s.
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A block's stored state in `GET /executions/{id}`.
fn block_state(exec: &Value, id: &str) -> Option<(String, i64)> {
    exec["blockResults"].as_array()?.iter().find_map(|b| {
        (b["blockId"] == id).then(|| {
            (
                b["status"].as_str().unwrap_or("").to_owned(),
                b["attempt"].as_i64().unwrap_or(0),
            )
        })
    })
}

/// A listener that accepts connections and never answers: a block calling it stays running.
async fn black_hole() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, n)
}

/// B7: a block that takes the process down every time it runs (here: kill -9 while it runs)
/// is failed with "interrupted N times" once it has been interrupted as many times as its
/// retry policy allows attempts, instead of being resumed at every start for ever.
#[tokio::test]
async fn a_block_interrupted_past_its_attempts_is_failed_not_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    for store in stores(tmp.path().to_str().unwrap()).await {
        interrupted_past_its_attempts(&store).await;
    }
}

async fn interrupted_past_its_attempts(dir: &str) {
    let dir = dir.to_owned();
    let (hole, calls) = black_hole().await;
    let extra = ["--webhook-allow", "127.0.0.1"];
    let mut p = Proc::start(&dir, &extra).await;
    let graph = json!({
        "blocks": [
            block("in", "input", json!({})),
            block("hook", "webhook", json!({"url": format!("http://{hole}/"), "method": "POST",
                                           "retry": {"attempts": 2}})),
            block("out", "output", json!({})),
        ],
        "connections": [edge("in", "hook"), edge("hook", "out")],
    });
    let wf = p.workflow(graph).await;
    let (s, e) = p.start_run(&wf).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    // Attempt 1, then attempt 2 after a restart: each stored as running, then killed.
    for attempt in 1..=2 {
        wait_for("the webhook block runs", || async {
            let state = block_state(&p.execution(&id).await, "hook");
            (state == Some(("running".into(), attempt))
                && calls.load(Ordering::SeqCst) >= attempt as usize)
                .then_some(())
        })
        .await;
        p = p.restart(&dir, &extra);
    }
    // The third start does not run it again: the block and the execution fail, and the
    // server stays up.
    let done = p.until_finished(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let err = done["error"].as_str().unwrap_or("");
    assert!(err.contains("interrupted 2 times"), "{err}");
    assert_eq!(
        block_state(&done, "hook").map(|s| s.0),
        Some("failed".into())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not called a third time");
    p.alive().await;
    // And the next restart has nothing left to resume.
    let p = p.restart(&dir, &extra);
    p.alive().await;
    assert_eq!(p.execution(&id).await["status"], "failed");
}

/// A one-transform workflow rendering `template`.
fn transform_flow(template: &str) -> Value {
    json!({
        "blocks": [
            block("in", "input", json!({})),
            block("t", "transform", json!({"template": template})),
            block("out", "output", json!({})),
        ],
        "connections": [edge("in", "t"), edge("t", "out")],
    })
}

/// B7: the template bombs (40 characters that aborted the server with a 4 GB
/// allocation; join/replace amplification; a `~` doubling loop; a 300-item loop over
/// `'x' * 1000000`) each fail their block with a clear error, the server stays up and its
/// peak RSS stays low; a constant bomb is refused at start with 422.
#[tokio::test]
async fn template_bombs_fail_their_block_and_the_server_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let p = Proc::start(&dir, &[]).await;
    let pid = p.pid();
    // A canary editor in another workflow's room: each edit is acknowledged promptly
    // between (and after) the bombs.
    let canary_wf = p.workflow(transform_flow("canary")).await;
    let mut canary = Client::connect_synced(&format!(
        "{}?token={}",
        room_url(p.addr(), &format!("workflow-{canary_wf}")),
        p.owner.token
    ))
    .await;
    canary.opt_in().await;
    let mut acks = 0usize;
    let mut slowest = Duration::ZERO;
    let mut edit = async |c: &mut Client| {
        let t = Instant::now();
        acks += 1;
        let n = acks;
        c.edit(|_doc, txn| {
            use yrs::{Map, WriteTxn};
            txn.get_or_insert_map("canary").insert(txn, "n", n as i64);
        })
        .await;
        c.until("the canary edit is acknowledged", move |s| s.acks >= n)
            .await;
        slowest = slowest.max(t.elapsed());
    };
    let bombs = [
        ("{{ 'x\ny' | indent(4000000000) | length }}", "indent"),
        ("{{ ('x' * 100000) | join('y' * 50000) | length }}", "join"),
        (
            "{{ ('x' * 100000) | replace('x', 'y' * 50000) | length }}",
            "replace",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "joining strings",
        ),
    ];
    for (template, what) in bombs {
        let wf = p.workflow(transform_flow(template)).await;
        let (s, e) = p.start_run(&wf).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        let done = p.until_finished(e["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "failed", "{template}: {done}");
        let err = done["error"].as_str().unwrap_or("");
        assert!(
            err.contains(what) && err.contains("--template-render-bytes"),
            "{template}: {err}"
        );
        p.alive().await;
        edit(&mut canary).await;
    }
    // Was: an abort (a 4 GB allocation), 1.1–4.8 GB for the others.
    let bombs_mib = peak_rss_kib(pid) / 1024;
    eprintln!("template bombs: peak RSS {bombs_mib} MiB");
    assert!(bombs_mib < 128, "peak RSS {bombs_mib} MiB");
    // 300 iterations each rendering 1 MB: every render fits, the execution's total does not.
    let looped = json!({
        "blocks": [
            block("in", "input", json!({})),
            block("each", "loop", json!({"items": "range(300) | list", "maxIterations": 300, "concurrency": 4})),
            block("big", "transform", json!({"template": "{{ 'x' * 1000000 }}"})),
            block("out", "output", json!({})),
        ],
        "connections": [
            edge("in", "each"),
            {"id": "b", "source": "each", "sourceHandle": "body", "target": "big"},
            {"id": "n", "source": "big", "target": "each", "targetHandle": "next"},
            {"id": "d", "source": "each", "sourceHandle": "done", "target": "out"},
        ],
    });
    let wf = p.workflow(looped).await;
    let (s, e) = p.start_run(&wf).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let done = p.until_finished(e["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    let err = done["error"].as_str().unwrap_or("");
    assert!(err.contains("--template-execution-bytes"), "{err}");
    // Was 3.6 GB and 573 MB of rows: now at most 64 MiB of rendered text, held a few times
    // over (loop results, stored rows, events in flight).
    let loop_mib = peak_rss_kib(pid) / 1024;
    eprintln!("300 x 1 MB loop: peak RSS {loop_mib} MiB");
    assert!(loop_mib < 640, "peak RSS {loop_mib} MiB");
    // Folded while compiling, so refused before anything runs.
    let wf = p
        .workflow(transform_flow("{{ ('x' * 99999999) ~ ('x' * 99999999) }}"))
        .await;
    let (s, e) = p.start_run(&wf).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e.to_string().contains("constant expression"), "{e}");
    // Still serving: an ordinary run completes.
    let wf = p.workflow(transform_flow("ok {{ 6 * 7 }}")).await;
    let (_, e) = p.start_run(&wf).await;
    let done = p.until_finished(e["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["out"], "ok 42");
    p.alive().await;
    edit(&mut canary).await;
    eprintln!("canary edits: slowest ack {} ms", slowest.as_millis());
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

/// B7 (server-wide): every execution within its own allowance, many at once would still
/// hold gigabytes; what running executions render together is bounded too. One execution
/// renders 1 MB and parks in a delay, holding its share; a second one's 1 MB render fails with
/// a clear error past the 1.5 MiB pool; once the first ends, its share is back and the same
/// render passes.
#[tokio::test]
async fn running_executions_share_one_template_allowance() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let p = Proc::start(&dir, &["--template-server-bytes", "1572864"]).await;
    let holder = p
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("big", "transform", json!({"template": "{{ 'x' * 1000000 }}"})),
                block("nap", "delay", json!({"seconds": 600})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "big"), edge("big", "nap"), edge("nap", "out")],
        }))
        .await;
    let (s, e) = p.start_run(&holder).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let held = e["id"].as_str().unwrap().to_owned();
    wait_for("the holder rendered and parks", || async {
        let e = p.execution(&held).await;
        (block_state(&e, "big").map(|(s, _)| s) == Some("completed".into())).then_some(())
    })
    .await;
    let second = p.workflow(transform_flow("{{ 'y' * 1000000 }}")).await;
    let (s, e) = p.start_run(&second).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let done = p.until_finished(e["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    let err = done["error"].as_str().unwrap_or("");
    assert!(err.contains("--template-server-bytes"), "{err}");
    let (s, _) = p
        .call(
            Method::POST,
            &format!("/api/v1/executions/{held}/cancel"),
            None,
        )
        .await;
    assert!(s.is_success(), "{s}");
    p.until_finished(&held).await;
    wait_for("the holder's share is back", || async {
        let (s, e) = p.start_run(&second).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        let done = p.until_finished(e["id"].as_str().unwrap()).await;
        (done["status"] == "completed").then_some(())
    })
    .await;
    p.alive().await;
}

/// A loop over `range(n)` whose body is `body` (a block id already in `blocks`).
fn loop_flow(n: usize, inner: Option<usize>) -> Value {
    let mut blocks = vec![
        block("in", "input", json!({})),
        block(
            "outer",
            "loop",
            json!({"items": format!("range({n}) | list"), "maxIterations": n, "concurrency": 4}),
        ),
        block("out", "output", json!({})),
    ];
    let mut connections = vec![
        edge("in", "outer"),
        json!({"id": "od", "source": "outer", "sourceHandle": "done", "target": "out"}),
    ];
    match inner {
        Some(m) => {
            blocks.push(block(
                "inner",
                "loop",
                json!({"items": format!("range({m}) | list"), "maxIterations": m}),
            ));
            blocks.push(block(
                "t",
                "transform",
                json!({"template": "{{ loop.item }}"}),
            ));
            connections.extend([
                json!({"id": "ob", "source": "outer", "sourceHandle": "body", "target": "inner"}),
                json!({"id": "in", "source": "inner", "target": "outer", "targetHandle": "next"}),
                json!({"id": "ib", "source": "inner", "sourceHandle": "body", "target": "t"}),
                json!({"id": "tn", "source": "t", "target": "inner", "targetHandle": "next"}),
            ]);
        }
        None => {
            blocks.push(block(
                "t",
                "transform",
                json!({"template": "{{ loop.item }}"}),
            ));
            connections.extend([
                json!({"id": "ob", "source": "outer", "sourceHandle": "body", "target": "t"}),
                json!({"id": "tn", "source": "t", "target": "outer", "targetHandle": "next"}),
            ]);
        }
    }
    json!({"blocks": blocks, "connections": connections})
}

/// B8: nested loops of 10,000 × 10,000 (each within its own `maxIterations`) stop at the
/// execution's iteration allowance instead of running 100 million iterations; another
/// user's trivial run is not held up; memory stays bounded.
#[tokio::test]
async fn nested_loops_stop_at_the_executions_iteration_allowance() {
    // The shape at the defaults: 10,000 outer iterations use the whole allowance, so
    // the first inner loop is refused (was: 100k iterations, RSS 32 → 326 MB).
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let d = Proc::start(&dir, &[]).await;
    let wf = d.workflow(loop_flow(10_000, Some(10_000))).await;
    let (s, e) = d.start_run(&wf).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let done = d.until_finished(e["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap_or("")
            .contains("10000 loop iterations"),
        "{done}"
    );
    let mib = peak_rss_kib(d.pid()) / 1024;
    eprintln!("10,000 x 10,000 nested loops: peak RSS {mib} MiB");
    assert!(mib < 128, "peak RSS {mib} MiB");
    drop(d);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let p = Proc::start(&dir, &["--max-iterations-per-execution", "300"]).await;
    let pid = p.pid();
    let wf = p.workflow(loop_flow(10_000, Some(10_000))).await;
    let (s, e) = p.start_run(&wf).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let done = p.until_finished(e["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    let err = done["error"].as_str().unwrap_or("");
    assert!(err.contains("--max-iterations-per-execution"), "{err}");
    // Within the allowance, nesting runs: 10 × 20 = 200 inner + 10 outer iterations.
    let ok = p.workflow(loop_flow(10, Some(20))).await;
    let (_, e) = p.start_run(&ok).await;
    let done = p.until_finished(e["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    // 10 + 10 × 30 = 310 > 300: refused although each loop is small.
    let over = p.workflow(loop_flow(10, Some(30))).await;
    let (_, e) = p.start_run(&over).await;
    let done = p.until_finished(e["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    p.alive().await;
    let mib = peak_rss_kib(pid) / 1024;
    eprintln!("nested loops: peak RSS {mib} MiB");
    assert!(mib < 128, "peak RSS {mib} MiB");
}

/// B8: executions running at once are capped per user and per workspace (429
/// `too_many_executions` with Retry-After); a place frees when one ends; other users and
/// workspaces are not affected.
#[tokio::test]
async fn running_executions_are_capped_per_user_and_per_workspace() {
    let waits = json!({
        "blocks": [
            block("in", "input", json!({})),
            block("gate", "human", json!({"timeoutSeconds": 3600})),
            block("out", "output", json!({})),
        ],
        "connections": [edge("in", "gate"), edge("gate", "out")],
    });
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    // Per user: 2.
    let p = Proc::start(
        &dir,
        &[
            "--max-running-per-user",
            "2",
            "--max-running-per-workspace",
            "0",
        ],
    )
    .await;
    let wf = p.workflow(waits.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, e) = p.start_run(&wf).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        ids.push(e["id"].as_str().unwrap().to_string());
    }
    let r = p
        .http
        .post(format!(
            "http://{}/api/v1/workflows/{wf}/executions",
            p.addr()
        ))
        .bearer_auth(&p.owner.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_executions", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-running-per-user"),
        "{body}"
    );
    let (s, _) = p
        .call(
            Method::POST,
            &format!("/api/v1/executions/{}/cancel", ids[0]),
            None,
        )
        .await;
    assert!(s.is_success(), "{s}");
    wait_for("a place frees when an execution ends", || async {
        let (s, _) = p.start_run(&wf).await;
        (s == StatusCode::CREATED).then_some(())
    })
    .await;
    drop(p);
    // Per workspace: 2, whoever starts them.
    let dir2 = tempfile::tempdir().unwrap();
    let dir2 = dir2.path().to_str().unwrap().to_owned();
    let p = Proc::start(
        &dir2,
        &[
            "--max-running-per-user",
            "0",
            "--max-running-per-workspace",
            "2",
        ],
    )
    .await;
    let wf = p.workflow(waits.clone()).await;
    for _ in 0..2 {
        assert_eq!(p.start_run(&wf).await.0, StatusCode::CREATED);
    }
    let (s, e) = p.start_run(&wf).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-running-per-workspace"),
        "{e}"
    );
    // Another workspace (another user's) still starts.
    let stranger = sign_in(&p.http, p.addr(), SECRET, "stranger").await;
    let (s, ws) = call(
        &p.http,
        p.addr(),
        Some(&stranger.token),
        Method::POST,
        "/api/v1/workspaces",
        Some(json!({"name": "s"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let q = p.as_user(stranger, ws["id"].as_str().unwrap());
    let wf = q.workflow(waits).await;
    assert_eq!(q.start_run(&wf).await.0, StatusCode::CREATED);
    q.alive().await;
}

/// B8: `GET /executions/{id}` pages its block rows (a 100k-iteration run gave a 25 MB
/// response): every row exactly once across the pages, in order.
#[tokio::test]
async fn execution_block_rows_are_paged() {
    let tmp = tempfile::tempdir().unwrap();
    for store in stores(tmp.path().to_str().unwrap()).await {
        block_rows_are_paged(&store).await;
    }
}

async fn block_rows_are_paged(store: &str) {
    let p = Proc::start(store, &[]).await;
    let wf = p.workflow(loop_flow(40, None)).await;
    let (_, e) = p.start_run(&wf).await;
    let id = e["id"].as_str().unwrap().to_string();
    let done = p.until_finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let all = done["blockResults"].as_array().unwrap().len();
    assert_eq!(all, 43, "in, outer, out and 40 iterations of t");
    assert!(done.get("nextBlocksCursor").is_none());
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/executions/{id}?blocksLimit=10&blocksCursor={c}"),
            None => format!("/api/v1/executions/{id}?blocksLimit=10"),
        };
        let (s, page) = p.call(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let rows = page["blockResults"].as_array().unwrap();
        assert!(rows.len() <= 10);
        seen.extend(
            rows.iter()
                .map(|r| r["blockId"].as_str().unwrap().to_string()),
        );
        match page["nextBlocksCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = done["blockResults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["blockId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, expected, "every row once, in order");
    for bad in ["blocksLimit=0", "blocksLimit=1001", "blocksCursor=%21%21"] {
        let (s, body) = p
            .call(Method::GET, &format!("/api/v1/executions/{id}?{bad}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

/// B7b: 10 parallel starts of a workflow with 4 parallel AI blocks, for a user with a 1,000
/// token allowance and 100-token calls (was: every call made, 13.5× the allowance). Each
/// call reserves its estimate (prompt + `maxTokens`) first, so the allowance is passed by at
/// most one call.
#[tokio::test]
async fn parallel_ai_calls_cannot_overshoot_the_token_allowance() {
    use common::mock_ai::{MockAi, MockReply};
    let (_, mock) = MockAi::start(vec![]).await;
    for _ in 0..60 {
        mock.push(
            "openai",
            MockReply::text("ninety tokens of text")
                .usage(10, 90)
                .first_token_delay(Duration::from_millis(200)),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let lane = mock.base_url("openai");
    let p = Proc::start(
        &dir,
        &[
            "--plan-tokens",
            "free=1000",
            "--openai-api-key",
            "test-key",
            "--openai-base-url",
            &lane,
            "--max-running-per-user",
            "0",
        ],
    )
    .await;
    let ai = |id: &str| {
        block(
            id,
            "ai",
            json!({"userPromptTemplate": "hi", "provider": "gpt-4-turbo", "maxTokens": 100}),
        )
    };
    let wf = p
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), ai("a"), ai("b"), ai("c"), ai("d"),
                       block("join", "merge", json!({"join": "all"})), block("out", "output", json!({}))],
            "connections": [edge("in", "a"), edge("in", "b"), edge("in", "c"), edge("in", "d"),
                            edge("a", "join"), edge("b", "join"), edge("c", "join"), edge("d", "join"),
                            edge("join", "out")],
        }))
        .await;
    let starts = (0..10).map(|_| p.start_run(&wf));
    let ids: Vec<String> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|(s, e)| {
            assert_eq!(s, StatusCode::CREATED, "{e}");
            e["id"].as_str().unwrap().to_string()
        })
        .collect();
    for id in &ids {
        p.until_finished(id).await;
    }
    let (_, me) = p.call(Method::GET, "/api/v1/me", None).await;
    let used = me["tokensUsed"].as_i64().unwrap();
    let calls = mock.requests().len();
    eprintln!("token allowance 1000: {used} tokens used in {calls} calls");
    // Before: 4,000 tokens in 40 calls. Calls cut short when their execution failed (a
    // sibling block was refused) are made but not paid for, and give their reservation back,
    // which lets another run's block start a call: how many are made depends on scheduling.
    // 8-17 calls over 6 runs while the application's SQLite tables had a pool of 8
    // connections, 18-24 over 12 runs since they have one (each reservation's read of the
    // usage then queues behind the runs' writes). What is paid stays within one call of the
    // allowance.
    assert!(used <= 1_100, "{used} tokens of 1,000");
    assert!(calls <= 30, "{calls} calls");
    // Later runs use at most what is left.
    let (s, e) = p.start_run(&wf).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    p.until_finished(e["id"].as_str().unwrap()).await;
    let (_, me) = p.call(Method::GET, "/api/v1/me", None).await;
    let used = me["tokensUsed"].as_i64().unwrap();
    assert!(used <= 1_100, "{used} tokens of 1,000");
    p.alive().await;
}

/// B9: a human block's `notify` cannot relay email through the operator's Resend account:
/// recipients are workspace members only, at most `--max-notify-per-block` per block, at
/// most `--max-approval-emails-per-day` per workspace, and a block in a loop notifies once
/// per execution, not per item (was: 100 emails to any address from one call).
#[tokio::test]
async fn approval_emails_go_to_members_only_within_caps() {
    let (resend, mail) = common::resend::mock_resend().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let url = format!("http://{resend}");
    let p = Proc::start(
        &dir,
        &[
            "--resend-api-key",
            "re_test",
            "--resend-api-url",
            &url,
            "--max-notify-per-block",
            "3",
            "--max-approval-emails-per-day",
            "5",
            "--max-running-per-user",
            "0",
        ],
    )
    .await;
    // Four members besides the owner.
    let mut members = Vec::new();
    for i in 0..4 {
        let u = sign_in(&p.http, p.addr(), SECRET, &format!("member{i}")).await;
        common::api::invite_and_accept(&p.http, p.addr(), &p.owner.token, &p.ws, &u, "viewer")
            .await;
        members.push(format!("{}@example.com", u.sub));
    }
    // Invitations were emailed through the same mock; approvals are counted after them.
    let base = mail.requests.lock().unwrap().len();
    let sent_to = |n: usize| -> Vec<String> {
        mail.requests.lock().unwrap()[n..]
            .iter()
            .flat_map(|(_, b)| b["to"].as_array().cloned().unwrap_or_default())
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let gate = |notify: Value| {
        json!({
            "blocks": [block("in", "input", json!({})),
                       block("gate", "human", json!({"timeoutSeconds": 3600, "notify": notify})),
                       block("out", "output", json!({}))],
            "connections": [edge("in", "gate"), edge("gate", "out")],
        })
    };
    // Outsiders are left out; members (by email or user id) are asked, at most 3.
    let mut notify: Vec<Value> = (0..50)
        .map(|i| json!(format!("victim{i}@example.org")))
        .collect();
    notify.push(json!(format!("{}@example.com", p.owner.sub)));
    notify.push(json!(p.owner.id.clone()));
    notify.extend(members.iter().map(|m| json!(m)));
    let wf = p.workflow(gate(Value::Array(notify))).await;
    let (s, e) = p.start_run(&wf).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    mail.wait_for(base + 3).await;
    let to = sent_to(base);
    assert_eq!(to.len(), 3, "{to:?}");
    assert!(to.iter().all(|t| t.ends_with("@example.com")), "{to:?}");
    // In a loop: once per execution, not once per item.
    let looped = json!({
        "blocks": [
            block("in", "input", json!({})),
            block("each", "loop", json!({"items": "range(16) | list", "maxIterations": 16, "concurrency": 16})),
            block("gate", "human", json!({"timeoutSeconds": 3600, "notify": [format!("{}@example.com", p.owner.sub)]})),
            block("out", "output", json!({})),
        ],
        "connections": [
            edge("in", "each"),
            {"id": "b", "source": "each", "sourceHandle": "body", "target": "gate"},
            {"id": "n", "source": "gate", "target": "each", "targetHandle": "next"},
            {"id": "d", "source": "each", "sourceHandle": "done", "target": "out"},
        ],
    });
    let wf = p.workflow(looped).await;
    let (s, e) = p.start_run(&wf).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    wait_for("16 iterations wait", || async {
        let e = p.execution(&id).await;
        let waiting = e["blockResults"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["status"] == "waiting")
            .count();
        (waiting == 16).then_some(())
    })
    .await;
    mail.wait_for(base + 4).await;
    let notified = |events: &Value| -> Vec<Value> {
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "block.notified")
            .cloned()
            .collect()
    };
    let (_, events) = p
        .call(
            Method::GET,
            &format!("/api/v1/executions/{id}/events"),
            None,
        )
        .await;
    assert_eq!(notified(&events).len(), 1, "once for 16 items: {events}");
    // The day's allowance (5): one more execution gets its email, the next ones none.
    let one = p
        .workflow(gate(json!([format!("{}@example.com", p.owner.sub)])))
        .await;
    let mut sent = Vec::new();
    for _ in 0..3 {
        let (s, e) = p.start_run(&one).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        let id = e["id"].as_str().unwrap().to_string();
        // `block.notified` is stored before the emails go out.
        let n = wait_for("the approval is announced", || async {
            let (_, events) = p
                .call(
                    Method::GET,
                    &format!("/api/v1/executions/{id}/events"),
                    None,
                )
                .await;
            notified(&events)
                .first()
                .map(|e| e["sent"].as_i64().unwrap())
        })
        .await;
        sent.push(n);
    }
    assert_eq!(sent, [1, 0, 0]);
    mail.wait_for(base + 5).await;
    assert_eq!(mail.requests.lock().unwrap().len(), base + 5);
    p.alive().await;
}

/// B8: while one user's execution runs the most loop iterations it may (10,000), another
/// user's trivial run in another workspace still completes promptly (was 0.06 → 14 s behind
/// a 100k-iteration run).
#[tokio::test]
async fn a_big_allowed_loop_does_not_hold_up_another_users_run() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let p = Proc::start(&dir, &[]).await;
    let pid = p.pid();
    let big = p.workflow(loop_flow(10_000, None)).await;
    // The canary: another user, another workspace, on the same server.
    let user = sign_in(&p.http, p.addr(), SECRET, "canary").await;
    let (_, ws) = call(
        &p.http,
        p.addr(),
        Some(&user.token),
        Method::POST,
        "/api/v1/workspaces",
        Some(json!({"name": "c"})),
    )
    .await;
    let canary = p.as_user(user, ws["id"].as_str().unwrap());
    let small = canary.workflow(transform_flow("hi")).await;
    let (_, e) = p.start_run(&big).await;
    let big_id = e["id"].as_str().unwrap().to_string();
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let (s, e) = canary.start_run(&small).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        let done = canary.until_finished(e["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "completed");
        worst = worst.max(t.elapsed());
    }
    let big_done = p.execution(&big_id).await;
    eprintln!(
        "canary run behind a 10,000-iteration loop: worst {} ms (big run: {})",
        worst.as_millis(),
        big_done["status"]
    );
    // 0.06 s when idle, 14 s behind a 100k-iteration loop before the fix. Six runs each on a
    // 2-core VM: 0.03-1.36 s while the application's tables shared an 8-connection pool (the
    // loop's event commits and the canary's met in SQLite's busy handler, which retries by
    // sleeping up to 100 ms a try and lets a writer that begins again at once go first);
    // 0.04-0.06 s with one connection, which sqlx hands out first come, first served.
    assert!(worst < Duration::from_secs(1), "{worst:?}");
    let (s, _) = p
        .call(
            Method::POST,
            &format!("/api/v1/executions/{big_id}/cancel"),
            None,
        )
        .await;
    assert!(s.is_success() || s == StatusCode::CONFLICT);
    let mib = peak_rss_kib(pid) / 1024;
    eprintln!("10,000-iteration loop: peak RSS {mib} MiB");
    assert!(mib < 256, "peak RSS {mib} MiB");
}
