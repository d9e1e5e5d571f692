//! The demo provider: no network and no key. Its text is derived from the prompt (the same
//! request always gets the same words), starts with "[demo] " so that it is never mistaken for
//! a model's answer, and is streamed word by word with the configured delay. The router calls
//! [`run`] instead of making an HTTP call, never uses it as a fallback, and chooses it only
//! when asked for or when no provider has a key.

use std::time::Duration;

use eventsource_stream::Event;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Family, Seed};
use crate::ai::wire::{self, Endpoint, Progress, WireRequest};
use crate::ai::{estimate_tokens, AiEvents, CallRecord, Done, PlannedCall};
use crate::retry::BlockError;

/// The demo provider's id and family.
pub const DEMO_ID: &str = "demo";

pub(crate) struct Demo;

impl Family for Demo {
    fn key_family(&self) -> &'static str {
        DEMO_ID
    }

    fn base_url(&self) -> Option<&'static str> {
        Some("")
    }

    fn seed(&self) -> Seed {
        Seed {
            id: DEMO_ID,
            name: "Demo (offline, no key)",
            model: "demo",
            prices: (0.0, 0.0),
            max_context_tokens: u32::MAX as u64,
            strengths: &[],
            latency_ms: 0,
            reliability: 1.0,
            base_url: "",
        }
    }

    fn needs_key(&self) -> bool {
        false
    }

    fn build_request(
        &self,
        _client: &reqwest::Client,
        _endpoint: &Endpoint<'_>,
        _req: &WireRequest<'_>,
    ) -> reqwest::RequestBuilder {
        unreachable!("the demo provider makes no HTTP calls")
    }

    fn handle_event(
        &self,
        _event: &Event,
        _p: &mut Progress,
    ) -> Result<Option<String>, BlockError> {
        Ok(None)
    }
}

const WORDS: &[&str] = &[
    "workflow",
    "signal",
    "draft",
    "insight",
    "pattern",
    "context",
    "summary",
    "idea",
    "outline",
    "detail",
    "theme",
    "audience",
    "example",
    "structure",
    "question",
    "answer",
    "clear",
    "concise",
    "thoughtful",
    "practical",
    "bold",
    "careful",
    "fresh",
    "steady",
    "explores",
    "connects",
    "highlights",
    "suggests",
    "shapes",
    "reviews",
    "balances",
    "frames",
    "the",
    "a",
    "each",
    "every",
    "this",
    "our",
    "your",
    "one",
    "with",
    "through",
    "around",
    "beyond",
    "within",
    "across",
    "for",
    "into",
    "team",
    "reader",
    "project",
    "story",
    "plan",
    "method",
    "result",
    "goal",
    "quickly",
    "gently",
    "openly",
    "simply",
    "boldly",
    "neatly",
    "calmly",
    "briefly",
];

/// The demo text for a request (system prompt and prompt), always the same for the same input.
pub(crate) fn text(system: Option<&str>, prompt: &str) -> String {
    let mut seed = Sha256::new();
    seed.update(system.unwrap_or("").as_bytes());
    seed.update([0]);
    seed.update(prompt.as_bytes());
    let mut bytes: Vec<u8> = seed.finalize().to_vec();
    let count = 40 + (bytes[0] as usize % 41);
    let mut pos = 1;
    let mut out = String::from("[demo]");
    let mut sentence_left = 0;
    for _ in 0..count {
        if pos >= bytes.len() {
            bytes = Sha256::digest(&bytes).to_vec();
            pos = 0;
        }
        let b = bytes[pos];
        pos += 1;
        let word = WORDS[b as usize % WORDS.len()];
        out.push(' ');
        if sentence_left == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
            sentence_left = 6 + (b as usize >> 6) * 2;
        } else {
            out.push_str(word);
        }
        sentence_left -= 1;
        if sentence_left == 0 {
            out.push('.');
        }
    }
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// One demo "call": streams the text, reports exact usage at no cost.
pub(crate) async fn run(
    call: &PlannedCall,
    wreq: &WireRequest<'_>,
    delay: Duration,
    events: &mut dyn AiEvents,
    mut emitted: Option<&mut bool>,
    cancel: &CancellationToken,
) -> Result<Done, BlockError> {
    let plain = text(wreq.system, wreq.prompt);
    let full = if wreq.json {
        serde_json::json!({"demo": true, "text": plain}).to_string()
    } else {
        plain
    };
    let mut sent = wire::system_text(wreq).unwrap_or_default();
    sent.push_str(wreq.prompt);
    let input_tokens = estimate_tokens(&sent);
    let mut streamed = String::new();
    let mut result = Ok(());
    for (i, piece) in full.split_inclusive(' ').enumerate() {
        if i > 0 && !delay.is_zero() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => { result = Err(wire::cancelled()); break; }
                _ = tokio::time::sleep(delay) => {}
            }
        } else if cancel.is_cancelled() {
            result = Err(wire::cancelled());
            break;
        }
        streamed.push_str(piece);
        if let Some(e) = emitted.as_deref_mut() {
            events.delta(piece);
            *e = true;
        }
    }
    let output_tokens = estimate_tokens(&streamed);
    events.call_finished(&CallRecord {
        provider: call.spec.id.clone(),
        model: call.model.clone(),
        input_tokens,
        output_tokens,
        // The demo's counts are its own definition of a token: exact, not estimated.
        estimated: false,
        cost_usd: 0.0,
        error: result.as_ref().err().map(|e| e.message.clone()),
    });
    result.map(|()| Done {
        text: streamed,
        input_tokens,
        output_tokens,
        estimated: false,
        cost_usd: 0.0,
    })
}
