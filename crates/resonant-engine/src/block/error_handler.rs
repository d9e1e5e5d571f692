//! `errorHandler`: the workflow's error handler. It has no inputs: when a block's failure
//! fails the execution, the handler and what it leads to run (a message to a channel, a
//! ticket, a cleanup call), with `{error: {message, blockId}}` as its output. The execution
//! still ends failed.

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Behaviour, BlockCtx, BlockDone};

/// The workflow's error handler.
pub(crate) struct ErrorHandler;

impl Behaviour for ErrorHandler {
    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move {
            let failure = ctx.run.failure.lock().clone().unwrap_or(Value::Null);
            Ok(BlockDone::value(failure))
        })
    }
}
