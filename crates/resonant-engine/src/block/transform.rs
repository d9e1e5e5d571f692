//! `transform`: a template over earlier outputs, as text or parsed JSON.

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Behaviour, BlockCtx, BlockDone, Check};

/// Renders its `template`; `outputFormat: json` parses the result.
pub(crate) struct Transform;

impl Behaviour for Transform {
    fn check(&self, c: &mut Check<'_>) {
        if c.string("template") != Some(true) {
            c.bad("template", "required: a string");
        }
        if c.one_of("outputFormat", &["text", "json"]) == Some(false) {
            c.bad("outputFormat", "must be text or json");
        }
    }

    fn templates(&self) -> &'static [&'static str] {
        &["template"]
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move {
            let text = ctx.render("template").await?.unwrap_or_default();
            let output = match ctx.config_str("outputFormat") {
                Some("json") => serde_json::from_str(text.trim())
                    .map_err(|e| format!("template output is not JSON: {e}"))?,
                _ => Value::String(text),
            };
            Ok(BlockDone::value(output))
        })
    }
}
