//! Executions end to end: workflows written into the shared document by a real sync client,
//! started over REST or the socket, watched over sockets, controlled, re-run, resumed.
//! Every test runs on SQLite, and on Postgres when `TEST_DATABASE_URL` is set.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::api::{backends, sign_in, Backend};
use common::exec::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use yrs::{Map, WriteTxn};

#[tokio::test]
async fn a_run_streams_ordered_events_to_every_editor_and_none_to_stock_clients() {
    for backend in backends() {
        let env = Env::new(backend).await;
        let wf = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("shout", "transform", json!({"template": "{{ input.name | upper }}!"})),
                    block("out", "output", json!({})),
                ],
                "connections": [edge("in", "shout"), edge("shout", "out")],
            }))
            .await;
        let mut a = env.watcher(&wf).await;
        let mut b = env.watcher(&wf).await;
        let mut stock = env.editor(&wf, &env.owner).await;
        let id = env.run(&wf, json!({"name": "ada"})).await;
        let ea = until_finished(&mut a, &id).await;
        let eb = until_finished(&mut b, &id).await;
        assert_gapless(&ea);
        assert_eq!(ea, eb, "both editors get the same events in the same order");
        assert_eq!(
            kinds(&ea),
            [
                "execution.started",
                "block.started:in",
                "block.completed:in",
                "block.started:shout",
                "block.completed:shout",
                "block.started:out",
                "block.completed:out",
                "execution.completed"
            ]
        );
        let done = ea.last().unwrap();
        assert_eq!(done["outputs"], json!({"out": "ADA!"}));
        assert!(done["ts"].as_i64().unwrap() > 0);
        // The stock client saw none of it, and still syncs.
        stock
            .edit(|_doc, txn| {
                txn.get_or_insert_map("meta").insert(txn, "touched", true);
            })
            .await;
        a.until("the stock client's edit arrives", |s| {
            use yrs::{ReadTxn, Transact};
            let txn = s.doc.transact();
            txn.get_map("meta")
                .and_then(|m| m.get(&txn, "touched"))
                .is_some()
        })
        .await;
        assert!(
            stock.stateless.is_empty(),
            "stock client got {:?}",
            stock.stateless
        );
        // REST has the same story, and the workflow counts the run.
        let e = env.execution(&id).await;
        assert_eq!(e["status"], "completed");
        assert_eq!(e["output"], json!({"out": "ADA!"}));
        assert_eq!(e["blockResults"].as_array().unwrap().len(), 3);
        assert_eq!(e["graph"]["blocks"].as_array().unwrap().len(), 3);
        assert!(!e["stateVector"].as_str().unwrap().is_empty());
        let (_, events) = env
            .get(&format!("/api/v1/executions/{id}/events?after=2"))
            .await;
        assert_eq!(events["events"].as_array().unwrap().as_slice(), &ea[2..]);
        let (_, full) = env
            .get(&format!("/api/v1/executions/{id}?events=true"))
            .await;
        assert_eq!(full["events"].as_array().unwrap().as_slice(), ea.as_slice());
        let (_, w) = env.get(&format!("/api/v1/workflows/{wf}")).await;
        assert_eq!(w["executionCount"], 1);
        assert!(w["lastExecutedAt"].as_i64().is_some());
        env.cleanup().await;
    }
}

#[tokio::test]
async fn conditions_route_and_skips_propagate_through_every_join_mode() {
    for backend in backends() {
        let env = Env::new(backend).await;
        let wf = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("big", "condition", json!({"expression": "input.n > 10"})),
                    block("yes", "transform", json!({"template": "big {{ upstream.n }}"})),
                    block("no", "transform", json!({"template": "small {{ upstream.n }}"})),
                    block("after_no", "transform", json!({"template": "still small"})),
                    block("all", "merge", json!({"join": "all"})),
                    block("any", "merge", json!({"join": "any"})),
                    block("some", "merge", json!({"join": "all-non-skipped"})),
                    block("o_all", "output", json!({})),
                    block("o_any", "output", json!({})),
                    block("o_some", "output", json!({})),
                ],
                "connections": [
                    edge("in", "big"),
                    edge_h("big", "true", "yes"),
                    edge_h("big", "false", "no"),
                    edge("no", "after_no"),
                    edge("yes", "all"), edge("after_no", "all"),
                    edge("yes", "any"), edge("after_no", "any"),
                    edge("yes", "some"), edge("after_no", "some"),
                    edge("all", "o_all"), edge("any", "o_any"), edge("some", "o_some"),
                ],
            }))
            .await;
        let mut w = env.watcher(&wf).await;
        let id = env.run(&wf, json!({"n": 42})).await;
        let events = until_finished(&mut w, &id).await;
        assert_gapless(&events);
        let k = kinds(&events);
        for skipped in ["no", "after_no", "all", "o_all"] {
            assert!(
                k.contains(&format!("block.skipped:{skipped}")),
                "{skipped} skipped: {k:?}"
            );
        }
        assert!(!k.iter().any(|x| x == "block.started:no"));
        let done = events.last().unwrap();
        assert_eq!(done["type"], "execution.completed", "{done}");
        assert_eq!(done["outputs"]["o_any"], "big 42");
        assert_eq!(done["outputs"]["o_some"], json!({"yes": "big 42"}));
        assert!(
            done["outputs"].get("o_all").is_none(),
            "a skipped output has no value"
        );
        // The other branch.
        let id = env.run(&wf, json!({"n": 1})).await;
        let events = until_finished(&mut w, &id).await;
        let done = events.last().unwrap();
        assert_eq!(done["outputs"]["o_any"], "still small");
        assert!(kinds(&events).contains(&"block.skipped:yes".to_string()));
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_switch_routes_to_the_first_matching_case_or_default() {
    let env = Env::new(Backend::Sqlite).await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("kind", "condition", json!({"cases": [
                    {"handle": "small", "expression": "input.n < 10"},
                    {"handle": "medium", "expression": "input.n < 100"},
                ]})),
                block("s", "output", json!({"template": "small"})),
                block("m", "output", json!({"template": "medium"})),
                block("l", "output", json!({"template": "large"})),
            ],
            "connections": [
                edge("in", "kind"),
                edge_h("kind", "small", "s"),
                edge_h("kind", "medium", "m"),
                edge_h("kind", "default", "l"),
            ],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    for (n, expected) in [
        (3, json!({"s": "small"})),
        (50, json!({"m": "medium"})),
        (500, json!({"l": "large"})),
    ] {
        let id = env.run(&wf, json!({"n": n})).await;
        let events = until_finished(&mut w, &id).await;
        assert_eq!(events.last().unwrap()["outputs"], expected, "n = {n}");
    }
    // A connection from a switch must use one of its handles.
    let (s, body) = env
        .start(
            &env.workflow(json!({
                "blocks": [block("in", "input", json!({})), block("k", "condition", json!({"cases": [{"handle": "a", "expression": "true"}]})), block("o", "output", json!({}))],
                "connections": [edge("in", "k"), edge_h("k", "true", "o")],
            }))
            .await,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.to_string().contains("a, default"), "{body}");
    env.cleanup().await;
}

