//! kill -9 in the middle of an execution, then a restart on the same store: finished blocks
//! are not run again, a waiting approval keeps waiting, a delay keeps its deadline, and no
//! event is ever sent under a different seq. On SQLite, and on Postgres when
//! `TEST_DATABASE_URL` is set.

mod common;

use common::api::{call, fresh_schema, sign_in};
use common::exec::{block, block_result, edge, events_of, put_graph, SECRET};
use common::{room_url, Client, ServerProcess};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn start(store: &[String]) -> ServerProcess {
    let mut args: Vec<&str> = vec![
        "--jwt-secret",
        SECRET,
        "--rate-api-per-sec",
        "0",
        "--rate-socket-per-sec",
        "0",
        "--rate-connect-per-sec",
        "0",
    ];
    args.extend(store.iter().map(String::as_str));
    ServerProcess::start(&args)
}

/// Signs in an owner on the server at `addr` and makes a workspace and a workflow.
async fn owner_and_workflow(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
) -> (common::api::User, String) {
    let owner = sign_in(http, addr, SECRET, "owner").await;
    let (_, ws) = call(
        http,
        addr,
        Some(&owner.token),
        Method::POST,
        "/api/v1/workspaces",
        Some(json!({"name": "w"})),
    )
    .await;
    let ws = ws["id"].as_str().unwrap().to_string();
    let (_, wf) = call(
        http,
        addr,
        Some(&owner.token),
        Method::POST,
        &format!("/api/v1/workspaces/{ws}/workflows"),
        Some(json!({"name": "f"})),
    )
    .await;
    let wf = wf["id"].as_str().unwrap().to_string();
    (owner, wf)
}

