//! One execution in progress: the scheduler that runs each scope's blocks as their inputs
//! become ready, the block behaviours, and the events they emit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::graph::{Block, BlockKind};
use super::plan::Plan;
use super::template;
use super::{Inner, Options};
use crate::db::executions::{BlockRow, StatusUpdate, Write};
use crate::db::now_ms;

/// Outputs larger than this travel by reference in events (fetched over REST).
const INLINE_OUTPUT_BYTES: usize = 16 << 10;

/// A human decision on a waiting block.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Approved or rejected.
    pub approved: bool,
    /// Who decided (`None` when the timeout did).
    pub by: Option<String>,
    /// Their comment.
    pub comment: Option<String>,
    /// Whether the timeout decided.
    #[serde(default)]
    pub timed_out: bool,
    /// Unix ms.
    pub at: i64,
}

/// What the outside world can do to a running execution.
pub struct Control {
    /// Cancels it.
    pub cancel: CancellationToken,
    /// Human blocks waiting for a decision, by block key.
    pub waiting: Mutex<HashMap<String, oneshot::Sender<Decision>>>,
    /// Its workflow.
    pub workflow: String,
}

/// An execution's shared state while it runs.
pub struct Run {
    pub(super) engine: Arc<Inner>,
    pub(super) id: String,
    pub(super) workflow: Arc<str>,
    pub(super) workspace: String,
    pub(super) user: String,
    pub(super) plan: Plan,
    pub(super) input: Value,
    /// `input` for templates, converted once.
    pub(super) input_value: minijinja::Value,
    pub(super) options: Options,
    pub(super) control: Arc<Control>,
    /// Block states from before (a restart or the execution re-run), by block key.
    pub(super) prior: HashMap<String, BlockRow>,
    pub(super) seq: Mutex<i64>,
    pub(super) outputs: Mutex<HashMap<String, Value>>,
    pub(super) totals: Mutex<(i64, f64)>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) started_at: i64,
    pub(super) started: Instant,
    /// Set when the run must stop for a reason other than a block's failure (token limit).
    pub(super) abort: Mutex<Option<String>>,
    pub(super) keys: super::io::Keys,
    /// Resumed after a restart: each block's start is committed before it runs, so a block
    /// that takes the process down is counted (see [`interrupted`]).
    pub(super) resumed: bool,
    /// Bytes its template renders may still output (`--template-execution-bytes`).
    pub(super) template_left: std::sync::atomic::AtomicUsize,
    /// Its share of the server-wide allowance (`--template-server-bytes`).
    pub(super) template_pool: TemplatePool,
    /// Loop iterations it may still start (`--max-iterations-per-execution`).
    pub(super) iterations_left: std::sync::atomic::AtomicUsize,
    /// Human blocks (by id) that have sent their approval emails: once per execution.
    pub(super) notified: Mutex<std::collections::HashSet<String>>,
}

/// An execution's share of the server-wide template allowance: what it took goes back to
/// the pool when the execution ends (its outputs are dropped with it).
pub(super) struct TemplatePool {
    pool: Arc<std::sync::atomic::AtomicUsize>,
    taken: std::sync::atomic::AtomicUsize,
}

impl TemplatePool {
    pub(super) fn new(pool: Arc<std::sync::atomic::AtomicUsize>) -> TemplatePool {
        TemplatePool {
            pool,
            taken: 0.into(),
        }
    }

    /// Takes `bytes` from the pool if it holds that many.
    fn take(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering;
        let ok = self
            .pool
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .is_ok();
        if ok {
            self.taken.fetch_add(bytes, Ordering::Relaxed);
        }
        ok
    }
}

impl Drop for TemplatePool {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.pool
            .fetch_add(*self.taken.get_mut(), Ordering::Relaxed);
    }
}

/// `blocks.<id>.output` for templates, read on demand.
struct BlocksView {
    run: Arc<Run>,
    prefix: String,
}

impl std::fmt::Debug for BlocksView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("blocks")
    }
}

impl minijinja::value::Object for BlocksView {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let id = key.as_str()?;
        let outputs = self.run.outputs.lock();
        // This iteration's block first, then the enclosing iterations', then the top level.
        let mut prefix = self.prefix.as_str();
        let v = loop {
            if let Some(v) = outputs.get(&format!("{prefix}{id}")) {
                break v;
            }
            if prefix.is_empty() {
                return None;
            }
            let trimmed = prefix.trim_end_matches('/');
            prefix = match trimmed.rfind('/') {
                Some(i) => &trimmed[..=i],
                None => "",
            };
        };
        Some(minijinja::context! { output => minijinja::Value::from_serialize(v) })
    }
}

/// How a block ended.
enum Outcome {
    Done {
        output: Value,
        route: Option<String>,
    },
    Skipped,
    Failed(String),
}

#[derive(Clone)]
enum Edge {
    Pending,
    Active(Value),
    Dead,
}