#[tokio::test]
async fn loops_split_and_delays_run_with_their_semantics() {
    for backend in backends() {
        let env = Env::new(backend).await;
        let wf = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("fan", "split", json!({})),
                    block("each", "loop", json!({"items": "input.words", "maxIterations": 10, "concurrency": 2})),
                    block("up", "transform", json!({"template": "{{ loop.index }}:{{ loop.item | upper }}"})),
                    block("wait", "delay", json!({"seconds": 0.2})),
                    block("count", "transform", json!({"template": "{{ upstream.words | length }}"})),
                    block("o_loop", "output", json!({})),
                    block("o_count", "output", json!({})),
                ],
                "connections": [
                    edge("in", "fan"),
                    edge("fan", "each"),
                    edge_h("each", "body", "up"),
                    json!({"id": "back", "source": "up", "target": "each", "targetHandle": "next"}),
                    edge_h("each", "done", "o_loop"),
                    edge("fan", "wait"),
                    edge("wait", "count"),
                    edge("count", "o_count"),
                ],
            }))
            .await;
        let mut w = env.watcher(&wf).await;
        let id = env.run(&wf, json!({"words": ["a", "b", "c"]})).await;
        let events = until_finished(&mut w, &id).await;
        assert_gapless(&events);
        let done = events.last().unwrap();
        assert_eq!(done["type"], "execution.completed", "{done}");
        assert_eq!(done["outputs"]["o_loop"], json!(["0:A", "1:B", "2:C"]));
        assert_eq!(done["outputs"]["o_count"], "3");
        let waiting = events
            .iter()
            .find(|e| e["type"] == "block.waiting")
            .unwrap();
        assert_eq!(waiting["blockId"], "wait");
        assert_eq!(waiting["reason"], "timer");
        let iterations: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "block.completed" && e["blockId"] == "up")
            .collect();
        assert_eq!(iterations.len(), 3);
        assert!(iterations
            .iter()
            .all(|e| e["scope"].as_str().unwrap().starts_with("each[")));
        // Too many items is a clear failure naming the loop.
        let id = env
            .run(
                &wf,
                json!({"words": (0..11).map(|i| i.to_string()).collect::<Vec<_>>()}),
            )
            .await;
        let events = until_finished(&mut w, &id).await;
        let failed = events.last().unwrap();
        assert_eq!(failed["type"], "execution.failed");
        assert!(
            failed["error"].as_str().unwrap().contains("maxIterations"),
            "{failed}"
        );
        assert!(
            failed["error"].as_str().unwrap().contains("each"),
            "{failed}"
        );
        env.cleanup().await;
    }
}

fn approval_flow(on_timeout: &str, timeout: f64, branches: bool) -> Value {
    let mut connections = vec![edge("in", "ok?")];
    if branches {
        connections.push(edge_h("ok?", "approved", "yes"));
        connections.push(edge_h("ok?", "rejected", "no"));
    } else {
        connections.push(edge("ok?", "yes"));
    }
    let mut blocks = vec![
        block("in", "input", json!({})),
        block(
            "ok?",
            "human",
            json!({"onTimeout": on_timeout, "timeoutSeconds": timeout, "message": "Ship {{ input.what }}?"}),
        ),
        block("yes", "output", json!({"template": "shipped"})),
    ];
    if branches {
        blocks.push(block("no", "output", json!({"template": "held"})));
    }
    json!({ "blocks": blocks, "connections": connections })
}

