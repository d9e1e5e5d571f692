//! Block types, one file each: what a type checks in its configuration, what it does when it
//! runs, and how the scheduler treats it. Adding a type is a file here, a variant of
//! [`BlockKind`] with its line in [`BlockKind::ALL`], `as_str` and `behaviour`, and its
//! config in the SDK's `block-schema.ts` (`tests/block_schema.rs` holds the two together).

mod ai;
mod condition;
mod delay;
mod error_handler;
mod human;
mod input;
pub(crate) mod kind;
mod r#loop;
mod merge;
mod output;
mod split;
mod transform;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub(crate) use self::ai::Ledger;
pub use self::kind::{Block, BlockKind};
use crate::db::executions::BlockRow;
use crate::db::now_ms;
use crate::graph::TypeRules;
use crate::run::{LoopCtx, Run, ScopeRunner};
use crate::template;

impl BlockKind {
    /// What blocks of this type do.
    pub(crate) fn behaviour(self) -> &'static dyn Behaviour {
        match self {
            BlockKind::Input => &input::Input,
            BlockKind::Ai => &ai::Ai,
            BlockKind::Output => &output::Output,
            BlockKind::Condition => &condition::Condition,
            BlockKind::Transform => &transform::Transform,
            BlockKind::Loop => &r#loop::Loop,
            BlockKind::Merge => &merge::Merge,
            BlockKind::Split => &split::Split,
            BlockKind::Human => &human::Human,
            BlockKind::Webhook => &webhook::Webhook,
            BlockKind::Delay => &delay::Delay,
            BlockKind::ErrorHandler => &error_handler::ErrorHandler,
        }
    }
}

/// One block type: its configuration check, its behaviour, and what the scheduler needs to
/// know of it. The defaults are those of a plain block: it works (holds a concurrency
/// slot), starts when all its live inputs have arrived, and passes its output on every
/// outgoing connection.
pub(crate) trait Behaviour: Sync {
    /// Checks the type's own configuration fields (the retry policy is checked for all).
    fn check(&self, _c: &mut Check<'_>) {}

    /// Configuration fields holding templates: compiled when the workflow is validated, so a
    /// syntax error is reported before anything runs.
    fn templates(&self) -> &'static [&'static str] {
        &[]
    }

    /// Configuration fields holding expressions, compiled when the workflow is validated.
    fn expressions(&self, _config: &Map<String, Value>) -> &'static [&'static str] {
        &[]
    }

    /// Whether it waits rather than works (on a timer, a person, its loop body): waiting
    /// holds none of the execution's or the server's concurrency slots.
    fn waits(&self) -> bool {
        false
    }

    /// When it runs given its inputs' states: `all` live, `any` one live, or
    /// `all-non-skipped` (the default: runs once every input settled, if any is live).
    fn join<'c>(&self, _config: &'c Value) -> &'c str {
        "all-non-skipped"
    }

    /// Whether it receives its live inputs as one object keyed by target handle (else by
    /// source block id) even when only one arrives.
    fn gathers(&self) -> bool {
        false
    }

    /// Whether, when it routes, a connection without a source handle is left untaken (a
    /// condition's every exit is a handle; other blocks' plain exits always carry on).
    fn routes_only(&self) -> bool {
        false
    }

    /// The value a connection leaving through `handle` carries.
    fn branch(&self, output: &Value, _handle: Option<&str>) -> Value {
        output.clone()
    }

    /// Whether its result is committed before anything depends on it: it acted outside the
    /// server, and a crash must not make it act twice.
    fn acts_outside(&self) -> bool {
        false
    }

    /// Runs one block of this type.
    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>>;
}

/// A block's configuration while it is checked: typed reads, and the problems found as
/// `(field, message)`.
pub(crate) struct Check<'a> {
    c: &'a Map<String, Value>,
    problems: Vec<(String, String)>,
}

impl<'a> Check<'a> {
    /// The raw field.
    pub(crate) fn get(&self, field: &str) -> Option<&'a Value> {
        self.c.get(field)
    }

    /// `None` when absent, else whether it is a string.
    pub(crate) fn string(&self, field: &str) -> Option<bool> {
        self.c.get(field).map(|v| v.as_str().is_some())
    }

    /// `None` when absent, else the number it holds, if it is one.
    pub(crate) fn number(&self, field: &str) -> Option<Option<f64>> {
        self.c.get(field).map(Value::as_f64)
    }

    /// `None` when absent, else whether it is one of `allowed`.
    pub(crate) fn one_of(&self, field: &str, allowed: &[&str]) -> Option<bool> {
        self.c
            .get(field)
            .map(|v| v.as_str().is_some_and(|s| allowed.contains(&s)))
    }

    /// Records a problem with `field`.
    pub(crate) fn bad(&mut self, field: &str, message: &str) {
        self.problems.push((field.into(), message.into()));
    }
}

