//! Blocks that reach outside the server: AI calls through the router, webhooks through the
//! guarded client, and approval emails.

use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::ai::{
    AiEvents, AiRequest, CallRecord, OutputFormat, Priority, ProviderKey, Router, RouterConfig,
};
use super::run::Usage;
use crate::crypto::KeyCipher;
use crate::db::executions::{UsageRow, Write};

use super::http::{send_with_retry, WebhookClient, WebhookRequest};
use super::retry::{BlockError, RetryPolicy};
use super::run::{BlockCtx, BlockDone};
use crate::db::Db;
use crate::email::Mailer;

/// Provider keys usable by one execution (the workspace's own, decrypted).
pub type Keys = Vec<ProviderKey>;

/// Text deltas are batched into `block.delta` events no more often than this per block.
const DELTA_INTERVAL: Duration = Duration::from_millis(50);

/// The outside world, as the engine reaches it.
pub struct Io {
    /// The AI router (with the server's own keys).
    pub router: Arc<Router>,
    /// Decrypts workspaces' provider keys (`None`: no BYOK keys are stored).
    pub cipher: Option<KeyCipher>,
    /// Webhook blocks' HTTP client (SSRF-guarded).
    pub webhooks: WebhookClient,
    /// Approval emails (when Resend is configured).
    pub mailer: Option<Mailer>,
    /// Base URL for links in emails.
    pub public_url: String,
}

impl Default for Io {
    fn default() -> Self {
        Io {
            router: Arc::new(Router::new(RouterConfig::default())),
            cipher: None,
            webhooks: WebhookClient::new(Default::default()),
            mailer: None,
            public_url: "http://127.0.0.1:1234".into(),
        }
    }
}