#[tokio::test]
async fn human_blocks_wait_for_approval_rejection_or_their_timeout() {
    for backend in backends() {
        let (resend, mail) = common::resend::mock_resend().await;
        let env = Env::with(backend, |c| {
            c.resend_api_key = Some("re_test".into());
            c.resend_api_url = format!("http://{resend}");
        })
        .await;
        let mut flow = approval_flow("reject", 3600.0, true);
        // Approval emails go to workspace members only (issue 15, B9).
        let boss = format!("{}@example.com", env.owner.sub);
        flow["blocks"][1]["config"]["notify"] = json!([boss]);
        let wf = env.workflow(flow).await;
        let mut w = env.watcher(&wf).await;
        // Approve over REST.
        let id = env.run(&wf, json!({"what": "v2"})).await;
        let exec = id.clone();
        w.until("waiting", move |s| {
            s.stateless
                .iter()
                .any(|m| m.contains(&exec) && m.contains("block.waiting"))
        })
        .await;
        let waiting = events_of(&w, &id)
            .into_iter()
            .find(|e| e["type"] == "block.waiting")
            .unwrap();
        assert_eq!(waiting["reason"], "approval");
        assert_eq!(waiting["message"], "Ship v2?");
        // The approver was asked by email, with a link to the decision.
        let sent = mail.wait_for(1).await;
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].1["to"], json!([boss]));
        assert!(
            sent[0].1["text"].as_str().unwrap().contains("Ship v2?"),
            "{sent:?}"
        );
        assert!(
            sent[0].1["text"].as_str().unwrap().contains(&id),
            "{sent:?}"
        );
        let path = format!("/api/v1/executions/{id}/blocks/ok%3F/decision");
        let (s, body) = env
            .call(
                &env.owner,
                Method::POST,
                &path,
                Some(json!({"approved": true, "comment": "go"})),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
        let (s, _) = env
            .call(
                &env.owner,
                Method::POST,
                &path,
                Some(json!({"approved": false})),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "a second decision is refused");
        let events = until_finished(&mut w, &id).await;
        let done = events.last().unwrap();
        assert_eq!(done["outputs"], json!({"yes": "shipped"}), "{done}");
        let decided = completed(&events, "ok?");
        assert_eq!(decided["output"]["approved"], true);
        assert_eq!(decided["output"]["by"], env.owner.id);
        assert_eq!(decided["output"]["comment"], "go");
        // Reject over the socket: the rejected branch runs.
        let id = env.run(&wf, json!({"what": "v3"})).await;
        let exec = id.clone();
        w.until("waiting", move |s| {
            s.stateless
                .iter()
                .any(|m| m.contains(&exec) && m.contains("block.waiting"))
        })
        .await;
        // A comment over 2000 characters is refused on the socket as on REST, and decides
        // nothing.
        let long = "c".repeat(2001);
        let (s, body) = env
            .call(
                &env.owner,
                Method::POST,
                &format!("/api/v1/executions/{id}/blocks/ok%3F/decision"),
                Some(json!({"approved": true, "comment": long})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body.to_string()
                .contains("comment: at most 2000 characters"),
            "{body}"
        );
        w.send(resonant_client::protocol::encode_stateless(
            &json!({"type": "execution.decide", "executionId": id, "blockId": "ok?", "approved": true, "comment": long, "requestId": 6}).to_string(),
        ))
        .await;
        w.until("long comment refused", |s| {
            s.stateless.iter().any(|m| {
                m.contains("\"requestId\":6")
                    && m.contains("bad-request")
                    && m.contains("comment: at most 2000 characters")
            })
        })
        .await;
        w.send(resonant_client::protocol::encode_stateless(
            &json!({"type": "execution.decide", "executionId": id, "blockId": "ok?", "approved": false, "requestId": 7}).to_string(),
        ))
        .await;
        let events = until_finished(&mut w, &id).await;
        assert_eq!(events.last().unwrap()["outputs"], json!({"no": "held"}));
        assert!(w
            .stateless
            .iter()
            .any(|m| m.contains("execution.decided") && m.contains("\"requestId\":7")));
        // Without branches, a timeout with onTimeout=reject fails the run; approve passes.
        let wf = env.workflow(approval_flow("reject", 0.2, false)).await;
        let mut w = env.watcher(&wf).await;
        let id = env.run(&wf, json!({})).await;
        let events = until_finished(&mut w, &id).await;
        let failed = events.last().unwrap();
        assert_eq!(failed["type"], "execution.failed");
        assert!(
            failed["error"].as_str().unwrap().contains("timeout"),
            "{failed}"
        );
        let wf = env.workflow(approval_flow("approve", 0.2, false)).await;
        let mut w = env.watcher(&wf).await;
        let id = env.run(&wf, json!({})).await;
        let events = until_finished(&mut w, &id).await;
        let done = events.last().unwrap();
        assert_eq!(done["type"], "execution.completed", "{done}");
        let decided = completed(&events, "ok?");
        assert_eq!(decided["output"]["timedOut"], true);
        env.cleanup().await;
    }
}

/// input → a ten-minute delay → output: a run that stays running until it is stopped.
fn napping() -> Value {
    json!({
        "blocks": [block("in", "input", json!({})), block("nap", "delay", json!({"seconds": 600})), block("out", "output", json!({}))],
        "connections": [edge("in", "nap"), edge("nap", "out")],
    })
}

#[tokio::test]
async fn cancel_stops_a_run_and_control_needs_the_execute_role() {
    for backend in backends() {
        let env = Env::new(backend).await;
        let wf = env.workflow(napping()).await;
        let viewer = sign_in(&env.http, env.addr(), SECRET, "viewer").await;
        common::api::invite_and_accept(
            &env.http,
            env.addr(),
            &env.owner.token,
            &env.ws,
            &viewer,
            "viewer",
        )
        .await;
        let (s, b) = env
            .call(
                &viewer,
                Method::POST,
                &format!("/api/v1/workflows/{wf}/executions"),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        let mut vw = env.editor(&wf, &viewer).await;
        vw.opt_in().await;
        vw.send(resonant_client::protocol::encode_stateless(
            &json!({"type": "execution.start", "requestId": 1}).to_string(),
        ))
        .await;
        vw.until("refused", |s| {
            s.stateless.iter().any(|m| m.contains("forbidden"))
        })
        .await;

        let mut w = env.watcher(&wf).await;
        w.send(resonant_client::protocol::encode_stateless(
            &json!({"type": "execution.start", "input": {}, "requestId": "r1"}).to_string(),
        ))
        .await;
        w.until("accepted", |s| {
            s.stateless.iter().any(|m| m.contains("execution.accepted"))
        })
        .await;
        let accepted: Value = w
            .stateless
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(m).ok())
            .find(|v| v["type"] == "execution.accepted")
            .unwrap();
        assert_eq!(accepted["requestId"], "r1");
        let id = accepted["executionId"].as_str().unwrap().to_string();
        let exec = id.clone();
        w.until("waiting", move |s| {
            s.stateless
                .iter()
                .any(|m| m.contains(&exec) && m.contains("block.waiting"))
        })
        .await;
        let (s, _) = env
            .call(
                &viewer,
                Method::POST,
                &format!("/api/v1/executions/{id}/cancel"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // The viewer still watches it (view is enough).
        let (s, _) = env
            .call(
                &viewer,
                Method::GET,
                &format!("/api/v1/executions/{id}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = env
            .post(&format!("/api/v1/executions/{id}/cancel"), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        let events = until_finished(&mut w, &id).await;
        assert_eq!(events.last().unwrap()["type"], "execution.cancelled");
        let seen = until_finished(&mut vw, &id).await;
        assert_eq!(seen, events, "viewers watch runs too");
        let e = env.execution(&id).await;
        assert_eq!(e["status"], "cancelled");
        // The block that was waiting when the run was cancelled does not say it still waits.
        let nap = block_result(&e, "nap");
        assert_eq!(
            (nap["status"].as_str(), nap["error"].as_str()),
            (Some("failed"), Some("cancelled")),
            "{nap}"
        );
        let (s, _) = env
            .post(&format!("/api/v1/executions/{id}/cancel"), None)
            .await;
        assert_eq!(s, StatusCode::CONFLICT);
        env.cleanup().await;
    }
}

#[tokio::test]
async fn invalid_workflows_and_requests_are_refused_with_named_problems() {
    let env = Env::new(Backend::Sqlite).await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("bad", "teleport", json!({})),
                block("gen", "ai", json!({"temperature": 9})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "gen"), edge("gen", "out"), edge("gen", "ghost")],
        }))
        .await;
    let (s, body) = env.start(&wf, json!({})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_workflow");
    let problems = body["error"]["problems"].as_array().unwrap();
    let text = serde_json::to_string(problems).unwrap();
    for needle in [
        "unknown-type",
        "\"bad\"",
        "bad-config",
        "\"gen\"",
        "dangling-connection",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let (s, body) = env.start(&wf, json!({"input": [1, 2]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "input");
    let (s, body) = env.start(&wf, json!({"priority": "fastest"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _) = env.start(&wf, json!({"surprise": 1})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = env.get("/api/v1/executions/not-an-id").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Over the socket: the same problems, and junk gets a clear error, not a close.
    let mut w = env.watcher(&wf).await;
    w.send(resonant_client::protocol::encode_stateless(
        &json!({"type": "execution.start", "requestId": 3}).to_string(),
    ))
    .await;
    w.until("refused", |s| {
        s.stateless.iter().any(|m| m.contains("invalid-workflow"))
    })
    .await;
    w.send(resonant_client::protocol::encode_stateless(
        &json!({"type": "execution.cancel"}).to_string(),
    ))
    .await;
    w.until("bad request", |s| {
        s.stateless.iter().any(|m| m.contains("bad-request"))
    })
    .await;
    w.sync().await;
}

#[tokio::test]
async fn an_idempotency_key_starts_one_execution_and_limits_are_enforced() {
    let env = Env::with(Backend::Sqlite, |c| {
        c.plan_tokens = resonant::config::PlanTokens(vec![("free".into(), 0)]);
    })
    .await;
    let wf = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), block("out", "output", json!({}))],
            "connections": [edge("in", "out")],
        }))
        .await;
    let (s, body) = env.start(&wf, json!({})).await;
    assert_eq!(
        s,
        StatusCode::PAYMENT_REQUIRED,
        "a user with no allowance cannot start: {body}"
    );
    assert_eq!(body["error"]["code"], "token_limit");
    env.cleanup().await;

    let env = Env::new(Backend::Sqlite).await;
    let wf = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), block("out", "output", json!({}))],
            "connections": [edge("in", "out")],
        }))
        .await;
    let (s1, a) = env
        .start(&wf, json!({"idempotencyKey": "k1", "input": {"x": 1}}))
        .await;
    let (s2, b) = env
        .start(&wf, json!({"idempotencyKey": "k1", "input": {"x": 1}}))
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(a["id"], b["id"]);
    let (_, list) = env.get(&format!("/api/v1/workflows/{wf}/executions")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    env.cleanup().await;
}

