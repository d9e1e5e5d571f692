//! The JSON messages of the stateless frame (`[5, json]`): what a client sends
//! ([`ClientMsg`]) and what the server sends ([`ServerMsg`]), as `docs/protocol.md` lists
//! them. ([`ExecutionEvent`] is the events' envelope; the engine does not use it yet.)
//!
//! Key order: the server has always written its JSON with keys in alphabetical order (it built
//! the messages as `serde_json::Value`s, whose maps are sorted), broadcasts excepted, and
//! [`ServerMsg::to_json`] keeps those bytes. Nothing may depend on key order, but the wire
//! bytes are kept exactly when code moves.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest stateless message the server accepts, in bytes of frame. Checked on the raw frame
/// before anything is decoded from it.
pub const MAX_STATELESS_BYTES: usize = 64 << 10;

/// Largest broadcast event, in bytes of JSON: each is copied to every editor in the room, so
/// it is kept far below what a stateless message may carry.
pub const MAX_BROADCAST_BYTES: usize = 8 << 10;

/// Most executions one `executions.resume` may list (each costs a read of the log).
pub const MAX_RESUME: usize = 100;

/// Most characters in the comment of an approval decision.
pub const MAX_DECISION_COMMENT_CHARS: usize = 2000;

/// A client's stateless message about its connection, answered by the socket layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ConnectionMsg {
    /// A fresh token before the current one expires.
    Auth {
        /// The new token.
        token: Option<String>,
    },
    /// A liveness probe: a browser cannot send a WebSocket ping, and after a laptop sleeps
    /// it needs an answer within a moment to know whether its socket is still alive.
    Ping {
        /// Echoed in the pong (`null` when missing).
        #[serde(default)]
        id: Value,
    },
    /// An ephemeral event for the room's other editors (a reaction, "I am running this"):
    /// relayed, never stored, not part of the document.
    Broadcast {
        /// Any JSON, relayed as it is.
        #[serde(default)]
        event: Value,
    },
}

/// A client's execution request (its `type` starts with `execution.` or `executions.`).
/// Unknown fields are refused, as the REST API refuses them: a misspelt option must not be
/// silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum ExecutionRequest {
    /// Starts an execution of the socket's workflow.
    #[serde(rename = "execution.start")]
    Start {
        /// The execution's input (an object).
        #[serde(default)]
        input: Option<Value>,
        /// `speed`, `quality` or `cost`.
        #[serde(default)]
        priority: Option<String>,
        /// A retried request with the same key starts nothing.
        #[serde(default)]
        idempotency_key: Option<String>,
        /// Blocks doing work at once in this execution.
        #[serde(default)]
        max_concurrency: Option<usize>,
        /// Echoed in the reply.
        #[serde(default)]
        request_id: Option<Value>,
    },
    /// Cancels a running execution.
    #[serde(rename = "execution.cancel")]
    Cancel {
        /// The execution.
        execution_id: String,
        /// Echoed in the reply.
        #[serde(default)]
        request_id: Option<Value>,
    },
    /// Approves or rejects a waiting human block.
    #[serde(rename = "execution.decide")]
    Decide {
        /// The execution.
        execution_id: String,
        /// The waiting block's key (inside a loop, its key with the iteration).
        block_id: String,
        /// The decision.
        approved: bool,
        /// Kept with the decision (at most [`MAX_DECISION_COMMENT_CHARS`] characters).
        #[serde(default)]
        comment: Option<String>,
        /// Echoed in the reply.
        #[serde(default)]
        request_id: Option<Value>,
    },
    /// Runs an execution again, reusing what finished before `from_block`.
    #[serde(rename = "execution.rerun")]
    Rerun {
        /// The execution to run again.
        execution_id: String,
        /// Where to start (default: the failed block).
        #[serde(default)]
        from_block: Option<String>,
        /// `pinned` (default: the graph the execution ran) or `live` (the workflow's document
        /// as its editors have it now).
        #[serde(default)]
        document: Option<String>,
        /// A retried request with the same key starts nothing.
        #[serde(default)]
        idempotency_key: Option<String>,
        /// Echoed in the reply.
        #[serde(default)]
        request_id: Option<Value>,
    },
    /// Asks for the events this connection missed.
    #[serde(rename = "executions.resume")]
    Resume {
        /// The last seq seen per execution id.
        #[serde(default)]
        after: HashMap<String, i64>,
        /// Also replay the workflow's unfinished executions not listed.
        #[serde(default = "yes")]
        running: bool,
        /// Echoed only when the request is refused before it is read (in a room that is not
        /// `workflow-<id>`); replays and their refusals carry none.
        #[serde(default)]
        request_id: Option<Value>,
    },
}

