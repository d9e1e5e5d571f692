//! The provider adapters: one streamed HTTP call in each provider's wire format (requests,
//! SSE events, usage, errors), with the first-token and whole-call timeouts and cancellation.

use crate::http::truncate;
use std::time::{Duration, SystemTime};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{ProviderKind, ProviderSpec};
use crate::retry::{BlockError, ErrorClass};

/// Appended to the system prompt when the block wants JSON.
pub(crate) const JSON_INSTRUCTION: &str =
    "Respond with only valid JSON: no prose before or after it, no code fences.";

/// Anthropic requires `max_tokens`; this is sent (and reserved in the context estimate) when
/// the block sets none.
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 4096;

/// What one call sends, whatever the wire format.
pub(crate) struct WireRequest<'a> {
    pub system: Option<&'a str>,
    pub prompt: &'a str,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub json: bool,
    pub model: &'a str,
}

/// What a call received so far: complete after success, partial after a failure.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub text: String,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The provider's terminal event arrived.
    pub done: bool,
}

/// Where a call goes and with which credentials.
pub(crate) struct Endpoint<'a> {
    pub base_url: &'a str,
    pub api_key: &'a str,
}

/// The deadlines of one call.
#[derive(Clone, Copy)]
pub(crate) struct Deadlines {
    /// The whole call.
    pub end: Instant,
    /// The first streamed text.
    pub first_token: Instant,
}

pub(crate) fn cancelled() -> BlockError {
    BlockError::new(ErrorClass::Refused, "cancelled")
}

pub(crate) fn system_text(req: &WireRequest<'_>) -> Option<String> {
    match (req.system, req.json) {
        (Some(s), true) => Some(format!("{s}\n\n{JSON_INSTRUCTION}")),
        (Some(s), false) => Some(s.to_string()),
        (None, true) => Some(JSON_INSTRUCTION.to_string()),
        (None, false) => None,
    }
}

/// The HTTP request of one streamed call.
pub(crate) fn build_request(
    client: &reqwest::Client,
    kind: ProviderKind,
    endpoint: &Endpoint<'_>,
    req: &WireRequest<'_>,
) -> reqwest::RequestBuilder {
    let base = endpoint.base_url.trim_end_matches('/');
    let system = system_text(req);
    match kind {
        ProviderKind::Anthropic => {
            let mut body = json!({
                "model": req.model,
                "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                "messages": [{"role": "user", "content": req.prompt}],
                "stream": true,
            });
            if let Some(s) = system {
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
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
            let mut messages = Vec::new();
            if let Some(s) = system {
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
            if req.json && kind == ProviderKind::OpenAi {
                body["response_format"] = json!({"type": "json_object"});
            }
            client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(endpoint.api_key)
                .header("accept", "text/event-stream")
                .json(&body)
        }
        ProviderKind::Gemini => {
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
            if let Some(s) = system {
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
        ProviderKind::Demo => unreachable!("the demo provider makes no HTTP calls"),
    }
}

/// `Retry-After` (seconds or an HTTP date), or OpenAI's `retry-after-ms`.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    parse_retry_after(headers.get("retry-after")?.to_str().ok()?)
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date (a past date means now).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(1e9)));
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The class of a non-success HTTP status.
pub(crate) fn status_class(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        429 => ErrorClass::RateLimited,
        408 => ErrorClass::Timeout,
        // 529 is Anthropic's "overloaded".
        500..=599 => ErrorClass::Server,
        _ => ErrorClass::Client,
    }
}

/// The provider's own error message in an error body, if it has one.
fn error_message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let e = v.get("error").unwrap_or(&v);
    e.get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| e.as_str().map(str::to_string))
}