/// A loopback HTTP server answering with scripted statuses; counts requests.
async fn scripted_http(
    statuses: Vec<u16>,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let h = h.clone();
        let statuses = statuses.clone();
        async move {
            let n = h.fetch_add(1, Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                json!({"n": n, "echo": body}).to_string(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

#[tokio::test]
async fn webhooks_retry_refuse_private_targets_and_rerun_reuses_earlier_results() {
    use std::sync::atomic::Ordering;
    for backend in backends() {
        let (mock, hits) = scripted_http(vec![500, 200]).await;
        let env = Env::with(backend, |c| c.webhook_allow = vec![format!("127.0.0.1/32")]).await;
        let wf = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("prep", "transform", json!({"template": "{{ input.msg }}"})),
                    block("hook", "webhook", json!({"url": format!("http://{mock}/hook"), "method": "POST",
                        "body": "{\"msg\": \"{{ upstream }}\"}", "headers": {"content-type": "application/json"},
                        "retry": {"attempts": 1}})),
                    block("out", "output", json!({"template": "{{ upstream.body.echo }}"})),
                ],
                "connections": [edge("in", "prep"), edge("prep", "hook"), edge("hook", "out")],
            }))
            .await;
        let mut w = env.watcher(&wf).await;
        let id = env.run(&wf, json!({"msg": "hi"})).await;
        let events = until_finished(&mut w, &id).await;
        let failed = events.last().unwrap();
        assert_eq!(failed["type"], "execution.failed", "{failed}");
        assert!(
            failed["error"].as_str().unwrap().contains("hook"),
            "{failed}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Re-run from the failed block: in and prep are reused, not run again.
        let (s, re) = env
            .post(&format!("/api/v1/executions/{id}/rerun"), Some(json!({})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{re}");
        let re_id = re["id"].as_str().unwrap().to_string();
        assert_eq!(re["rerunOf"], id);
        let events = until_finished(&mut w, &re_id).await;
        assert_gapless(&events);
        let k = kinds(&events);
        assert!(
            !k.contains(&"block.started:in".to_string())
                && !k.contains(&"block.started:prep".to_string()),
            "{k:?}"
        );
        assert!(
            k.contains(&"block.completed:prep".to_string()),
            "reused results are shown: {k:?}"
        );
        let done = events.last().unwrap();
        assert_eq!(done["type"], "execution.completed", "{done}");
        assert_eq!(done["outputs"]["out"], "{\"msg\": \"hi\"}");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        env.cleanup().await;
    }
    // Without an allow-list, loopback is refused before any request is made.
    let (mock, hits) = scripted_http(vec![]).await;
    let env = Env::new(Backend::Sqlite).await;
    let wf = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), block("hook", "webhook", json!({"url": format!("http://{mock}/"), "method": "GET"})), block("out", "output", json!({}))],
            "connections": [edge("in", "hook"), edge("hook", "out")],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    let failed = events.last().unwrap();
    assert_eq!(failed["type"], "execution.failed");
    assert!(
        failed["error"].as_str().unwrap().contains("127.0.0.1"),
        "{failed}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_reconnecting_editor_replays_exactly_what_it_missed() {
    for backend in backends() {
        let env = Env::new(backend).await;
        let wf = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("a", "transform", json!({"template": "a"})),
                    block("gate", "human", json!({"onTimeout": "approve"})),
                    block("b", "transform", json!({"template": "b"})),
                    block("out", "output", json!({})),
                ],
                "connections": [edge("in", "a"), edge("a", "gate"), edge("gate", "b"), edge("b", "out")],
            }))
            .await;
        let mut first = env.watcher(&wf).await;
        let id = env.run(&wf, json!({})).await;
        let exec = id.clone();
        first
            .until("waiting", move |s| {
                s.stateless
                    .iter()
                    .any(|m| m.contains(&exec) && m.contains("block.waiting"))
            })
            .await;
        let seen = events_of(&first, &id);
        first.close().await;
        // Progress made while it is away.
        let (s, _) = env
            .post(
                &format!("/api/v1/executions/{id}/blocks/gate/decision"),
                Some(json!({"approved": true})),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        // It comes back, asks for what follows the last seq it saw, and gets exactly that.
        let mut back = env.editor(&wf, &env.owner).await;
        let last = seen.last().unwrap()["seq"].as_i64().unwrap();
        let resume = json!({"type": "executions.resume", "after": {id.clone(): last}});
        back.send(resonant_client::protocol::encode_stateless(
            &resume.to_string(),
        ))
        .await;
        let rest = until_finished(&mut back, &id).await;
        let mut all = seen.clone();
        all.extend(rest.clone());
        assert_gapless(&all);
        assert_eq!(rest.first().unwrap()["seq"].as_i64().unwrap(), last + 1);
        // A newcomer asking for running executions gets them from the start; finished ones
        // are not pushed.
        let mut newcomer = env.editor(&wf, &env.owner).await;
        newcomer
            .send(resonant_client::protocol::encode_stateless(
                &json!({"type": "executions.resume"}).to_string(),
            ))
            .await;
        newcomer.sync().await;
        assert!(events_of(&newcomer, &id).is_empty());
        // Replaying another workflow's execution gives nothing.
        let other = env
            .workflow(json!({"blocks": [block("in", "input", json!({})), block("out", "output", json!({}))], "connections": [edge("in", "out")]}))
            .await;
        let mut stranger = env.editor(&other, &env.owner).await;
        stranger
            .send(resonant_client::protocol::encode_stateless(
                &json!({"type": "executions.resume", "after": {id.clone(): 0}}).to_string(),
            ))
            .await;
        stranger.sync().await;
        assert!(
            events_of(&stranger, &id).is_empty(),
            "events of another workflow leaked"
        );
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_hundred_block_workflow_runs_every_block_once() {
    let env = Env::new(Backend::Sqlite).await;
    let mut blocks = vec![block("in", "input", json!({}))];
    let mut connections = Vec::new();
    // Ten chains of ten, fanned out from the input and merged at the end.
    for chain in 0..10 {
        let mut prev = "in".to_string();
        for step in 0..10 {
            let id = format!("c{chain}s{step}");
            blocks.push(block(
                &id,
                "transform",
                json!({"template": format!("{{{{ upstream }}}}.{step}")}),
            ));
            connections.push(edge(&prev, &id));
            prev = id;
        }
        connections.push(edge(&prev, "join"));
    }
    blocks.push(block("join", "merge", json!({"join": "all"})));
    blocks.push(block("out", "output", json!({})));
    connections.push(edge("join", "out"));
    let wf = env
        .workflow(json!({"blocks": blocks, "connections": connections}))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    assert_gapless(&events);
    let completed: HashMap<String, usize> = events
        .iter()
        .filter(|e| e["type"] == "block.completed")
        .fold(HashMap::new(), |mut m, e| {
            *m.entry(e["blockId"].as_str().unwrap().to_string())
                .or_default() += 1;
            m
        });
    assert_eq!(completed.len(), 103);
    assert!(completed.values().all(|&n| n == 1));
    let done = events.last().unwrap();
    assert_eq!(done["outputs"]["out"]["c3s9"], "{}.0.1.2.3.4.5.6.7.8.9");
}

#[tokio::test]
async fn independent_branches_run_concurrently_within_the_execution_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let inflight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (i2, m2) = (inflight.clone(), most.clone());
    // Each request is held open a while, so overlapping blocks are in flight together.
    let app = axum::Router::new().fallback(move || {
        let (i, m) = (i2.clone(), m2.clone());
        async move {
            let now = i.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            i.fetch_sub(1, Ordering::SeqCst);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let env = Env::with(Backend::Sqlite, |c| {
        c.webhook_allow = vec!["127.0.0.1".into()]
    })
    .await;
    let mut blocks = vec![
        block("in", "input", json!({})),
        block("join", "merge", json!({})),
        block("out", "output", json!({})),
    ];
    let mut connections = vec![edge("join", "out")];
    for i in 0..6 {
        let id = format!("hook{i}");
        blocks.push(block(
            &id,
            "webhook",
            json!({"url": format!("http://{mock}/{i}"), "method": "GET"}),
        ));
        connections.push(edge("in", &id));
        connections.push(edge(&id, "join"));
    }
    let wf = env
        .workflow(json!({"blocks": blocks, "connections": connections}))
        .await;
    let mut w = env.watcher(&wf).await;
    for limit in [2, 6] {
        most.store(0, Ordering::SeqCst);
        let (s, e) = env.start(&wf, json!({"maxConcurrency": limit})).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        let events = until_finished(&mut w, e["id"].as_str().unwrap()).await;
        assert_eq!(events.last().unwrap()["type"], "execution.completed");
        let most = most.load(Ordering::SeqCst);
        if limit == 2 {
            assert_eq!(most, 2, "two branches at once, never more");
        } else {
            assert!(
                most > 2,
                "with room for six, more than two ran at once ({most})"
            );
        }
    }
    env.cleanup().await;
}

#[tokio::test]
async fn deleting_a_running_workflow_stops_its_run_and_nothing_else() {
    for backend in backends() {
        let env = Env::new(backend).await;
        let sleepy = env.workflow(napping()).await;
        let quick = env
            .workflow(json!({
                "blocks": [block("in", "input", json!({})), block("t", "transform", json!({"template": "ok"})), block("out", "output", json!({}))],
                "connections": [edge("in", "t"), edge("t", "out")],
            }))
            .await;
        let mut w = env.watcher(&sleepy).await;
        let id = env.run(&sleepy, json!({})).await;
        let exec = id.clone();
        w.until("waiting", move |s| {
            s.stateless
                .iter()
                .any(|m| m.contains(&exec) && m.contains("block.waiting"))
        })
        .await;
        let (s, _) = env.delete(&format!("/api/v1/workflows/{sleepy}")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        // Its rows are gone with it; the other workflow's runs are not held up by that.
        let mut q = env.watcher(&quick).await;
        for _ in 0..3 {
            let id = env.run(&quick, json!({})).await;
            let events = until_finished(&mut q, &id).await;
            assert_eq!(events.last().unwrap()["type"], "execution.completed");
        }
        let (s, _) = env.get(&format!("/api/v1/executions/{id}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_malformed_replay_request_is_refused_without_muting_the_socket() {
    let env = Env::new(Backend::Sqlite).await;
    let wf = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), block("out", "output", json!({}))],
            "connections": [edge("in", "out")],
        }))
        .await;
    let mut c = env.editor(&wf, &env.owner).await;
    c.send(resonant_client::protocol::encode_stateless(
        &json!({"type": "executions.resume", "after": null}).to_string(),
    ))
    .await;
    c.until("refused", |s| {
        s.stateless.iter().any(|m| m.contains("bad-request"))
    })
    .await;
    let too_many: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("e{i}"), json!(0))).collect();
    c.send(resonant_client::protocol::encode_stateless(
        &json!({"type": "executions.resume", "after": too_many}).to_string(),
    ))
    .await;
    c.until("refused again", |s| {
        s.stateless
            .iter()
            .filter(|m| m.contains("bad-request"))
            .count()
            == 2
    })
    .await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut c, &id).await;
    assert_gapless(&events);
}

