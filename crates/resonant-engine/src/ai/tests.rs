//! Unit tests of the router's parts that need no network: selection, the demo provider, the
//! breaker, the config file, JSON and Retry-After parsing. The HTTP side is in
//! tests/ai_router.rs, against a mock provider server.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::breaker::Breakers;
use super::*;

fn key(family: &str) -> ProviderKey {
    ProviderKey::new(family, format!("key-{family}"), None)
}

fn all_keys() -> Vec<ProviderKey> {
    ["claude", "openai", "gemini", "llama"]
        .iter()
        .map(|f| key(f))
        .collect()
}

fn ids(chain: &[PlannedCall]) -> Vec<&str> {
    chain.iter().map(|c| c.spec.id.as_str()).collect()
}

fn router() -> Router {
    Router::new(RouterConfig {
        demo_delay: Duration::ZERO,
        ..RouterConfig::default()
    })
}

#[derive(Default)]
struct Rec {
    deltas: Vec<String>,
    calls: Vec<CallRecord>,
    restarts: usize,
}

impl AiEvents for Rec {
    fn delta(&mut self, text: &str) {
        self.deltas.push(text.into());
    }
    fn restarted(&mut self, _: &str, _: &str) {
        self.restarts += 1;
    }
    fn call_finished(&mut self, call: &CallRecord) {
        self.calls.push(call.clone());
    }
}

#[test]
fn priority_ranks_as_the_seed_does() {
    let r = router();
    let keys = all_keys();
    let mut req = AiRequest {
        prompt: "hi".into(),
        ..AiRequest::default()
    };
    req.priority = Priority::Speed;
    assert_eq!(r.plan(&req, &keys).unwrap()[0].spec.id, "llama-3-70b");
    req.priority = Priority::Cost;
    assert_eq!(r.plan(&req, &keys).unwrap()[0].spec.id, "llama-3-70b");
    // The seed's quality score is reliability / price: the cheap reliable one wins.
    req.priority = Priority::Quality;
    assert_eq!(r.plan(&req, &keys).unwrap()[0].spec.id, "llama-3-70b");
    // The chain is the selected provider then its seed fallback chain.
    assert_eq!(
        ids(&r.plan(&req, &keys).unwrap()),
        [
            "llama-3-70b",
            "gemini-1.5-pro",
            "claude-3-5-sonnet",
            "gpt-4-turbo"
        ]
    );
}

#[test]
fn context_window_and_strengths_filter_the_candidates() {
    let r = router();
    let keys = all_keys();
    // ~10k prompt tokens + 4096 reserved for output: llama's 8192 is too small.
    let big = AiRequest {
        prompt: "x".repeat(40_000),
        priority: Priority::Speed,
        ..AiRequest::default()
    };
    let chain = r.plan(&big, &keys).unwrap();
    assert_eq!(chain[0].spec.id, "gemini-1.5-pro");
    assert!(!ids(&chain).contains(&"llama-3-70b"), "{:?}", ids(&chain));
    // 500k tokens: only gemini's million fits.
    let huge = AiRequest {
        prompt: "x".repeat(2_000_000),
        ..AiRequest::default()
    };
    assert_eq!(ids(&r.plan(&huge, &keys).unwrap()), ["gemini-1.5-pro"]);
    let too_big = AiRequest {
        prompt: "x".repeat(5_000_000),
        ..AiRequest::default()
    };
    assert_eq!(
        r.plan(&too_big, &keys).unwrap_err().class,
        ErrorClass::Refused
    );
    // max_tokens counts too.
    let long_answer = AiRequest {
        prompt: "hi".into(),
        max_tokens: Some(10_000),
        priority: Priority::Speed,
        ..AiRequest::default()
    };
    assert_eq!(
        r.plan(&long_answer, &keys).unwrap()[0].spec.id,
        "gemini-1.5-pro"
    );

    let coding = AiRequest {
        prompt: "hi".into(),
        priority: Priority::Cost,
        required_strengths: vec!["coding".into()],
        ..AiRequest::default()
    };
    assert_eq!(
        r.plan(&coding, &keys).unwrap()[0].spec.id,
        "claude-3-5-sonnet"
    );
    // Strengths nobody has are a preference, not a failure.
    let unknown = AiRequest {
        required_strengths: vec!["telepathy".into()],
        ..coding
    };
    assert_eq!(r.plan(&unknown, &keys).unwrap()[0].spec.id, "llama-3-70b");
}

