//! The AI router against a mock provider server speaking each provider's real wire format:
//! fallback order, retries with Retry-After, the circuit breaker, streaming failover, timeouts,
//! error classes, usage and cost, JSON repair and cancellation.

#[path = "common/mock_ai.rs"]
mod mock_ai;

use std::time::{Duration, Instant};

use mock_ai::{MockAi, MockReply, Wire};
use resonant::engine::ai::{
    AiEvents, AiOutput, AiRequest, BreakerConfig, CallRecord, OutputFormat, ProviderKey,
    ProviderKind, Router, RouterConfig,
};
use resonant::engine::retry::{BlockError, ErrorClass, RetryPolicy};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const CLAUDE: &str = "claude-3-5-sonnet";
const GPT: &str = "gpt-4-turbo";
const GEMINI: &str = "gemini-1.5-pro";
const LLAMA: &str = "llama-3-70b";

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Delta(String),
    Restarted(String, String),
    Call(CallRecord),
}

#[derive(Default)]
struct Rec {
    log: Vec<Ev>,
    cancel_on_delta: Option<CancellationToken>,
}

impl AiEvents for Rec {
    fn delta(&mut self, text: &str) {
        self.log.push(Ev::Delta(text.to_string()));
        if let Some(c) = &self.cancel_on_delta {
            c.cancel();
        }
    }
    fn restarted(&mut self, reason: &str, next_provider: &str) {
        self.log
            .push(Ev::Restarted(reason.to_string(), next_provider.to_string()));
    }
    fn call_finished(&mut self, call: &CallRecord) {
        self.log.push(Ev::Call(call.clone()));
    }
}

