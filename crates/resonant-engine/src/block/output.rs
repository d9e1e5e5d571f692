//! `output`: collects a result of the execution (its `template` rendered, else its input).

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Behaviour, BlockCtx, BlockDone};

/// Collects a result: the execution's outputs are its output blocks' values.
pub(crate) struct Output;

impl Behaviour for Output {
    fn templates(&self) -> &'static [&'static str] {
        &["template"]
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move {
            Ok(BlockDone::value(match ctx.render("template").await? {
                Some(text) => Value::String(text),
                None => ctx.upstream.clone(),
            }))
        })
    }
}
