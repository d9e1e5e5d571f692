//! `merge`: joins branches; its `join` decides when it runs.

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Behaviour, BlockCtx, BlockDone, Check};

/// Joins branches: runs when `all` its inputs are live (the default), when `any` one is
/// (with the first value), or when every input settled (`all-non-skipped`); its output is its
/// inputs keyed by target handle, else source block id.
pub(crate) struct Merge;

impl Behaviour for Merge {
    fn check(&self, c: &mut Check<'_>) {
        if c.one_of("join", &["all", "any", "all-non-skipped"]) == Some(false) {
            c.bad("join", "must be all, any or all-non-skipped");
        }
    }

    fn join<'c>(&self, config: &'c Value) -> &'c str {
        config.get("join").and_then(|v| v.as_str()).unwrap_or("all")
    }

    fn gathers(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move { Ok(BlockDone::value(ctx.upstream.clone())) })
    }
}
