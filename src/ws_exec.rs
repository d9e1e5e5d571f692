//! Execution messages on the socket (`[5, json]`, see docs/protocol.md): start, cancel,
//! decide, re-run, and the replay a reconnecting editor asks for.

use std::collections::HashMap;

use resonant_sync::{protocol, Session};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::db::{self, Action, Role};
use crate::db::executions as store;
use crate::engine::{EngineError, StartRequest};
use crate::AppState;

/// The connection's identity, as execution messages need it.
pub(crate) struct Who<'a> {
    pub user: &'a str,
    pub role: Role,
    pub workflow: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
enum Request {
    #[serde(rename = "execution.start")]
    Start {
        #[serde(default)]
        input: Option<Value>,
        #[serde(default)]
        priority: Option<String>,
        #[serde(default)]
        idempotency_key: Option<String>,
        #[serde(default)]
        max_concurrency: Option<usize>,
        #[serde(default)]
        request_id: Option<Value>,
    },
    #[serde(rename = "execution.cancel")]
    Cancel {
        execution_id: String,
        #[serde(default)]
        request_id: Option<Value>,
    },
    #[serde(rename = "execution.decide")]
    Decide {
        execution_id: String,
        block_id: String,
        approved: bool,
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        request_id: Option<Value>,
    },
    #[serde(rename = "execution.rerun")]
    Rerun {
        execution_id: String,
        #[serde(default)]
        from_block: Option<String>,
        #[serde(default)]
        request_id: Option<Value>,
    },
    #[serde(rename = "executions.resume")]
    Resume {
        #[serde(default)]
        after: HashMap<String, i64>,
        #[serde(default = "yes")]
        running: bool,
    },
}

fn yes() -> bool {
    true
}

/// Most executions one replay request may name (each costs a read of the log).
const MAX_RESUME: usize = 100;

fn reply(session: &Session, msg: Value) {
    session
        .peer()
        .reply(&protocol::encode_stateless(&msg.to_string()));
}

fn refuse(session: &Session, request_id: &Option<Value>, code: &str, message: &str, extra: Value) {
    let mut msg =
        json!({"type": "error", "code": code, "message": message, "requestId": request_id});
    if let (Value::Object(m), Value::Object(e)) = (&mut msg, extra) {
        m.extend(e);
    }
    reply(session, msg);
}

fn refuse_engine(session: &Session, request_id: &Option<Value>, e: EngineError) {
    let extra = match &e {
        EngineError::Invalid(problems) => json!({ "problems": problems }),
        _ => json!({}),
    };
    let code = match &e {
        EngineError::Invalid(_) => "invalid-workflow",
        EngineError::BadRequest { .. } => "bad-request",
        EngineError::TokenLimit { .. } => "token-limit",
        EngineError::TooMany(_) => "too-many-executions",
        EngineError::Conflict(_) => "conflict",
        EngineError::Forbidden(_) => "forbidden",
        EngineError::Document(_) | EngineError::Db(_) => "unavailable",
    };
    if matches!(e, EngineError::Document(_) | EngineError::Db(_)) {
        tracing::error!(error = %e, "execution request failed");
    }
    refuse(session, request_id, code, &e.to_string(), extra);
}

/// Called before the session handles a frame: a replay request pauses live events for this
/// socket before the request opts it in to extensions, so no live event overtakes the replay.
pub(crate) fn before_handle(app: &AppState, session: &Session, who: &Who<'_>, frame: &[u8]) {
    let (Some(workflow), Some(&first)) = (who.workflow, frame.first()) else {
        return;
    };
    if first != protocol::MSG_STATELESS as u8 {
        return;
    }
    if let Ok(protocol::Incoming::Stateless(text)) = protocol::decode(frame) {
        // Only a request that will be answered pauses: a malformed one is refused, and must
        // not leave the connection without events.
        if text.contains("executions.resume")
            && matches!(serde_json::from_str::<Request>(text), Ok(Request::Resume { after, .. }) if after.len() <= MAX_RESUME)
        {
            app.engine.events().pause(workflow, session.peer().id());
        }
    }
}