#[test]
fn only_keyed_providers_are_candidates() {
    let r = router();
    let req = AiRequest {
        prompt: "hi".into(),
        ..AiRequest::default()
    };
    let chain = r.plan(&req, &[key("openai"), key("claude")]).unwrap();
    assert_eq!(ids(&chain), ["claude-3-5-sonnet", "gpt-4-turbo"]);
    // Empty keys do not count.
    let blank = ProviderKey {
        api_key: " ".into(),
        ..key("claude")
    };
    assert_eq!(
        ids(&r.plan(&req, &[blank, key("openai")]).unwrap()),
        ["gpt-4-turbo"]
    );
    // Server keys are used when the workspace has none; the workspace's key wins.
    let server = Router::new(RouterConfig {
        server_keys: vec![key("gemini"), key("claude")],
        ..RouterConfig::default()
    });
    let mine = ProviderKey {
        api_key: "mine".into(),
        ..key("claude")
    };
    let chain = server.plan(&req, &[mine]).unwrap();
    assert_eq!(ids(&chain), ["gemini-1.5-pro", "claude-3-5-sonnet"]);
    assert_eq!(chain[1].key.as_ref().unwrap().api_key, "mine");
    assert_eq!(chain[0].key.as_ref().unwrap().api_key, "key-gemini");
}

#[test]
fn overrides_go_first() {
    let r = router();
    let keys = all_keys();
    let by = |provider: Option<&str>, model: Option<&str>| AiRequest {
        prompt: "hi".into(),
        provider: provider.map(Into::into),
        model: model.map(Into::into),
        ..AiRequest::default()
    };
    let chain = r.plan(&by(Some("gpt-4-turbo"), None), &keys).unwrap();
    assert_eq!(
        ids(&chain),
        [
            "gpt-4-turbo",
            "claude-3-5-sonnet",
            "gemini-1.5-pro",
            "llama-3-70b"
        ]
    );
    assert_eq!(
        r.plan(&by(Some("gemini"), None), &keys).unwrap()[0].spec.id,
        "gemini-1.5-pro"
    );
    // A model of the table selects its provider; another model goes to its family's provider.
    let chain = r
        .plan(&by(None, Some("claude-3-5-sonnet-20241022")), &keys)
        .unwrap();
    assert_eq!(chain[0].spec.id, "claude-3-5-sonnet");
    let chain = r.plan(&by(Some("openai"), Some("gpt-4o")), &keys).unwrap();
    assert_eq!(
        (chain[0].spec.id.as_str(), chain[0].model.as_str()),
        ("gpt-4-turbo", "gpt-4o")
    );
    assert_eq!(
        chain[1].model, "claude-3-5-sonnet-20241022",
        "fallbacks use their own models"
    );
    let chain = r.plan(&by(None, Some("gemini-2.0-flash")), &keys).unwrap();
    assert_eq!(
        (chain[0].spec.id.as_str(), chain[0].model.as_str()),
        ("gemini-1.5-pro", "gemini-2.0-flash")
    );
    // Unknown names are the block's mistake.
    assert_eq!(
        r.plan(&by(Some("mistral"), None), &keys).unwrap_err().class,
        ErrorClass::Invalid
    );
    assert_eq!(
        r.plan(&by(None, Some("mystery-7b")), &keys)
            .unwrap_err()
            .class,
        ErrorClass::Invalid
    );
    // A named provider without a key: the normal selection instead.
    let chain = r.plan(&by(Some("claude"), None), &[key("openai")]).unwrap();
    assert_eq!(ids(&chain), ["gpt-4-turbo"]);
}

#[test]
fn demo_only_when_asked_for_or_when_nothing_has_a_key() {
    let r = router();
    let req = AiRequest {
        prompt: "hi".into(),
        ..AiRequest::default()
    };
    assert_eq!(ids(&r.plan(&req, &[]).unwrap()), ["demo"]);
    assert!(!ids(&r.plan(&req, &all_keys()).unwrap()).contains(&"demo"));
    let asked = AiRequest {
        provider: Some("demo".into()),
        ..req.clone()
    };
    assert_eq!(ids(&r.plan(&asked, &all_keys()).unwrap()), ["demo"]);
    // Without a demo provider in the table and no key: refused.
    let mut c = RouterConfig::default();
    c.providers.retain(|p| p.kind != ProviderKind::Demo);
    assert_eq!(
        Router::new(c).plan(&req, &[]).unwrap_err().class,
        ErrorClass::Refused
    );
}