#[tokio::test]
async fn loop_bodies_are_entered_only_through_their_loop_and_drafts_do_not_run() {
    let env = Env::new(Backend::Sqlite).await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("ctx", "transform", json!({"template": "c"})),
                block("each", "loop", json!({"items": "input.xs"})),
                block("up", "transform", json!({"template": "{{ loop.item }}"})),
                block("inner_out", "output", json!({})),
                block("out", "output", json!({})),
            ],
            "connections": [
                edge("in", "ctx"), edge("in", "each"),
                edge_h("each", "body", "up"),
                edge("ctx", "up"),
                edge("up", "inner_out"),
                json!({"id": "back", "source": "up", "target": "each", "targetHandle": "next"}),
                edge_h("each", "done", "out"),
            ],
        }))
        .await;
    let (s, body) = env.start(&wf, json!({})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("crosses-loop") && text.contains("ctx-up"),
        "{text}"
    );
    assert!(
        text.contains("output-in-loop") && text.contains("inner_out"),
        "{text}"
    );

    // A block left unconnected on the canvas is not part of the run.
    let (mock, hits) = scripted_http(vec![]).await;
    let env2 = Env::with(Backend::Sqlite, |c| {
        c.webhook_allow = vec!["127.0.0.1".into()]
    })
    .await;
    let wf = env2
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("draft", "webhook", json!({"url": format!("http://{mock}/"), "method": "POST"})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "out")],
        }))
        .await;
    let mut w = env2.watcher(&wf).await;
    let id = env2.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    assert_eq!(events.last().unwrap()["type"], "execution.completed");
    assert!(
        !kinds(&events).iter().any(|k| k.ends_with(":draft")),
        "{:?}",
        kinds(&events)
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_rerun_from_inside_a_loop_reuses_the_iterations_that_finished() {
    use std::sync::atomic::Ordering;
    let (mock, hits) = scripted_http(vec![200, 500, 200, 200]).await;
    let env = Env::with(Backend::Sqlite, |c| {
        c.webhook_allow = vec!["127.0.0.1".into()]
    })
    .await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("each", "loop", json!({"items": "input.xs"})),
                block("call", "webhook", json!({"url": format!("http://{mock}/{{{{ loop.item }}}}"), "method": "GET", "retry": {"attempts": 1}})),
                block("out", "output", json!({})),
            ],
            "connections": [
                edge("in", "each"),
                edge_h("each", "body", "call"),
                json!({"id": "back", "source": "call", "target": "each", "targetHandle": "next"}),
                edge_h("each", "done", "out"),
            ],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({"xs": ["a", "b", "c"]})).await;
    let events = until_finished(&mut w, &id).await;
    assert_eq!(events.last().unwrap()["type"], "execution.failed");
    let before = hits.load(Ordering::SeqCst);
    assert_eq!(
        before, 2,
        "one at a time: the failure stops the loop before the third"
    );
    let (s, re) = env
        .post(&format!("/api/v1/executions/{id}/rerun"), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{re}");
    let re = re["id"].as_str().unwrap().to_string();
    let events = until_finished(&mut w, &re).await;
    let done = events.last().unwrap();
    assert_eq!(done["type"], "execution.completed", "{done}");
    assert_eq!(done["outputs"]["out"].as_array().unwrap().len(), 3);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 2,
        "the first iteration is reused; the failed one and the one never run are called"
    );
}

