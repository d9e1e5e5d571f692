//! Executions over REST: start (idempotent), list, get with block results and events,
//! cancel, approve/reject a human block, re-run from a failed block.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::workflows::visible;
use super::{require, ApiError, Caller, Json, Page, PageQuery, Path, Query};
use crate::db::executions::{self as store, BlockRow, ExecutionRow};
use crate::db::{self, Action};
use crate::engine::{EngineError, StartRequest};
use crate::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_executions, start_execution))
        .routes(routes!(get_execution))
        .routes(routes!(get_events))
        .routes(routes!(get_block))
        .routes(routes!(cancel_execution))
        .routes(routes!(decide))
        .routes(routes!(rerun))
}

/// An execution.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// Id.
    pub id: String,
    /// The workflow.
    pub workflow_id: String,
    /// Its workspace.
    pub workspace_id: String,
    /// Who started it.
    pub user_id: String,
    /// pending, running, completed, failed or cancelled.
    pub status: String,
    /// The input object.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Output block id → its output, once completed.
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// The start options.
    #[schema(value_type = Object)]
    pub options: Value,
    /// The block that last started.
    pub current_block_id: Option<String>,
    /// Tokens its AI calls used.
    pub tokens_used: i64,
    /// Their cost in US dollars.
    pub cost_usd: f64,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub completed_at: Option<i64>,
    /// Run time.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The execution it re-runs.
    pub rerun_of: Option<String>,
    /// The trigger that started it (`null`: a user did).
    pub trigger_id: Option<String>,
    /// The published version it ran (`null`: the live document).
    pub version_id: Option<String>,
    /// When retention removed its events, block results, graph and large values (Unix ms).
    pub pruned_at: Option<i64>,
    /// The blocks and connections that ran (pinned at the start).
    #[schema(value_type = Object)]
    pub graph: Value,
    /// The document's state vector when it started (base64 of the Yjs v1 encoding).
    pub state_vector: String,
    /// Per-block results (in `GET /executions/{id}` only), one page of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_results: Option<Vec<BlockResult>>,
    /// Pass as `blocksCursor` for the next page of `blockResults`; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_blocks_cursor: Option<String>,
    /// Its first 1000 events, with `?events=true` (more: `GET /executions/{id}/events`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub events: Option<Vec<Value>>,
}

/// One block's result in an execution.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockResult {
    /// The block's state.
    #[serde(flatten)]
    pub row: BlockRow,
    /// Its output.
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

impl Execution {
    fn from_row(r: ExecutionRow, blocks: Option<Vec<BlockRow>>) -> Execution {
        use base64::Engine as _;
        Execution {
            input: json_of(&r.input),
            output: r.output.as_deref().map(json_of),
            options: json_of(&r.options),
            graph: json_of(&r.graph),
            state_vector: base64::engine::general_purpose::STANDARD.encode(&r.state_vector),
            id: r.id,
            workflow_id: r.workflow_id,
            workspace_id: r.workspace_id,
            user_id: r.user_id,
            status: r.status,
            current_block_id: r.current_block_id,
            tokens_used: r.tokens_used,
            cost_usd: r.cost_usd,
            started_at: r.started_at,
            completed_at: r.completed_at,
            duration_ms: r.duration_ms,
            error: r.error,
            rerun_of: r.rerun_of,
            trigger_id: r.trigger_id,
            version_id: r.version_id,
            pruned_at: r.pruned_at,
            block_results: blocks.map(|bs| bs.into_iter().map(BlockResult::from).collect()),
            next_blocks_cursor: None,
            events: None,
        }
    }
}

impl From<BlockRow> for BlockResult {
    fn from(row: BlockRow) -> Self {
        BlockResult {
            output: row.output.as_deref().map(json_of),
            row,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(problems) => ApiError::InvalidWorkflow(problems),
            EngineError::BadRequest { field, message } => ApiError::field(field, message),
            EngineError::TokenLimit { .. } => ApiError::TokenLimit(e.to_string()),
            EngineError::TooMany(m) => ApiError::TooManyExecutions(m),
            EngineError::Conflict(m) => ApiError::Conflict(m),
            EngineError::KeyReused => ApiError::KeyReused(e.to_string()),
            EngineError::Forbidden(m) => ApiError::Forbidden(m),
            EngineError::Document(m) => {
                tracing::error!(error = m, "reading a workflow document for an execution");
                ApiError::Unavailable("the workflow's document could not be read".into())
            }
            EngineError::Db(e) => e.into(),
        }
    }
}