/// The context of one loop iteration.
#[derive(Clone)]
struct LoopCtx {
    item: Value,
    index: usize,
}

impl Run {
    /// Emits an event: `{type, executionId, seq, ts, …fields}`.
    pub(super) fn emit(&self, kind: &str, fields: Value) {
        let mut seq = self.seq.lock();
        *seq += 1;
        let mut obj = Map::new();
        obj.insert("type".into(), kind.into());
        obj.insert("executionId".into(), self.id.clone().into());
        obj.insert("workflowId".into(), self.workflow.to_string().into());
        obj.insert("seq".into(), (*seq).into());
        obj.insert("ts".into(), now_ms().into());
        if let Value::Object(f) = fields {
            obj.extend(f);
        }
        // Sent to the writer under the seq lock, so seqs reach the log in order.
        self.engine.events.event(
            &self.workflow,
            &self.id,
            *seq,
            Value::Object(obj).to_string(),
        );
    }

    fn status(&self, status: &'static str, current: Option<String>) {
        let (tokens, cost) = *self.totals.lock();
        self.engine.events.write(Write::Status(StatusUpdate {
            execution: self.id.clone(),
            status,
            current_block: current,
            tokens,
            cost,
            output: None,
            error: None,
            completed_at: None,
            duration_ms: None,
        }));
    }

    fn block_row(&self, key: &str, status: &str, attempt: i64) -> BlockRow {
        BlockRow {
            execution_id: self.id.clone(),
            block_id: key.to_owned(),
            status: status.to_owned(),
            attempt,
            output: None,
            error: None,
            provider: None,
            model: None,
            tokens_used: 0,
            cost_usd: 0.0,
            wake_at: None,
            decision: None,
            started_at: now_ms(),
            completed_at: None,
        }
    }

    /// Runs the whole execution and records how it ended.
    pub(super) async fn execute(self: Arc<Self>) {
        let fresh = *self.seq.lock() == 0;
        if fresh {
            self.emit(
                "execution.started",
                json!({"input": self.input, "blocks": self.plan.workflow.blocks.len(), "rerunOf": self.options.rerun_of}),
            );
            // A re-run shows the results it reuses, so its editors see the whole run.
            let mut reused: Vec<&BlockRow> = self
                .prior
                .values()
                .filter(|r| r.status == "completed" && !r.block_id.contains('/'))
                .collect();
            reused.sort_by_key(|r| (r.started_at, r.block_id.clone()));
            for r in reused {
                let output: Value = r
                    .output
                    .as_deref()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or(Value::Null);
                self.emit(
                    "block.completed",
                    json!({"blockId": r.block_id, "attempt": r.attempt, "output": output, "reused": true}),
                );
            }
        }
        self.status("running", None);
        let result = run_scope(
            self.clone(),
            0,
            String::new(),
            None,
            self.control.cancel.clone(),
        )
        .await;
        let (tokens, cost) = *self.totals.lock();
        // From the first start, across restarts.
        let duration = (now_ms() - self.started_at).max(self.started.elapsed().as_millis() as i64);
        let abort = self.abort.lock().clone();
        let (status, error, output) = match (result, abort) {
            (_, Some(reason)) => ("failed", Some(reason), None),
            (Ok(outputs), None) => {
                let mut collected = Map::new();
                for (i, b) in self.plan.workflow.blocks.iter().enumerate() {
                    if b.kind == BlockKind::Output {
                        if let Some(v) = outputs.get(&i) {
                            collected.insert(b.id.clone(), v.clone());
                        }
                    }
                }
                ("completed", None, Some(Value::Object(collected)))
            }
            (Err(_), None) if self.control.cancel.is_cancelled() => ("cancelled", None, None),
            (Err(e), None) => ("failed", Some(e.replace('\0', "\u{FFFD}")), None),
        };
        metrics::counter!("resonant_executions_total", "status" => status).increment(1);
        metrics::histogram!("resonant_execution_duration_seconds").record(duration as f64 / 1000.0);
        match status {
            "completed" => self.emit(
                "execution.completed",
                json!({"outputs": output, "tokens": tokens, "costUsd": cost, "durationMs": duration}),
            ),
            "cancelled" => self.emit(
                "execution.cancelled",
                json!({"tokens": tokens, "costUsd": cost, "durationMs": duration}),
            ),
            _ => self.emit(
                "execution.failed",
                json!({"error": error, "tokens": tokens, "costUsd": cost, "durationMs": duration}),
            ),
        }
        self.engine.events.write(Write::Status(StatusUpdate {
            execution: self.id.clone(),
            status,
            current_block: None,
            tokens,
            cost,
            output: output.map(|o| o.to_string()),
            error,
            completed_at: Some(now_ms()),
            duration_ms: Some(duration),
        }));
        self.engine.events.flush().await;
    }