#[tokio::test]
async fn refusals_of_requests_without_a_valid_workflow_echo_the_request_id() {
    // Development mode admits any room; executions need a `workflow-<uuid>` one. A client
    // matches replies by requestId: without it, Run spun for the client's whole timeout.
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(dir.path(), |_| {}).await;
    let mut c =
        common::Client::connect_synced(&common::room_url(server.addr(), "workflow-1")).await;
    c.send(resonant_client::protocol::encode_stateless(
        &json!({"type": "execution.start", "input": {}, "requestId": "r7"}).to_string(),
    ))
    .await;
    c.until("the refusal of a start in a room with no workflow", |s| {
        !s.stateless.is_empty()
    })
    .await;
    let refusal: Value = serde_json::from_str(&c.stateless[0]).unwrap();
    assert_eq!(refusal["type"], "error");
    assert_eq!(refusal["code"], "bad-request");
    assert_eq!(refusal["requestId"], "r7");

    // A request that does not parse (no executionId) in a workflow room: the same.
    let wf = "00000000-0000-4000-8000-000000000001";
    let mut w =
        common::Client::connect_synced(&common::room_url(server.addr(), &format!("workflow-{wf}")))
            .await;
    w.send(resonant_client::protocol::encode_stateless(
        &json!({"type": "execution.cancel", "requestId": 12}).to_string(),
    ))
    .await;
    w.until("the refusal of a malformed cancel", |s| {
        !s.stateless.is_empty()
    })
    .await;
    let refusal: Value = serde_json::from_str(&w.stateless[0]).unwrap();
    assert_eq!(refusal["code"], "bad-request");
    assert_eq!(refusal["requestId"], 12);
    server.shutdown().await.unwrap();
}

