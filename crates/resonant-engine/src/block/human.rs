//! `human`: waits for a person's approval (or the timeout's decision), emailing the block's
//! `notify` recipients when email is configured; routes to `approved` / `rejected` when
//! those handles are connected, else a rejection fails the run.

use futures_util::future::BoxFuture;
use serde_json::json;
use tokio::sync::oneshot;

use super::{sleep_until_ms, Behaviour, BlockCtx, BlockDone, Check, MAX_WAIT_SECS};
use crate::db::executions::Write;
use crate::db::now_ms;
use crate::run::{scoped, Decision};

/// Waits for a person's decision.
pub(crate) struct Human;

impl Behaviour for Human {
    fn check(&self, c: &mut Check<'_>) {
        if c.one_of("onTimeout", &["approve", "reject"]) == Some(false) {
            c.bad("onTimeout", "must be approve or reject");
        }
        match c.number("timeoutSeconds") {
            Some(Some(s)) if s > 0.0 && s <= MAX_WAIT_SECS => {}
            None => {}
            _ => c.bad(
                "timeoutSeconds",
                "must be a positive number of seconds, up to 10 years",
            ),
        }
        for list in ["approvers", "notify"] {
            if c.get(list).is_some_and(|v| {
                !v.as_array()
                    .is_some_and(|a| a.iter().all(|x| x.is_string()))
            }) {
                c.bad(list, "must be an array of strings");
            }
        }
    }

    fn templates(&self) -> &'static [&'static str] {
        &["message"]
    }

    fn waits(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move {
            let timeout_secs = ctx
                .block
                .config
                .get("timeoutSeconds")
                .and_then(|v| v.as_f64())
                .unwrap_or(7.0 * 24.0 * 3600.0);
            let (tx, mut rx) = oneshot::channel();
            let register = || {
                ctx.run
                    .control
                    .waiting
                    .lock()
                    .insert(ctx.key.to_owned(), tx);
            };
            let (wake_at, earlier) = match &ctx.waiting {
                Some(w) => {
                    register();
                    (
                        w.wake_at.unwrap_or_else(now_ms),
                        w.decision
                            .as_deref()
                            .and_then(|d| serde_json::from_str::<Decision>(d).ok()),
                    )
                }
                None => {
                    let wake_at = now_ms().saturating_add((timeout_secs * 1000.0) as i64);
                    let message = ctx.render("message").await.ok().flatten();
                    // Stored, then open to decisions, then announced: a decision can neither come
                    // before the waiting state it is stored against, nor be missed.
                    let mut row = ctx.run.block_row(ctx.key, "waiting", ctx.attempt);
                    row.wake_at = Some(wake_at);
                    ctx.run.engine.events.write(Write::Block(row));
                    register();
                    ctx.run.emit(
                        "block.waiting",
                        scoped(
                            json!({"blockId": ctx.block.id, "reason": "approval", "until": wake_at, "message": message}),
                            ctx.prefix,
                        ),
                    );
                    ask_for_approval(ctx).await;
                    (wake_at, None)
                }
            };
            let timed_out = || Decision {
                approved: ctx.config_str("onTimeout") == Some("approve"),
                by: None,
                comment: None,
                timed_out: true,
                at: now_ms(),
            };
            let decision = match earlier {
                Some(d) => d,
                None => {
                    let timer = sleep_until_ms(wake_at, ctx.cancel);
                    tokio::select! {
                        d = &mut rx => match d {
                            Ok(d) => d,
                            Err(_) => return Err("cancelled".into()),
                        },
                        r = timer => {
                            r?;
                            // A decision that took our place just before the deadline wins: its
                            // maker was told it was recorded.
                            if ctx.run.control.waiting.lock().remove(ctx.key).is_some() {
                                timeout_or_stored(ctx, timed_out()).await
                            } else {
                                rx.await.unwrap_or_else(|_| timed_out())
                            }
                        }
                    }
                }
            };
            ctx.run.control.waiting.lock().remove(ctx.key);
            let has_branches = ctx.run.plan.workflow.connections.iter().any(|c| {
                c.source == ctx.block.id
                    && matches!(c.source_handle.as_deref(), Some("approved" | "rejected"))
            });
            if !decision.approved && !has_branches {
                return Err(match (&decision.by, decision.timed_out) {
                    (_, true) => "no decision before the timeout (onTimeout: reject)".to_string(),
                    (Some(by), _) => format!("rejected by {by}"),
                    (None, _) => "rejected".to_string(),
                });
            }
            let output = json!({
                "approved": decision.approved, "by": decision.by, "comment": decision.comment,
                "timedOut": decision.timed_out, "input": ctx.upstream,
            });
            Ok(BlockDone {
                output: Some(output),
                route: has_branches.then(|| {
                    if decision.approved {
                        "approved"
                    } else {
                        "rejected"
                    }
                    .into()
                }),
                usage: None,
                attempt: None,
            })
        })
    }
}

/// The deadline passed with no decision handed to the block. In a cluster another node may
/// have stored one (and told its maker so) that this node's renewal has not delivered yet:
/// the database decides which came first, the stored decision or the timeout's.
async fn timeout_or_stored(ctx: &BlockCtx<'_>, timeout: Decision) -> Decision {
    let engine = &ctx.run.engine;
    if engine.config.cluster.is_none() {
        return timeout;
    }
    // The waiting row must be stored before the timeout's decision can be stored against it.
    engine.events.flush().await;
    let db = &engine.db;
    let json = serde_json::to_string(&timeout).unwrap_or_default();
    match crate::db::executions::set_decision(db, &ctx.run.id, ctx.key, &json).await {
        Ok(true) => timeout,
        Ok(false) => crate::db::executions::block(db, &ctx.run.id, ctx.key)
            .await
            .ok()
            .flatten()
            .and_then(|b| b.decision)
            .and_then(|d| serde_json::from_str::<Decision>(&d).ok())
            .unwrap_or(timeout),
        Err(e) => {
            tracing::warn!(error = %e, execution = ctx.run.id, block = ctx.key, "storing a timeout's decision failed");
            timeout
        }
    }
}

/// Emails the block's `notify` recipients, when email is configured. Failures are logged,
/// never fatal: the decision can still be made in the editor.
///
/// The operator's Resend account must not become a relay: recipients are workspace members
/// only (named by email or user id; anyone else is left out), at most
/// `--max-notify-per-block` of them, at most `--max-approval-emails-per-day` per workspace,
/// and a block inside a loop notifies once per execution, not once per item.
async fn ask_for_approval(ctx: &BlockCtx<'_>) {
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