fn yes() -> bool {
    true
}

impl ExecutionRequest {
    /// The request's `requestId`, if it had one that is not `null`.
    pub fn request_id(&self) -> Option<&Value> {
        match self {
            ExecutionRequest::Start { request_id, .. }
            | ExecutionRequest::Cancel { request_id, .. }
            | ExecutionRequest::Decide { request_id, .. }
            | ExecutionRequest::Rerun { request_id, .. }
            | ExecutionRequest::Resume { request_id, .. } => request_id.as_ref(),
        }
    }
}

/// Everything a client may send in a stateless frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClientMsg {
    /// About the connection itself.
    Connection(ConnectionMsg),
    /// About the workflow's executions.
    Execution(ExecutionRequest),
}

/// An execution request that did not parse: refused with `bad-request`, naming its caller.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    /// The message's `type`.
    pub kind: String,
    /// Its `requestId`, if any (and not `null`).
    pub request_id: Option<Value>,
    /// What is wrong, as the refusal says it: `"<type>: <serde's complaint>"`.
    pub message: String,
}

impl BadRequest {
    /// Whether this is an execution request (so it is refused rather than ignored).
    pub fn is_execution(&self) -> bool {
        is_execution(&self.kind)
    }
}

fn is_execution(kind: &str) -> bool {
    kind.starts_with("execution.") || kind.starts_with("executions.")
}

impl ClientMsg {
    /// Decodes a stateless message's text, once. `Ok(None)`: not a message the server
    /// answers (not JSON, no `type`, an unknown type, or a connection message that does not
    /// parse), which is ignored. `Err`: an execution request that does not parse, which is
    /// refused.
    pub fn decode(text: &str) -> Result<Option<ClientMsg>, BadRequest> {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return Ok(None);
        };
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            return Ok(None);
        };
        if !is_execution(kind) {
            return Ok(ConnectionMsg::deserialize(&value)
                .ok()
                .map(ClientMsg::Connection));
        }
        match ExecutionRequest::deserialize(&value) {
            Ok(request) => Ok(Some(ClientMsg::Execution(request))),
            Err(e) => {
                // Parsed again from the text, on this rare path only, so the complaint keeps
                // the position serde_json gives it (as refusals always said it).
                let e = serde_json::from_str::<ExecutionRequest>(text)
                    .err()
                    .map_or_else(|| e.to_string(), |e| e.to_string());
                Err(BadRequest {
                    kind: kind.to_owned(),
                    request_id: value.get("requestId").filter(|id| !id.is_null()).cloned(),
                    message: format!("{kind}: {e}"),
                })
            }
        }
    }
}

/// JSON text written once and sent as it stands: a broadcast event is serialised when its
/// size is checked, and that text is what every editor receives (not a second encoding).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The value's JSON text, as `Value::to_string` writes it.
    pub fn new(value: &Value) -> RawJson {
        RawJson(serde_json::value::to_raw_value(value).expect("a Value is always JSON"))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

/// Who sent a broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sender {
    /// The sender's user id.
    #[serde(rename = "userId")]
    pub user_id: String,
}