/// The text of a shared value, when it is a Y.Text (`None` for a plain string or anything else).
fn y_text_at(doc: &yrs::Doc, block: u32, part: &str, field: &str) -> Option<String> {
    use yrs::{Array, GetString, Out, ReadTxn, Transact};
    let txn = doc.transact();
    let Some(Out::YMap(b)) = txn.get_array("blocks")?.get(&txn, block) else {
        return None;
    };
    let Some(Out::YMap(p)) = b.get(&txn, part) else {
        return None;
    };
    match p.get(&txn, field) {
        Some(Out::YText(t)) => Some(t.get_string(&txn)),
        _ => None,
    }
}

/// Collaborative text (docs/workflow-schema.md): a template and a label held as Y.Text, as the
/// SDK's editors write them, run (the engine reads the string), read back as strings from the
/// content and version endpoints, and a restore writes them back as Y.Text, so editors keep
/// typing into them character by character.
#[tokio::test]
async fn text_fields_held_as_y_text_run_read_as_strings_and_restore_as_y_text() {
    use yrs::{Array, In, MapPrelim, Out, Text, TextPrelim};
    for backend in backends() {
        let env = Env::new(backend).await;
        let wf = env
            .workflow(json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("greet", "transform", json!({"template": "replaced below"})),
                    block("out", "output", json!({})),
                ],
                "connections": [edge("in", "greet"), edge("greet", "out")],
            }))
            .await;
        let mut ed = env.watcher(&wf).await;
        ed.edit(|_doc, txn| {
            let blocks = txn.get_or_insert_array("blocks");
            let Some(Out::YMap(greet)) = blocks.get(txn, 1) else {
                panic!("block 1 is a map")
            };
            let template = TextPrelim::new("Hello {{ input.name }}!");
            greet.insert(
                txn,
                "config",
                MapPrelim::from_iter([("template", In::Text(template.into()))]),
            );
            greet.insert(
                txn,
                "data",
                MapPrelim::from_iter([("label", In::Text(TextPrelim::new("Greeter").into()))]),
            );
        })
        .await;
        ed.until("the text fields are stored", |s| s.acks >= 1)
            .await;

        let id = env.run(&wf, json!({"name": "ada"})).await;
        let events = until_finished(&mut ed, &id).await;
        assert_eq!(
            events.last().unwrap()["outputs"],
            json!({"out": "Hello ada!"}),
            "{backend:?}: {:?}",
            kinds(&events)
        );
        let (s, content) = env.get(&format!("/api/v1/workflows/{wf}/content")).await;
        assert_eq!(s, StatusCode::OK, "{content}");
        assert_eq!(
            content["blocks"][1]["config"]["template"],
            "Hello {{ input.name }}!"
        );
        assert_eq!(content["blocks"][1]["data"]["label"], "Greeter");

        let (s, v) = env
            .post(
                &format!("/api/v1/workflows/{wf}/versions"),
                Some(json!({"name": "typed"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let version = v["version"].as_i64().unwrap();
        let (_, saved) = env
            .get(&format!("/api/v1/workflows/{wf}/versions/{version}"))
            .await;
        assert_eq!(saved["content"]["blocks"], content["blocks"]);

        // Typing after the save, then restoring it.
        ed.edit(|_doc, txn| {
            let blocks = txn.get_or_insert_array("blocks");
            let Some(Out::YMap(greet)) = blocks.get(txn, 1) else {
                panic!("block 1 is a map")
            };
            let Some(Out::YMap(config)) = yrs::Map::get(&greet, txn, "config") else {
                panic!("config is a map")
            };
            let Some(Out::YText(t)) = yrs::Map::get(&config, txn, "template") else {
                panic!("the template is text")
            };
            t.insert(txn, 5, ", dear");
        })
        .await;
        ed.until("the typing is stored", |s| s.acks >= 2).await;
        let (_, typed) = env.get(&format!("/api/v1/workflows/{wf}/content")).await;
        assert_eq!(
            typed["blocks"][1]["config"]["template"],
            "Hello, dear {{ input.name }}!"
        );
        let (s, body) = env
            .post(
                &format!("/api/v1/workflows/{wf}/versions/{version}/restore"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        ed.until("the restored text reaches the editor", |s| {
            y_text_at(&s.doc, 1, "config", "template").as_deref() == Some("Hello {{ input.name }}!")
        })
        .await;
        assert_eq!(
            y_text_at(&ed.doc, 1, "data", "label").as_deref(),
            Some("Greeter"),
            "{backend:?}: the label is restored as Y.Text"
        );
        let (_, restored) = env.get(&format!("/api/v1/workflows/{wf}/content")).await;
        assert_eq!(restored["blocks"], content["blocks"]);
        ed.close().await;
        env.cleanup().await;
    }
}

#[tokio::test]
async fn a_retried_webhooks_completion_names_the_attempt_its_retries_counted_to() {
    let (mock, hits) = scripted_http(vec![500, 503, 200]).await;
    let env = Env::with(Backend::Sqlite, |c| {
        c.webhook_allow = vec!["127.0.0.1/32".into()]
    })
    .await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("hook", "webhook", json!({"url": format!("http://{mock}/x"), "method": "POST",
                    "retry": {"attempts": 3, "initialIntervalMs": 1, "jitter": 0.0}})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "hook"), edge("hook", "out")],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    let retries: Vec<i64> = events
        .iter()
        .filter(|e| e["type"] == "block.retrying")
        .map(|e| e["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(retries, [2, 3], "{events:?}");
    assert_eq!(completed(&events, "hook")["attempt"], 3);
    let e = env.execution(&id).await;
    let row = block_result(&e, "hook");
    assert_eq!(row["attempt"], 3, "{row}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_failing_block_can_continue_or_route_its_error_instead_of_failing_the_run() {
    let (mock, hits) = scripted_http(vec![500, 500, 500, 500]).await;
    let env = Env::with(Backend::Sqlite, |c| {
        c.webhook_allow = vec!["127.0.0.1/32".into()]
    })
    .await;
    let hook = |mode: &str| {
        block(
            "hook",
            "webhook",
            json!({"url": format!("http://{mock}/x"), "method": "POST",
            "retry": {"attempts": 1}, "onError": mode}),
        )
    };
    // continue: the failure is the block's output, and the run goes on.
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                hook("continue"),
                block("after", "transform", json!({"template": "{{ upstream.error.blockId }}: {{ '500' in upstream.error.message }}"})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "hook"), edge("hook", "after"), edge("after", "out")],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "execution.completed", "{events:?}");
    assert_eq!(last["outputs"]["out"], "hook: True");
    let failed = events.iter().find(|e| e["type"] == "block.failed").unwrap();
    assert_eq!(
        (failed["blockId"].as_str(), failed["handled"].as_str()),
        (Some("hook"), Some("continue"))
    );

    // route: only the error handle's branch runs; the normal one is skipped.
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                hook("route"),
                block("ok", "output", json!({"template": "fine"})),
                block("recover", "transform", json!({"template": "recovered from {{ upstream.error.blockId }}"})),
                block("fallback", "output", json!({})),
            ],
            "connections": [edge("in", "hook"), edge("hook", "ok"),
                edge_h("hook", "error", "recover"), edge("recover", "fallback")],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "execution.completed", "{events:?}");
    assert_eq!(last["outputs"], json!({"fallback": "recovered from hook"}));
    assert!(
        kinds(&events).contains(&"block.skipped:ok".to_string()),
        "{:?}",
        kinds(&events)
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // An error handle on a block that does not route its errors is refused up front.
    let bad = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), hook("fail"), block("out", "output", json!({}))],
            "connections": [edge("in", "hook"), edge_h("hook", "error", "out")],
        }))
        .await;
    let (s, e) = env.start(&bad, json!({})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e.to_string().contains("onError is not `route`"), "{e}");
    env.cleanup().await;
}

