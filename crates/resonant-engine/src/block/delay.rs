//! `delay`: waits `seconds` (the deadline is stored, so a restart keeps it), then passes its
//! input on.

use futures_util::future::BoxFuture;
use serde_json::json;

use super::{sleep_until_ms, Behaviour, BlockCtx, BlockDone, Check, MAX_WAIT_SECS};
use crate::db::executions::Write;
use crate::db::now_ms;
use crate::run::scoped;

/// Waits, then passes its input on.
pub(crate) struct Delay;

impl Behaviour for Delay {
    fn check(&self, c: &mut Check<'_>) {
        match c.number("seconds") {
            Some(Some(s)) if (0.0..=MAX_WAIT_SECS).contains(&s) => {}
            _ => c.bad("seconds", "required: a number of seconds, 0 to 10 years"),
        }
    }

    fn waits(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move {
            let wake_at = match &ctx.waiting {
                Some(w) => w.wake_at.unwrap_or_else(now_ms),
                None => {
                    let secs = ctx
                        .block
                        .config
                        .get("seconds")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(0.0);
                    let wake_at = now_ms().saturating_add((secs * 1000.0) as i64);
                    // Stored with its deadline, then announced.
                    let mut row = ctx.run.block_row(ctx.key, "waiting", ctx.attempt);
                    row.wake_at = Some(wake_at);
                    ctx.run.engine.events.write(Write::Block(row));
                    ctx.run.emit(
                        "block.waiting",
                        scoped(
                            json!({"reason": "timer", "blockId": ctx.block.id, "until": wake_at}),
                            ctx.prefix,
                        ),
                    );
                    wake_at
                }
            };
            sleep_until_ms(wake_at, ctx.cancel).await?;
            Ok(BlockDone::value(ctx.upstream.clone()))
        })
    }
}