/// Makes one streamed call, calling `on_delta` for each piece of text. `progress` holds what
/// was received, whether the call succeeded or not.
pub(crate) async fn stream_call(
    request: reqwest::RequestBuilder,
    spec: &ProviderSpec,
    progress: &mut Progress,
    on_delta: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
    deadlines: Deadlines,
) -> Result<(), BlockError> {
    let who = &spec.id;
    let first_deadline = deadlines.first_token.min(deadlines.end);
    let timeout_error = |first: bool| {
        BlockError::new(
            ErrorClass::Timeout,
            if first {
                format!("{who}: no response before the first-token timeout")
            } else {
                format!("{who}: the call ran past its timeout")
            },
        )
    };

    let response = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(cancelled()),
        _ = tokio::time::sleep_until(first_deadline) => {
            return Err(timeout_error(first_deadline < deadlines.end))
        }
        r = request.send() => r.map_err(|e| send_error(who, &e))?,
    };

    let status = response.status();
    if !status.is_success() {
        let class = status_class(status);
        let after = retry_after(response.headers());
        let body = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            _ = tokio::time::sleep_until(deadlines.end) => String::new(),
            b = read_limited(response, ERROR_BODY_LIMIT) => b,
        };
        let detail = error_message(&body).unwrap_or_else(|| truncate(body.trim(), 300).into());
        let mut message = format!("{who}: HTTP {}", status.as_u16());
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(&detail);
        }
        return Err(BlockError::new(class, message).with_retry_after(after));
    }

    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/event-stream")
        .to_ascii_lowercase();
    if !content_type.starts_with("text/event-stream") {
        // A proxy's error page, or a provider ignoring `stream: true`.
        let body = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            _ = tokio::time::sleep_until(deadlines.end) => String::new(),
            b = read_limited(response, ERROR_BODY_LIMIT) => b,
        };
        return Err(BlockError::new(
            ErrorClass::Server,
            format!(
                "{who}: expected an event stream, got {content_type}: {}",
                truncate(body.trim(), 300)
            ),
        ));
    }
    let mut events = response.bytes_stream().eventsource();
    loop {
        let wait_until = if progress.text.is_empty() {
            first_deadline
        } else {
            deadlines.end
        };
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            _ = tokio::time::sleep_until(wait_until) => {
                return Err(timeout_error(progress.text.is_empty() && first_deadline < deadlines.end))
            }
            n = events.next() => n,
        };
        let event = match next {
            None => break,
            Some(Ok(event)) => event,
            Some(Err(EventStreamError::Transport(e))) => {
                return Err(BlockError::new(
                    ErrorClass::Network,
                    format!("{who}: the stream was cut: {e}"),
                ))
            }
            Some(Err(e)) => {
                return Err(BlockError::new(
                    ErrorClass::Server,
                    format!("{who}: malformed event stream: {e}"),
                ))
            }
        };
        if let Some(text) = handle_event(spec.kind, &event, progress)
            .map_err(|e| BlockError::new(e.class, format!("{who}: {}", e.message)))?
        {
            if !text.is_empty() {
                progress.text.push_str(&text);
                on_delta(&text);
            }
        }
        if progress.done {
            return Ok(());
        }
    }
    Err(BlockError::new(
        ErrorClass::Network,
        format!("{who}: the stream ended before the response was complete"),
    ))
}

/// Error bodies are read up to this size (the message is all that is wanted).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

async fn read_limited(response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= limit {
            body.truncate(limit);
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

fn send_error(who: &str, e: &reqwest::Error) -> BlockError {
    let class = if e.is_timeout() {
        ErrorClass::Timeout
    } else if e.is_builder() {
        ErrorClass::Client
    } else {
        ErrorClass::Network
    };
    // reqwest's Display hides the cause ("error sending request"); the source says why.
    let mut message = format!("{who}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    BlockError::new(class, message)
}

fn parse(data: &str) -> Result<Value, BlockError> {
    serde_json::from_str(data).map_err(|e| {
        BlockError::new(
            ErrorClass::Server,
            format!("malformed stream event ({e}): {}", truncate(data, 200)),
        )
    })
}

fn u64_at(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

/// Reads one SSE event: returns the text it carries, records usage and the terminal event.
pub(crate) fn handle_event(
    kind: ProviderKind,
    event: &Event,
    p: &mut Progress,
) -> Result<Option<String>, BlockError> {
    match kind {
        ProviderKind::Anthropic => {
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
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
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
        ProviderKind::Gemini => {
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
        ProviderKind::Demo => Ok(None),
    }
}