impl Io {
    /// Loads a workspace's usable provider keys, lowest priority number first. A key that
    /// does not decrypt is left out (and logged), never used.
    pub async fn keys(&self, db: &Db, workspace: &str) -> Keys {
        let Some(cipher) = &self.cipher else {
            return Vec::new();
        };
        match crate::db::providers::provider_keys(db, cipher, workspace).await {
            Ok(keys) => keys
                .into_iter()
                .map(|k| ProviderKey {
                    family: k.provider,
                    api_key: k.api_key,
                    base_url: k.base_url,
                })
                .collect(),
            Err(e) => {
                tracing::error!(workspace, error = %e, "reading provider keys failed");
                Vec::new()
            }
        }
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

fn scoped(mut v: Value, prefix: &str) -> Value {
    if !prefix.is_empty() {
        v["scope"] = prefix.trim_end_matches('/').into();
    }
    v
}

/// Runs an AI block through the router: prompts are templates; the output is the text (or
/// the parsed JSON for `outputFormat: json`). Every provider call is a usage record; the
/// user's token count grows by the non-demo tokens, and crossing the limit stops the run.
pub(super) async fn ai_block(ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
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
            .any(|c| c.spec.kind != super::ai::ProviderKind::Demo)
    });
    // Held until the calls' usage is stored (below), then given back.
    let _reserved = if paid {
        let mut sent = req.system.clone().unwrap_or_default();
        sent.push_str(&req.prompt);
        let estimate = super::ai::estimate_tokens(&sent)
            + u64::from(
                req.max_tokens
                    .unwrap_or(super::ai::wire_default_max_tokens()),
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
        .any(|c| c.provider != super::ai::DEMO_ID && billed(c).0 > 0)
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
pub(super) struct Reservation {
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
pub(super) async fn reserve_tokens(
    ctx: &BlockCtx<'_>,
    estimate: i64,
) -> Result<Reservation, String> {
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

/// Runs a webhook block: method, URL, headers and body are templates; the response
/// (status, headers, parsed body) is the output.
pub(super) async fn webhook_block(ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
    let config = &ctx.block.config;
    let url = ctx.render("url").await?.unwrap_or_default();
    let method = match ctx.render("method").await? {
        Some(m) => m.trim().to_ascii_uppercase(),
        None => "POST".into(),
    };
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("method: {method} is not an HTTP method"))?;
    let mut headers = Vec::new();
    if let Some(h) = config.get("headers").and_then(|v| v.as_object()) {
        let tctx = ctx.context();
        for (name, value) in h {
            let value = match value {
                Value::String(t) => super::template::render_async(t, &tctx)
                    .await
                    .map_err(|e| format!("headers.{name}: {e}"))?,
                other => other.to_string(),
            };
            headers.push((name.clone(), value));
        }
    }
    let body = match ctx.render("body").await? {
        Some(b) => Some(b),
        // Without a body template, a request that has a body sends the upstream value.
        None if method != reqwest::Method::GET && method != reqwest::Method::HEAD => {
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Some(ctx.upstream.to_string())
        }
        None => None,
    };
    let policy = RetryPolicy::from_config(config).map_err(|e| format!("retry: {e}"))?;
    let req = WebhookRequest {
        method,
        url,
        headers,
        body,
    };
    let run = ctx.run.clone();
    let block = ctx.block.id.clone();
    let scope = ctx.prefix.trim_end_matches('/').to_owned();
    let mut on_retry = move |attempt: u32, err: &BlockError, wait: Duration| {
        let mut fields = json!({"blockId": block, "attempt": attempt + 1, "reason": err.message,
                                "waitMs": wait.as_millis() as u64});
        if !scope.is_empty() {
            fields["scope"] = scope.clone().into();
        }
        run.emit("block.retrying", fields);
    };
    let (response, _attempts) = send_with_retry(
        &ctx.run.engine.io.webhooks,
        &req,
        &policy,
        ctx.cancel,
        &mut on_retry,
    )
    .await
    .map_err(|e| e.message)?;
    Ok(BlockDone {
        output: Some(json!({
            "status": response.status,
            "headers": Value::Object(response.headers),
            "body": response.body,
            "durationMs": response.duration_ms,
        })),
        route: None,
        usage: None,
    })
}

/// Emails the block's `notify` recipients, when email is configured. Failures are logged,
/// never fatal: the decision can still be made in the editor.
///
/// The operator's Resend account must not become a relay: recipients are workspace members
/// only (named by email or user id; anyone else is left out), at most
/// `--max-notify-per-block` of them, at most `--max-approval-emails-per-day` per workspace,
/// and a block inside a loop notifies once per execution, not once per item.
pub(super) async fn ask_for_approval(ctx: &BlockCtx<'_>, _wake_at: i64) {
    let io = &ctx.run.engine.io;
    let Some(mailer) = io.mailer.as_ref().filter(|m| m.is_configured()) else {
        return;
    };
    let asked: Vec<String> = ctx
        .block
        .config
        .get("notify")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if asked.is_empty() || !ctx.run.notified.lock().insert(ctx.block.id.clone()) {
        return;
    }
    let config = &ctx.run.engine.config;
    let members = crate::db::member_emails(&ctx.run.engine.db, &ctx.run.workspace).await;
    let members = match members {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, execution = ctx.run.id, "reading members for approval emails failed");
            return;
        }
    };
    let mut to: Vec<String> = Vec::new();
    let mut refused = Vec::new();
    for a in &asked {
        let found = members.iter().find_map(|(id, email)| {
            let email = email.as_deref()?;
            (id == a || email.eq_ignore_ascii_case(a)).then(|| email.to_owned())
        });
        match found {
            Some(e) if !to.iter().any(|t| t.eq_ignore_ascii_case(&e)) => to.push(e),
            Some(_) => {}
            None => refused.push(a.clone()),
        }
    }
    if !refused.is_empty() {
        tracing::warn!(
            execution = ctx.run.id,
            block = ctx.key,
            ?refused,
            "notify recipients that are not workspace members left out"
        );
    }
    if to.len() > config.max_notify_per_block {
        tracing::warn!(
            execution = ctx.run.id,
            block = ctx.key,
            asked = to.len(),
            "notify list cut to --max-notify-per-block"
        );
        to.truncate(config.max_notify_per_block);
    }
    // The workspace's allowance for today, taken before sending (a failed send still counts).
    {
        let day = crate::db::now_ms() / 86_400_000;
        let mut sent = ctx.run.engine.emails_today.lock();
        sent.retain(|_, (d, _)| *d == day);
        let (_, n) = sent.entry(ctx.run.workspace.clone()).or_insert((day, 0));
        let room = config.max_approval_emails_per_day.saturating_sub(*n);
        if to.len() > room {
            tracing::warn!(
                execution = ctx.run.id,
                workspace = ctx.run.workspace,
                "approval emails past --max-approval-emails-per-day not sent"
            );
            to.truncate(room);
        }
        *n += to.len();
    }
    ctx.run.emit(
        "block.notified",
        scoped(
            json!({"blockId": ctx.block.id, "sent": to.len(), "leftOut": refused}),
            ctx.prefix,
        ),
    );
    if to.is_empty() {
        return;
    }
    let message = ctx
        .render("message")
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| format!("Block {} asks for approval.", ctx.block.id));
    let link = format!(
        "{}/workflows/{}?execution={}&block={}",
        io.public_url.trim_end_matches('/'),
        ctx.run.workflow,
        ctx.run.id,
        ctx.key
    );
    for addr in to {
        let key = format!("approval-{}-{}-{}", ctx.run.id, ctx.key, addr);
        if let Err(e) = mailer
            .send_approval_request(&key, &addr, &ctx.run.workflow, &message, &link)
            .await
        {
            tracing::warn!(error = %e, execution = ctx.run.id, block = ctx.key, "approval email failed");
        }
    }
}
