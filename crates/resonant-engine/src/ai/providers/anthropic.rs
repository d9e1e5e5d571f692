//! Anthropic's Messages API (`POST {base}/v1/messages`), key family "claude".

use eventsource_stream::Event;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{Family, Seed, ServerKey};
use crate::ai::wire::DEFAULT_MAX_TOKENS;
use crate::ai::wire::{parse, system_text, u64_at, Endpoint, Progress, WireRequest};
use crate::retry::{BlockError, ErrorClass};

pub(crate) struct Anthropic;

static SERVER_KEY: ServerKey = ServerKey {
    api_key_flag: "anthropic-api-key",
    api_key_env: "ANTHROPIC_API_KEY",
    api_key_help: "Server-wide Anthropic key, used when a workspace has none of its own",
    base_url_flag: "anthropic-base-url",
    base_url_env: "ANTHROPIC_BASE_URL",
    base_url_help: "Anthropic API base URL",
};

impl Family for Anthropic {
    fn key_family(&self) -> &'static str {
        "claude"
    }

    fn base_url(&self) -> Option<&'static str> {
        Some("https://api.anthropic.com")
    }

    /// Claude 3.5 Sonnet at its list prices: 3 / 15 USD per million input / output tokens.
    fn seed(&self) -> Seed {
        Seed {
            id: "claude-3-5-sonnet",
            name: "Claude 3.5 Sonnet",
            model: "claude-3-5-sonnet-20241022",
            prices: (3.0, 15.0),
            max_context_tokens: 200_000,
            strengths: &["nuance", "long-form", "analysis", "coding"],
            latency_ms: 800,
            reliability: 0.99,
            base_url: "",
        }
    }

    fn model_prefixes(&self) -> &'static [&'static str] {
        &["claude"]
    }

    fn server_key(&self) -> Option<&'static ServerKey> {
        Some(&SERVER_KEY)
    }

    /// Anthropic requires `max_tokens`: [`DEFAULT_MAX_TOKENS`] when the block sets none.
    fn build_request(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint<'_>,
        req: &WireRequest<'_>,
    ) -> reqwest::RequestBuilder {
        let base = endpoint.base_url.trim_end_matches('/');
        let mut body = json!({
            "model": req.model,
            "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            "messages": [{"role": "user", "content": req.prompt}],
            "stream": true,
        });
        if let Some(s) = system_text(req) {
            body["system"] = json!(s);
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        client
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", endpoint.api_key)
            .header("anthropic-version", "2023-06-01")
            .header("accept", "text/event-stream")
            .json(&body)
    }

    /// Named events (`message_start` with the input tokens, `content_block_delta` with text,
    /// `message_delta` with the output tokens, `message_stop`), or the type in the data when
    /// the event has no name; an `error` event carries Anthropic's error type.
    fn handle_event(&self, event: &Event, p: &mut Progress) -> Result<Option<String>, BlockError> {
        if event.data.trim().is_empty() {
            return Ok(None);
        }
        let v = parse(&event.data)?;
        let kind = if event.event.is_empty() || event.event == "message" {
            v.get("type").and_then(Value::as_str).unwrap_or("")
        } else {
            event.event.as_str()
        };
        match kind {
            "message_start" => {
                p.input_tokens = u64_at(&v, "/message/usage/input_tokens").or(p.input_tokens);
            }
            "content_block_delta" => {
                if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
                    return Ok(Some(t.to_string()));
                }
            }
            "message_delta" => {
                p.output_tokens = u64_at(&v, "/usage/output_tokens").or(p.output_tokens);
                p.input_tokens = u64_at(&v, "/usage/input_tokens").or(p.input_tokens);
            }
            "message_stop" => p.done = true,
            "error" => {
                let kind = v
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let class = match kind {
                    "rate_limit_error" => ErrorClass::RateLimited,
                    "invalid_request_error"
                    | "authentication_error"
                    | "permission_error"
                    | "not_found_error"
                    | "request_too_large" => ErrorClass::Client,
                    _ => ErrorClass::Server,
                };
                let msg = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or(kind);
                return Err(BlockError::new(class, format!("stream error: {msg}")));
            }
            _ => {}
        }
        Ok(None)
    }

    fn status_class(&self, status: StatusCode) -> ErrorClass {
        match status.as_u16() {
            // 529 is Anthropic's "overloaded": a server error, retried like the 5xx it is.
            529 => ErrorClass::Server,
            _ => super::status_class(status),
        }
    }
}
