//! `ai`: a generation through the AI router with fallbacks. Prompts are templates; deltas
//! stream to the editors as `block.delta` events; every provider call is a usage record, and
//! a call's tokens are reserved against the user's allowance before it is made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::{Behaviour, BlockCtx, BlockDone, Check, Usage};
use crate::ai::{AiEvents, AiRequest, CallRecord, OutputFormat, Priority};
use crate::db::executions::{UsageRow, Write};
use crate::retry::RetryPolicy;
use crate::run::scoped;

/// Text deltas are batched into `block.delta` events no more often than this per block.
const DELTA_INTERVAL: Duration = Duration::from_millis(50);

/// A generation through the router.
pub(crate) struct Ai;

impl Behaviour for Ai {
    fn check(&self, c: &mut Check<'_>) {
        if c.string("userPromptTemplate") != Some(true) {
            c.bad("userPromptTemplate", "required: a string");
        }
        if c.string("systemPrompt") == Some(false) {
            c.bad("systemPrompt", "must be a string");
        }
        match c.number("temperature") {
            Some(Some(t)) if (0.0..=2.0).contains(&t) => {}
            None => {}
            _ => c.bad("temperature", "must be a number from 0 to 2"),
        }
        match c.get("maxTokens").map(Value::as_u64) {
            Some(Some(n)) if n > 0 => {}
            None => {}
            _ => c.bad("maxTokens", "must be a positive integer"),
        }
        if c.one_of("outputFormat", &["text", "json", "markdown"]) == Some(false) {
            c.bad("outputFormat", "must be text, json or markdown");
        }
    }

    fn templates(&self) -> &'static [&'static str] {
        &["userPromptTemplate", "systemPrompt"]
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(ai_block(ctx))
    }
}

/// The AI router's callbacks for one block: deltas batched into events, restarts announced,
/// every call kept for the usage records.
struct Stream<'a> {
    ctx: &'a BlockCtx<'a>,
    attempt: i64,
    buf: String,
    last_flush: Instant,
    calls: Vec<CallRecord>,
}

impl Stream<'_> {
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.buf);
        self.ctx.run.emit(
            "block.delta",
            scoped(
                json!({"blockId": self.ctx.block.id, "attempt": self.attempt, "text": text}),
                self.ctx.prefix,
            ),
        );
        self.last_flush = Instant::now();
    }
}

impl AiEvents for Stream<'_> {
    fn delta(&mut self, text: &str) {
        self.buf.push_str(text);
        if self.last_flush.elapsed() >= DELTA_INTERVAL {
            self.flush();
        }
    }

    fn restarted(&mut self, reason: &str, next_provider: &str) {
        // What was streamed belongs to the failed attempt: the editor discards it.
        self.buf.clear();
        self.attempt += 1;
        self.last_flush = Instant::now() - DELTA_INTERVAL;
        self.ctx.run.emit(
            "block.retrying",
            scoped(
                json!({"blockId": self.ctx.block.id, "attempt": self.attempt, "reason": reason,
                       "provider": next_provider}),
                self.ctx.prefix,
            ),
        );
    }

    fn call_finished(&mut self, call: &CallRecord) {
        // Recorded as each call ends, so a run cancelled mid-block still accounts for it.
        let (tokens, cost) = record_call(self.ctx, call);
        self.ctx.run.add_usage(tokens, cost);
        self.calls.push(call.clone());
    }
}

/// Runs an AI block through the router: prompts are templates; the output is the text (or
/// the parsed JSON for `outputFormat: json`). Every provider call is a usage record; the
/// user's token count grows by the non-demo tokens, and crossing the limit stops the run.
async fn ai_block(ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
    let config = &ctx.block.config;
    let prompt = ctx.render("userPromptTemplate").await?.unwrap_or_default();
    let system = ctx.render("systemPrompt").await?;
    let output_format: OutputFormat = config
        .get("outputFormat")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("outputFormat: {e}"))?
        .unwrap_or_default();
    let priority: Priority = ctx
        .run
        .options
        .priority
        .as_deref()
        .map(|p| serde_json::from_value(Value::String(p.into())))
        .transpose()
        .map_err(|e| format!("priority: {e}"))?
        .unwrap_or_default();
    let strings = |field: &str| -> Vec<String> {
        config
            .get(field)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let req = AiRequest {
        system,
        prompt,
        temperature: config.get("temperature").and_then(|v| v.as_f64()),
        max_tokens: config
            .get("maxTokens")
            .and_then(|v| v.as_u64())
            .map(|n| n.min(u32::MAX as u64) as u32),
        output_format,
        provider: config
            .get("provider")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        model: config
            .get("model")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        priority,
        required_strengths: strings("strengths"),
        // The block's own policy only when it sets one: the router's default otherwise.
        retry: if config.get("retry").is_some() || config.get("timeoutMs").is_some() {
            Some(RetryPolicy::from_config(config).map_err(|e| format!("retry: {e}"))?)
        } else {
            None
        },
    };
    let mut stream = Stream {
        ctx,
        attempt: ctx.attempt,
        buf: String::new(),
        // The first token goes out at once (time to first token is what people notice);
        // the rest are batched.
        last_flush: Instant::now() - DELTA_INTERVAL,
        calls: Vec::new(),
    };
    let router = ctx.run.engine.io.router.clone();
    // Only a call that may reach a paid provider counts against the allowance.
    let paid = router.plan(&req, &ctx.run.keys).map_or(true, |chain| {
        chain
            .iter()
            .any(|c| c.spec.kind != crate::ai::ProviderKind::Demo)
    });
    // Held until the calls' usage is stored (below), then given back.
    let _reserved = if paid {
        let mut sent = req.system.clone().unwrap_or_default();
        sent.push_str(&req.prompt);
        let estimate = crate::ai::estimate_tokens(&sent)
            + u64::from(
                req.max_tokens
                    .unwrap_or(crate::ai::wire_default_max_tokens()),
            );
        Some(reserve_tokens(ctx, estimate.min(i64::MAX as u64) as i64).await?)
    } else {
        None
    };
    let result = router
        .complete(&req, &ctx.run.keys, &mut stream, ctx.cancel)
        .await;
    stream.flush();
    let calls = std::mem::take(&mut stream.calls);
    if calls
        .iter()
        .any(|c| c.provider != crate::ai::DEMO_ID && billed(c).0 > 0)
    {
        // The count the limit is checked against includes these calls.
        ctx.run.engine.events.flush().await;
        match crate::db::executions::user_tokens(&ctx.run.engine.db, &ctx.run.user).await {
            Ok((used, limit)) if used >= limit => ctx.run.abort(format!(
                "token limit reached: {used} of {limit} tokens used this period"
            )),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "reading the user's tokens failed"),
        }
    }
    let out = result.map_err(|e| e.message)?;
    let output = match (&out.json, output_format) {
        (Some(v), OutputFormat::Json) => v.clone(),
        _ => Value::String(out.text.clone()),
    };
    Ok(BlockDone {
        output: Some(output),
        route: None,
        usage: Some(Usage {
            provider: out.provider,
            model: out.model,
            tokens: (out.input_tokens + out.output_tokens) as i64,
            cost: out.cost_usd,
            estimated: out.estimated,
        }),
        attempt: Some(stream.attempt),
    })
}