/// An execution the caller can see (through its workflow), with the caller's role.
async fn visible_execution(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(ExecutionRow, db::Role), ApiError> {
    if !db::valid_id(id) {
        return Err(ApiError::NotFound);
    }
    let row = store::execution(&app.db, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (_, role) = visible(app, caller, &row.workflow_id).await?;
    Ok((row, role))
}

#[utoipa::path(post, path = "/api/v1/workflows/{id}/executions", tag = "executions",
    params(("id" = String, Path, description = "Workflow id")), request_body = StartRequest,
    responses((status = 201, description = "Started", body = Execution),
              (status = 200, description = "An earlier request with this idempotency key started it", body = Execution),
              (status = 402, description = "The caller's token allowance is used up", body = super::ErrorBody),
              (status = 429, description = "The caller or the workspace has as many executions running as it may (`too_many_executions`)", body = super::ErrorBody),
              (status = 422, description = "The workflow is not valid; `problems` names each block at fault", body = super::ErrorBody)))]
async fn start_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<StartRequest>,
) -> Result<(StatusCode, axum::Json<Execution>), ApiError> {
    let (wf, role) = visible(&app, &caller, &id).await?;
    require(role, Action::Execute)?;
    let (exec, created) = app.engine.start(&wf, caller.id(), body).await?;
    let row = store::execution(&app.db, &exec)
        .await?
        .ok_or(ApiError::Internal)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(Execution::from_row(row, None))))
}

/// `GET /workflows/{id}/executions` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListExecutions {
    /// Only executions with this status.
    pub status: Option<String>,
    /// Only executions this trigger started; `manual` for those a user started.
    #[serde(rename = "triggerId")]
    #[param(rename = "triggerId")]
    pub trigger_id: Option<String>,
    /// Items per page, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A workflow's executions, newest first (its run history), with their trigger, status,
/// duration, tokens and cost.
#[utoipa::path(get, path = "/api/v1/workflows/{id}/executions", tag = "executions",
    params(("id" = String, Path, description = "Workflow id"), ListExecutions),
    responses((status = 200, body = Page<Execution>)))]
async fn list_executions(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ListExecutions>,
) -> Result<axum::Json<Page<Execution>>, ApiError> {
    visible(&app, &caller, &id).await?;
    if let Some(s) = &q.status {
        if !matches!(
            s.as_str(),
            "pending" | "running" | "completed" | "failed" | "cancelled"
        ) {
            return Err(ApiError::field(
                "status",
                "must be pending, running, completed, failed or cancelled",
            ));
        }
    }
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let trigger = match q.trigger_id.as_deref() {
        None => store::TriggerFilter::Any,
        Some("manual") => store::TriggerFilter::Manual,
        Some(t) if crate::db::valid_id(t) => store::TriggerFilter::Trigger(t),
        Some(_) => {
            return Err(ApiError::field(
                "triggerId",
                "must be a trigger id or manual",
            ))
        }
    };
    let rows = store::executions(
        &app.db,
        &id,
        q.status.as_deref(),
        trigger,
        page.id_cursor()?,
        limit,
    )
    .await?;
    let items: Vec<Execution> = rows
        .into_iter()
        .map(|r| Execution::from_row(r, None))
        .collect();
    Ok(axum::Json(Page::new(items, limit, |e| e.id.clone())))
}

/// `GET /executions/{id}` options.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct GetExecution {
    /// Include the first 1000 events.
    pub events: Option<bool>,
    /// Block results per page, 1–1000 (default 500): a run of many loop iterations has a
    /// row per block per iteration.
    #[param(minimum = 1, maximum = 1000)]
    pub blocks_limit: Option<i64>,
    /// The `nextBlocksCursor` of the previous page.
    pub blocks_cursor: Option<String>,
}

/// A block page cursor: the last row's `started_at` and block key, opaque to clients.
fn blocks_cursor(row: &BlockRow) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{}", row.started_at, row.block_id))
}

fn parse_blocks_cursor(c: &str) -> Result<(i64, String), ApiError> {
    use base64::Engine as _;
    let bad = || ApiError::field("blocksCursor", "not a cursor this API returned");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = text.split_once(':').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_owned()))
}

