//! AI blocks in real executions: the keyless demo provider, streaming failover between
//! providers served by the mock (their real wire formats), usage records and totals, the
//! token limit crossed mid-run, and cancel mid-stream.

mod common;

use std::time::Duration;

use common::api::Backend;
use common::exec::*;
use common::mock_ai::{MockAi, MockReply};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Server keys for `families` ("claude", "openai"), their base URLs on the mock's lanes.
fn keyed(c: &mut resonant::ServeConfig, mock: &MockAi, families: &[&str]) {
    for family in families {
        c.server_keys.set(
            family,
            Some(format!("test-key-{family}")),
            Some(mock.base_url(family)),
        );
    }
}

fn ai_flow(config: Value) -> Value {
    json!({
        "blocks": [
            block("in", "input", json!({})),
            block("gen", "ai", config),
            block("out", "output", json!({})),
        ],
        "connections": [edge("in", "gen"), edge("gen", "out")],
    })
}

#[tokio::test]
async fn the_demo_provider_streams_labelled_text_and_records_usage() {
    let env = Env::with(Backend::Sqlite, |c| c.demo_delay_ms = 2).await;
    let wf = env
        .workflow(ai_flow(
            json!({"userPromptTemplate": "Write about {{ input.topic }}"}),
        ))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({"topic": "rivers"})).await;
    let events = until_finished(&mut w, &id).await;
    assert_gapless(&events);
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "block.delta")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    let done = completed(&events, "gen");
    let text = done["output"].as_str().unwrap();
    assert!(
        text.starts_with("[demo]"),
        "demo output is labelled: {text}"
    );
    assert_eq!(deltas, text, "the deltas add up to the output");
    assert!(
        events.iter().filter(|e| e["type"] == "block.delta").count() >= 2,
        "streamed in pieces"
    );
    assert_eq!(done["provider"], "demo");
    assert!(done["tokens"].as_i64().unwrap() > 0);
    assert_eq!(done["costUsd"], 0.0);
    // The same prompt gives the same text (deterministic).
    let again = env.run(&wf, json!({"topic": "rivers"})).await;
    let events2 = until_finished(&mut w, &again).await;
    let done2 = completed(&events2, "gen");
    assert_eq!(done2["output"], done["output"]);
    let (_, usage) = env
        .get(&format!("/api/v1/workspaces/{}/usage", env.ws))
        .await;
    assert!(usage.to_string().contains("demo"), "{usage}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_stream_cut_mid_way_fails_over_visibly_and_every_call_is_paid_for() {
    for backend in common::api::backends() {
        let (_, mock) = MockAi::start(vec![]).await;
        mock.push(
            "claude",
            MockReply::text("one two three four five six").cut_after(3),
        );
        mock.push("claude", MockReply::status(500, "down"));
        mock.push("claude", MockReply::status(500, "down"));
        mock.push("openai", MockReply::text("fresh answer here").usage(20, 3));
        let env = Env::with(backend, |c| keyed(c, &mock, &["claude", "openai"])).await;
        let wf = env
            .workflow(ai_flow(
                json!({"userPromptTemplate": "hello", "provider": "claude-3-5-sonnet"}),
            ))
            .await;
        let mut w = env.watcher(&wf).await;
        let id = env.run(&wf, json!({})).await;
        let events = until_finished(&mut w, &id).await;
        assert_gapless(&events);
        let k = kinds(&events);
        let retry_at = k
            .iter()
            .position(|x| x == "block.retrying:gen")
            .expect("a visible restart");
        assert!(
            k[..retry_at].contains(&"block.delta:gen".to_string()),
            "text came before the restart: {k:?}"
        );
        let done = completed(&events, "gen");
        assert_eq!(done["output"], "fresh answer here");
        assert_eq!(done["provider"], "gpt-4-turbo");
        let after: String = events[retry_at..]
            .iter()
            .filter(|e| e["type"] == "block.delta")
            .map(|e| e["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            after, "fresh answer here",
            "after the restart only the new text streams"
        );
        // Every call is a usage record; the refused ones cost nothing.
        let e = env.execution(&id).await;
        let (_, usage) = env
            .get(&format!("/api/v1/workspaces/{}/usage", env.ws))
            .await;
        let text = usage.to_string();
        assert!(
            text.contains("gpt-4-turbo") && text.contains("claude"),
            "{text}"
        );
        let gpt_cost = 20.0 * 10.0 / 1e6 + 3.0 * 30.0 / 1e6;
        assert!(e["costUsd"].as_f64().unwrap() >= gpt_cost - 1e-12, "{e}");
        assert!(e["tokensUsed"].as_i64().unwrap() >= 23, "{e}");
        let (_, me) = env.get("/api/v1/me").await;
        assert_eq!(me["tokensUsed"].as_i64(), e["tokensUsed"].as_i64(), "{me}");
        env.cleanup().await;
    }
}

#[tokio::test]
async fn crossing_the_token_limit_stops_the_run_and_the_next_start() {
    let (_, mock) = MockAi::start(vec![]).await;
    mock.push("openai", MockReply::text("expensive words").usage(400, 200));
    let env = Env::with(Backend::Sqlite, |c| {
        c.plan_tokens = resonant::config::PlanTokens(vec![("free".into(), 500)]);
        keyed(c, &mock, &["openai"]);
    })
    .await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("gen", "ai", json!({"userPromptTemplate": "hi", "provider": "gpt-4-turbo"})),
                block("more", "ai", json!({"userPromptTemplate": "again", "provider": "gpt-4-turbo"})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "gen"), edge("gen", "more"), edge("more", "out")],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    let failed = events.last().unwrap();
    assert_eq!(failed["type"], "execution.failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("token limit"),
        "{failed}"
    );
    assert!(
        !kinds(&events).contains(&"block.started:more".to_string()),
        "{:?}",
        kinds(&events)
    );
    let (s, body) = env.start(&wf, json!({})).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{body}");
    env.cleanup().await;
}

