//! `split`: fans out; a named branch gets its own field of the value when there is one.

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Behaviour, BlockCtx, BlockDone};

/// Fans its input out to every connection leaving it.
pub(crate) struct Split;

impl Behaviour for Split {
    fn branch(&self, output: &Value, handle: Option<&str>) -> Value {
        match (handle, output) {
            (Some(h), Value::Object(m)) if m.contains_key(h) => m[h].clone(),
            _ => output.clone(),
        }
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move { Ok(BlockDone::value(ctx.upstream.clone())) })
    }
}