/// Everything the server sends in a stateless frame, execution events aside (see
/// [`ExecutionEvent`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ServerMsg {
    /// A refusal or a complaint.
    #[serde(rename = "error")]
    Error {
        /// Stable, kebab-case (`read-only`, `bad-request`, …).
        code: String,
        /// For humans.
        message: String,
        /// Present (possibly `null`) in answers to execution requests; absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
        /// With `invalid-workflow`: what is wrong, each naming its block.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        problems: Option<Value>,
    },
    /// The answer to a ping.
    #[serde(rename = "pong")]
    Pong {
        /// The ping's id.
        id: Value,
    },
    /// A token refresh was accepted.
    #[serde(rename = "auth")]
    Auth {
        /// Always `ok`.
        status: String,
        /// When the new token expires (Unix seconds; `null` when it does not).
        expires_at: Option<i64>,
    },
    /// The connection's role changed.
    #[serde(rename = "access")]
    Access {
        /// The new role.
        role: String,
        /// Whether edits are now refused.
        read_only: bool,
    },
    /// Another editor's broadcast event.
    #[serde(rename = "broadcast")]
    Broadcast {
        /// The event as its sender wrote it (parsed, then written once).
        event: RawJson,
        /// Who sent it.
        from: Sender,
    },
    /// An execution was started (or, `created: false`, had been with that idempotency key).
    #[serde(rename = "execution.accepted")]
    ExecutionAccepted {
        /// The execution.
        execution_id: String,
        /// False when the idempotency key was used before.
        created: bool,
        /// With a re-run: the execution it re-runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rerun_of: Option<String>,
        /// The request's.
        request_id: Option<Value>,
    },
    /// A cancel was accepted; `execution.cancelled` follows.
    #[serde(rename = "execution.cancelling")]
    ExecutionCancelling {
        /// The execution.
        execution_id: String,
        /// The request's.
        request_id: Option<Value>,
    },
    /// A decision was recorded.
    #[serde(rename = "execution.decided")]
    ExecutionDecided {
        /// The execution.
        execution_id: String,
        /// The decided block.
        block_id: String,
        /// The request's.
        request_id: Option<Value>,
    },
}

impl ServerMsg {
    /// An error without a request id.
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            code: code.into(),
            message: message.into(),
            request_id: None,
            problems: None,
        }
    }

    /// The JSON text, as the server has always written it: keys in alphabetical order, except
    /// in a broadcast, which reads `type`, `event`, `from` (see the module comment).
    pub fn to_json(&self) -> String {
        match self {
            ServerMsg::Broadcast { .. } => serde_json::to_string(self),
            _ => serde_json::to_value(self).map(|v| v.to_string()),
        }
        .expect("server messages are plain JSON")
    }

    /// The `[5, json]` frame.
    pub fn encode(&self) -> bytes::Bytes {
        crate::encode_stateless(&self.to_json())
    }
}

/// An execution event: `{type, executionId, workflowId, seq, ts, …fields}`, where `fields`
/// depend on `type` (`docs/protocol.md` lists them).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionEvent<'a> {
    /// `execution.started`, `block.completed`, …
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The execution.
    pub execution_id: &'a str,
    /// Its workflow.
    pub workflow_id: &'a str,
    /// 1, 2, … per execution, across restarts.
    pub seq: i64,
    /// Unix milliseconds.
    pub ts: i64,
    /// The fields of this kind of event.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, Value>,
}