/// The longest delay or approval timeout (ten years): deadlines stay far from overflow.
pub(crate) const MAX_WAIT_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// The shortest secret value the API stores: shorter values are not redacted from what a
/// run stores and shows (a two-letter value would blank every word it occurs in).
pub const MIN_SECRET_CHARS: usize = 4;

/// The block types' rules, as validation asks for them.
pub(crate) struct Rules;

impl TypeRules for Rules {
    fn check(&self, kind: BlockKind, config: &Value) -> Vec<(String, String)> {
        check(kind, config)
    }

    fn condition_handles(&self, config: &Value) -> Vec<String> {
        condition::handles(config)
    }

    fn reads(&self, kind: BlockKind, config: &Value) -> Vec<(String, template::Reads)> {
        reads(kind, config)
    }
}

/// Where a block's configuration holds templates and expressions, as `(field, source,
/// is_expression)`: its template and expression fields, a webhook's header values and a
/// switch's cases.
fn sources(kind: BlockKind, c: &Map<String, Value>) -> Vec<(String, &str, bool)> {
    let behaviour = kind.behaviour();
    let mut out = Vec::new();
    for field in behaviour.templates() {
        if let Some(Value::String(t)) = c.get(*field) {
            out.push(((*field).to_owned(), t.as_str(), false));
        }
    }
    for field in behaviour.expressions(c) {
        if let Some(Value::String(e)) = c.get(*field) {
            out.push(((*field).to_owned(), e.as_str(), true));
        }
    }
    if kind == BlockKind::Webhook {
        if let Some(Value::Object(h)) = c.get("headers") {
            for (name, v) in h {
                if let Value::String(t) = v {
                    out.push((format!("headers.{name}"), t.as_str(), false));
                }
            }
        }
    }
    if kind == BlockKind::Condition {
        if let Some(Value::Array(cases)) = c.get("cases") {
            for case in cases {
                if let Some(e) = case.get("expression").and_then(Value::as_str) {
                    out.push(("cases".to_owned(), e, true));
                }
            }
        }
    }
    out
}

/// What each template or expression of a block reads of `blocks` and `secrets`, by field
/// (those that do not compile are reported by [`check`]).
fn reads(kind: BlockKind, config: &Value) -> Vec<(String, template::Reads)> {
    let Some(c) = config.as_object() else {
        return Vec::new();
    };
    sources(kind, c)
        .into_iter()
        .filter_map(|(field, source, expression)| {
            let reads = if expression {
                template::expression_reads(source)
            } else {
                template::template_reads(source)
            };
            reads.ok().map(|r| (field, r))
        })
        .collect()
}

/// The fields whose templates may read `secrets`: a webhook's request, which is where a
/// credential goes and whose text is never stored or shown.
fn may_read_secrets(kind: BlockKind, field: &str) -> bool {
    kind == BlockKind::Webhook
        && (field == "url" || field == "body" || field.starts_with("headers."))
}

