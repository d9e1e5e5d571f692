//! Blocks that reach outside the server: AI calls through the router, webhooks through the
//! guarded client, and approval emails.

use std::time::Duration;

use serde_json::{json, Value};

use super::http::{send_with_retry, WebhookClient, WebhookRequest};
use super::retry::{BlockError, RetryPolicy};
use super::run::{BlockCtx, BlockDone};
use crate::db::Db;
use crate::email::Mailer;

/// Provider keys usable by one execution.
pub type Keys = ();

/// The outside world, as the engine reaches it.
pub struct Io {
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
            webhooks: WebhookClient::new(Default::default()),
            mailer: None,
            public_url: "http://127.0.0.1:1234".into(),
        }
    }
}

impl Io {
    /// Loads a workspace's usable provider keys.
    pub async fn keys(&self, _db: &Db, _workspace: &str) -> Keys {}
}

/// Runs an AI block.
pub(super) async fn ai_block(_ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
    Err("AI blocks are not wired yet".into())
}

/// Runs a webhook block: method, URL, headers and body are templates; the response
/// (status, headers, parsed body) is the output.
pub(super) async fn webhook_block(ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
    let config = &ctx.block.config;
    let url = ctx.render("url")?.unwrap_or_default();
    let method = match ctx.render("method")? {
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
                Value::String(t) => {
                    super::template::render(t, &tctx).map_err(|e| format!("headers.{name}: {e}"))?
                }
                other => other.to_string(),
            };
            headers.push((name.clone(), value));
        }
    }
    let body = match ctx.render("body")? {
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
