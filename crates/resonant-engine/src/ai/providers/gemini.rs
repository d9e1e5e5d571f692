//! Google Gemini (`POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`), key
//! family "gemini".

use eventsource_stream::Event;
use serde_json::{json, Value};

use super::{Family, Seed, ServerKey};
use crate::ai::wire::{parse, system_text, u64_at, Endpoint, Progress, WireRequest};
use crate::retry::{BlockError, ErrorClass};

pub(crate) struct Gemini;

static SERVER_KEY: ServerKey = ServerKey {
    api_key_flag: "gemini-api-key",
    api_key_env: "GEMINI_API_KEY",
    api_key_help: "Server-wide Google Gemini key",
    base_url_flag: "gemini-base-url",
    base_url_env: "GEMINI_BASE_URL",
    base_url_help: "Gemini API base URL",
};

impl Family for Gemini {
    fn key_family(&self) -> &'static str {
        "gemini"
    }

    fn base_url(&self) -> Option<&'static str> {
        Some("https://generativelanguage.googleapis.com")
    }

    /// Gemini 1.5 Pro at its list prices for prompts up to 128k: 1.25 / 5 USD per million
    /// input / output tokens.
    fn seed(&self) -> Seed {
        Seed {
            id: "gemini-1.5-pro",
            name: "Gemini 1.5 Pro",
            model: "gemini-1.5-pro",
            prices: (1.25, 5.0),
            max_context_tokens: 1_000_000,
            strengths: &["long-context", "research", "multimodal"],
            latency_ms: 600,
            reliability: 0.97,
            base_url: "",
        }
    }

    fn model_prefixes(&self) -> &'static [&'static str] {
        &["gemini"]
    }

    fn server_key(&self) -> Option<&'static ServerKey> {
        Some(&SERVER_KEY)
    }

    fn build_request(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint<'_>,
        req: &WireRequest<'_>,
    ) -> reqwest::RequestBuilder {
        let base = endpoint.base_url.trim_end_matches('/');
        let mut generation = serde_json::Map::new();
        if let Some(t) = req.temperature {
            generation.insert("temperature".into(), json!(t));
        }
        if let Some(m) = req.max_tokens {
            generation.insert("maxOutputTokens".into(), json!(m));
        }
        if req.json {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        let mut body = json!({
            "contents": [{"role": "user", "parts": [{"text": req.prompt}]}],
        });
        if let Some(s) = system_text(req) {
            body["systemInstruction"] = json!({"parts": [{"text": s}]});
        }
        if !generation.is_empty() {
            body["generationConfig"] = Value::Object(generation);
        }
        client
            .post(format!(
                "{base}/v1beta/models/{}:streamGenerateContent?alt=sse",
                req.model
            ))
            .header("x-goog-api-key", endpoint.api_key)
            .header("accept", "text/event-stream")
            .json(&body)
    }

    /// `data:` chunks with `candidates[0].content.parts[].text` and `usageMetadata`; a
    /// blocked prompt is refused.
    fn handle_event(&self, event: &Event, p: &mut Progress) -> Result<Option<String>, BlockError> {
        if event.data.trim().is_empty() {
            return Ok(None);
        }
        let v = parse(&event.data)?;
        if let Some(e) = v.get("error") {
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("error");
            return Err(BlockError::new(
                ErrorClass::Server,
                format!("stream error: {msg}"),
            ));
        }
        if let Some(reason) = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            return Err(BlockError::new(
                ErrorClass::Refused,
                format!("the prompt was blocked ({reason})"),
            ));
        }
        if let Some(usage) = v.get("usageMetadata") {
            p.input_tokens = u64_at(usage, "/promptTokenCount").or(p.input_tokens);
            p.output_tokens = u64_at(usage, "/candidatesTokenCount").or(p.output_tokens);
        }
        let mut text = String::new();
        if let Some(parts) = v
            .pointer("/candidates/0/content/parts")
            .and_then(Value::as_array)
        {
            for part in parts {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
        }
        // Gemini's stream has no terminal event: the chunk with a finish reason is the last.
        if v.pointer("/candidates/0/finishReason")
            .and_then(Value::as_str)
            .is_some_and(|r| !r.is_empty() && r != "FINISH_REASON_UNSPECIFIED")
        {
            p.done = true;
        }
        Ok(Some(text))
    }
}
