//! `condition`: routes to its `true` / `false` handle, or, with `cases`, to the first case
//! whose expression holds (a switch) else `default`.

use std::collections::HashSet;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

use super::{Behaviour, BlockCtx, BlockDone, Check};
use crate::template;

/// Routes its input to one handle.
pub(crate) struct Condition;

/// The handles a condition leaves through: `true`/`false`, or its switch cases' and `default`.
pub fn handles(config: &Value) -> Vec<String> {
    match config.get("cases").and_then(Value::as_array) {
        Some(cases) => cases
            .iter()
            .filter_map(|c| c.get("handle").and_then(Value::as_str).map(str::to_owned))
            .chain(std::iter::once("default".to_owned()))
            .collect(),
        None => vec!["true".into(), "false".into()],
    }
}

impl Behaviour for Condition {
    fn check(&self, c: &mut Check<'_>) {
        match c.get("cases") {
            None => {
                if c.string("expression") != Some(true) {
                    c.bad("expression", "required: a string (or `cases` for a switch)");
                }
            }
            Some(Value::Array(cases)) if !cases.is_empty() => {
                let mut seen = HashSet::new();
                for case in cases {
                    let handle = case.get("handle").and_then(Value::as_str);
                    let expr = case.get("expression").and_then(Value::as_str);
                    match (handle, expr) {
                        (Some(h), Some(e)) if !h.is_empty() && h != "default" => {
                            if !seen.insert(h) {
                                c.bad("cases", &format!("handle `{h}` is used twice"));
                            }
                            if let Err(err) = template::check_expression(e) {
                                c.bad("cases", &format!("case `{h}`: {err}"));
                            }
                        }
                        _ => c.bad(
                            "cases",
                            "each case needs a `handle` (not `default`) and an `expression`",
                        ),
                    }
                }
            }
            Some(_) => c.bad("cases", "must be a non-empty array of {handle, expression}"),
        }
    }

    fn expressions(&self, config: &Map<String, Value>) -> &'static [&'static str] {
        if config.get("cases").is_none() {
            &["expression"]
        } else {
            &[]
        }
    }

    fn routes_only(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, ctx: &'a BlockCtx<'a>) -> BoxFuture<'a, Result<BlockDone, String>> {
        Box::pin(async move {
            let tctx = ctx.context();
            let route = match ctx.block.config.get("cases").and_then(|v| v.as_array()) {
                // A switch: the first case whose expression holds, else `default`.
                Some(cases) => {
                    let mut route = "default".to_owned();
                    for case in cases {
                        let handle = case.get("handle").and_then(|v| v.as_str()).unwrap_or("");
                        let expr = case
                            .get("expression")
                            .and_then(|v| v.as_str())
                            .unwrap_or("false");
                        if template::truthy_async(expr, &tctx)
                            .await
                            .map_err(|e| format!("case {handle}: {e}"))?
                        {
                            route = handle.to_owned();
                            break;
                        }
                    }
                    route
                }
                None => {
                    let expr = ctx.config_str("expression").unwrap_or("false");
                    let taken = template::truthy_async(expr, &tctx)
                        .await
                        .map_err(|e| format!("expression: {e}"))?;
                    if taken { "true" } else { "false" }.to_owned()
                }
            };
            Ok(BlockDone {
                output: Some(ctx.upstream.clone()),
                route: Some(route),
                usage: None,
                attempt: None,
            })
        })
    }
}
