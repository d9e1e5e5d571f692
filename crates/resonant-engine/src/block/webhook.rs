//! `webhook`: an HTTP request through the SSRF-guarded client, with the block's retry
//! policy; method, URL, headers and body are templates.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::{Behaviour, BlockCtx, BlockDone, Check};
use crate::http::{send_with_retry, WebhookRequest};
use crate::retry::{BlockError, RetryPolicy};

/// An HTTP request.
pub(crate) struct Webhook;

impl Behaviour for Webhook {
    fn check(&self, c: &mut Check<'_>) {
        if c.string("url") != Some(true) {
            c.bad("url", "required: a string");
        }
        let templated = c
            .get("method")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("{{"));
        if !templated
            && c.one_of("method", &["GET", "POST", "PUT", "PATCH", "DELETE"]) == Some(false)
        {
            c.bad(
                "method",
                "must be GET, POST, PUT, PATCH or DELETE (or a template)",
            );
        }
        if c.get("headers").is_some_and(|h| {
            !h.as_object()
                .is_some_and(|m| m.values().all(|v| v.is_string()))
        }) {
            c.bad("headers", "must be an object of strings");
        }
    }

    fn templates(&self) -> &'static [&'static str] {
        &["url", "method", "body"]
    }

    fn acts_outside(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(webhook_block(ctx))
    }
}

/// Runs a webhook block: method, URL, headers and body are templates; the response
/// (status, headers, parsed body) is the output.
async fn webhook_block(ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
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
                Value::String(t) => crate::template::render_async(t, &tctx)
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
