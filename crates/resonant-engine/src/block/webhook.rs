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

/// The methods a webhook block may send (a templated method too): CONNECT opens a tunnel
/// through the guarded client's checks and TRACE echoes the request's credentials back.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Runs a webhook block: method, URL, headers and body are templates; the response
/// (status, headers, parsed body) is the output. Secrets the request names are read and
/// decrypted now, at call time, and every trace of their values is removed from what the
/// block returns (its output, its error and its retry reasons), since those are stored and
/// sent to every editor.
async fn webhook_block(ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
    let secrets = Secrets::load(ctx).await?;
    let redact = |text: String| secrets.redact(text);
    match send(ctx, &secrets).await {
        Ok((mut output, attempts)) => {
            secrets.redact_json(&mut output);
            Ok(BlockDone {
                output: Some(output),
                route: None,
                usage: None,
                attempt: Some(ctx.attempt - 1 + i64::from(attempts.max(1))),
            })
        }
        Err(e) => Err(redact(e)),
    }
}

/// The workspace's secrets as one webhook request uses them.
#[derive(Default)]
struct Secrets {
    /// Name → value, for the templates (`None`: the request names no secret).
    values: Option<minijinja::Value>,
    /// `(value, replacement)`, longest value first, for [`Secrets::redact`].
    redactions: Vec<(String, String)>,
}

impl Secrets {
    async fn load(ctx: &BlockCtx<'_>) -> Result<Secrets, String> {
        // What the request's templates name, as validation read them.
        let named: std::collections::BTreeSet<String> =
            super::reads(super::BlockKind::Webhook, &ctx.block.config)
                .into_iter()
                .flat_map(|(_, r)| r.secrets)
                .collect();
        if named.is_empty() {
            return Ok(Secrets::default());
        }
        let engine = &ctx.run.engine;
        let Some(cipher) = &engine.io.cipher else {
            return Err("secrets cannot be read: this server has no encryption key \
                        (--encryption-key / RESONANT_ENCRYPTION_KEY)"
                .into());
        };
        let all = crate::db::secrets::secret_values(&engine.db, cipher, &ctx.run.workspace)
            .await
            .map_err(|e| format!("reading the workspace's secrets: {e}"))?;
        let mut values = std::collections::BTreeMap::new();
        let mut redactions = Vec::new();
        for (name, value) in all {
            if !named.contains(&name) {
                continue;
            }
            if value.chars().count() >= super::MIN_SECRET_CHARS {
                let mark = format!("[secret:{name}]");
                // As a URL or a client's error message may carry it: percent-encoded.
                use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
                const COMPONENT: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
                    .remove(b'-')
                    .remove(b'.')
                    .remove(b'_')
                    .remove(b'~');
                for set in [NON_ALPHANUMERIC, COMPONENT] {
                    let encoded = utf8_percent_encode(&value, set).to_string();
                    if encoded != value {
                        redactions.push((encoded, mark.clone()));
                    }
                }
                redactions.push((value.clone(), mark));
            }
            values.insert(name, value);
        }
        if let Some(missing) = named.iter().find(|n| !values.contains_key(*n)) {
            return Err(format!(
                "secrets.{missing}: this workspace has no secret of that name"
            ));
        }
        redactions.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Ok(Secrets {
            values: Some(minijinja::Value::from_serialize(&values)),
            redactions,
        })
    }

    /// `text` without any secret value in it.
    fn redact(&self, mut text: String) -> String {
        for (value, mark) in &self.redactions {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), mark);
            }
        }
        text
    }

    /// Redacts every string (and key) of a JSON value in place.
    fn redact_json(&self, v: &mut Value) {
        if self.redactions.is_empty() {
            return;
        }
        match v {
            Value::String(s) => *s = self.redact(std::mem::take(s)),
            Value::Array(items) => items.iter_mut().for_each(|i| self.redact_json(i)),
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut item) in old {
                    self.redact_json(&mut item);
                    map.insert(self.redact(k), item);
                }
            }
            _ => {}
        }
    }

    /// The block's template context, with `secrets` when the request names any.
    fn context(&self, ctx: &BlockCtx<'_>) -> minijinja::Value {
        let base = ctx.context();
        match &self.values {
            Some(secrets) => minijinja::context! { secrets => secrets.clone(), ..base },
            None => base,
        }
    }
}

/// Builds and sends the request; its output and the attempts it took, or why it failed
/// (not yet redacted).
async fn send(ctx: &BlockCtx<'_>, secrets: &Secrets) -> Result<(Value, u32), String> {
    let config = &ctx.block.config;
    let tctx = secrets.context(ctx);
    let url = ctx.render_in("url", &tctx).await?.unwrap_or_default();
    let method = match ctx.render_in("method", &tctx).await? {
        Some(m) => m.trim().to_ascii_uppercase(),
        None => "POST".into(),
    };
    if !METHODS.contains(&method.as_str()) {
        return Err(format!(
            "method: {method} is not one of {}",
            METHODS.join(", ")
        ));
    }
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("method: {method} is not an HTTP method"))?;
    let mut headers = Vec::new();
    if let Some(h) = config.get("headers").and_then(|v| v.as_object()) {
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
    // The receiver can tell a retried or re-sent request (after a restart, or a deploy that
    // cut the block short) from a new one: the key is the same on every attempt.
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("idempotency-key"))
    {
        headers.push((
            "idempotency-key".into(),
            format!("{}/{}", ctx.run.id, ctx.key),
        ));
    }
    let body = match ctx.render_in("body", &tctx).await? {
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
    // Attempts count on from the block's own (a re-run or resumed block starts past 1).
    let base = ctx.attempt - 1;
    let mut on_retry = move |attempt: u32, err: &BlockError, wait: Duration| {
        let mut fields = json!({"blockId": block, "attempt": base + i64::from(attempt) + 1,
                                "reason": secrets.redact(err.message.clone()),
                                "waitMs": wait.as_millis() as u64});
        if !scope.is_empty() {
            fields["scope"] = scope.clone().into();
        }
        run.emit("block.retrying", fields);
    };
    let (response, attempts) = send_with_retry(
        &ctx.run.engine.io.webhooks,
        &req,
        &policy,
        ctx.cancel,
        &mut on_retry,
    )
    .await
    .map_err(|e| e.message)?;
    Ok((
        json!({
            "status": response.status,
            "headers": Value::Object(response.headers),
            "body": response.body,
            "durationMs": response.duration_ms,
        }),
        attempts,
    ))
}