impl Rec {
    fn calls(&self) -> Vec<&CallRecord> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Ev::Call(c) => Some(c),
                _ => None,
            })
            .collect()
    }
    fn restarts(&self) -> Vec<(String, String)> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Ev::Restarted(r, n) => Some((r.clone(), n.clone())),
                _ => None,
            })
            .collect()
    }
    fn deltas(&self) -> String {
        self.log
            .iter()
            .filter_map(|e| match e {
                Ev::Delta(d) => Some(d.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// The default table pointed at the mock (lane = family), server keys for every family, one
/// attempt per provider, no jitter, a breaker that does not trip unless a test asks.
fn config(mock: &MockAi) -> RouterConfig {
    let mut c = RouterConfig::default();
    for p in &mut c.providers {
        if p.kind != ProviderKind::Demo {
            p.base_url = mock.base_url(&p.family);
        }
    }
    c.server_keys = ["claude", "openai", "gemini", "llama"]
        .iter()
        .map(|f| key(f))
        .collect();
    c.retry = RetryPolicy {
        attempts: 1,
        jitter: 0.0,
        initial_interval_ms: 1,
        ..RetryPolicy::default()
    };
    c.breaker = BreakerConfig {
        failure_threshold: 1000,
        cooldown: Duration::from_secs(60),
    };
    c.demo_delay = Duration::ZERO;
    c.first_token_timeout = Duration::from_secs(10);
    c.request_timeout = Duration::from_secs(20);
    c
}

fn key(family: &str) -> ProviderKey {
    ProviderKey::new(family, format!("key-{family}"), None)
}

fn req(provider: &str) -> AiRequest {
    AiRequest {
        prompt: "Write a haiku about rivers.".into(),
        provider: Some(provider.into()),
        ..AiRequest::default()
    }
}

/// A router whose only keys are the workspace's `families` (no server keys).
fn only(mut c: RouterConfig) -> RouterConfig {
    c.server_keys.clear();
    c
}

async fn run(
    router: &Router,
    r: &AiRequest,
    keys: &[ProviderKey],
) -> (Result<AiOutput, BlockError>, Rec) {
    let mut rec = Rec::default();
    let out = router
        .complete(r, keys, &mut rec, &CancellationToken::new())
        .await;
    (out, rec)
}

#[tokio::test]
async fn falls_back_in_chain_order_telling_the_engine_of_each_new_provider() {
    let (_, mock) = MockAi::start(vec![
        ("claude", MockReply::status(500, "boom")),
        ("claude", MockReply::status(529, "overloaded")),
        ("openai", MockReply::status(503, "unavailable")),
        ("openai", MockReply::status(502, "bad gateway")),
        ("gemini", MockReply::text("rivers run")),
    ])
    .await;
    let mut c = config(&mock);
    c.retry.attempts = 2;
    let router = Router::new(c);
    let (out, rec) = run(&router, &req(CLAUDE), &[]).await;
    let out = out.unwrap();
    assert_eq!(out.provider, GEMINI);
    assert_eq!(out.text, "rivers run");
    assert_eq!(
        mock.lanes(),
        ["claude", "claude", "openai", "openai", "gemini"]
    );
    // No text was streamed before gemini, but the editor hears of each change of provider.
    let next: Vec<String> = rec.restarts().into_iter().map(|(_, n)| n).collect();
    assert_eq!(next, [GPT, GEMINI], "{:?}", rec.log);
    let calls = rec.calls();
    assert_eq!(
        calls.len(),
        5,
        "one usage record per call, failed ones included"
    );
    assert_eq!(
        calls
            .iter()
            .map(|c| c.provider.as_str())
            .collect::<Vec<_>>(),
        [CLAUDE, CLAUDE, GPT, GPT, GEMINI]
    );
    assert!(calls[0]
        .error
        .as_deref()
        .unwrap()
        .contains("HTTP 500: boom"));
    assert!(calls[1].error.as_deref().unwrap().contains("HTTP 529"));
    assert!(calls[4].error.is_none());
    assert_eq!(rec.deltas(), "rivers run");
}

#[tokio::test]
async fn every_provider_failing_names_them_all() {
    let (_, mock) = MockAi::start(vec![
        ("claude", MockReply::status(500, "a")),
        ("openai", MockReply::status(500, "b")),
        ("gemini", MockReply::status(500, "c")),
        ("llama", MockReply::status(503, "d")),
    ])
    .await;
    let router = Router::new(config(&mock));
    let (out, rec) = run(&router, &req(CLAUDE), &[]).await;
    let err = out.unwrap_err();
    assert_eq!(err.class, ErrorClass::Server);
    for id in [CLAUDE, GPT, GEMINI, LLAMA] {
        assert!(err.message.contains(id), "{}", err.message);
    }
    assert_eq!(mock.lanes(), ["claude", "openai", "gemini", "llama"]);
    assert_eq!(rec.calls().len(), 4);
}

#[tokio::test]
async fn retry_after_is_honoured_on_the_same_provider() {
    let (_, mock) = MockAi::start(vec![
        ("claude", MockReply::rate_limited("1")),
        ("claude", MockReply::text("after the wait")),
    ])
    .await;
    let mut c = config(&mock);
    c.retry.attempts = 2;
    let router = Router::new(c);
    let started = Instant::now();
    let (out, rec) = run(&router, &req(CLAUDE), &[]).await;
    let out = out.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.provider, CLAUDE);
    assert_eq!(mock.lanes(), ["claude", "claude"]);
    assert!(rec.calls()[0].error.as_deref().unwrap().contains("429"));
}

#[tokio::test]
async fn a_retry_after_beyond_the_policy_moves_on_at_once() {
    let (_, mock) = MockAi::start(vec![("claude", MockReply::rate_limited("3600"))]).await;
    let mut c = config(&mock);
    c.retry.attempts = 3;
    let router = Router::new(c);
    let started = Instant::now();
    let (out, _) = run(&router, &req(CLAUDE), &[]).await;
    assert_eq!(out.unwrap().provider, GPT);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(mock.lanes(), ["claude", "openai"]);
}

#[tokio::test]
async fn an_open_breaker_skips_the_provider_until_its_cooldown_is_over() {
    let (_, mock) = MockAi::start(vec![
        ("claude", MockReply::status(500, "down")),
        ("claude", MockReply::status(500, "down")),
    ])
    .await;
    let mut c = config(&mock);
    c.breaker = BreakerConfig {
        failure_threshold: 2,
        cooldown: Duration::from_millis(100),
    };
    let router = Router::new(c);
    // Two failures (each followed by gpt answering) open claude's breaker.
    for _ in 0..2 {
        assert_eq!(
            run(&router, &req(CLAUDE), &[]).await.0.unwrap().provider,
            GPT
        );
    }
    assert_eq!(mock.lanes(), ["claude", "openai", "claude", "openai"]);
    // Open: claude is not even asked.
    let (out, rec) = run(&router, &req(CLAUDE), &[]).await;
    assert_eq!(out.unwrap().provider, GPT);
    assert_eq!(mock.lanes().len(), 5);
    assert_eq!(mock.lanes()[4], "openai");
    assert_eq!(rec.calls().len(), 1, "a skipped provider makes no call");
    // After the cooldown one trial goes through; it succeeds and closes the breaker.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        run(&router, &req(CLAUDE), &[]).await.0.unwrap().provider,
        CLAUDE
    );
    assert_eq!(
        run(&router, &req(CLAUDE), &[]).await.0.unwrap().provider,
        CLAUDE
    );
    assert_eq!(mock.lanes()[5..], ["claude", "claude"]);
}

#[tokio::test]
async fn a_failed_half_open_trial_opens_the_breaker_again() {
    let (_, mock) = MockAi::start(vec![
        ("claude", MockReply::status(500, "down")),
        ("claude", MockReply::status(500, "still down")),
    ])
    .await;
    let mut c = config(&mock);
    c.breaker = BreakerConfig {
        failure_threshold: 1,
        cooldown: Duration::from_millis(50),
    };
    let router = Router::new(c);
    assert_eq!(
        run(&router, &req(CLAUDE), &[]).await.0.unwrap().provider,
        GPT
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    // The trial fails: open again, so the next call skips claude.
    assert_eq!(
        run(&router, &req(CLAUDE), &[]).await.0.unwrap().provider,
        GPT
    );
    assert_eq!(
        run(&router, &req(CLAUDE), &[]).await.0.unwrap().provider,
        GPT
    );
    assert_eq!(
        mock.lanes(),
        ["claude", "openai", "claude", "openai", "openai"]
    );
}

#[tokio::test]
async fn a_4xx_moves_on_without_retrying_or_tripping_the_breaker() {
    let (_, mock) = MockAi::start(vec![("claude", MockReply::status(401, "bad key"))]).await;
    let mut c = config(&mock);
    c.retry.attempts = 3;
    c.breaker.failure_threshold = 1;
    let router = Router::new(c);
    assert_eq!(
        run(&router, &req(CLAUDE), &[]).await.0.unwrap().provider,
        GPT
    );
    // A 401 is the key's fault, not the provider's: the breaker stays closed.
    assert_eq!(
        run(&router, &req(CLAUDE), &[]).await.0.unwrap().provider,
        CLAUDE
    );
    assert_eq!(mock.lanes(), ["claude", "openai", "claude"]);
}

#[tokio::test]
async fn a_stream_cut_after_text_restarts_on_the_next_provider() {
    let (_, mock) = MockAi::start(vec![
        (
            "claude",
            MockReply::text("alpha beta gamma delta").cut_after(2),
        ),
        ("openai", MockReply::text("one two")),
    ])
    .await;
    let router = Router::new(config(&mock));
    let (out, rec) = run(&router, &req(CLAUDE), &[]).await;
    let out = out.unwrap();
    assert_eq!(out.provider, GPT);
    assert_eq!(out.text, "one two");
    let restarts = rec.restarts();
    assert_eq!(restarts.len(), 1, "{:?}", rec.log);
    assert_eq!(restarts[0].1, GPT);
    assert!(restarts[0].0.contains(CLAUDE), "{}", restarts[0].0);
    // The order the engine sees: claude's text, claude's failed call, restart, gpt's text.
    let kinds: Vec<String> = rec
        .log
        .iter()
        .map(|e| match e {
            Ev::Delta(d) => format!("delta:{d}"),
            Ev::Restarted(_, n) => format!("restart:{n}"),
            Ev::Call(c) => format!("call:{}:{}", c.provider, c.error.is_some()),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "delta:alpha ",
            "delta:beta ",
            &format!("call:{CLAUDE}:true"),
            &format!("restart:{GPT}"),
            "delta:one ",
            "delta:two",
            &format!("call:{GPT}:false"),
        ]
    );
    let cut = rec.calls()[0];
    assert!(
        cut.error.as_deref().unwrap().contains("cut")
            || cut.error.as_deref().unwrap().contains("ended")
    );
    // Reported input tokens are kept; the unreported output is estimated from what arrived.
    assert_eq!(cut.input_tokens, 10);
    assert_eq!(cut.output_tokens, 3, "\"alpha beta \" is 11 characters");
    assert!(cut.estimated);
}

#[tokio::test]
async fn a_retry_on_the_same_provider_after_text_also_restarts() {
    let (_, mock) = MockAi::start(vec![
        ("claude", MockReply::text("half an answer").cut_after(1)),
        ("claude", MockReply::text("whole answer")),
    ])
    .await;
    let mut c = config(&mock);
    c.retry.attempts = 2;
    let router = Router::new(c);
    let (out, rec) = run(&router, &req(CLAUDE), &[]).await;
    assert_eq!(out.unwrap().text, "whole answer");
    assert_eq!(rec.restarts().len(), 1);
    assert_eq!(rec.restarts()[0].1, CLAUDE);
}

#[tokio::test]
async fn a_stream_ending_without_its_terminal_event_is_a_network_error() {
    // A clean end of the body, but no message_stop.
    let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n\
                event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
    let (_, mock) = MockAi::start(vec![("claude", MockReply::raw_sse(body))]).await;
    let router = Router::new(only(config(&mock)));
    let (out, _) = run(&router, &req(CLAUDE), &[key("claude")]).await;
    let err = out.unwrap_err();
    assert_eq!(err.class, ErrorClass::Network, "{}", err.message);
}

#[tokio::test]
async fn a_200_that_is_not_an_event_stream_is_a_server_error() {
    // A 200 HTML page (a captive proxy, say) instead of the provider's stream.
    let app = axum::Router::new()
        .fallback(|| async { ([("content-type", "text/html")], "<html>proxy login</html>") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let router = Router::new(RouterConfig {
        retry: RetryPolicy::once(),
        ..RouterConfig::default()
    });
    let k = ProviderKey {
        base_url: Some(format!("http://{addr}")),
        ..key("openai")
    };
    let (out, _) = run(&router, &req(GPT), &[k]).await;
    let err = out.unwrap_err();
    assert_eq!(err.class, ErrorClass::Server);
    assert!(err.message.contains("proxy login"), "{}", err.message);
}

#[tokio::test]
async fn a_slow_first_token_times_out_and_falls_back() {
    let (_, mock) = MockAi::start(vec![(
        "claude",
        MockReply::text("too late").first_token_delay(Duration::from_secs(5)),
    )])
    .await;
    let mut c = config(&mock);
    c.first_token_timeout = Duration::from_millis(200);
    // Retries are allowed, but a provider that sent nothing is not tried again: the next
    // one is, at once.
    c.retry.attempts = 3;
    let router = Router::new(c);
    let started = Instant::now();
    let (out, rec) = run(&router, &req(CLAUDE), &[]).await;
    assert_eq!(out.unwrap().provider, GPT);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(mock.lanes(), ["claude", "openai"]);
    let restarts = rec.restarts();
    assert_eq!(restarts.len(), 1, "{:?}", rec.log);
    assert_eq!(restarts[0].1, GPT);
    assert!(restarts[0].0.contains("first-token"), "{}", restarts[0].0);
    assert!(rec.calls()[0]
        .error
        .as_deref()
        .unwrap()
        .contains("first-token"));
}

#[tokio::test]
async fn a_call_past_the_request_timeout_is_a_timeout() {
    let (_, mock) = MockAi::start(vec![(
        "claude",
        MockReply::text("a b c d e f g h").token_delay(Duration::from_millis(150)),
    )])
    .await;
    let mut c = only(config(&mock));
    c.request_timeout = Duration::from_millis(400);
    let router = Router::new(c);
    let (out, rec) = run(&router, &req(CLAUDE), &[key("claude")]).await;
    let err = out.unwrap_err();
    assert_eq!(err.class, ErrorClass::Timeout, "{}", err.message);
    assert!(
        !rec.deltas().is_empty(),
        "some text arrived before the timeout"
    );
    assert_eq!(rec.calls().len(), 1);
}

#[tokio::test]
async fn malformed_events_are_server_errors() {
    let (_, mock) = MockAi::start(vec![
        (
            "claude",
            MockReply::raw_sse("event: content_block_delta\ndata: {not json\n\n"),
        ),
        ("openai", MockReply::raw_sse("data: {\"choices\": [\n\n")),
        (
            "gemini",
            MockReply::raw_sse("data: <html>oops</html>\r\n\r\n"),
        ),
    ])
    .await;
    let router = Router::new(only(config(&mock)));
    for (provider, family) in [(CLAUDE, "claude"), (GPT, "openai"), (GEMINI, "gemini")] {
        let (out, _) = run(&router, &req(provider), &[key(family)]).await;
        let err = out.unwrap_err();
        assert_eq!(err.class, ErrorClass::Server, "{provider}: {}", err.message);
        assert!(err.message.contains("malformed"), "{}", err.message);
    }
}

#[tokio::test]
async fn http_statuses_and_connection_failures_map_to_error_classes() {
    let (_, mock) = MockAi::start(vec![]).await;
    let router = Router::new(only(config(&mock)));
    let cases = [
        (MockReply::status(400, "bad request"), ErrorClass::Client),
        (MockReply::status(401, "no"), ErrorClass::Client),
        (MockReply::status(403, "forbidden"), ErrorClass::Client),
        (MockReply::status(429, "slow down"), ErrorClass::RateLimited),
        (MockReply::status(500, "oops"), ErrorClass::Server),
        (MockReply::status(529, "overloaded"), ErrorClass::Server),
    ];
    for (reply, class) in cases {
        for (provider, family, lane) in [
            (CLAUDE, "claude", "claude"),
            (GEMINI, "gemini", "gemini"),
            (LLAMA, "llama", "llama"),
        ] {
            mock.push(lane, reply.clone());
            let (out, _) = run(&router, &req(provider), &[key(family)]).await;
            let err = out.unwrap_err();
            assert_eq!(err.class, class, "{provider}: {}", err.message);
        }
    }
    // The provider's own message is passed on, and Retry-After is kept.
    mock.push("openai", MockReply::rate_limited("7"));
    let (out, _) = run(&router, &req(GPT), &[key("openai")]).await;
    let err = out.unwrap_err();
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    assert!(err.message.contains("rate limited"), "{}", err.message);

    // Nothing listening: a network error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let refused = ProviderKey {
        base_url: Some(format!("http://{closed}")),
        ..key("claude")
    };
    let (out, _) = run(&router, &req(CLAUDE), &[refused]).await;
    assert_eq!(out.unwrap_err().class, ErrorClass::Network);
}

#[tokio::test]
async fn cost_is_computed_from_reported_usage_and_each_price() {
    let (_, mock) = MockAi::start(vec![
        ("claude", MockReply::status(500, "boom")),
        ("openai", MockReply::text("fine").usage(2000, 100)),
        ("claude", MockReply::text("ok").usage(1000, 500)),
    ])
    .await;
    let router = Router::new(config(&mock));
    let mut r = req(CLAUDE);
    r.prompt = "x".repeat(400); // 100 estimated tokens
    let (out, rec) = run(&router, &r, &[]).await;
    let out = out.unwrap();
    // GPT-4 Turbo: 10 $/M in, 30 $/M out.
    assert_eq!((out.input_tokens, out.output_tokens), (2000, 100));
    assert!((out.cost_usd - 0.023).abs() < 1e-12, "{}", out.cost_usd);
    assert!(!out.estimated);
    // The failed claude call is recorded with the estimated prompt and no output.
    let failed = rec.calls()[0];
    assert_eq!(failed.provider, CLAUDE);
    assert_eq!((failed.input_tokens, failed.output_tokens), (100, 0));
    assert!(failed.estimated);
    assert!(
        (failed.cost_usd - 0.0003).abs() < 1e-12,
        "{}",
        failed.cost_usd
    );
    // Claude 3.5 Sonnet: 3 $/M in, 15 $/M out.
    let (out, rec) = run(&router, &r, &[]).await;
    let out = out.unwrap();
    assert_eq!(out.provider, CLAUDE);
    assert!((out.cost_usd - 0.0105).abs() < 1e-12, "{}", out.cost_usd);
    assert_eq!(rec.calls()[0].cost_usd, out.cost_usd);
}

#[tokio::test]
async fn missing_usage_is_estimated_and_flagged_on_every_wire() {
    let (_, mock) = MockAi::start(vec![]).await;
    let router = Router::new(only(config(&mock)));
    let mut r = req(CLAUDE);
    r.prompt = "p".repeat(40); // 10 tokens
    for (provider, family) in [
        (CLAUDE, "claude"),
        (GPT, "openai"),
        (GEMINI, "gemini"),
        (LLAMA, "llama"),
    ] {
        r.provider = Some(provider.into());
        mock.push(family, MockReply::text("abcd efgh ijkl mnop").no_usage());
        let (out, rec) = run(&router, &r, &[key(family)]).await;
        let out = out.unwrap_or_else(|e| panic!("{provider}: {e}"));
        assert_eq!(out.text, "abcd efgh ijkl mnop");
        assert_eq!((out.input_tokens, out.output_tokens), (10, 5), "{provider}");
        assert!(out.estimated, "{provider}");
        assert!(rec.calls()[0].estimated);

        mock.push(family, MockReply::text("abcd efgh").usage(7, 2));
        let (out, _) = run(&router, &r, &[key(family)]).await;
        let out = out.unwrap();
        assert_eq!((out.input_tokens, out.output_tokens), (7, 2), "{provider}");
        assert!(!out.estimated, "{provider}");
    }
}

#[tokio::test]
async fn requests_use_each_providers_wire_format() {
    let (_, mock) = MockAi::start(vec![]).await;
    let router = Router::new(only(config(&mock)));
    let r = AiRequest {
        system: Some("Be brief.".into()),
        prompt: "Hello".into(),
        temperature: Some(0.5),
        max_tokens: Some(100),
        ..AiRequest::default()
    };
    for (provider, family) in [
        (CLAUDE, "claude"),
        (GPT, "openai"),
        (GEMINI, "gemini"),
        (LLAMA, "llama"),
    ] {
        let r = AiRequest {
            provider: Some(family.into()),
            ..r.clone()
        };
        let (out, _) = run(&router, &r, &[key(family)]).await;
        assert_eq!(out.unwrap().provider, provider);
    }
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 4);

    let a = &reqs[0];
    assert_eq!(
        (a.wire, a.path.as_str()),
        (Wire::Anthropic, "/claude/v1/messages")
    );
    assert_eq!(a.headers["x-api-key"], "key-claude");
    assert_eq!(a.headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        a.body,
        json!({"model": "claude-3-5-sonnet-20241022", "max_tokens": 100, "stream": true,
               "system": "Be brief.", "temperature": 0.5,
               "messages": [{"role": "user", "content": "Hello"}]})
    );

    let o = &reqs[1];
    assert_eq!(
        (o.wire, o.path.as_str()),
        (Wire::OpenAi, "/openai/v1/chat/completions")
    );
    assert_eq!(o.headers["authorization"], "Bearer key-openai");
    assert_eq!(
        o.body,
        json!({"model": "gpt-4-turbo", "stream": true, "stream_options": {"include_usage": true},
               "temperature": 0.5, "max_tokens": 100,
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello"}]})
    );

    let g = &reqs[2];
    assert_eq!(g.wire, Wire::Gemini);
    assert_eq!(
        g.path,
        "/gemini/v1beta/models/gemini-1.5-pro:streamGenerateContent"
    );
    assert_eq!(g.query.as_deref(), Some("alt=sse"));
    assert_eq!(g.headers["x-goog-api-key"], "key-gemini");
    assert_eq!(
        g.body,
        json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
               "systemInstruction": {"parts": [{"text": "Be brief."}]},
               "generationConfig": {"temperature": 0.5, "maxOutputTokens": 100}})
    );

    let l = &reqs[3];
    assert_eq!(
        (l.wire, l.path.as_str()),
        (Wire::OpenAi, "/llama/v1/chat/completions")
    );
    assert_eq!(l.headers["authorization"], "Bearer key-llama");
    assert_eq!(l.body["model"], "llama3-70b-8192");
}

#[tokio::test]
async fn a_model_override_is_sent_on_the_wire_and_workspace_keys_come_first() {
    let (_, mock) = MockAi::start(vec![]).await;
    let router = Router::new(config(&mock));
    let r = AiRequest {
        prompt: "Hi".into(),
        model: Some("claude-3-opus-20240229".into()),
        ..AiRequest::default()
    };
    let workspace = ProviderKey {
        api_key: "workspace-claude".into(),
        ..key("claude")
    };
    let (out, _) = run(&router, &r, &[workspace]).await;
    let out = out.unwrap();
    assert_eq!(
        (out.provider.as_str(), out.model.as_str()),
        (CLAUDE, "claude-3-opus-20240229")
    );
    let sent = &mock.requests()[0];
    assert_eq!(sent.body["model"], "claude-3-opus-20240229");
    assert_eq!(sent.headers["x-api-key"], "workspace-claude");
}

#[tokio::test]
async fn json_output_is_unfenced_parsed_and_repaired_once() {
    let (_, mock) = MockAi::start(vec![
        ("claude", MockReply::text("```json\n{\"a\": 1}\n```")),
        ("claude", MockReply::text("Sure! {\"b\": oops").usage(10, 4)),
        ("claude", MockReply::text("{\"b\": 2}").usage(30, 3)),
        ("claude", MockReply::text("not json")),
        ("claude", MockReply::text("still not json")),
    ])
    .await;
    let router = Router::new(only(config(&mock)));
    let mut r = req(CLAUDE);
    r.output_format = OutputFormat::Json;
    let keys = [key("claude")];

    let (out, _) = run(&router, &r, &keys).await;
    let out = out.unwrap();
    assert_eq!(out.json, Some(json!({"a": 1})));
    assert_eq!(out.text, "{\"a\": 1}");
    let first = &mock.requests()[0];
    assert!(first.body["system"]
        .as_str()
        .unwrap()
        .contains("only valid JSON"));

    let (out, rec) = run(&router, &r, &keys).await;
    let out = out.unwrap();
    assert_eq!(out.json, Some(json!({"b": 2})));
    assert_eq!(
        (out.input_tokens, out.output_tokens),
        (40, 7),
        "both calls counted"
    );
    assert_eq!(rec.calls().len(), 2);
    assert_eq!(
        rec.deltas(),
        "Sure! {\"b\": oops",
        "the repair call is not streamed"
    );
    let repair = &mock.requests()[2];
    assert!(repair.body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("Sure! {\"b\": oops"));
    assert_eq!(repair.body["temperature"], 0.0);

    let (out, rec) = run(&router, &r, &keys).await;
    let err = out.unwrap_err();
    assert_eq!(err.class, ErrorClass::Invalid);
    assert_eq!(rec.calls().len(), 2, "one repair call, no more");
    assert_eq!(mock.requests().len(), 5);
}

#[tokio::test]
async fn cancellation_mid_stream_stops_at_once() {
    let (_, mock) = MockAi::start(vec![(
        "claude",
        MockReply::text("one two three four five six").token_delay(Duration::from_secs(2)),
    )])
    .await;
    let router = Router::new(config(&mock));
    let cancel = CancellationToken::new();
    let mut rec = Rec {
        cancel_on_delta: Some(cancel.clone()),
        ..Rec::default()
    };
    let started = Instant::now();
    let out = router.complete(&req(CLAUDE), &[], &mut rec, &cancel).await;
    let err = out.unwrap_err();
    assert_eq!(
        (err.class, err.message.as_str()),
        (ErrorClass::Refused, "cancelled")
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rec.deltas(), "one ");
    assert!(rec.restarts().is_empty());
    let calls = rec.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].error.as_deref(), Some("cancelled"));
    assert_eq!(mock.lanes(), ["claude"], "no fallback after cancellation");
}

#[tokio::test]
async fn cancellation_during_a_retry_wait_stops_at_once() {
    let (_, mock) = MockAi::start(vec![("claude", MockReply::rate_limited("30"))]).await;
    let mut c = config(&mock);
    c.retry.attempts = 2;
    let router = Router::new(c);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.cancel();
    });
    let started = Instant::now();
    let mut rec = Rec::default();
    let err = router
        .complete(&req(CLAUDE), &[], &mut rec, &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.message, "cancelled");
    assert!(started.elapsed() < Duration::from_secs(5));
}