/// Handles an execution message; false when `frame` is not one (so others may handle it).
pub(crate) async fn handle(app: &AppState, session: &Session, who: &Who<'_>, frame: &[u8]) -> bool {
    if frame.first() != Some(&(protocol::MSG_STATELESS as u8)) {
        return false;
    }
    let Ok(protocol::Incoming::Stateless(text)) = protocol::decode(frame) else {
        return false;
    };
    let parsed = serde_json::from_str::<Value>(text).ok();
    let kind = parsed
        .as_ref()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
    let Some(kind) = kind.filter(|k| k.starts_with("execution.") || k.starts_with("executions."))
    else {
        return false;
    };
    // Read before the typed parse, so even a refusal of a request that names no workflow or
    // does not parse is matched to its caller, who otherwise waits out its own timeout.
    let early_id = parsed
        .as_ref()
        .and_then(|v| v.get("requestId"))
        .filter(|id| !id.is_null())
        .cloned();
    let Some(workflow) = who.workflow else {
        refuse(
            session,
            &early_id,
            "bad-request",
            "executions need a workflow-<id> room",
            json!({}),
        );
        return true;
    };
    let request: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            refuse(
                session,
                &early_id,
                "bad-request",
                &format!("{kind}: {e}"),
                json!({}),
            );
            return true;
        }
    };
    let may_execute = who.role.allows(Action::Execute);
    match request {
        Request::Resume { after, running } => {
            if after.len() <= MAX_RESUME
                && app
                    .engine
                    .events()
                    .replay_busy(workflow, session.peer().id())
            {
                refuse(
                    session,
                    &None,
                    "replay-busy",
                    "a replay for this connection is still being sent",
                    json!({}),
                );
                return true;
            }
            if after.len() > MAX_RESUME {
                refuse(
                    session,
                    &None,
                    "bad-request",
                    &format!("executions.resume: at most {MAX_RESUME} executions"),
                    json!({}),
                );
                return true;
            }
            app.engine
                .events()
                .replay(workflow, session.peer().clone(), after, running);
        }
        Request::Start {
            input,
            priority,
            idempotency_key,
            max_concurrency,
            request_id,
        } => {
            if !may_execute {
                return forbid(session, &request_id);
            }
            let wf = match db::workflow(&app.db, workflow).await {
                Ok(Some(wf)) => wf,
                Ok(None) => {
                    refuse(
                        session,
                        &request_id,
                        "not-found",
                        "no such workflow",
                        json!({}),
                    );
                    return true;
                }
                Err(e) => {
                    refuse_engine(session, &request_id, e.into());
                    return true;
                }
            };
            let req = StartRequest {
                input,
                priority,
                idempotency_key,
                max_concurrency,
            };
            match app.engine.start(&wf, who.user, req).await {
                Ok((id, created)) => reply(
                    session,
                    json!({"type": "execution.accepted", "executionId": id, "created": created, "requestId": request_id}),
                ),
                Err(e) => refuse_engine(session, &request_id, e),
            }
        }
        Request::Cancel {
            execution_id,
            request_id,
        } => {
            let Some(_) = controlled(
                app,
                session,
                may_execute,
                workflow,
                &execution_id,
                &request_id,
            )
            .await
            else {
                return true;
            };
            if app.engine.cancel(&execution_id) {
                // Acknowledged at once, so a client can tell "asked" from "lost"; the
                // `execution.cancelled` event follows once the blocks have wound down.
                reply(
                    session,
                    json!({"type": "execution.cancelling", "executionId": execution_id, "requestId": request_id}),
                );
            } else {
                refuse(
                    session,
                    &request_id,
                    "conflict",
                    "the execution is not running",
                    json!({}),
                );
            }
        }
        Request::Decide {
            execution_id,
            block_id,
            approved,
            comment,
            request_id,
        } => {
            let Some(row) = controlled(
                app,
                session,
                may_execute,
                workflow,
                &execution_id,
                &request_id,
            )
            .await
            else {
                return true;
            };
            let user = match db::user_by_id(&app.db, who.user).await {
                Ok(Some(u)) => u,
                _ => {
                    refuse(
                        session,
                        &request_id,
                        "unavailable",
                        "could not read your user",
                        json!({}),
                    );
                    return true;
                }
            };
            match app
                .engine
                .decide(&row, &block_id, &user, approved, comment)
                .await
            {
                Ok(()) => reply(
                    session,
                    json!({"type": "execution.decided", "executionId": execution_id, "blockId": block_id, "requestId": request_id}),
                ),
                Err(e) => refuse_engine(session, &request_id, e),
            }
        }
        Request::Rerun {
            execution_id,
            from_block,
            request_id,
        } => {
            let Some(row) = controlled(
                app,
                session,
                may_execute,
                workflow,
                &execution_id,
                &request_id,
            )
            .await
            else {
                return true;
            };
            match app
                .engine
                .rerun(&row, from_block.as_deref(), who.user)
                .await
            {
                Ok(id) => reply(
                    session,
                    json!({"type": "execution.accepted", "executionId": id, "created": true, "rerunOf": execution_id, "requestId": request_id}),
                ),
                Err(e) => refuse_engine(session, &request_id, e),
            }
        }
    }
    true
}

fn forbid(session: &Session, request_id: &Option<Value>) -> bool {
    refuse(
        session,
        request_id,
        "forbidden",
        "your role may not run or control executions",
        json!({}),
    );
    true
}

/// The execution, if this connection may control executions and it belongs to this socket's
/// workflow (else an error reply).
async fn controlled(
    app: &AppState,
    session: &Session,
    may_execute: bool,
    workflow: &str,
    id: &str,
    request_id: &Option<Value>,
) -> Option<store::ExecutionRow> {
    if !may_execute {
        forbid(session, request_id);
        return None;
    }
    let row = if db::valid_id(id) {
        store::execution(&app.db, id).await.ok().flatten()
    } else {
        None
    };
    match row {
        Some(r) if r.workflow_id == workflow => Some(r),
        _ => {
            refuse(
                session,
                request_id,
                "not-found",
                "no such execution in this workflow",
                json!({}),
            );
            None
        }
    }
}
