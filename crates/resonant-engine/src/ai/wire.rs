//! One streamed HTTP call, whatever the family: sending the family's request, HTTP errors
//! (the family classes the status), `Retry-After`, the SSE framing, the first-token and
//! whole-call timeouts and cancellation. What differs per family (the request, the events)
//! is in `super::providers`.

use crate::http::truncate;
use std::time::{Duration, SystemTime};

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::ProviderSpec;
use crate::retry::{BlockError, ErrorClass};

/// Appended to the system prompt when the block wants JSON.
pub(crate) const JSON_INSTRUCTION: &str =
    "Respond with only valid JSON: no prose before or after it, no code fences.";

/// Anthropic requires `max_tokens`; this is sent to it (and reserved in the context estimate
/// for every family) when the block sets none.
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

/// How a call that sent nothing before the first-token timeout ends its message: the router
/// moves to the next provider at once on it rather than retrying a hung one.
pub(crate) const FIRST_TOKEN_TIMEOUT: &str = "no response before the first-token timeout";

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
    let family = spec.kind.family();
    let first_deadline = deadlines.first_token.min(deadlines.end);
    let timeout_error = |first: bool| {
        BlockError::new(
            ErrorClass::Timeout,
            if first {
                format!("{who}: {FIRST_TOKEN_TIMEOUT}")
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
        let class = family.status_class(status);
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
        if let Some(text) = family
            .handle_event(&event, progress)
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

/// A stream event's JSON data.
pub(crate) fn parse(data: &str) -> Result<Value, BlockError> {
    serde_json::from_str(data).map_err(|e| {
        BlockError::new(
            ErrorClass::Server,
            format!("malformed stream event ({e}): {}", truncate(data, 200)),
        )
    })
}

/// A count in a stream event.
pub(crate) fn u64_at(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}