async fn restart_resumes(store: Vec<String>) {
    let http = reqwest::Client::new();
    let server = start(&store);
    let addr = server.addr;
    let (owner, wf) = owner_and_workflow(&http, addr).await;
    let graph = json!({
        "blocks": [
            block("in", "input", json!({})),
            block("a", "transform", json!({"template": "a={{ input.x }}"})),
            block("nap", "delay", json!({"seconds": 8})),
            block("gate", "human", json!({"onTimeout": "reject"})),
            block("join", "merge", json!({"join": "all"})),
            block("out", "output", json!({})),
        ],
        "connections": [edge("in", "a"), edge("a", "nap"), edge("a", "gate"), edge("nap", "join"), edge("gate", "join"), edge("join", "out")],
    });
    let url = |addr| {
        format!(
            "{}?token={}",
            room_url(addr, &format!("workflow-{wf}")),
            owner.token
        )
    };
    let mut w = Client::connect_synced(&url(addr)).await;
    w.opt_in().await;
    put_graph(&mut w, &graph).await;
    let (s, e) = call(
        &http,
        addr,
        Some(&owner.token),
        Method::POST,
        &format!("/api/v1/workflows/{wf}/executions"),
        Some(json!({"input": {"x": 1}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    let exec = id.clone();
    w.until("both wait", move |s| {
        s.stateless
            .iter()
            .filter(|m| m.contains(&exec) && m.contains("block.waiting"))
            .count()
            == 2
    })
    .await;
    let before = events_of(&w, &id);
    let until = before
        .iter()
        .find(|e| e["type"] == "block.waiting" && e["blockId"] == "nap")
        .unwrap()["until"]
        .as_i64()
        .unwrap();
    drop(w);
    server.kill9();

    let server = start(&store);
    let addr = server.addr;
    let mut w = Client::connect_synced(&url(addr)).await;
    let last = before.last().unwrap()["seq"].as_i64().unwrap();
    w.send(resonant_client::protocol::encode_stateless(
        &json!({"type": "executions.resume", "after": {id.clone(): last}}).to_string(),
    ))
    .await;
    w.sync().await;
    // The approval still waits after the restart, and is decided now.
    let (s, body) = call(
        &http,
        addr,
        Some(&owner.token),
        Method::POST,
        &format!("/api/v1/executions/{id}/blocks/gate/decision"),
        Some(json!({"approved": true})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let exec = id.clone();
    w.until("completed", move |s| {
        s.stateless
            .iter()
            .any(|m| m.contains(&exec) && m.contains("execution.completed"))
    })
    .await;
    let after = events_of(&w, &id);
    let mut all = before.clone();
    all.extend(after.clone());
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gapless across the crash"
    );
    // Sent before the crash = stored under the same seq.
    let (_, stored) = call(
        &http,
        addr,
        Some(&owner.token),
        Method::GET,
        &format!("/api/v1/executions/{id}/events"),
        None,
    )
    .await;
    assert_eq!(
        stored["events"].as_array().unwrap().as_slice(),
        all.as_slice()
    );
    let started = |b: &str| {
        all.iter()
            .filter(|e| e["type"] == "block.started" && e["blockId"] == b)
            .count()
    };
    assert_eq!(
        (started("in"), started("a")),
        (1, 1),
        "finished blocks are not run again"
    );
    let nap_done = all
        .iter()
        .find(|e| e["type"] == "block.completed" && e["blockId"] == "nap")
        .unwrap()["ts"]
        .as_i64()
        .unwrap();
    assert!(nap_done >= until, "the delay ended early");
    assert!(
        nap_done - until < 2_000,
        "the delay restarted instead of keeping its deadline: {} ms late",
        nap_done - until
    );
    let done = all.last().unwrap();
    assert_eq!(done["outputs"]["out"]["nap"], "a=1");
    let (_, e) = call(
        &http,
        addr,
        Some(&owner.token),
        Method::GET,
        &format!("/api/v1/executions/{id}"),
        None,
    )
    .await;
    assert_eq!(e["status"], "completed");
}

#[tokio::test]
async fn kill_9_mid_execution_resumes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    restart_resumes(vec![
        "--data-dir".into(),
        dir.path().to_str().unwrap().into(),
    ])
    .await;
}

#[tokio::test]
async fn kill_9_mid_execution_resumes_on_postgres() {
    if common::postgres_url().is_none() {
        return;
    }
    let (url, pool, schema) = fresh_schema().await;
    restart_resumes(vec!["--database-url".into(), url]).await;
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await;
}

/// A deploy (SIGTERM) while a webhook block waits for its answer: the server lets the request
/// finish before it stops, so the receiver gets it once, not again after the restart.
#[tokio::test]
async fn sigterm_lets_a_webhook_in_flight_finish_instead_of_sending_it_twice() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let hits = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (h, a) = (hits.clone(), arrived.clone());
    let app = axum::Router::new().fallback(move || {
        let (h, a) = (h.clone(), a.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            a.notify_one();
            // Slow, but well inside the shutdown budget.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            axum::Json(json!({"ok": true}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let store = vec![
        "--data-dir".to_string(),
        dir.path().to_str().unwrap().into(),
        "--webhook-allow".into(),
        "127.0.0.1/32".into(),
    ];
    let http = reqwest::Client::new();
    let server = start(&store);
    let addr = server.addr;
    let (owner, wf) = owner_and_workflow(&http, addr).await;
    let url = |addr| {
        format!(
            "{}?token={}",
            room_url(addr, &format!("workflow-{wf}")),
            owner.token
        )
    };
    let mut w = Client::connect_synced(&url(addr)).await;
    w.opt_in().await;
    put_graph(&mut w, &json!({
        "blocks": [
            block("in", "input", json!({})),
            block("hook", "webhook", json!({"url": format!("http://{mock}/deliver"), "method": "POST",
                "retry": {"attempts": 1}})),
            block("out", "output", json!({})),
        ],
        "connections": [edge("in", "hook"), edge("hook", "out")],
    })).await;
    drop(w);
    let (s, e) = call(
        &http,
        addr,
        Some(&owner.token),
        Method::POST,
        &format!("/api/v1/workflows/{wf}/executions"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    arrived.notified().await;
    // Waited for off the runtime, which must keep serving the slow receiver meanwhile.
    let (took, status) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(took < std::time::Duration::from_secs(9), "{took:?}");
    // Back up: the execution finished before the stop, and nothing was sent again.
    let server = start(&store);
    let addr = server.addr;
    // The webhook's result was stored before the stop; what followed it may finish after
    // the restart (the execution resumes), without the request being sent again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let e = loop {
        let (_, e) = call(
            &http,
            addr,
            Some(&owner.token),
            Method::GET,
            &format!("/api/v1/executions/{id}"),
            None,
        )
        .await;
        if e["status"] != "running" && e["status"] != "pending" {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(e["status"], "completed", "{e}");
    let hook = block_result(&e, "hook");
    assert_eq!(
        (hook["status"].as_str(), hook["attempt"].as_i64()),
        (Some("completed"), Some(1)),
        "{hook}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the webhook was delivered once"
    );
}
