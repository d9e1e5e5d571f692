//! `loop`: runs its body (the blocks its `body` handle leads to, back into its `next`
//! handle) once per item, `concurrency` at a time; its output is the iterations' results.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Behaviour, BlockCtx, BlockDone, Check};
use crate::run::LoopCtx;
use crate::template;

/// The most items one loop runs.
pub const MAX_ITERATIONS: u64 = 10_000;

/// Runs its body once per item.
pub(crate) struct Loop;

impl Behaviour for Loop {
    fn check(&self, c: &mut Check<'_>) {
        match c.get("maxIterations").map(Value::as_u64) {
            Some(Some(n)) if n > 0 && n <= MAX_ITERATIONS => {}
            None => {}
            _ => c.bad(
                "maxIterations",
                &format!("must be an integer from 1 to {MAX_ITERATIONS}"),
            ),
        }
        match c.get("concurrency").map(Value::as_u64) {
            Some(Some(n)) if (1..=16).contains(&n) => {}
            None => {}
            _ => c.bad("concurrency", "must be an integer from 1 to 16"),
        }
    }

    fn expressions(&self, _config: &Map<String, Value>) -> &'static [&'static str] {
        &["items"]
    }

    fn waits(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move {
            let items = match ctx.config_str("items") {
                Some(expr) => template::eval_async(expr, &ctx.context())
                    .await
                    .map_err(|e| format!("items: {e}"))?,
                None => ctx.upstream.clone(),
            };
            let Value::Array(items) = items else {
                return Err(format!(
                    "a loop needs an array of items, got {}",
                    kind_of(&items)
                ));
            };
            let max = ctx
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
            let cap = ctx.run.engine.config.max_iterations_per_execution;
            let n = items.len();
            let taken = ctx.run.iterations_left.fetch_update(
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
            let concurrency = ctx
                .block
                .config
                .get("concurrency")
                .and_then(|v| v.as_u64())
                .unwrap_or(1)
                .clamp(1, 16) as usize;
            let b = ctx.run.plan.index[&ctx.block.id];
            let Some(&scope) = ctx.run.plan.body_of.get(&b) else {
                return Ok(BlockDone::value(Value::Array(Vec::new())));
            };
            let returns = ctx.run.plan.scopes[scope].returns.clone();
            let gate = Arc::new(Semaphore::new(concurrency));
            // Cancelled when one iteration fails: the others wind down (an AI call records
            // what it used, a block row says it was cancelled) before they are dropped.
            let stop = ctx.cancel.child_token();
            let mut iterations = JoinSet::new();
            for (i, item) in items.into_iter().enumerate() {
                let run = ctx.run.clone();
                let gate = gate.clone();
                let prefix = format!("{}{}[{i}]/", ctx.prefix, ctx.block.id);
                let parent = stop.clone();
                let run_scope = ctx.scope;
                iterations.spawn(async move {
                    let _slot = gate.acquire_owned().await;
                    run.engine.events.backpressure().await;
                    let r = run_scope(run, scope, prefix, Some(LoopCtx { item, index: i }), parent)
                        .await;
                    (i, r)
                });
            }
            let mut results: Vec<Value> = Vec::new();
            let mut done: Vec<(usize, Value)> = Vec::new();
            while let Some(j) = iterations.join_next().await {
                let (i, r) = j.map_err(|e| format!("an iteration failed: {e}"))?;
                // Its blocks' outputs were for templates inside it; nothing outside can name
                // them, and a long loop must not keep every iteration's copy.
                let done_prefix = format!("{}{}[{i}]/", ctx.prefix, ctx.block.id);
                ctx.run
                    .outputs
                    .lock()
                    .retain(|k, _| !k.starts_with(&done_prefix));
                let outs = match r {
                    Ok(o) => o,
                    Err(e) => {
                        stop.cancel();
                        let wound_down =
                            tokio::time::timeout(std::time::Duration::from_secs(2), async {
                                while iterations.join_next().await.is_some() {}
                            })
                            .await;
                        if wound_down.is_err() {
                            iterations.shutdown().await;
                        }
                        return Err(format!("iteration {i}: {e}"));
                    }
                };
                let v = match returns.as_slice() {
                    [one] => outs.get(one).cloned().unwrap_or(Value::Null),
                    many => Value::Object(
                        many.iter()
                            .filter_map(|r| {
                                outs.get(r).map(|v| {
                                    (ctx.run.plan.workflow.blocks[*r].id.clone(), v.clone())
                                })
                            })
                            .collect(),
                    ),
                };
                done.push((i, v));
            }
            done.sort_by_key(|(i, _)| *i);
            results.extend(done.into_iter().map(|(_, v)| v));
            Ok(BlockDone::value(Value::Array(results)))
        })
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