impl ExecutionEvent<'_> {
    /// The JSON text, keys in alphabetical order as the server has always written events
    /// (the log stores this text, and replays send it as stored).
    pub fn to_json(&self) -> String {
        serde_json::to_value(self)
            .expect("events are plain JSON")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each message against the `json!` literal the server built before the types, so the
    /// bytes on the wire did not change.
    #[test]
    fn server_messages_keep_their_bytes() {
        let same = |msg: ServerMsg, old: Value| assert_eq!(msg.to_json(), old.to_string());
        same(
            ServerMsg::error("read-only", "no"),
            json!({ "type": "error", "code": "read-only", "message": "no" }),
        );
        let rid: Option<Value> = None;
        same(
            ServerMsg::Error {
                code: "forbidden".into(),
                message: "no".into(),
                request_id: Some(rid.clone().unwrap_or(Value::Null)),
                problems: None,
            },
            json!({"type": "error", "code": "forbidden", "message": "no", "requestId": rid}),
        );
        same(
            ServerMsg::Error {
                code: "invalid-workflow".into(),
                message: "the workflow is not valid".into(),
                request_id: Some(json!(7)),
                problems: Some(json!([{"block": "a"}])),
            },
            json!({"type": "error", "code": "invalid-workflow", "message": "the workflow is not valid", "requestId": 7, "problems": [{"block": "a"}]}),
        );
        same(
            ServerMsg::Pong {
                id: json!({"z": 1, "a": 2}),
            },
            json!({ "type": "pong", "id": {"z": 1, "a": 2} }),
        );
        let exp: Option<i64> = None;
        same(
            ServerMsg::Auth {
                status: "ok".into(),
                expires_at: exp,
            },
            json!({ "type": "auth", "status": "ok", "expiresAt": exp }),
        );
        same(
            ServerMsg::Access {
                role: "viewer".into(),
                read_only: true,
            },
            json!({ "type": "access", "role": "viewer", "readOnly": true }),
        );
        same(
            ServerMsg::ExecutionAccepted {
                execution_id: "e".into(),
                created: false,
                rerun_of: None,
                request_id: Some(json!("r")),
            },
            json!({"type": "execution.accepted", "executionId": "e", "created": false, "requestId": "r"}),
        );
        same(
            ServerMsg::ExecutionAccepted {
                execution_id: "e".into(),
                created: true,
                rerun_of: Some("d".into()),
                request_id: None,
            },
            json!({"type": "execution.accepted", "executionId": "e", "created": true, "rerunOf": "d", "requestId": null}),
        );
        same(
            ServerMsg::ExecutionCancelling {
                execution_id: "e".into(),
                request_id: None,
            },
            json!({"type": "execution.cancelling", "executionId": "e", "requestId": null}),
        );
        same(
            ServerMsg::ExecutionDecided {
                execution_id: "e".into(),
                block_id: "b".into(),
                request_id: Some(json!(1)),
            },
            json!({"type": "execution.decided", "executionId": "e", "blockId": "b", "requestId": 1}),
        );
        // Broadcasts were written by hand, in this order, with the event as serde_json
        // writes a parsed value (its keys sorted).
        let event: Value = serde_json::from_str(r#"{"z":1,"a":[true]}"#).unwrap();
        let old = format!(
            r#"{{"type":"broadcast","event":{event},"from":{{"userId":{}}}}}"#,
            Value::from("u\"1")
        );
        let msg = ServerMsg::Broadcast {
            event: RawJson::new(&event),
            from: Sender {
                user_id: "u\"1".into(),
            },
        };
        assert_eq!(msg.to_json(), old);
    }

    #[test]
    fn events_keep_their_bytes() {
        let fields = json!({"blockId": "b", "attempt": 1, "output": {"y": 1, "b": 2}});
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let mut old = serde_json::Map::new();
        old.insert("type".into(), "block.completed".into());
        old.insert("executionId".into(), "e".into());
        old.insert("workflowId".into(), "w".into());
        old.insert("seq".into(), 3.into());
        old.insert("ts".into(), 99.into());
        old.extend(fields.clone());
        let event = ExecutionEvent {
            kind: "block.completed",
            execution_id: "e",
            workflow_id: "w",
            seq: 3,
            ts: 99,
            fields,
        };
        assert_eq!(event.to_json(), Value::Object(old).to_string());
    }

    #[test]
    fn client_messages_decode_once() {
        assert_eq!(
            ClientMsg::decode(r#"{"type":"ping","id":3}"#),
            Ok(Some(ClientMsg::Connection(ConnectionMsg::Ping {
                id: json!(3)
            })))
        );
        assert_eq!(
            ClientMsg::decode(r#"{"type":"auth"}"#),
            Ok(Some(ClientMsg::Connection(ConnectionMsg::Auth {
                token: None
            })))
        );
        // Not answered: not JSON, no type, unknown, or a connection message that is wrong.
        for text in [
            "nope",
            "{}",
            r#"{"type":"hello"}"#,
            r#"{"type":"auth","token":5}"#,
        ] {
            assert_eq!(ClientMsg::decode(text), Ok(None), "{text}");
        }
        match ClientMsg::decode(r#"{"type":"executions.resume","after":{"e":4}}"#) {
            Ok(Some(ClientMsg::Execution(ExecutionRequest::Resume { after, running, .. }))) => {
                assert_eq!(after["e"], 4);
                assert!(running);
            }
            other => panic!("{other:?}"),
        }
        let text = r#"{"type":"execution.decide","executionId":"e","requestId":9}"#;
        let bad = ClientMsg::decode(text).unwrap_err();
        assert_eq!(bad.kind, "execution.decide");
        assert_eq!(bad.request_id, Some(json!(9)));
        // The complaint as the text parser words it (as refusals always said it).
        let e = serde_json::from_str::<ExecutionRequest>(text).unwrap_err();
        assert_eq!(bad.message, format!("execution.decide: {e}"));
    }
}
