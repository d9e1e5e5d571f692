//! The scheduler: runs each scope's blocks (the top level, each loop iteration's body) as
//! their inputs become ready, skips what a route or a skip leaves dead, replays what a
//! restart or a re-run already has, and records every block's states and events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::block::{Block, BlockCtx, BlockDone, BlockKind};
use crate::db::executions::{BlockRow, StatusUpdate, Write};
use crate::db::now_ms;
use crate::graph::ERROR_HANDLE;
use crate::run::{scoped, Decision, LoopCtx, Run};

/// Outputs larger than this travel by reference in events (fetched over REST).
const INLINE_OUTPUT_BYTES: usize = 16 << 10;

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

/// Runs the whole execution and records how it ended.
pub(crate) async fn execute(run: Arc<Run>) {
    let fresh = *run.seq.lock() == 0;
    if fresh {
        let mut started =
            json!({"blocks": run.plan.workflow.blocks.len(), "rerunOf": run.options.rerun_of});
        if let Some(t) = &run.options.trigger {
            started["triggerId"] = t.clone().into();
        }
        inline_or_ref(&mut started, "input", &run.input, &run.id);
        run.emit("execution.started", started);
        // A re-run shows the results it reuses, so its editors see the whole run.
        let mut reused: Vec<&BlockRow> = run
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
            run.emit(
                "block.completed",
                json!({"blockId": r.block_id, "attempt": r.attempt, "output": output, "reused": true}),
            );
        }
    }
    run.status("running", None);
    let result = run_scope(
        run.clone(),
        0,
        String::new(),
        None,
        run.control.cancel.clone(),
    )
    .await;
    // A block's failure failed the run: the workflow's error handler runs now, with what
    // failed (not after a cancel or an abort: those stopped the run on purpose).
    if let (Err(_), Some(h)) = (&result, run.plan.handler) {
        if !run.control.cancel.is_cancelled() && run.failure.lock().is_some() {
            if let Err(e) = run_scope(
                run.clone(),
                h,
                String::new(),
                None,
                run.control.cancel.clone(),
            )
            .await
            {
                tracing::warn!(execution = %run.id, error = %e, "the error handler failed");
            }
        }
    }
    let (tokens, cost) = *run.totals.lock();
    // From the first start, across restarts.
    let duration = (now_ms() - run.started_at).max(run.started.elapsed().as_millis() as i64);
    let abort = run.abort.lock().clone();
    let (status, error, output) = match (result, abort) {
        (_, Some(reason)) => ("failed", Some(reason), None),
        (Ok(outputs), None) => {
            let mut collected = Map::new();
            for (i, b) in run.plan.workflow.blocks.iter().enumerate() {
                if b.kind == BlockKind::Output {
                    if let Some(v) = outputs.get(&i) {
                        collected.insert(b.id.clone(), v.clone());
                    }
                }
            }
            ("completed", None, Some(Value::Object(collected)))
        }
        (Err(_), None) if run.control.cancel.is_cancelled() => ("cancelled", None, None),
        (Err(e), None) => ("failed", Some(e.replace('\0', "\u{FFFD}")), None),
    };
    metrics::counter!("resonant_executions_total", "status" => status).increment(1);
    metrics::histogram!("resonant_execution_duration_seconds").record(duration as f64 / 1000.0);
    match status {
        "completed" => {
            let mut fields = json!({"tokens": tokens, "costUsd": cost, "durationMs": duration});
            inline_or_ref(
                &mut fields,
                "outputs",
                output.as_ref().unwrap_or(&Value::Null),
                &run.id,
            );
            run.emit("execution.completed", fields)
        }
        "cancelled" => run.emit(
            "execution.cancelled",
            json!({"tokens": tokens, "costUsd": cost, "durationMs": duration}),
        ),
        _ => run.emit(
            "execution.failed",
            json!({"error": error, "tokens": tokens, "costUsd": cost, "durationMs": duration}),
        ),
    }
    run.engine.events.write(Write::Status(StatusUpdate {
        execution: run.id.clone(),
        status,
        current_block: None,
        tokens,
        cost,
        output: output.map(|o| o.to_string()),
        error,
        completed_at: Some(now_ms()),
        duration_ms: Some(duration),
    }));
    run.engine.events.flush().await;
}