    /// The template context of a block: the execution input, every finished block's output
    /// (this iteration's first, inside a loop), the block's upstream value and the loop item.
    /// Block outputs are looked up only when a template reads them, so a block's cost does
    /// not grow with the size of the workflow.
    fn context(
        self: &Arc<Self>,
        prefix: &str,
        upstream: &Value,
        lp: Option<&LoopCtx>,
    ) -> minijinja::Value {
        let blocks = minijinja::Value::from_object(BlocksView {
            run: self.clone(),
            prefix: prefix.to_owned(),
        });
        let upstream = minijinja::Value::from_serialize(upstream);
        match lp {
            Some(lp) => minijinja::context! {
                input => self.input_value.clone(),
                blocks => blocks,
                upstream => upstream,
                loop => minijinja::context! {
                    item => minijinja::Value::from_serialize(&lp.item),
                    index => lp.index,
                },
            },
            None => minijinja::context! {
                input => self.input_value.clone(),
                blocks => blocks,
                upstream => upstream,
            },
        }
    }

    pub(super) fn add_usage(&self, tokens: i64, cost: f64) {
        let mut t = self.totals.lock();
        t.0 += tokens;
        t.1 += cost;
    }

    /// Charges `bytes` of rendered text to the execution's template allowance and to the
    /// server's: a loop of renders, each within the per-render budget, still cannot fill
    /// memory and the store, and neither can many executions each within theirs.
    pub(super) fn spend_template(&self, bytes: usize) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        self.template_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .map_err(|_| {
                format!(
                    "this execution's templates rendered more than the {} bytes one execution \
                     may (--template-execution-bytes)",
                    self.engine.config.template_execution_bytes
                )
            })?;
        if !self.template_pool.take(bytes) {
            self.template_left.fetch_add(bytes, Ordering::Relaxed);
            return Err(format!(
                "running executions together rendered more than the {} bytes of template \
                 output the server holds at once (--template-server-bytes); try again when \
                 others have finished",
                self.engine.config.template_server_bytes
            ));
        }
        Ok(())
    }

    /// Stops the run for `reason` (not a block's own failure).
    pub(super) fn abort(&self, reason: String) {
        let mut a = self.abort.lock();
        if a.is_none() {
            *a = Some(reason);
        }
        drop(a);
        self.control.cancel.cancel();
    }
}

