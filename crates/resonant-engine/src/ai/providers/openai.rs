//! OpenAI's Chat Completions (`POST {base}/v1/chat/completions`), key family "openai". The
//! request and stream are shared with [`super::openai_compatible`].

use eventsource_stream::Event;
use serde_json::{json, Value};

use super::{Family, Seed, ServerKey};
use crate::ai::wire::{parse, system_text, u64_at, Endpoint, Progress, WireRequest};
use crate::retry::{BlockError, ErrorClass};

pub(crate) struct OpenAi;

static SERVER_KEY: ServerKey = ServerKey {
    api_key_flag: "openai-api-key",
    api_key_env: "OPENAI_API_KEY",
    api_key_help: "Server-wide OpenAI key",
    base_url_flag: "openai-base-url",
    base_url_env: "OPENAI_BASE_URL",
    base_url_help: "OpenAI API base URL",
};

impl Family for OpenAi {
    fn key_family(&self) -> &'static str {
        "openai"
    }

    fn base_url(&self) -> Option<&'static str> {
        Some("https://api.openai.com")
    }

    /// GPT-4 Turbo at its list prices: 10 / 30 USD per million input / output tokens.
    fn seed(&self) -> Seed {
        Seed {
            id: "gpt-4-turbo",
            name: "GPT-4 Turbo",
            model: "gpt-4-turbo",
            prices: (10.0, 30.0),
            max_context_tokens: 128_000,
            strengths: &["creative", "brainstorm", "general"],
            latency_ms: 1200,
            reliability: 0.98,
            base_url: "",
        }
    }

    fn model_prefixes(&self) -> &'static [&'static str] {
        &["gpt", "o1", "o3", "o4", "chatgpt"]
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
        request(client, endpoint, req, true)
    }

    fn handle_event(&self, event: &Event, p: &mut Progress) -> Result<Option<String>, BlockError> {
        handle_event(event, p)
    }
}

/// The Chat Completions request; `json_mode` asks for `response_format: json_object` when the
/// block wants JSON (OpenAI's own API has it, compatible servers may not).
pub(super) fn request(
    client: &reqwest::Client,
    endpoint: &Endpoint<'_>,
    req: &WireRequest<'_>,
    json_mode: bool,
) -> reqwest::RequestBuilder {
    let base = endpoint.base_url.trim_end_matches('/');
    let mut messages = Vec::new();
    if let Some(s) = system_text(req) {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": req.prompt}));
    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(m) = req.max_tokens {
        body["max_tokens"] = json!(m);
    }
    if req.json && json_mode {
        body["response_format"] = json!({"type": "json_object"});
    }
    client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(endpoint.api_key)
        .header("accept", "text/event-stream")
        .json(&body)
}

/// A Chat Completions stream: `data:` chunks with `choices[0].delta.content`, usage in the
/// last chunk (`stream_options.include_usage`), then `data: [DONE]`.
pub(super) fn handle_event(event: &Event, p: &mut Progress) -> Result<Option<String>, BlockError> {
    let data = event.data.trim();
    if data == "[DONE]" {
        p.done = true;
        return Ok(None);
    }
    if data.is_empty() {
        return Ok(None);
    }
    let v = parse(data)?;
    if let Some(e) = v.get("error") {
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("error");
        return Err(BlockError::new(
            ErrorClass::Server,
            format!("stream error: {msg}"),
        ));
    }
    if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
        p.input_tokens = u64_at(usage, "/prompt_tokens").or(p.input_tokens);
        p.output_tokens = u64_at(usage, "/completion_tokens").or(p.output_tokens);
    }
    Ok(v.pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .map(str::to_string))
}
