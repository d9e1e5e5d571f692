//! A mock AI provider server on loopback speaking the real wire formats (Anthropic Messages,
//! OpenAI Chat Completions, Gemini streamGenerateContent, all as SSE), scriptable per request.
//!
//! Every provider gets its own *lane*: point a provider's base URL at `mock.base_url("claude")`
//! and its requests arrive at `/claude/v1/messages`. Replies are pushed per lane and used in
//! order; an empty lane answers `MockReply::text("mock reply from <lane>")`. The wire format of
//! a reply follows the request's path, so one script works for any provider.
//!
//! ```ignore
//! let (base, mock) = MockAi::start(vec![("claude", MockReply::status(500, "boom"))]).await;
//! mock.push("openai", MockReply::text("hello there").usage(12, 3));
//! // … point providers at format!("{base}/claude") or mock.base_url("claude") …
//! assert_eq!(mock.lanes(), ["claude", "openai"]);
//! ```
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures_util::stream;
use serde_json::{json, Value};

/// Which wire format a request used (from its path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Anthropic,
    OpenAi,
    Gemini,
}

/// A request the mock received.
#[derive(Clone, Debug)]
pub struct Received {
    pub lane: String,
    pub wire: Wire,
    pub path: String,
    pub query: Option<String>,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Value,
}

/// A streamed answer.
#[derive(Clone, Debug)]
pub struct MockStream {
    pub text: String,
    /// (input, output) tokens reported; `None` sends no usage at all.
    pub usage: Option<(u64, u64)>,
    /// Wait before the first event.
    pub first_token_delay: Duration,
    /// Wait between text events.
    pub token_delay: Duration,
    /// Cut the connection after this many text events (no terminal event).
    pub cut_after: Option<usize>,
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum MockReply {
    /// A successful streamed answer.
    Stream(MockStream),
    /// An HTTP error in the provider's error format.
    Status {
        status: u16,
        retry_after: Option<String>,
        message: String,
    },
    /// A 200 `text/event-stream` with exactly this body.
    RawSse(String),
}

impl MockReply {
    /// Streams `text` word by word, reporting usage (10 input tokens, one per word output).
    pub fn text(text: &str) -> MockReply {
        let words = text.split_inclusive(' ').count() as u64;
        MockReply::Stream(MockStream {
            text: text.to_string(),
            usage: Some((10, words)),
            first_token_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            cut_after: None,
        })
    }

    fn stream_mut(&mut self) -> &mut MockStream {
        match self {
            MockReply::Stream(s) => s,
            _ => panic!("only a streamed reply has stream settings"),
        }
    }

    /// Reports these token counts.
    pub fn usage(mut self, input: u64, output: u64) -> MockReply {
        self.stream_mut().usage = Some((input, output));
        self
    }

    /// Reports no usage at all.
    pub fn no_usage(mut self) -> MockReply {
        self.stream_mut().usage = None;
        self
    }

    /// Waits before the first event.
    pub fn first_token_delay(mut self, d: Duration) -> MockReply {
        self.stream_mut().first_token_delay = d;
        self
    }

    /// Waits between text events.
    pub fn token_delay(mut self, d: Duration) -> MockReply {
        self.stream_mut().token_delay = d;
        self
    }

    /// Cuts the connection after `n` text events.
    pub fn cut_after(mut self, n: usize) -> MockReply {
        self.stream_mut().cut_after = Some(n);
        self
    }

    /// An HTTP error.
    pub fn status(status: u16, message: &str) -> MockReply {
        MockReply::Status {
            status,
            retry_after: None,
            message: message.to_string(),
        }
    }

    /// A 429 with this `Retry-After` value.
    pub fn rate_limited(retry_after: &str) -> MockReply {
        MockReply::Status {
            status: 429,
            retry_after: Some(retry_after.to_string()),
            message: "rate limited".into(),
        }
    }