/// Sets `fields[name]` to `value`, or, when `value` is larger than [`INLINE_OUTPUT_BYTES`],
/// to `null` with `<name>Ref` (the execution, over REST) and `<name>Bytes`: an event goes to
/// every editor and into the log, a 10 MB input or output should not go with it.
fn inline_or_ref(fields: &mut Value, name: &str, value: &Value, execution: &str) {
    let bytes = value.to_string().len();
    if bytes > INLINE_OUTPUT_BYTES {
        fields[name] = Value::Null;
        fields[format!("{name}Ref")] = format!("/api/v1/executions/{execution}").into();
        fields[format!("{name}Bytes")] = bytes.into();
    } else {
        fields[name] = value.clone();
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
        // Each running block's own token (a child of the scope's), and the blocks stopped
        // because a `merge` with `join: any` no longer needs them: those end skipped.
        let mut tokens: HashMap<usize, CancellationToken> = HashMap::new();
        let mut losers: std::collections::HashSet<usize> = std::collections::HashSet::new();
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
                let join = block.kind.behaviour().join(&block.config);
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
                        if join == "any" && pending > 0 {
                            // The first input won: the branches still on their way feed only
                            // this merge (or nothing else), so they stop instead of running
                            // (and paying) for a result nobody reads.
                            let beaten: Vec<usize> = ins
                                .iter()
                                .filter(|e| matches!(edges[e], Edge::Pending))
                                .copied()
                                .collect();
                            for x in losing(&run, b, &beaten, &outgoing, &state) {
                                losers.insert(x);
                                match state[&x] {
                                    St::Running => {
                                        if let Some(t) = tokens.get(&x) {
                                            t.cancel();
                                        }
                                    }
                                    St::Waiting => {
                                        state.insert(x, St::Finished);
                                        skip(&run, &prefix, &wf.blocks[x]);
                                        for e in outgoing.get(&x).into_iter().flatten() {
                                            edges.insert(*e, Edge::Dead);
                                        }
                                    }
                                    St::Finished => {}
                                }
                            }
                            for e in beaten {
                                edges.insert(e, Edge::Dead);
                            }
                        }
                        let run2 = run.clone();
                        let prefix2 = prefix.clone();
                        let lp2 = lp.clone();
                        let cancel2 = cancel.child_token();
                        tokens.insert(b, cancel2.clone());
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
            tokens.remove(&b);
            // A losing branch's block, stopped on purpose: skipped, not failed.
            let outcome = match outcome {
                Outcome::Failed(_) if losers.contains(&b) => Outcome::Skipped,
                other => other,
            };
            match outcome {
                Outcome::Done { output, route } => {
                    let behaviour = wf.blocks[b].kind.behaviour();
                    let failed = route.as_deref() == Some(ERROR_HANDLE);
                    for e in outgoing.get(&b).into_iter().flatten() {
                        let c = &wf.connections[*e];
                        let handle = c.source_handle.as_deref();
                        // A failure routed to the error handle takes only that handle; a
                        // success never takes it.
                        let taken = match (&route, handle) {
                            (_, Some(ERROR_HANDLE)) => failed,
                            _ if failed => false,
                            (Some(r), Some(h)) => r == h,
                            (Some(_), None) => !behaviour.routes_only(),
                            (None, _) => true,
                        };
                        let value = if failed {
                            output.clone()
                        } else {
                            behaviour.branch(&output, handle)
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
                    let id = &wf.blocks[b].id;
                    run.failure.lock().get_or_insert_with(|| {
                        json!({"error": {"message": err, "blockId": id, "scope": prefix.trim_end_matches('/')}})
                    });
                    return Err(format!("block {id}: {err}"));
                }
            }
        }
        Ok(outputs)
    })
}