/// Runs one scope (the top level, or one loop iteration's body) to completion; returns the
/// outputs of its blocks by index, or why it failed.
fn run_scope(
    run: Arc<Run>,
    scope: usize,
    prefix: String,
    lp: Option<LoopCtx>,
    parent: CancellationToken,
) -> futures_util::future::BoxFuture<'static, Result<HashMap<usize, Value>, String>> {
    Box::pin(async move {
        let sc = &run.plan.scopes[scope];
        let wf = &run.plan.workflow;
        let mut edges: HashMap<usize, Edge> =
            sc.edges.iter().map(|&e| (e, Edge::Pending)).collect();
        let mut incoming: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut outgoing: HashMap<usize, Vec<usize>> = HashMap::new();
        for &e in sc.edges.iter().chain(sc.entries.iter()) {
            let c = &wf.connections[e];
            incoming
                .entry(run.plan.index[&c.target])
                .or_default()
                .push(e);
            if !sc.entries.contains(&e) {
                outgoing
                    .entry(run.plan.index[&c.source])
                    .or_default()
                    .push(e);
            }
        }
        for &e in &sc.entries {
            edges.insert(
                e,
                Edge::Active(lp.as_ref().map_or(Value::Null, |l| l.item.clone())),
            );
        }
        #[derive(PartialEq, Clone, Copy)]
        enum St {
            Waiting,
            Running,
            Finished,
        }
        let mut state: HashMap<usize, St> = sc.blocks.iter().map(|&b| (b, St::Waiting)).collect();
        let mut outputs: HashMap<usize, Value> = HashMap::new();
        let cancel = parent.child_token();
        let mut tasks: JoinSet<(usize, Outcome)> = JoinSet::new();
        let mut worklist: Vec<usize> = sc.blocks.clone();
        loop {
            if cancel.is_cancelled() {
                wind_down(&mut tasks).await;
                return Err("cancelled".into());
            }
            // Decide what became ready or skipped; skipping propagates through the worklist.
            while let Some(b) = worklist.pop() {
                if state[&b] != St::Waiting {
                    continue;
                }
                let ins = incoming.get(&b).cloned().unwrap_or_default();
                let block = &wf.blocks[b];
                let join = if block.kind == BlockKind::Merge {
                    block
                        .config
                        .get("join")
                        .and_then(|v| v.as_str())
                        .unwrap_or("all")
                } else {
                    "all-non-skipped"
                };
                let active: Vec<usize> = ins
                    .iter()
                    .copied()
                    .filter(|e| matches!(edges[e], Edge::Active(_)))
                    .collect();
                let dead = ins
                    .iter()
                    .filter(|e| matches!(edges[e], Edge::Dead))
                    .count();
                let pending = ins.len() - active.len() - dead;
                let decision = if ins.is_empty() || (join == "any" && !active.is_empty()) {
                    Some(true)
                } else if pending > 0 {
                    None
                } else if active.is_empty() || (join == "all" && dead > 0) {
                    Some(false)
                } else {
                    Some(true)
                };
                match decision {
                    None => {}
                    Some(false) => {
                        state.insert(b, St::Finished);
                        skip(&run, &prefix, block);
                        for e in outgoing.get(&b).into_iter().flatten() {
                            edges.insert(*e, Edge::Dead);
                            worklist.push(run.plan.index[&wf.connections[*e].target]);
                        }
                    }
                    Some(true) => {
                        let upstream = upstream_of(&run, block, &active, &edges, join == "any");
                        state.insert(b, St::Running);
                        let run2 = run.clone();
                        let prefix2 = prefix.clone();
                        let lp2 = lp.clone();
                        let cancel2 = cancel.clone();
                        tasks.spawn(async move {
                            let out =
                                run_block(&run2, b, &prefix2, upstream, lp2.as_ref(), &cancel2)
                                    .await;
                            (b, out)
                        });
                    }
                }
            }
            if tasks.is_empty() {
                break;
            }
            let joined = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    wind_down(&mut tasks).await;
                    return Err("cancelled".into());
                }
                j = tasks.join_next() => j,
            };
            let Some(joined) = joined else { break };
            let (b, outcome) = match joined {
                Ok(x) => x,
                Err(e) => {
                    cancel.cancel();
                    wind_down(&mut tasks).await;
                    return Err(format!("a block task failed: {e}"));
                }
            };
            state.insert(b, St::Finished);
            match outcome {
                Outcome::Done { output, route } => {
                    let block = &wf.blocks[b];
                    for e in outgoing.get(&b).into_iter().flatten() {
                        let c = &wf.connections[*e];
                        let handle = c.source_handle.as_deref();
                        let taken = match (&route, handle) {
                            (Some(r), Some(h)) => r == h,
                            (Some(_), None) => block.kind != BlockKind::Condition,
                            (None, _) => true,
                        };
                        let value = match (block.kind, handle, &output) {
                            // A split sends each named branch its own field when there is one.
                            (BlockKind::Split, Some(h), Value::Object(m)) if m.contains_key(h) => {
                                m[h].clone()
                            }
                            _ => output.clone(),
                        };
                        edges.insert(
                            *e,
                            if taken {
                                Edge::Active(value)
                            } else {
                                Edge::Dead
                            },
                        );
                        worklist.push(run.plan.index[&c.target]);
                    }
                    outputs.insert(b, output);
                }
                Outcome::Skipped => {
                    skip(&run, &prefix, &wf.blocks[b]);
                    for e in outgoing.get(&b).into_iter().flatten() {
                        edges.insert(*e, Edge::Dead);
                        worklist.push(run.plan.index[&wf.connections[*e].target]);
                    }
                }
                Outcome::Failed(err) => {
                    cancel.cancel();
                    wind_down(&mut tasks).await;
                    return Err(format!("block {}: {err}", wf.blocks[b].id));
                }
            }
        }
        Ok(outputs)
    })
}

/// Lets cancelled blocks finish on their own for a moment (an AI call records what it used,
/// a waiting block notices), then aborts what is left.
async fn wind_down(tasks: &mut JoinSet<(usize, Outcome)>) {
    let drained = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.shutdown().await;
    }
}

/// The value a block receives: its one input's, or an object of them keyed by target handle
/// (else source block id) when several arrive.
fn upstream_of(
    run: &Run,
    block: &Block,
    active: &[usize],
    edges: &HashMap<usize, Edge>,
    first: bool,
) -> Value {
    let wf = &run.plan.workflow;
    let value = |e: &usize| match &edges[e] {
        Edge::Active(v) => v.clone(),
        _ => Value::Null,
    };
    if active.is_empty() {
        return Value::Null;
    }
    if (active.len() == 1 || first) && block.kind != BlockKind::Merge {
        return value(&active[0]);
    }
    if first {
        return value(&active[0]);
    }
    let mut m = Map::new();
    for e in active {
        let c = &wf.connections[*e];
        let key = c.target_handle.clone().unwrap_or_else(|| c.source.clone());
        m.insert(key, value(e));
    }
    Value::Object(m)
}

fn skip(run: &Run, prefix: &str, block: &Block) {
    let key = format!("{prefix}{}", block.id);
    if run.prior.get(&key).is_some_and(|p| p.status == "skipped") {
        return;
    }
    let mut row = run.block_row(&key, "skipped", 1);
    row.completed_at = Some(row.started_at);
    run.engine.events.write(Write::Block(row));
    run.emit(
        "block.skipped",
        scoped(json!({"blockId": block.id}), prefix),
    );
}

fn scoped(mut v: Value, prefix: &str) -> Value {
    if !prefix.is_empty() {
        v["scope"] = prefix.trim_end_matches('/').into();
    }
    v
}