/// Tokens held by AI calls in progress, per user, and how many reservations were given
/// back so far (a reader of the stored usage can tell whether a call settled meanwhile).
#[derive(Default)]
pub(crate) struct Ledger {
    held: std::collections::HashMap<String, i64>,
    settled: u64,
}

/// Tokens an AI call in progress holds against its user's allowance; given back on drop,
/// once the call's real usage is stored.
struct Reservation {
    ledger: Arc<parking_lot::Mutex<Ledger>>,
    user: String,
    tokens: i64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut ledger = self.ledger.lock();
        ledger.settled += 1;
        if let Some(held) = ledger.held.get_mut(&self.user) {
            *held -= self.tokens;
            if *held <= 0 {
                ledger.held.remove(&self.user);
            }
        }
    }
}

/// Reserves a call's estimated tokens (prompt estimate + `maxTokens`) before it is made,
/// so parallel blocks and executions cannot all pass a limit checked only before and
/// after: a call is refused once what is used plus what calls in progress hold reaches the
/// limit. A call that would not fit whole gets what is left, so the limit is passed by at
/// most one call's underestimate, not by every call running at once.
async fn reserve_tokens(ctx: &BlockCtx<'_>, estimate: i64) -> Result<Reservation, String> {
    let engine = &ctx.run.engine;
    let mut tries = 0;
    loop {
        tries += 1;
        let before = engine.ledger.lock().settled;
        let (used, limit) = crate::db::executions::user_tokens(&engine.db, &ctx.run.user)
            .await
            .map_err(|e| format!("reading the token allowance failed: {e}"))?;
        let mut ledger = engine.ledger.lock();
        // A call settled while we read: its usage may be missing from what we read and its
        // reservation already gone, so read again (a few times at most).
        if ledger.settled != before && tries < 5 {
            continue;
        }
        let held = ledger.held.get(&ctx.run.user).copied().unwrap_or(0);
        let left = limit - used - held;
        if left <= 0 {
            let reason = format!(
                "token limit reached: {used} of {limit} tokens used this period and {held} \
                 held by AI calls in progress"
            );
            drop(ledger);
            ctx.run.abort(reason.clone());
            return Err(reason);
        }
        let tokens = estimate.clamp(1, left);
        *ledger.held.entry(ctx.run.user.clone()).or_insert(0) += tokens;
        return Ok(Reservation {
            ledger: engine.ledger.clone(),
            user: ctx.run.user.clone(),
            tokens,
        });
    }
}

/// Tokens and cost a call is charged: a call refused before producing anything (a 429, a
/// 401) is recorded with none.
fn billed(c: &CallRecord) -> (i64, f64) {
    if c.error.is_some() && c.output_tokens == 0 {
        (0, 0.0)
    } else {
        ((c.input_tokens + c.output_tokens) as i64, c.cost_usd)
    }
}

/// A call's usage record, written with the execution's other state; returns what it is
/// charged.
fn record_call(ctx: &BlockCtx<'_>, c: &CallRecord) -> (i64, f64) {
    let (tokens, cost) = billed(c);
    let (input, output) = if tokens == 0 {
        (0, 0)
    } else {
        (c.input_tokens as i64, c.output_tokens as i64)
    };
    ctx.run.engine.events.write(Write::Usage(UsageRow {
        id: crate::db::new_id(),
        workspace_id: ctx.run.workspace.clone(),
        user_id: ctx.run.user.clone(),
        execution_id: ctx.run.id.clone(),
        provider: c.provider.clone(),
        model: c.model.clone(),
        input_tokens: input,
        output_tokens: output,
        cost_usd: cost,
        created_at: crate::db::now_ms(),
    }));
    (tokens, cost)
}
