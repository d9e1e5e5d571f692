//! One execution in progress: its shared state, the events it emits, its template context
//! and allowances. The scheduler (`scheduler.rs`) drives it; blocks (`block/`) act on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::{Inner, Options};
use crate::db::executions::{BlockRow, StatusUpdate, Write};
use crate::db::now_ms;

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
    /// Cancelled when its run on this node has ended (finished, or stopped by shutdown).
    pub ended: CancellationToken,
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
    /// that takes the process down is counted (see `scheduler::interrupted`).
    pub(super) resumed: bool,
    /// Bytes its template renders may still output (`--template-execution-bytes`).
    pub(super) template_left: std::sync::atomic::AtomicUsize,
    /// Its share of the server-wide allowance (`--template-server-bytes`).
    pub(super) template_pool: TemplatePool,
    /// Loop iterations it may still start (`--max-iterations-per-execution`).
    pub(super) iterations_left: std::sync::atomic::AtomicUsize,
    /// Human blocks (by id) that have sent their approval emails: once per execution.
    pub(super) notified: Mutex<std::collections::HashSet<String>>,
    /// What failed the execution (`{error: {message, blockId}}`), for its error handler.
    pub(crate) failure: Mutex<Option<Value>>,
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

/// The context of one loop iteration.
#[derive(Clone)]
pub(crate) struct LoopCtx {
    /// The item.
    pub(crate) item: Value,
    /// Its index in the loop's items.
    pub(crate) index: usize,
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

    pub(crate) fn status(&self, status: &'static str, current: Option<String>) {
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

    /// A fresh row for block `key` in `status`.
    pub(crate) fn block_row(&self, key: &str, status: &str, attempt: i64) -> BlockRow {
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
    /// The template context of a block: the execution input, every finished block's output
    /// (this iteration's first, inside a loop), the block's upstream value and the loop item.
    /// Block outputs are looked up only when a template reads them, so a block's cost does
    /// not grow with the size of the workflow.
    pub(crate) fn context(
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

/// Runs one scope of an execution (the scheduler's `run_scope`): handed to blocks through
/// their context, so a loop runs its body without naming the scheduler.
pub(crate) type ScopeRunner = fn(
    Arc<Run>,
    usize,
    String,
    Option<LoopCtx>,
    CancellationToken,
) -> BoxFuture<'static, Result<HashMap<usize, Value>, String>>;

/// Marks an event's fields with the loop iterations it happened in (`scope`), if any.
pub(crate) fn scoped(mut v: Value, prefix: &str) -> Value {
    if !prefix.is_empty() {
        v["scope"] = prefix.trim_end_matches('/').into();
    }
    v
}