/// Runs one block: replays a finished prior state, else runs it with its events and states.
async fn run_block(
    run: &Arc<Run>,
    b: usize,
    prefix: &str,
    upstream: Value,
    lp: Option<&LoopCtx>,
    cancel: &CancellationToken,
) -> Outcome {
    let block = &run.plan.workflow.blocks[b];
    let key = format!("{prefix}{}", block.id);
    let prior = run.prior.get(&key).cloned();
    if let Some(p) = &prior {
        match p.status.as_str() {
            "completed" => {
                let output: Value = p
                    .output
                    .as_deref()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or(Value::Null);
                run.outputs.lock().insert(key, output.clone());
                let route = p.decision.as_deref().and_then(route_of);
                return Outcome::Done { output, route };
            }
            "skipped" => return Outcome::Skipped,
            // Its failure ended the run before the crash: it is not tried again.
            "failed" => return Outcome::Failed(p.error.clone().unwrap_or_default()),
            _ => {}
        }
    }
    if let Some(err) = interrupted(run, block, &key, prior.as_ref()) {
        let mut row = run.block_row(&key, "failed", prior.as_ref().map_or(1, |p| p.attempt));
        row.error = Some(err.clone());
        row.completed_at = Some(now_ms());
        run.engine.events.write(Write::Block(row));
        run.emit(
            "block.failed",
            scoped(
                json!({"blockId": block.id, "attempt": prior.as_ref().map_or(1, |p| p.attempt), "error": err}),
                prefix,
            ),
        );
        run.engine.events.flush().await;
        return Outcome::Failed(err);
    }
    // A block interrupted while running starts again as its next attempt; a waiting one
    // keeps its deadline.
    let attempt = match &prior {
        Some(p) if p.status == "waiting" => p.attempt,
        Some(p) => p.attempt + 1,
        None => 1,
    };
    let waiting = prior.as_ref().filter(|p| p.status == "waiting");
    let mut row = run.block_row(&key, "running", attempt);
    if let Some(w) = waiting {
        row.started_at = w.started_at;
    }
    if waiting.is_none() {
        run.engine.events.write(Write::Block(row.clone()));
        run.emit(
            "block.started",
            scoped(
                json!({"blockId": block.id, "attempt": attempt, "blockType": block.kind}),
                prefix,
            ),
        );
        run.status("running", Some(block.id.clone()));
        if run.resumed {
            // Stored before it runs: if it takes the process down again, the next start
            // knows (a fresh run does not pay a commit per block for this).
            run.engine.events.flush().await;
        }
    }
    let started = Instant::now();
    let ctx = BlockCtx {
        run,
        block,
        key: &key,
        prefix,
        attempt,
        upstream,
        lp,
        cancel,
        waiting: waiting.cloned(),
    };
    let timeout = super::retry::RetryPolicy::from_config(&block.config)
        .ok()
        .and_then(|p| p.total_timeout());
    let result = {
        // Work holds a slot of the execution's and of the server's concurrency; waiting
        // (delays, approvals, loops waiting on their bodies) holds none.
        let _permits = if matches!(
            block.kind,
            BlockKind::Delay | BlockKind::Human | BlockKind::Loop
        ) {
            None
        } else {
            let local = run.slots.clone().acquire_owned().await.ok();
            let global = run.engine.global.clone().acquire_owned().await.ok();
            Some((local, global))
        };
        let fut = ctx.execute();
        match timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {} ms", t.as_millis())),
            },
            None => fut.await,
        }
    };
    let duration_ms = started.elapsed().as_millis() as i64;
    if cancel.is_cancelled() {
        return Outcome::Failed("cancelled".into());
    }
    match result {
        Ok(done) => {
            let BlockDone {
                output,
                route,
                usage,
            } = done;
            if let Some(out) = &output {
                run.outputs.lock().insert(key.clone(), out.clone());
            }
            let Some(output) = output else {
                return Outcome::Skipped;
            };
            row.status = "completed".into();
            let text = output.to_string();
            let text_len = text.len();
            // Moved, not copied: a large output is held once less while it is stored.
            row.output = Some(text);
            row.decision = route.clone();
            row.completed_at = Some(now_ms());
            let mut fields =
                json!({"blockId": block.id, "attempt": attempt, "durationMs": duration_ms});
            if text_len > INLINE_OUTPUT_BYTES {
                fields["output"] = Value::Null;
                let segment =
                    percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC);
                fields["outputRef"] =
                    format!("/api/v1/executions/{}/blocks/{segment}", run.id).into();
                fields["outputBytes"] = text_len.into();
            } else {
                fields["output"] = output.clone();
            }
            if let Some(r) = &route {
                fields["route"] = r.clone().into();
            }
            // A paid call's (or a webhook's) result is stored before anything depends on
            // it, so a crash never pays for it, or sends it, twice. The free demo provider
            // is not worth a commit per block.
            let durable = block.kind == BlockKind::Webhook
                || usage
                    .as_ref()
                    .is_some_and(|u| u.provider != super::ai::DEMO_ID);
            if let Some(u) = usage {
                row.provider = Some(u.provider.clone());
                row.model = Some(u.model.clone());
                row.tokens_used = u.tokens;
                row.cost_usd = u.cost;
                fields["provider"] = u.provider.into();
                fields["model"] = u.model.into();
                fields["tokens"] = u.tokens.into();
                fields["costUsd"] = u.cost.into();
                fields["estimated"] = u.estimated.into();
            }
            run.engine.events.write(Write::Block(row));
            run.emit("block.completed", scoped(fields, prefix));
            if durable {
                run.engine.events.flush().await;
            }
            Outcome::Done { output, route }
        }
        Err(err) => {
            row.status = "failed".into();
            // Postgres text cannot hold NUL (a webhook's body excerpt may).
            row.error = Some(err.replace('\0', "\u{FFFD}"));
            row.completed_at = Some(now_ms());
            run.engine.events.write(Write::Block(row));
            run.emit(
                "block.failed",
                scoped(
                    json!({"blockId": block.id, "attempt": attempt, "error": err}),
                    prefix,
                ),
            );
            Outcome::Failed(err)
        }
    }
}