#[tokio::test]
async fn demo_is_deterministic_labelled_and_free() {
    let r = router();
    let req = AiRequest {
        system: Some("You write copy.".into()),
        prompt: "Describe our new product".into(),
        ..AiRequest::default()
    };
    let cancel = CancellationToken::new();
    let mut rec = Rec::default();
    let a = r.complete(&req, &[], &mut rec, &cancel).await.unwrap();
    let b = r
        .complete(&req, &[], &mut Rec::default(), &cancel)
        .await
        .unwrap();
    assert_eq!(a, b);
    assert!(a.demo);
    assert!(a.text.starts_with("[demo] "), "{}", a.text);
    let words = a.text.split_whitespace().count() - 1;
    assert!((40..=80).contains(&words), "{words}");
    assert_eq!(rec.deltas.concat(), a.text, "streamed word by word");
    assert_eq!(rec.deltas.len(), words + 1);
    assert_eq!(
        (a.provider.as_str(), a.cost_usd, a.estimated),
        ("demo", 0.0, false)
    );
    assert_eq!(a.output_tokens, estimate_tokens(&a.text));
    assert_eq!(
        a.input_tokens,
        estimate_tokens("You write copy.Describe our new product")
    );
    assert_eq!(rec.calls.len(), 1);
    assert_eq!(rec.calls[0].cost_usd, 0.0);
    let other = AiRequest {
        prompt: "Describe our old product".into(),
        ..req.clone()
    };
    let c = r
        .complete(&other, &[], &mut Rec::default(), &cancel)
        .await
        .unwrap();
    assert_ne!(c.text, a.text);

    let json_req = AiRequest {
        output_format: OutputFormat::Json,
        ..req
    };
    let j = r
        .complete(&json_req, &[], &mut Rec::default(), &cancel)
        .await
        .unwrap();
    let v = j.json.unwrap();
    assert_eq!(v["demo"], json!(true));
    assert!(v["text"].as_str().unwrap().starts_with("[demo] "));
}

#[tokio::test]
async fn demo_streams_with_its_delay_and_stops_when_cancelled() {
    let r = Router::new(RouterConfig {
        demo_delay: Duration::from_millis(5),
        ..RouterConfig::default()
    });
    let req = AiRequest {
        prompt: "hi".into(),
        ..AiRequest::default()
    };
    let started = std::time::Instant::now();
    let out = r
        .complete(&req, &[], &mut Rec::default(), &CancellationToken::new())
        .await
        .unwrap();
    let gaps = out.text.split(' ').count() as u32 - 1;
    assert!(started.elapsed() >= Duration::from_millis(5) * gaps);

    struct CancelAfterTwo(CancellationToken, usize);
    impl AiEvents for CancelAfterTwo {
        fn delta(&mut self, _: &str) {
            self.1 += 1;
            if self.1 == 2 {
                self.0.cancel();
            }
        }
        fn restarted(&mut self, _: &str, _: &str) {}
        fn call_finished(&mut self, _: &CallRecord) {}
    }
    let cancel = CancellationToken::new();
    let mut ev = CancelAfterTwo(cancel.clone(), 0);
    let err = r.complete(&req, &[], &mut ev, &cancel).await.unwrap_err();
    assert_eq!(
        (err.class, err.message.as_str()),
        (ErrorClass::Refused, "cancelled")
    );
    assert_eq!(ev.1, 2);
}

#[test]
fn breaker_opens_after_the_threshold_and_lets_one_trial_through() {
    let b = Breakers::new(BreakerConfig {
        failure_threshold: 2,
        cooldown: Duration::from_millis(20),
    });
    assert!(b.try_acquire("p"));
    b.failure("p");
    assert!(b.try_acquire("p"), "one failure is under the threshold");
    b.success("p");
    b.failure("p");
    assert!(b.try_acquire("p"), "a success resets the count");
    b.failure("p");
    assert!(b.is_open("p"));
    assert!(!b.try_acquire("p"));
    assert!(b.try_acquire("q"), "breakers are per key");
    std::thread::sleep(Duration::from_millis(30));
    assert!(b.try_acquire("p"), "half-open: one trial");
    assert!(!b.try_acquire("p"), "only one");
    b.failure("p");
    assert!(!b.try_acquire("p"), "a failed trial opens it again");
    std::thread::sleep(Duration::from_millis(30));
    assert!(b.try_acquire("p"));
    b.release("p");
    assert!(b.try_acquire("p"), "a cancelled trial is given back");
    b.success("p");
    assert!(!b.is_open("p"));
    assert!(b.try_acquire("p") && b.try_acquire("p"));
}