/// Checks a block's configuration for its type; every problem found, as `(field, message)`.
fn check(kind: BlockKind, config: &Value) -> Vec<(String, String)> {
    let Some(c) = config.as_object() else {
        return vec![("config".into(), "must be an object".into())];
    };
    let behaviour = kind.behaviour();
    let mut check = Check {
        c,
        problems: Vec::new(),
    };
    behaviour.check(&mut check);
    for field in behaviour.templates() {
        if let Some(Value::String(t)) = c.get(*field) {
            if let Err(e) = template::check_template(t) {
                check.bad(field, &e.to_string());
            }
        }
    }
    for field in behaviour.expressions(c) {
        match c.get(*field) {
            Some(Value::String(e)) => {
                if let Err(err) = template::check_expression(e) {
                    check.bad(field, &err.to_string());
                }
            }
            Some(_) => check.bad(field, "must be a string (an expression)"),
            None => {}
        }
    }
    // `timeoutMs` is the retry policy's attempt timeout, but an editor shows it as a field
    // of its own, so its problem names it; the policy is then checked without it.
    let retry = match c
        .get("timeoutMs")
        .filter(|v| !v.is_null())
        .map(Value::as_u64)
    {
        Some(Some(ms)) if ms > 0 => crate::retry::RetryPolicy::from_config(config),
        None => crate::retry::RetryPolicy::from_config(config),
        Some(_) => {
            check.bad("timeoutMs", "must be a positive integer (milliseconds)");
            let retry = c.get("retry").cloned().unwrap_or(Value::Null);
            crate::retry::RetryPolicy::from_config(&serde_json::json!({ "retry": retry }))
        }
    };
    if let Err(e) = retry {
        check.bad("retry", &e);
    }
    if c.get("pinnedOutput").is_some_and(|v| !v.is_null())
        && !matches!(
            kind,
            BlockKind::Ai | BlockKind::Webhook | BlockKind::Transform
        )
    {
        check.bad(
            "pinnedOutput",
            "sample data can be pinned on ai, webhook and transform blocks only",
        );
    }
    if let Some(v) = c.get("onError").filter(|v| !v.is_null()) {
        if !matches!(v.as_str(), Some("fail" | "continue" | "route")) {
            check.bad("onError", "must be fail, continue or route");
        }
    }
    for (field, r) in reads(kind, config) {
        if (r.any_secret || !r.secrets.is_empty()) && !may_read_secrets(kind, &field) {
            check.bad(
                &field,
                "secrets can be used only in a webhook block's url, headers and body \
                 (anywhere else their value could be stored or shown)",
            );
        } else if r.any_secret {
            check.bad(
                &field,
                "name secrets one by one (`secrets.NAME`), not through a variable",
            );
        }
    }
    check.problems
}

/// Usage of a block that called a provider.
pub(crate) struct Usage {
    pub provider: String,
    pub model: String,
    pub tokens: i64,
    pub cost: f64,
    pub estimated: bool,
}

/// A finished block: its output (`None`: it decided to skip itself), the handle it routes
/// to, and what it used.
pub(crate) struct BlockDone {
    pub output: Option<Value>,
    pub route: Option<String>,
    pub usage: Option<Usage>,
    /// The attempt it finished on, when the block retried by itself (a webhook's retries,
    /// an AI call's restarts): its last `block.retrying` event's attempt.
    pub attempt: Option<i64>,
}

impl BlockDone {
    /// A plain result: an output, no route, no usage.
    pub(crate) fn value(output: Value) -> BlockDone {
        BlockDone {
            output: Some(output),
            route: None,
            usage: None,
            attempt: None,
        }
    }
}

/// Everything a block's behaviour needs.
pub(crate) struct BlockCtx<'a> {
    pub run: &'a Arc<Run>,
    pub block: &'a Block,
    /// Its key in the execution's rows: the id, under its loop iterations (`loop[2]/id`).
    pub key: &'a str,
    /// The iterations it runs in (`loop[2]/`), empty at the top level.
    pub prefix: &'a str,
    pub attempt: i64,
    pub upstream: Value,
    pub lp: Option<&'a LoopCtx>,
    pub cancel: &'a CancellationToken,
    /// Its waiting state from before a restart (a delay's or approval's deadline).
    pub waiting: Option<BlockRow>,
    /// Runs a scope of the execution: how a loop runs its body.
    pub scope: ScopeRunner,
}

impl BlockCtx<'_> {
    /// A string field of its configuration.
    pub(crate) fn config_str(&self, field: &str) -> Option<&str> {
        self.block.config.get(field).and_then(|v| v.as_str())
    }

    /// Its template context.
    pub(crate) fn context(&self) -> minijinja::Value {
        self.run.context(self.prefix, &self.upstream, self.lp)
    }

    /// Renders a template field, charged to the template allowances; `None` when unset.
    pub(crate) async fn render(&self, field: &str) -> Result<Option<String>, String> {
        self.render_in(field, &self.context()).await
    }

    /// [`BlockCtx::render`] against a context of the caller's (a webhook's, with its
    /// secrets).
    pub(crate) async fn render_in(
        &self,
        field: &str,
        context: &minijinja::Value,
    ) -> Result<Option<String>, String> {
        match self.config_str(field) {
            None => Ok(None),
            Some(t) => {
                let text = template::render_async(t, context)
                    .await
                    .map_err(|e| format!("{field}: {e}"))?;
                self.run
                    .spend_template(text.len())
                    .map_err(|e| format!("{field}: {e}"))?;
                Ok(Some(text))
            }
        }
    }
}

/// Sleeps until a wall-clock deadline (a restart keeps it), or fails when cancelled.
pub(crate) async fn sleep_until_ms(wake_at: i64, cancel: &CancellationToken) -> Result<(), String> {
    let wait = Duration::from_millis((wake_at - now_ms()).max(0) as u64);
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = cancel.cancelled() => Err("cancelled".into()),
    }
}