/// Why a block that was running when the server stopped is not run again: it was
/// interrupted as many times as its retry policy allows attempts (3 unless it says), so a
/// block that kills the process (a template bomb, a runtime bug) cannot crash-loop the
/// server, which resumes executions before it listens. A loop whose iterations started is
/// not counted (each body block is); waiting blocks are not running and never count.
fn interrupted(run: &Run, block: &Block, key: &str, prior: Option<&BlockRow>) -> Option<String> {
    let p = prior.filter(|p| p.status == "running")?;
    let attempts = super::retry::RetryPolicy::from_config(&block.config)
        .map_or(1, |p| p.attempts)
        .max(1) as i64;
    if p.attempt < attempts {
        return None;
    }
    if block.kind == BlockKind::Loop {
        let body = format!("{key}[");
        if run.prior.keys().any(|k| k.starts_with(&body)) {
            return None;
        }
    }
    Some(format!(
        "interrupted {} times: the server stopped while this block ran, as many times as its \
         retry attempts allow; it is not run again",
        p.attempt
    ))
}

fn route_of(decision: &str) -> Option<String> {
    if let Ok(d) = serde_json::from_str::<Decision>(decision) {
        return Some(if d.approved { "approved" } else { "rejected" }.into());
    }
    Some(decision.to_owned())
}

/// Usage of a block that called a provider.
pub(super) struct Usage {
    pub provider: String,
    pub model: String,
    pub tokens: i64,
    pub cost: f64,
    pub estimated: bool,
}

/// A finished block: its output (`None`: it decided to skip itself), the handle it routes
/// to, and what it used.
pub(super) struct BlockDone {
    pub output: Option<Value>,
    pub route: Option<String>,
    pub usage: Option<Usage>,
}

impl BlockDone {
    fn value(output: Value) -> BlockDone {
        BlockDone {
            output: Some(output),
            route: None,
            usage: None,
        }
    }
}

/// Everything a block's behaviour needs.
pub(super) struct BlockCtx<'a> {
    pub run: &'a Arc<Run>,
    pub block: &'a Block,
    pub key: &'a str,
    pub prefix: &'a str,
    pub attempt: i64,
    pub upstream: Value,
    lp: Option<&'a LoopCtx>,
    pub cancel: &'a CancellationToken,
    waiting: Option<BlockRow>,
}