    /// A 200 event stream with this exact body.
    pub fn raw_sse(body: &str) -> MockReply {
        MockReply::RawSse(body.to_string())
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<String, VecDeque<MockReply>>,
    received: Vec<Received>,
}

/// The running mock; stops when dropped.
pub struct MockAi {
    base: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockAi {
    /// Starts the mock on 127.0.0.1 with `script`'s replies queued; returns its base URL.
    pub async fn start(script: Vec<(&str, MockReply)>) -> (String, MockAi) {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = shared.clone();
            async move { handle(state, uri, headers, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let mock = MockAi {
            base: base.clone(),
            state,
            task,
        };
        for (lane, reply) in script {
            mock.push(lane, reply);
        }
        (base, mock)
    }

    /// The base URL of `lane` (give it to a provider).
    pub fn base_url(&self, lane: &str) -> String {
        format!("{}/{lane}", self.base)
    }

    /// Queues a reply on `lane`.
    pub fn push(&self, lane: &str, reply: MockReply) {
        let mut state = self.state.lock().unwrap();
        state
            .queues
            .entry(lane.to_string())
            .or_default()
            .push_back(reply);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The lanes of the requests received so far, in order.
    pub fn lanes(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.lane).collect()
    }

    /// Replies still queued on `lane`.
    pub fn pending(&self, lane: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .queues
            .get(lane)
            .map_or(0, |q| q.len())
    }
}

async fn handle(state: Arc<Mutex<State>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let wire = if path.ends_with("/v1/messages") {
        Wire::Anthropic
    } else if path.ends_with("/v1/chat/completions") {
        Wire::OpenAi
    } else if path.contains(":streamGenerateContent") {
        Wire::Gemini
    } else {
        return Response::builder()
            .status(404)
            .body(Body::from("no such endpoint"))
            .unwrap();
    };
    let lane = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = match wire {
        Wire::Gemini => path
            .rsplit('/')
            .next()
            .and_then(|s| s.split(':').next())
            .unwrap_or("")
            .to_string(),
        _ => body["model"].as_str().unwrap_or("").to_string(),
    };
    let reply = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            lane: lane.clone(),
            wire,
            path: path.clone(),
            query: uri.query().map(str::to_string),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body,
        });
        state
            .queues
            .get_mut(&lane)
            .and_then(|q| q.pop_front())
            .unwrap_or_else(|| MockReply::text(&format!("mock reply from {lane}")))
    };
    match reply {
        MockReply::Status {
            status,
            retry_after,
            message,
        } => {
            let body = error_body(wire, status, &message);
            let mut b = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json");
            if let Some(after) = retry_after {
                b = b.header("retry-after", after);
            }
            b.body(Body::from(body.to_string())).unwrap()
        }
        MockReply::RawSse(text) => sse_response(Body::from(text)),
        MockReply::Stream(s) => sse_response(stream_body(wire, &model, s)),
    }
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap()
}

fn error_body(wire: Wire, status: u16, message: &str) -> Value {
    match wire {
        Wire::Anthropic => {
            let kind = match status {
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        Wire::OpenAi => json!({"error": {"message": message, "type": "mock_error", "code": null}}),
        Wire::Gemini => json!({"error": {"code": status, "message": message, "status": "MOCK"}}),
    }
}

/// One frame of the body: wait, then send (or cut).
enum Step {
    Send(Duration, String),
    Cut(Duration),
}

fn frame(event: Option<&str>, data: &Value, crlf: bool) -> String {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut s = String::new();
    if let Some(e) = event {
        s.push_str(&format!("event: {e}{nl}"));
    }
    s.push_str(&format!("data: {data}{nl}{nl}"));
    s
}

fn stream_body(wire: Wire, model: &str, s: MockStream) -> Body {
    let tokens: Vec<&str> = s.text.split_inclusive(' ').collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut head: Vec<String> = Vec::new();
    match wire {
        Wire::Anthropic => {
            let usage = match s.usage {
                Some((i, _)) => json!({"input_tokens": i, "output_tokens": 1}),
                None => json!({}),
            };
            head.push(frame(
                Some("message_start"),
                &json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
                false,
            ));
            head.push(frame(
                Some("content_block_start"),
                &json!({"type": "content_block_start",
                "index": 0, "content_block": {"type": "text", "text": ""}}),
                false,
            ));
            head.push(frame(Some("ping"), &json!({"type": "ping"}), false));
        }
        Wire::OpenAi => head.push(frame(
            None,
            &json!({"id": "chatcmpl-mock",
            "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                "finish_reason": null}], "usage": null}),
            false,
        )),
        Wire::Gemini => {}
    }
    let mut head = head.concat();
    for (i, token) in tokens.iter().enumerate() {
        if s.cut_after == Some(i) {
            // hyper drops what it has not written yet when the body fails: give the frames
            // before the cut time to leave, as they would on a real connection.
            steps.push(Step::Cut(s.token_delay.max(Duration::from_millis(50))));
            break;
        }
        let delay = if i == 0 {
            s.first_token_delay
        } else {
            s.token_delay
        };
        let f = match wire {
            Wire::Anthropic => frame(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta",
                "index": 0, "delta": {"type": "text_delta", "text": token}}),
                false,
            ),
            Wire::OpenAi => frame(
                None,
                &json!({"id": "chatcmpl-mock",
                "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": null}],
                "usage": null}),
                false,
            ),
            Wire::Gemini => {
                let mut chunk = json!({"candidates": [{"content": {"parts": [{"text": token}],
                    "role": "model"}, "index": 0}], "modelVersion": model});
                if let Some((i, _)) = s.usage {
                    chunk["usageMetadata"] = json!({"promptTokenCount": i, "totalTokenCount": i});
                }
                frame(None, &chunk, true)
            }
        };
        steps.push(Step::Send(delay, std::mem::take(&mut head) + &f));
    }
    if s.cut_after.is_none_or(|n| n >= tokens.len()) {
        let tail = match wire {
            Wire::Anthropic => {
                let usage = match s.usage {
                    Some((_, o)) => json!({"output_tokens": o}),
                    None => json!({}),
                };
                [
                    frame(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0}), false),
                    frame(Some("message_delta"), &json!({"type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": usage}), false),
                    frame(Some("message_stop"), &json!({"type": "message_stop"}), false),
                ]
                .concat()
            }
            Wire::OpenAi => {
                let mut t = frame(
                    None,
                    &json!({"id": "chatcmpl-mock",
                    "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": null}),
                    false,
                );
                if let Some((i, o)) = s.usage {
                    t += &frame(
                        None,
                        &json!({"id": "chatcmpl-mock",
                        "object": "chat.completion.chunk", "created": 0, "model": model,
                        "choices": [], "usage": {"prompt_tokens": i, "completion_tokens": o,
                            "total_tokens": i + o}}),
                        false,
                    );
                }
                t + "data: [DONE]\n\n"
            }
            Wire::Gemini => {
                let mut chunk = json!({"candidates": [{"content": {"parts": [{"text": ""}],
                    "role": "model"}, "finishReason": "STOP", "index": 0}], "modelVersion": model});
                if let Some((i, o)) = s.usage {
                    chunk["usageMetadata"] = json!({"promptTokenCount": i,
                        "candidatesTokenCount": o, "totalTokenCount": i + o});
                }
                frame(None, &chunk, true)
            }
        };
        let delay = if tokens.is_empty() {
            s.first_token_delay
        } else {
            s.token_delay
        };
        steps.push(Step::Send(delay, std::mem::take(&mut head) + &tail));
    }
    let body = stream::unfold(steps.into_iter(), |mut steps| async move {
        match steps.next()? {
            Step::Send(delay, text) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(text)), steps))
            }
            Step::Cut(delay) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock: stream cut",
                    )),
                    steps,
                ))
            }
        }
    });
    Body::from_stream(body)
}