#[tokio::test]
async fn cancel_mid_stream_stops_the_call() {
    let (_, mock) = MockAi::start(vec![]).await;
    mock.push(
        "openai",
        MockReply::text(&"word ".repeat(200)).token_delay(Duration::from_millis(50)),
    );
    let env = Env::with(Backend::Sqlite, |c| keyed(c, &mock, &["openai"])).await;
    let wf = env
        .workflow(ai_flow(
            json!({"userPromptTemplate": "long", "provider": "gpt-4-turbo"}),
        ))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let exec = id.clone();
    w.until("streaming", move |s| {
        s.stateless
            .iter()
            .any(|m| m.contains(&exec) && m.contains("block.delta"))
    })
    .await;
    let (s, _) = env
        .post(&format!("/api/v1/executions/{id}/cancel"), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let started = std::time::Instant::now();
    let events = until_finished(&mut w, &id).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        started.elapsed()
    );
    assert_eq!(events.last().unwrap()["type"], "execution.cancelled");
    assert!(!kinds(&events).contains(&"block.completed:gen".to_string()));
    // What streamed before the cancel is paid for, and accounted.
    assert!(
        events.last().unwrap()["tokens"].as_i64().unwrap() > 0,
        "{:?}",
        events.last()
    );
    let (_, usage) = env
        .get(&format!("/api/v1/workspaces/{}/usage", env.ws))
        .await;
    assert!(usage.to_string().contains("gpt-4-turbo"), "{usage}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_blocks_own_retry_policy_governs_its_provider_calls() {
    let (_, mock) = MockAi::start(vec![]).await;
    let env = Env::with(Backend::Sqlite, |c| keyed(c, &mock, &["claude", "openai"])).await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("patient", "ai", json!({"userPromptTemplate": "a", "provider": "claude-3-5-sonnet"})),
                block("hasty", "ai", json!({"userPromptTemplate": "b", "provider": "claude-3-5-sonnet",
                                             "retry": {"attempts": 1}})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "patient"), edge("patient", "hasty"), edge("hasty", "out")],
        }))
        .await;
    // The default policy retries the same provider; one attempt moves on to the next.
    mock.push("claude", MockReply::status(500, "busy"));
    mock.push("claude", MockReply::text("claude again"));
    mock.push("claude", MockReply::status(500, "busy"));
    mock.push("openai", MockReply::text("from openai"));
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({})).await;
    let events = until_finished(&mut w, &id).await;
    let done = |b: &str| {
        events
            .iter()
            .find(|e| e["type"] == "block.completed" && e["blockId"] == b)
            .cloned()
            .unwrap_or_else(|| panic!("{b} completed: {:?}", kinds(&events)))
    };
    assert_eq!(done("patient")["provider"], "claude-3-5-sonnet");
    assert_eq!(done("patient")["output"], "claude again");
    assert_eq!(done("hasty")["provider"], "gpt-4-turbo");
    assert_eq!(mock.pending("claude"), 0);
}

#[tokio::test]
async fn a_failed_iteration_winds_the_others_down_and_their_calls_are_still_paid_for() {
    let (_, mock) = MockAi::start(vec![]).await;
    // One iteration's call streams slowly; the other's breaks off after 300 ms, by when the
    // first has streamed for a while (whichever iteration gets which reply).
    mock.push(
        "openai",
        MockReply::text(&"word ".repeat(200)).token_delay(Duration::from_millis(30)),
    );
    mock.push(
        "openai",
        MockReply::text("one two three")
            .first_token_delay(Duration::from_millis(300))
            .cut_after(1),
    );
    let env = Env::with(Backend::Sqlite, |c| keyed(c, &mock, &["openai"])).await;
    let wf = env
        .workflow(json!({
            "blocks": [
                block("in", "input", json!({})),
                block("each", "loop", json!({"items": "input.items", "concurrency": 2})),
                block("gen", "ai", json!({"userPromptTemplate": "item {{ loop.item }}", "provider": "gpt-4-turbo",
                    "retry": {"attempts": 1}})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("in", "each"), edge_h("each", "body", "gen"),
                json!({"id": "back", "source": "gen", "target": "each", "targetHandle": "next"}),
                edge("each", "out")],
        }))
        .await;
    let mut w = env.watcher(&wf).await;
    let id = env.run(&wf, json!({"items": [1, 2]})).await;
    let events = until_finished(&mut w, &id).await;
    assert_eq!(
        events.last().unwrap()["type"],
        "execution.failed",
        "{events:?}"
    );
    // The slow call was cut short, and what it streamed is accounted.
    assert!(
        events.last().unwrap()["tokens"].as_i64().unwrap() > 0,
        "{:?}",
        events.last()
    );
    let e = env.execution(&id).await;
    let rows = e["blockResults"].as_array().unwrap();
    assert!(
        rows.iter()
            .all(|r| r["status"] != "running" && r["status"] != "waiting"),
        "{rows:?}"
    );
    let (_, usage) = env
        .get(&format!("/api/v1/workspaces/{}/usage", env.ws))
        .await;
    assert!(usage.to_string().contains("gpt-4-turbo"), "{usage}");
    env.cleanup().await;
}