impl BlockCtx<'_> {
    fn config_str(&self, field: &str) -> Option<&str> {
        self.block.config.get(field).and_then(|v| v.as_str())
    }

    pub(super) fn context(&self) -> minijinja::Value {
        self.run.context(self.prefix, &self.upstream, self.lp)
    }

    pub(super) async fn render(&self, field: &str) -> Result<Option<String>, String> {
        match self.config_str(field) {
            None => Ok(None),
            Some(t) => {
                let text = template::render_async(t, &self.context())
                    .await
                    .map_err(|e| format!("{field}: {e}"))?;
                self.run
                    .spend_template(text.len())
                    .map_err(|e| format!("{field}: {e}"))?;
                Ok(Some(text))
            }
        }
    }

    async fn execute(self) -> Result<BlockDone, String> {
        match self.block.kind {
            BlockKind::Input => Ok(BlockDone::value(match self.config_str("field") {
                Some(f) => self.run.input.get(f).cloned().unwrap_or(Value::Null),
                None => self.run.input.clone(),
            })),
            BlockKind::Output => Ok(BlockDone::value(match self.render("template").await? {
                Some(text) => Value::String(text),
                None => self.upstream.clone(),
            })),
            BlockKind::Transform => {
                let text = self.render("template").await?.unwrap_or_default();
                let output = match self.config_str("outputFormat") {
                    Some("json") => serde_json::from_str(text.trim())
                        .map_err(|e| format!("template output is not JSON: {e}"))?,
                    _ => Value::String(text),
                };
                Ok(BlockDone::value(output))
            }
            BlockKind::Condition => {
                let ctx = self.context();
                let route = match self.block.config.get("cases").and_then(|v| v.as_array()) {
                    // A switch: the first case whose expression holds, else `default`.
                    Some(cases) => {
                        let mut route = "default".to_owned();
                        for case in cases {
                            let handle = case.get("handle").and_then(|v| v.as_str()).unwrap_or("");
                            let expr = case
                                .get("expression")
                                .and_then(|v| v.as_str())
                                .unwrap_or("false");
                            if template::truthy_async(expr, &ctx)
                                .await
                                .map_err(|e| format!("case {handle}: {e}"))?
                            {
                                route = handle.to_owned();
                                break;
                            }
                        }
                        route
                    }
                    None => {
                        let expr = self.config_str("expression").unwrap_or("false");
                        let taken = template::truthy_async(expr, &ctx)
                            .await
                            .map_err(|e| format!("expression: {e}"))?;
                        if taken { "true" } else { "false" }.to_owned()
                    }
                };
                Ok(BlockDone {
                    output: Some(self.upstream.clone()),
                    route: Some(route),
                    usage: None,
                })
            }
            BlockKind::Merge | BlockKind::Split => Ok(BlockDone::value(self.upstream.clone())),
            BlockKind::Delay => self.delay().await,
            BlockKind::Human => self.human().await,
            BlockKind::Loop => self.looped().await,
            BlockKind::Ai => super::io::ai_block(&self).await,
            BlockKind::Webhook => super::io::webhook_block(&self).await,
        }
    }

    /// Stores the waiting state with its deadline, then tells the editors.
    fn start_waiting(&self, wake_at: i64, mut fields: Value) {
        let mut row = self.run.block_row(self.key, "waiting", self.attempt);
        row.wake_at = Some(wake_at);
        self.run.engine.events.write(Write::Block(row));
        fields["blockId"] = self.block.id.clone().into();
        fields["until"] = wake_at.into();
        self.run.emit("block.waiting", scoped(fields, self.prefix));
    }

    async fn delay(&self) -> Result<BlockDone, String> {
        let wake_at = match &self.waiting {
            Some(w) => w.wake_at.unwrap_or_else(now_ms),
            None => {
                let secs = self
                    .block
                    .config
                    .get("seconds")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0);
                let wake_at = now_ms().saturating_add((secs * 1000.0) as i64);
                self.start_waiting(wake_at, json!({"reason": "timer"}));
                wake_at
            }
        };
        sleep_until_ms(wake_at, self.cancel).await?;
        Ok(BlockDone::value(self.upstream.clone()))
    }

    async fn human(&self) -> Result<BlockDone, String> {
        let timeout_secs = self
            .block
            .config
            .get("timeoutSeconds")
            .and_then(|v| v.as_f64())
            .unwrap_or(7.0 * 24.0 * 3600.0);
        let (tx, mut rx) = oneshot::channel();
        let register = || {
            self.run
                .control
                .waiting
                .lock()
                .insert(self.key.to_owned(), tx);
        };
        let (wake_at, earlier) = match &self.waiting {
            Some(w) => {
                register();
                (
                    w.wake_at.unwrap_or_else(now_ms),
                    w.decision
                        .as_deref()
                        .and_then(|d| serde_json::from_str::<Decision>(d).ok()),
                )
            }
            None => {
                let wake_at = now_ms().saturating_add((timeout_secs * 1000.0) as i64);
                let message = self.render("message").await.ok().flatten();
                // Stored, then open to decisions, then announced: a decision can neither come
                // before the waiting state it is stored against, nor be missed.
                let mut row = self.run.block_row(self.key, "waiting", self.attempt);
                row.wake_at = Some(wake_at);
                self.run.engine.events.write(Write::Block(row));
                register();
                self.run.emit(
                    "block.waiting",
                    scoped(
                        json!({"blockId": self.block.id, "reason": "approval", "until": wake_at, "message": message}),
                        self.prefix,
                    ),
                );
                super::io::ask_for_approval(self, wake_at).await;
                (wake_at, None)
            }
        };
        let timed_out = || Decision {
            approved: self.config_str("onTimeout") == Some("approve"),
            by: None,
            comment: None,
            timed_out: true,
            at: now_ms(),
        };
        let decision = match earlier {
            Some(d) => d,
            None => {
                let timer = sleep_until_ms(wake_at, self.cancel);
                tokio::select! {
                    d = &mut rx => match d {
                        Ok(d) => d,
                        Err(_) => return Err("cancelled".into()),
                    },
                    r = timer => {
                        r?;
                        // A decision that took our place just before the deadline wins: its
                        // maker was told it was recorded.
                        if self.run.control.waiting.lock().remove(self.key).is_some() {
                            timed_out()
                        } else {
                            rx.await.unwrap_or_else(|_| timed_out())
                        }
                    }
                }
            }
        };
        self.run.control.waiting.lock().remove(self.key);
        let has_branches = self.run.plan.workflow.connections.iter().any(|c| {
            c.source == self.block.id
                && matches!(c.source_handle.as_deref(), Some("approved" | "rejected"))
        });
        if !decision.approved && !has_branches {
            return Err(match (&decision.by, decision.timed_out) {
                (_, true) => "no decision before the timeout (onTimeout: reject)".to_string(),
                (Some(by), _) => format!("rejected by {by}"),
                (None, _) => "rejected".to_string(),
            });
        }
        let output = json!({
            "approved": decision.approved, "by": decision.by, "comment": decision.comment,
            "timedOut": decision.timed_out, "input": self.upstream,
        });
        Ok(BlockDone {
            output: Some(output),
            route: has_branches.then(|| {
                if decision.approved {
                    "approved"
                } else {
                    "rejected"
                }
                .into()
            }),
            usage: None,
        })
    }

    async fn looped(&self) -> Result<BlockDone, String> {
        let items = match self.config_str("items") {
            Some(expr) => template::eval_async(expr, &self.context())
                .await
                .map_err(|e| format!("items: {e}"))?,
            None => self.upstream.clone(),
        };
        let Value::Array(items) = items else {
            return Err(format!(
                "a loop needs an array of items, got {}",
                kind_of(&items)
            ));
        };
        let max = self
            .block
            .config
            .get("maxIterations")
            .and_then(|v| v.as_u64())
            .unwrap_or(100) as usize;
        if items.len() > max {
            return Err(format!(
                "{} items is more than maxIterations ({max})",
                items.len()
            ));
        }
        // One allowance over every loop of the execution, nested ones included: 10,000 ×
        // 10,000 nested loops each pass their own maxIterations, not this.
        let cap = self.run.engine.config.max_iterations_per_execution;
        let n = items.len();
        let taken = self.run.iterations_left.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |left| left.checked_sub(n),
        );
        if taken.is_err() {
            return Err(format!(
                "{n} more iterations would take this execution past the {cap} loop iterations \
                 one execution may run, over all its loops (--max-iterations-per-execution)"
            ));
        }
        let concurrency = self
            .block
            .config
            .get("concurrency")
            .and_then(|v| v.as_u64())
            .unwrap_or(1)
            .clamp(1, 16) as usize;
        let b = self.run.plan.index[&self.block.id];
        let Some(&scope) = self.run.plan.body_of.get(&b) else {
            return Ok(BlockDone::value(Value::Array(Vec::new())));
        };
        let returns = self.run.plan.scopes[scope].returns.clone();
        let gate = Arc::new(Semaphore::new(concurrency));
        let mut iterations = JoinSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let run = self.run.clone();
            let gate = gate.clone();
            let prefix = format!("{}{}[{i}]/", self.prefix, self.block.id);
            let parent = self.cancel.clone();
            iterations.spawn(async move {
                let _slot = gate.acquire_owned().await;
                run.engine.events.backpressure().await;
                let r =
                    run_scope(run, scope, prefix, Some(LoopCtx { item, index: i }), parent).await;
                (i, r)
            });
        }
        let mut results: Vec<Value> = Vec::new();
        let mut done: Vec<(usize, Value)> = Vec::new();
        while let Some(j) = iterations.join_next().await {
            let (i, r) = j.map_err(|e| format!("an iteration failed: {e}"))?;
            // Its blocks' outputs were for templates inside it; nothing outside can name
            // them, and a long loop must not keep every iteration's copy.
            let done_prefix = format!("{}{}[{i}]/", self.prefix, self.block.id);
            self.run
                .outputs
                .lock()
                .retain(|k, _| !k.starts_with(&done_prefix));
            let outs = match r {
                Ok(o) => o,
                Err(e) => {
                    iterations.shutdown().await;
                    return Err(format!("iteration {i}: {e}"));
                }
            };
            let v = match returns.as_slice() {
                [one] => outs.get(one).cloned().unwrap_or(Value::Null),
                many => Value::Object(
                    many.iter()
                        .filter_map(|r| {
                            outs.get(r)
                                .map(|v| (self.run.plan.workflow.blocks[*r].id.clone(), v.clone()))
                        })
                        .collect(),
                ),
            };
            done.push((i, v));
        }
        done.sort_by_key(|(i, _)| *i);
        results.extend(done.into_iter().map(|(_, v)| v));
        Ok(BlockDone::value(Value::Array(results)))
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Sleeps until a wall-clock deadline (a restart keeps it), or fails when cancelled.
async fn sleep_until_ms(wake_at: i64, cancel: &CancellationToken) -> Result<(), String> {
    let wait = Duration::from_millis((wake_at - now_ms()).max(0) as u64);
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = cancel.cancelled() => Err("cancelled".into()),
    }
}