#[utoipa::path(get, path = "/api/v1/executions/{id}", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), GetExecution),
    responses((status = 200, body = Execution)))]
async fn get_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<GetExecution>,
) -> Result<axum::Json<Execution>, ApiError> {
    let (row, _) = visible_execution(&app, &caller, &id).await?;
    let limit = q.blocks_limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("blocksLimit", "must be from 1 to 1000"));
    }
    let after = q
        .blocks_cursor
        .as_deref()
        .map(parse_blocks_cursor)
        .transpose()?;
    let mut blocks = store::blocks_page(
        &app.db,
        &row.id,
        after.as_ref().map(|(at, id)| (*at, id.as_str())),
        limit + 1,
    )
    .await?;
    let more = blocks.len() as i64 > limit;
    blocks.truncate(limit as usize);
    let next = if more {
        blocks.last().map(blocks_cursor)
    } else {
        None
    };
    let events = if q.events == Some(true) {
        let rows = store::events(&app.db, &row.workflow_id, &row.id, 0, 1000).await?;
        Some(rows.into_iter().map(|(_, e)| json_of(&e)).collect())
    } else {
        None
    };
    let mut e = Execution::from_row(row, Some(blocks));
    e.next_blocks_cursor = next;
    e.events = events;
    Ok(axum::Json(e))
}

/// `GET /executions/{id}/events` range.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this seq (default 0: from the start).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// At most this many, 1–1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A page of an execution's events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Events {
    /// The events, in seq order, as sent over the socket.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// The last seq in this page (pass as `after` for the next); absent when empty.
    pub last_seq: Option<i64>,
}

/// An execution's events, in seq order: a page of JSON, or, when the request accepts
/// `text/event-stream`, a Server-Sent Events stream for API callers without a socket. The
/// stream sends each event as `id: <seq>`, `event: <type>`, `data: <the event's JSON>`,
/// starting after `Last-Event-ID` (a reconnecting client's) or `after`, and ends after the
/// execution's last event.
#[utoipa::path(get, path = "/api/v1/executions/{id}/events", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), EventsQuery,
           ("Last-Event-ID" = Option<i64>, Header, description = "Server-Sent Events: the seq to resume after")),
    responses((status = 200, body = Events, description = "A page of events (JSON), or with `Accept: text/event-stream` a stream of them",
        content(
            (Events = "application/json"),
            (String = "text/event-stream")
        ))))]
async fn get_events(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (row, _) = visible_execution(&app, &caller, &id).await?;
    let mut after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::field("after", "must not be negative"));
    }
    let limit = q.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "must be from 1 to 1000"));
    }
    let wants_stream = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if wants_stream {
        if let Some(last) = headers.get("last-event-id") {
            after = last
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .ok_or_else(|| {
                    ApiError::field("Last-Event-ID", "must be a seq this stream sent")
                })?;
        }
        let slot = stream_slot(&app)?;
        return Ok(event_stream(app, row, after, slot).into_response());
    }
    let rows = store::events(&app.db, &row.workflow_id, &row.id, after, limit).await?;
    let last_seq = rows.last().map(|(s, _)| *s);
    Ok(axum::Json(Events {
        events: rows.into_iter().map(|(_, e)| json_of(&e)).collect(),
        last_seq,
    })
    .into_response())
}

/// How often a stream reads the log when nothing was stored on this node (another node may
/// run the execution).
const STREAM_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// A place among the event streams open on this node (`--max-event-streams`); 503 when
/// they are all taken.
fn stream_slot(app: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    app.event_streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::Busy(
            "too many event streams are open on this server; retry shortly, or follow the run \
             with `GET …/events?after=`"
                .into(),
            std::time::Duration::from_secs(5),
        )
    })
}

