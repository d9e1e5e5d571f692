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
use super::store::{UsageRow, Write};
use crate::crypto::KeyCipher;
use crate::with_pool;

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
        type Row = (String, String, String, Option<String>);
        let rows: Result<Vec<Row>, sqlx::Error> = with_pool!(db, p => sqlx::query_as(
            "SELECT id, provider, api_key, base_url FROM ai_provider_configs \
             WHERE workspace_id = $1 AND is_enabled = TRUE AND api_key IS NOT NULL \
             ORDER BY priority, provider")
            .bind(workspace)
            .fetch_all(p)
            .await);
        match rows {
            Ok(rows) => rows
                .into_iter()
                .filter_map(
                    |(id, family, sealed, base_url)| match cipher.decrypt(&id, &sealed) {
                        Ok(api_key) => Some(ProviderKey {
                            family,
                            api_key,
                            base_url,
                        }),
                        Err(e) => {
                            tracing::error!(workspace, error = %e, "stored provider key unusable");
                            None
                        }
                    },
                )
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
        match super::store::user_tokens(&ctx.run.engine.db, &ctx.run.user).await {
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

/// Emails the block's `notify` addresses, when email is configured. Failures are logged,
/// never fatal: the decision can still be made in the editor.
pub(super) async fn ask_for_approval(ctx: &BlockCtx<'_>, _wake_at: i64) {
    let io = &ctx.run.engine.io;
    let Some(mailer) = io.mailer.as_ref().filter(|m| m.is_configured()) else {
        return;
    };
    let to: Vec<String> = ctx
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
