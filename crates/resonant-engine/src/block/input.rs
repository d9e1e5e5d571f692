//! `input`: the execution's input, or one field of it.

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Behaviour, BlockCtx, BlockDone};

/// The execution's input (`field`: only that field of it).
pub(crate) struct Input;

impl Behaviour for Input {
    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move {
            Ok(BlockDone::value(match ctx.config_str("field") {
                Some(f) => ctx.run.input.get(f).cloned().unwrap_or(Value::Null),
                None => ctx.run.input.clone(),
            }))
        })
    }
}