/// The Server-Sent Events stream of an execution's events after `after`, holding `slot`
/// while it is open.
fn event_stream(
    app: AppState,
    row: ExecutionRow,
    mut after: i64,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            let stored = app.engine.events().stored();
            tokio::pin!(stored);
            stored.as_mut().enable();
            let rows = match store::events(&app.db, &row.workflow_id, &row.id, after, 500).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(execution = %row.id, error = %e, "an event stream could not read the log");
                    return;
                }
            };
            let mut ended = false;
            if rows.is_empty() {
                // Caught up with an execution that has ended: nothing more will come.
                match store::execution(&app.db, &row.id).await {
                    Ok(Some(r)) if matches!(r.status.as_str(), "pending" | "running") => {}
                    _ => return,
                }
            }
            for (seq, json) in rows {
                after = seq;
                let kind = serde_json::from_str::<Value>(&json)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "message".into());
                ended |= matches!(
                    kind.as_str(),
                    "execution.completed" | "execution.failed" | "execution.cancelled"
                );
                let event = Event::default().id(seq.to_string()).event(kind).data(json);
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if ended {
                return;
            }
            tokio::select! {
                _ = stored => {}
                _ = tokio::time::sleep(STREAM_POLL) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[utoipa::path(get, path = "/api/v1/executions/{id}/blocks/{block}", tag = "executions",
    params(("id" = String, Path, description = "Execution id"),
           ("block" = String, Path, description = "Block key: its id, or `<loop>[<i>]/<id>` inside a loop iteration (percent-encoded)")),
    responses((status = 200, body = BlockResult)))]
async fn get_block(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, block)): Path<(String, String)>,
) -> Result<axum::Json<BlockResult>, ApiError> {
    let (row, _) = visible_execution(&app, &caller, &id).await?;
    let found = store::blocks(&app.db, &row.id)
        .await?
        .into_iter()
        .find(|b| b.block_id == block)
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(found.into()))
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/cancel", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses((status = 202, description = "Cancelling: `execution.cancelled` follows")))]
async fn cancel_execution(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (row, role) = visible_execution(&app, &caller, &id).await?;
    require(role, Action::Execute)?;
    // On a cluster the run may be on another node: the request is stored, and its owner
    // sees it at its next lease renewal.
    if app.engine.cancel_anywhere(&row.id).await? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::Conflict(format!(
            "the execution is {}",
            row.status
        )))
    }
}

/// A decision on a waiting human block.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionBody {
    /// Approve (true) or reject (false).
    pub approved: bool,
    /// A comment kept with the decision (up to 2000 characters).
    #[schema(max_length = 2000)]
    pub comment: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/blocks/{block}/decision", tag = "executions",
    params(("id" = String, Path, description = "Execution id"),
           ("block" = String, Path, description = "The waiting human block's key")),
    request_body = DecisionBody,
    responses((status = 204, description = "Decided")))]
async fn decide(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, block)): Path<(String, String)>,
    Json(body): Json<DecisionBody>,
) -> Result<StatusCode, ApiError> {
    let (row, role) = visible_execution(&app, &caller, &id).await?;
    require(role, Action::Execute)?;
    app.engine
        .decide(&row, &block, &caller.0.user, body.approved, body.comment)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Where a re-run starts.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RerunBody {
    /// The block to re-run from (default: the one that failed). Blocks that do not depend on
    /// it keep their stored results, and their tokens are not paid again.
    pub from_block: Option<String>,
    /// `pinned` (default): the graph the execution ran. `live`: the workflow's document as
    /// its editors have it now ("run from here"); results are reused for blocks still in it.
    pub document: Option<RerunDocument>,
    /// A retried request with the same key starts nothing and returns the first re-run
    /// (200); the same key for another execution's re-run is 422.
    pub idempotency_key: Option<String>,
}

/// Which graph a re-run runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RerunDocument {
    /// The graph the execution ran.
    Pinned,
    /// The workflow's live document.
    Live,
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/rerun", tag = "executions",
    params(("id" = String, Path, description = "Execution id")), request_body = RerunBody,
    responses((status = 201, description = "The new execution", body = Execution),
              (status = 200, description = "An earlier request with this idempotency key started it", body = Execution)))]
async fn rerun(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<RerunBody>,
) -> Result<(StatusCode, axum::Json<Execution>), ApiError> {
    let (row, role) = visible_execution(&app, &caller, &id).await?;
    require(role, Action::Execute)?;
    let opts = crate::engine::Rerun {
        from: body.from_block.as_deref(),
        live: body.document == Some(RerunDocument::Live),
        idempotency_key: body.idempotency_key.as_deref(),
    };
    let (new, created) = app.engine.rerun_with(&row, &opts, caller.id()).await?;
    let row = store::execution(&app.db, &new)
        .await?
        .ok_or(ApiError::Internal)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(Execution::from_row(row, None))))
}