#[test]
fn retry_after_reads_seconds_and_dates() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after(" 1.5 "),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse_retry_after("-3"), None);
    assert_eq!(parse_retry_after("soon"), None);
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO),
        "a past date means now"
    );
    let later = std::time::SystemTime::now() + Duration::from_secs(120);
    let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
    assert!(
        d > Duration::from_secs(110) && d <= Duration::from_secs(120),
        "{d:?}"
    );
}

#[test]
fn json_output_is_found_in_fences_and_prose() {
    let parse = |s: &str| parse_json_output(s).map(|(_, v)| v);
    assert_eq!(parse("{\"a\":1}"), Some(json!({"a": 1})));
    assert_eq!(parse("```json\n{\"a\": 1}\n```"), Some(json!({"a": 1})));
    assert_eq!(parse("```\n[1, 2]\n```\n"), Some(json!([1, 2])));
    assert_eq!(
        parse("Here you go:\n```json\n{\"a\": 1}\n```\nEnjoy"),
        Some(json!({"a": 1}))
    );
    assert_eq!(
        parse("Result: {\"a\": {\"b\": 2}} as asked"),
        Some(json!({"a": {"b": 2}}))
    );
    assert_eq!(parse("\"just a string\""), Some(json!("just a string")));
    assert_eq!(parse("not json"), None);
    assert_eq!(parse("{\"a\": "), None);
    assert_eq!(
        parse_json_output("```json\n{\"a\": 1}\n```").unwrap().0,
        "{\"a\": 1}"
    );
}

#[test]
fn cost_uses_both_prices() {
    let table = default_providers();
    let claude = table.iter().find(|p| p.id == "claude-3-5-sonnet").unwrap();
    assert!((claude.cost(1_000_000, 1_000_000) - 18.0).abs() < 1e-9);
    assert!((claude.cost(1000, 500) - 0.0105).abs() < 1e-12);
    assert_eq!(estimate_tokens(""), 0);
    assert_eq!(estimate_tokens("abcde"), 2);
    assert_eq!(estimate_tokens("ééé"), 1, "characters, not bytes");
}