#[tokio::test]
async fn the_workflows_error_handler_runs_with_what_failed_and_the_run_still_fails() {
    let (mock, hits) = scripted_http(vec![500, 200, 200]).await;
    let env = Env::with(Backend::Sqlite, |c| {
        c.webhook_allow = vec!["127.0.0.1/32".into()]
    })
    .await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("hook", "webhook", json!({"url": format!("http://{mock}/work"), "method": "POST",
                    "retry": {"attempts": 1}})),
                block("out", "output", json!({})),
                block("oops", "errorHandler", json!({})),
                block("tell", "webhook", json!({"url": format!("http://{mock}/alert"), "method": "POST",
                    "body": "{{ upstream.error.blockId }} failed"})),
            ],
            "connections": [edge("in", "hook"), edge("hook", "out"), edge("oops", "tell")],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "execution.failed", "{events:?}");
    assert!(
        last["error"].as_str().unwrap().contains("block hook"),
        "{last}"
    );
    let handled = completed(&events, "oops");
    assert_eq!(handled["output"]["error"]["blockId"], "hook");
    let told = completed(&events, "tell");
    assert_eq!(told["output"]["body"]["echo"], "hook failed", "{told}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A run that succeeds does not run it.
    let ok = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("out", "output", json!({})),
                block("oops", "errorHandler", json!({})),
                block("tell", "output", json!({"template": "never"})),
            ],
            "connections": [edge("in", "out"), edge("oops", "tell")],
        }))
        .await;
    let mut w = env.watcher(&ok).await;
    let id = env.run(&ok, json!({"x": 1})).await;
    let events = until_finished(&mut w, &id).await;
    assert_eq!(events.last().unwrap()["type"], "execution.completed");
    assert!(
        !kinds(&events).iter().any(|k| k.contains("oops")),
        "{:?}",
        kinds(&events)
    );
    // It has no inputs.
    let bad = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), block("oops", "errorHandler", json!({})),
                block("out", "output", json!({}))],
            "connections": [edge("in", "oops"), edge("oops", "out")],
        }))
        .await;
    let (s, e) = env.start(&bad, json!({})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(e.to_string().contains("has no inputs"), "{e}");
    env.cleanup().await;
}

#[tokio::test]
async fn large_inputs_and_outputs_travel_by_reference_and_socket_starts_refuse_unknown_fields() {
    let env = Env::new(Backend::Sqlite).await;
    let wf = env
        .workflow(json!({
            "blocks": [block("in", "input", json!({})), block("out", "output", json!({"template": "{{ input.big }}"}))],
            "connections": [edge("in", "out")],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let big = "x".repeat(20_000);
    let id = env.run(&wf, json!({"big": big})).await;
    let events = until_finished(&mut w, &id).await;
    let started = &events[0];
    assert_eq!(started["type"], "execution.started");
    assert!(started["input"].is_null(), "{}", started.to_string().len());
    assert_eq!(started["inputRef"], format!("/api/v1/executions/{id}"));
    let done = events.last().unwrap();
    assert!(done["outputs"].is_null());
    assert!(done["outputsBytes"].as_u64().unwrap() > 20_000);
    let e = env.execution(&id).await;
    assert_eq!(e["output"]["out"].as_str().unwrap().len(), 20_000);
    // A misspelt option over the socket is refused as REST refuses it, naming the request.
    w.send(resonant_client::protocol::encode_stateless(
        &json!({"type": "execution.start", "requestId": "r7", "prority": "speed"}).to_string(),
    ))
    .await;
    w.until("refused", |s| {
        s.stateless.iter().any(|m| m.contains("prority"))
    })
    .await;
    let refusal: Value = w
        .stateless
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(m).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.contains("prority")))
        .unwrap();
    assert_eq!(
        (refusal["code"].as_str(), refusal["requestId"].as_str()),
        (Some("bad-request"), Some("r7")),
        "{refusal}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_merge_that_takes_any_input_stops_the_branches_that_lost() {
    let env = Env::new(Backend::Sqlite).await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("fast", "transform", json!({"template": "fast"})),
                block("slow", "delay", json!({"seconds": 600})),
                block("after_slow", "transform", json!({"template": "late"})),
                block("first", "merge", json!({"join": "any"})),
                block("out", "output", json!({})),
            ],
            "connections": [
                edge("in", "fast"), edge("in", "slow"), edge("slow", "after_slow"),
                edge("fast", "first"), edge("after_slow", "first"), edge("first", "out"),
            ],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let started = std::time::Instant::now();
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    // It ends at once: the ten-minute branch no longer matters, so it is stopped and skipped.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let done = events.last().unwrap();
    assert_eq!(done["type"], "execution.completed", "{events:?}");
    assert_eq!(done["outputs"]["out"], "fast");
    let k = kinds(&events);
    for skipped in ["slow", "after_slow"] {
        assert!(
            k.contains(&format!("block.skipped:{skipped}")),
            "{skipped}: {k:?}"
        );
    }
    let e = env.execution(&id).await;
    let slow = block_result(&e, "slow");
    assert_eq!(slow["status"], "skipped", "{slow}");
    env.cleanup().await;
}