/// The blocks a `merge` (`b`, `join: any`) that has started makes useless: those upstream of
/// its still-pending inputs `beaten`, not finished, all of whose connections lead only to the
/// merge or to other such blocks. A block that also feeds something else keeps running.
fn losing<S>(
    run: &Run,
    b: usize,
    beaten: &[usize],
    outgoing: &HashMap<usize, Vec<usize>>,
    state: &HashMap<usize, S>,
) -> Vec<usize> {
    let wf = &run.plan.workflow;
    let target = |e: usize| run.plan.index[&wf.connections[e].target];
    let source = |e: usize| run.plan.index[&wf.connections[e].source];
    // Candidates: everything upstream of the beaten inputs within the scope.
    let incoming: HashMap<usize, Vec<usize>> =
        outgoing.iter().fold(HashMap::new(), |mut m, (s, es)| {
            for &e in es {
                m.entry(target(e)).or_insert_with(Vec::new).push(*s);
            }
            m
        });
    let mut cand: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut stack: Vec<usize> = beaten.iter().map(|&e| source(e)).collect();
    while let Some(x) = stack.pop() {
        if x == b || !state.contains_key(&x) || !cand.insert(x) {
            continue;
        }
        stack.extend(incoming.get(&x).into_iter().flatten().copied());
    }
    // Drop any that lead somewhere else, until nothing changes.
    loop {
        let keep: Vec<usize> = cand
            .iter()
            .copied()
            .filter(|x| {
                outgoing
                    .get(x)
                    .into_iter()
                    .flatten()
                    .all(|&e| target(e) == b || cand.contains(&target(e)))
            })
            .collect();
        if keep.len() == cand.len() {
            break;
        }
        cand = keep.into_iter().collect();
    }
    cand.into_iter().collect()
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
    if (active.len() == 1 || first) && !block.kind.behaviour().gathers() {
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
            // Its failure ended the run (or was handled) before the crash: it is not tried
            // again.
            "failed" => return failure(run, block, &key, p.error.clone().unwrap_or_default()),
            _ => {}
        }
    }
    // Pinned sample data: in a run from the editor, a block with `pinnedOutput` does not
    // run (no call, no tokens) and passes that value on, so iterating on what follows it
    // costs nothing upstream. Runs started by triggers ignore it.
    if let Some(pinned) = block.config.get("pinnedOutput").filter(|v| !v.is_null()) {
        if run.options.trigger.is_none() {
            let mut row = run.block_row(&key, "completed", 1);
            row.output = Some(pinned.to_string());
            row.completed_at = Some(row.started_at);
            run.engine.events.write(Write::Block(row));
            run.outputs.lock().insert(key.clone(), pinned.clone());
            run.emit(
                "block.completed",
                scoped(
                    json!({"blockId": block.id, "attempt": 1, "output": pinned, "pinned": true}),
                    prefix,
                ),
            );
            return Outcome::Done {
                output: pinned.clone(),
                route: None,
            };
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
        return failure(run, block, &key, err);
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
        scope: run_scope,
    };
    let timeout = crate::retry::RetryPolicy::from_config(&block.config)
        .ok()
        .and_then(|p| p.total_timeout());
    let result = {
        // Work holds a slot of the execution's and of the server's concurrency; waiting
        // (delays, approvals, loops waiting on their bodies) holds none.
        let behaviour = block.kind.behaviour();
        let _permits = if behaviour.waits() {
            None
        } else {
            let local = run.slots.clone().acquire_owned().await.ok();
            let global = run.engine.global.clone().acquire_owned().await.ok();
            if run.engine.closing.load(std::sync::atomic::Ordering::SeqCst) {
                // The server is draining: what was queued for a slot does not start now
                // (it would be cut short, and paid or sent again after the restart). The
                // block resumes at the next start.
                drop((local, global));
                let never: std::convert::Infallible = std::future::pending().await;
                match never {}
            }
            Some((local, global))
        };
        let fut = behaviour.run(&ctx);
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
        // Its row says so: left `running` or `waiting`, it would say so for ever (the
        // execution has ended, nothing resumes it).
        row.status = "failed".into();
        row.error = Some("cancelled".into());
        row.completed_at = Some(now_ms());
        run.engine.events.write(Write::Block(row));
        return Outcome::Failed("cancelled".into());
    }
    match result {
        Ok(done) => {
            let BlockDone {
                output,
                route,
                usage,
                attempt: finished_on,
            } = done;
            let attempt = finished_on.unwrap_or(attempt);
            row.attempt = attempt;
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
            let durable = block.kind.behaviour().acts_outside()
                || usage
                    .as_ref()
                    .is_some_and(|u| u.provider != crate::ai::DEMO_ID);
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
            let mut fields = json!({"blockId": block.id, "attempt": attempt, "error": err});
            if let Some(mode) = on_error(block) {
                fields["handled"] = mode.into();
            }
            run.emit("block.failed", scoped(fields, prefix));
            failure(run, block, &key, err)
        }
    }
}

/// How a block's failure is handled: `continue` or `route` (its `onError`); `None` fails
/// the run.
fn on_error(block: &Block) -> Option<&'static str> {
    match block.config.get("onError").and_then(Value::as_str) {
        Some("continue") => Some("continue"),
        Some("route") => Some("route"),
        _ => None,
    }
}

/// What a block's failure means for the run: the run fails, unless the block's `onError`
/// handles it, in which case the block counts as done with `{error: {message, blockId}}` as
/// its output, passed on through every connection (`continue`) or only through its `error`
/// handle (`route`).
fn failure(run: &Run, block: &Block, key: &str, err: String) -> Outcome {
    let Some(mode) = on_error(block) else {
        return Outcome::Failed(err);
    };
    if err == "cancelled" {
        return Outcome::Failed(err);
    }
    let output = json!({"error": {"message": err, "blockId": block.id}});
    run.outputs.lock().insert(key.to_owned(), output.clone());
    Outcome::Done {
        output,
        route: (mode == "route").then(|| ERROR_HANDLE.to_owned()),
    }
}

/// Why a block that was running when the server stopped is not run again: it was
/// interrupted as many times as its retry policy allows attempts (3 unless it says), so a
/// block that kills the process (a template bomb, a runtime bug) cannot crash-loop the
/// server, which resumes executions before it listens. A loop whose iterations started is
/// not counted (each body block is); waiting blocks are not running and never count.
fn interrupted(run: &Run, block: &Block, key: &str, prior: Option<&BlockRow>) -> Option<String> {
    let p = prior.filter(|p| p.status == "running")?;
    let attempts = crate::retry::RetryPolicy::from_config(&block.config)
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