#[test]
fn the_config_file_changes_adds_and_removes_providers() {
    let c = RouterConfig::from_json(&json!({
        "providers": [
            {"id": "claude-3-5-sonnet", "model": "claude-3-5-sonnet-latest", "outputPricePerM": 16},
            {"id": "llama-3-70b", "disabled": true},
            {"id": "mixtral", "kind": "openai-compatible", "family": "llama", "model": "mixtral-8x7b",
             "inputPricePerM": 0.24, "outputPricePerM": 0.24, "maxContextTokens": 32768,
             "baseUrl": "https://api.groq.com/openai", "strengths": ["bulk"], "latencyMs": 300}
        ],
        "fallback": {"mixtral": ["gemini-1.5-pro"]},
        "serverKeys": [{"family": "claude", "apiKey": "sk"}],
        "demoDelayMs": 0,
        "breaker": {"failureThreshold": 3, "cooldownMs": 1000},
        "retry": {"attempts": 2},
        "requestTimeoutMs": 5000,
        "firstTokenTimeoutMs": 1000
    }))
    .unwrap();
    let claude = c
        .providers
        .iter()
        .find(|p| p.id == "claude-3-5-sonnet")
        .unwrap();
    assert_eq!(claude.model, "claude-3-5-sonnet-latest");
    assert_eq!(
        (claude.input_price_per_m, claude.output_price_per_m),
        (3.0, 16.0)
    );
    assert_eq!(
        claude.base_url, "https://api.anthropic.com",
        "untouched fields keep the seed's values"
    );
    assert!(!c.providers.iter().any(|p| p.id == "llama-3-70b"));
    assert!(!c.fallback["claude-3-5-sonnet"].contains(&"llama-3-70b".to_string()));
    let mixtral = c.providers.iter().find(|p| p.id == "mixtral").unwrap();
    assert_eq!(
        (mixtral.name.as_str(), mixtral.reliability),
        ("mixtral", 1.0)
    );
    assert_eq!(c.fallback["mixtral"], ["gemini-1.5-pro"]);
    assert_eq!(
        (
            c.server_keys[0].provider.as_str(),
            c.server_keys[0].api_key.as_str()
        ),
        ("claude", "sk")
    );
    assert_eq!(c.demo_delay, Duration::ZERO);
    assert_eq!(c.breaker.failure_threshold, 3);
    assert_eq!(c.breaker.cooldown, Duration::from_secs(1));
    assert_eq!(c.retry.attempts, 2);
    assert_eq!(c.request_timeout, Duration::from_secs(5));

    // Defaults: the seed's table, chains and the demo provider.
    let d = RouterConfig::from_json(&json!({})).unwrap();
    assert_eq!(d.providers, default_providers());
    assert_eq!(d.fallback, default_fallback());
    assert!(d
        .providers
        .iter()
        .any(|p| p.id == DEMO_ID && p.input_price_per_m == 0.0));

    for bad in [
        json!({"providers": [{"id": "x", "kind": "openai-compatible", "model": "m", "inputPricePerM": 1, "outputPricePerM": 1, "maxContextTokens": 10}]}),
        json!({"providers": [{"id": "x", "kind": "openai", "model": "m"}]}),
        json!({"providers": [{"id": "gpt-4-turbo", "inputPricePerM": -1}]}),
        json!({"providers": [{"id": "gpt-4-turbo", "colour": "red"}]}),
        json!({"fallback": {"gpt-4-turbo": ["nope"]}}),
        json!({"retry": {"attempts": 0}}),
        json!({"breaker": {"failureThreshold": 0}}),
        json!({"unknown": 1}),
    ] {
        assert!(RouterConfig::from_json(&bad).is_err(), "{bad}");
    }
}

#[test]
fn keys_are_not_printed() {
    let k = key("claude");
    assert!(!format!("{k:?}").contains("key-claude"));
}

#[test]
fn a_workspaces_provider_priorities_order_the_chain() {
    let r = router();
    let with = |family: &str, priority: i64, cap: Option<i64>| ProviderKey {
        priority,
        max_tokens_per_request: cap,
        ..key(family)
    };
    let req = AiRequest {
        prompt: "hi".into(),
        ..AiRequest::default()
    };
    // Unordered (all 0): the block's ranking and the seed's chain, as before.
    assert_eq!(r.plan(&req, &all_keys()).unwrap()[0].spec.id, "llama-3-70b");
    // Ordered: lowest number first, and the chain follows the order.
    let keys = [
        with("llama", 3, None),
        with("claude", 1, None),
        with("openai", 2, None),
    ];
    assert_eq!(
        ids(&r.plan(&req, &keys).unwrap()),
        ["claude-3-5-sonnet", "gpt-4-turbo", "llama-3-70b"]
    );
}

#[test]
fn max_tokens_per_request_lowers_the_answer_or_skips_the_provider() {
    let r = router();
    let capped = |family: &str, cap: i64| ProviderKey {
        max_tokens_per_request: Some(cap),
        ..key(family)
    };
    // ~250 tokens of prompt: a 1000-token cap leaves ~750 for the answer.
    let req = AiRequest {
        prompt: "x".repeat(1000),
        max_tokens: Some(4000),
        ..AiRequest::default()
    };
    let chain = r.plan(&req, &[capped("claude", 1000)]).unwrap();
    assert_eq!(ids(&chain), ["claude-3-5-sonnet"]);
    let sent = chain[0].max_tokens.unwrap();
    assert!((700..=760).contains(&sent), "{sent}");
    // Uncapped providers send the block's own.
    let chain = r.plan(&req, &[key("openai")]).unwrap();
    assert_eq!(chain[0].max_tokens, Some(4000));
    // A cap the prompt alone fills: that provider is no candidate; none left is a refusal
    // that names the setting.
    let chain = r
        .plan(&req, &[capped("claude", 200), key("openai")])
        .unwrap();
    assert_eq!(ids(&chain), ["gpt-4-turbo"]);
    let e = r.plan(&req, &[capped("claude", 200)]).unwrap_err();
    assert_eq!(e.class, ErrorClass::Refused);
    assert!(e.message.contains("maxTokensPerRequest"), "{}", e.message);
}
