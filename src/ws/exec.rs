//! Execution messages on the socket (`[5, json]`, see docs/protocol.md): start, cancel,
//! decide, re-run, and the replay a reconnecting editor asks for.

use resonant_protocol::{BadRequest, ExecutionRequest as Request, ServerMsg, MAX_RESUME};
use resonant_sync::Session;
use serde_json::Value;

use crate::db::executions as store;
use crate::db::{self, Action, Role};
use crate::engine::{EngineError, StartRequest};
use crate::AppState;

/// The connection's identity, as execution messages need it.
pub(crate) struct Who<'a> {
    pub user: &'a str,
    pub role: Role,
    pub workflow: Option<&'a str>,
}

fn reply(session: &Session, msg: ServerMsg) {
    session.peer().reply(&msg.encode());
}

fn refuse(session: &Session, request_id: &Option<Value>, code: &str, message: &str) {
    refuse_with(session, request_id, code, message, None);
}

/// Refusals of execution requests always carry `requestId` (`null` when there was none).
fn refuse_with(
    session: &Session,
    request_id: &Option<Value>,
    code: &str,
    message: &str,
    problems: Option<Value>,
) {
    reply(
        session,
        ServerMsg::Error {
            code: code.into(),
            message: message.into(),
            request_id: Some(request_id.clone().unwrap_or(Value::Null)),
            problems,
        },
    );
}

fn refuse_engine(session: &Session, request_id: &Option<Value>, e: EngineError) {
    let problems = match &e {
        EngineError::Invalid(problems) => {
            Some(serde_json::to_value(problems).expect("problems are plain JSON"))
        }
        _ => None,
    };
    let code = match &e {
        EngineError::Invalid(_) => "invalid-workflow",
        EngineError::BadRequest { .. } => "bad-request",
        EngineError::TokenLimit { .. } => "token-limit",
        EngineError::TooMany(_) => "too-many-executions",
        EngineError::Conflict(_) => "conflict",
        EngineError::KeyReused => "idempotency-key-reused",
        EngineError::Forbidden(_) => "forbidden",
        EngineError::Document(_) | EngineError::Db(_) => "unavailable",
    };
    if matches!(e, EngineError::Document(_) | EngineError::Db(_)) {
        tracing::error!(error = %e, "execution request failed");
    }
    refuse_with(session, request_id, code, &e.to_string(), problems);
}

/// Called before the session handles a frame: a replay request pauses live events for this
/// socket before the request opts it in to extensions, so no live event overtakes the replay.
pub(crate) fn before_handle(app: &AppState, session: &Session, who: &Who<'_>, request: &Request) {
    let Some(workflow) = who.workflow else {
        return;
    };
    // Only a request that will be answered pauses: a malformed one is refused, and must not
    // leave the connection without events.
    if matches!(request, Request::Resume { after, .. } if after.len() <= MAX_RESUME) {
        app.engine.events().pause(workflow, session.peer().id());
    }
}

/// Refuses an execution request that did not parse, matched to its caller (who otherwise
/// waits out its own timeout).
pub(crate) fn refuse_bad(session: &Session, who: &Who<'_>, bad: &BadRequest) {
    let message = if who.workflow.is_none() {
        NO_WORKFLOW
    } else {
        &bad.message
    };
    refuse(session, &bad.request_id, "bad-request", message);
}

const NO_WORKFLOW: &str = "executions need a workflow-<id> room";

/// Handles an execution request.
pub(crate) async fn handle(app: &AppState, session: &Session, who: &Who<'_>, request: Request) {
    let Some(workflow) = who.workflow else {
        refuse(
            session,
            &request.request_id().cloned(),
            "bad-request",
            NO_WORKFLOW,
        );
        return;
    };
    let may_execute = who.role.allows(Action::Execute);
    match request {
        Request::Resume { after, running, .. } => {
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
                );
                return;
            }
            if after.len() > MAX_RESUME {
                refuse(
                    session,
                    &None,
                    "bad-request",
                    &format!("executions.resume: at most {MAX_RESUME} executions"),
                );
                return;
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
                    refuse(session, &request_id, "not-found", "no such workflow");
                    return;
                }
                Err(e) => {
                    refuse_engine(session, &request_id, e.into());
                    return;
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
                    ServerMsg::ExecutionAccepted {
                        execution_id: id,
                        created,
                        rerun_of: None,
                        request_id,
                    },
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
                return;
            };
            // On a cluster the run may be on another node: the request is stored, and its
            // owner sees it at its next lease renewal.
            let cancelling = match app.engine.cancel_anywhere(&execution_id).await {
                Ok(c) => c,
                Err(e) => return refuse_engine(session, &request_id, e),
            };
            if cancelling {
                // Acknowledged at once, so a client can tell "asked" from "lost"; the
                // `execution.cancelled` event follows once the blocks have wound down.
                reply(
                    session,
                    ServerMsg::ExecutionCancelling {
                        execution_id,
                        request_id,
                    },
                );
            } else {
                refuse(
                    session,
                    &request_id,
                    "conflict",
                    "the execution is not running",
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
                return;
            };
            let user = match db::user_by_id(&app.db, who.user).await {
                Ok(Some(u)) => u,
                _ => {
                    refuse(
                        session,
                        &request_id,
                        "unavailable",
                        "could not read your user",
                    );
                    return;
                }
            };
            match app
                .engine
                .decide(&row, &block_id, &user, approved, comment)
                .await
            {
                Ok(()) => reply(
                    session,
                    ServerMsg::ExecutionDecided {
                        execution_id,
                        block_id,
                        request_id,
                    },
                ),
                Err(e) => refuse_engine(session, &request_id, e),
            }
        }
        Request::Rerun {
            execution_id,
            from_block,
            document,
            idempotency_key,
            request_id,
        } => {
            let live = match document.as_deref() {
                None | Some("pinned") => false,
                Some("live") => true,
                Some(_) => {
                    return refuse_engine(
                        session,
                        &request_id,
                        EngineError::BadRequest {
                            field: "document",
                            message: "must be pinned or live".into(),
                        },
                    )
                }
            };
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
                return;
            };
            let opts = crate::engine::Rerun {
                from: from_block.as_deref(),
                live,
                idempotency_key: idempotency_key.as_deref(),
            };
            match app.engine.rerun_with(&row, &opts, who.user).await {
                Ok((id, created)) => reply(
                    session,
                    ServerMsg::ExecutionAccepted {
                        execution_id: id,
                        created,
                        rerun_of: Some(execution_id),
                        request_id,
                    },
                ),
                Err(e) => refuse_engine(session, &request_id, e),
            }
        }
    }
}

fn forbid(session: &Session, request_id: &Option<Value>) {
    refuse(
        session,
        request_id,
        "forbidden",
        "your role may not run or control executions",
    );
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
            );
            None
        }
    }
}
