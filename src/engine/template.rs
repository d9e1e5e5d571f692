//! The template and expression language of `transform`, `condition`, `ai` prompts, `webhook`
//! requests and `output` blocks: minijinja, sandboxed. A template sees only the values it is
//! given (`input`, `blocks.<id>.output`, `upstream`, `loop.item`/`loop.index`), has no
//! loader, no filesystem and no network, and runs on fuel, so it cannot loop forever.

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Instructions a template may run (a `for` over 1,000 items with some work in each fits).
const FUEL: u64 = 200_000;
/// The largest template source accepted.
pub const MAX_SOURCE_BYTES: usize = 64 << 10;
/// The largest rendered text kept.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// The shared sandboxed environment (no loader: `include`/`import` find nothing).
fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        // A typo in a field name is an error the user sees, not an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_recursion_limit(64);
        env.add_filter(
            "json",
            |v: minijinja::Value| -> Result<String, minijinja::Error> {
                serde_json::to_string(&v).map_err(|e| {
                    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
                })
            },
        );
        env
    })
}

/// A template that failed to compile or render, with minijinja's explanation.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

fn check_source(source: &str) -> Result<(), TemplateError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(TemplateError(format!(
            "template is {} bytes, more than the {MAX_SOURCE_BYTES} allowed",
            source.len()
        )));
    }
    Ok(())
}

fn describe(e: minijinja::Error) -> TemplateError {
    let mut msg = e.to_string();
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        msg = "template ran too long (it may loop over too much data)".into();
    }
    TemplateError(msg)
}

/// A template context from JSON (tests, and callers without lazy values).
pub fn context_of(json: &Value) -> minijinja::Value {
    minijinja::Value::from_serialize(json)
}

/// Renders `source` against `ctx` (a map; see [`context_of`]).
pub fn render(source: &str, ctx: &minijinja::Value) -> Result<String, TemplateError> {
    check_source(source)?;
    let out = env().render_str(source, ctx).map_err(describe)?;
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(TemplateError(format!(
            "rendered text is {} bytes, more than the {MAX_OUTPUT_BYTES} allowed",
            out.len()
        )));
    }
    Ok(out)
}

/// Evaluates an expression (`input.score > 3 and upstream.ok`) against `ctx` to a JSON value.
pub fn eval(expr: &str, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
    check_source(expr)?;
    let compiled = env().compile_expression(expr).map_err(describe)?;
    let v = compiled.eval(ctx).map_err(describe)?;
    if v.is_undefined() {
        return Ok(Value::Null);
    }
    serde_json::to_value(&v).map_err(|e| TemplateError(e.to_string()))
}

/// Evaluates an expression to a truth value, with Jinja's truthiness.
pub fn truthy(expr: &str, ctx: &minijinja::Value) -> Result<bool, TemplateError> {
    check_source(expr)?;
    let compiled = env().compile_expression(expr).map_err(describe)?;
    Ok(compiled.eval(ctx).map_err(describe)?.is_true())
}

/// Templates that may run long or allocate much (loops, string repetition or concatenation,
/// large sources) render on the blocking pool, at most this many at once, so they never hold
/// up the async workers that serve every socket.
const HEAVY_AT_ONCE: usize = 2;

fn heavy(source: &str) -> bool {
    source.len() > 4096 || source.contains("{%") || source.contains('*') || source.contains('~')
}

async fn offload<T: Send + 'static>(
    source: &str,
    ctx: &minijinja::Value,
    f: fn(&str, &minijinja::Value) -> Result<T, TemplateError>,
) -> Result<T, TemplateError> {
    if !heavy(source) {
        return f(source, ctx);
    }
    static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HEAVY_AT_ONCE);
    let _permit = GATE
        .acquire()
        .await
        .map_err(|_| TemplateError("template worker closed".into()))?;
    let (source, ctx) = (source.to_owned(), ctx.clone());
    tokio::task::spawn_blocking(move || f(&source, &ctx))
        .await
        .map_err(|e| TemplateError(format!("template failed: {e}")))?
}

/// [`render`], off the async workers when the template is heavy.
pub async fn render_async(source: &str, ctx: &minijinja::Value) -> Result<String, TemplateError> {
    offload(source, ctx, render).await
}

/// [`eval`], off the async workers when the expression is heavy.
pub async fn eval_async(expr: &str, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
    offload(expr, ctx, eval).await
}

/// [`truthy`], off the async workers when the expression is heavy.
pub async fn truthy_async(expr: &str, ctx: &minijinja::Value) -> Result<bool, TemplateError> {
    offload(expr, ctx, truthy).await
}

/// Checks that `source` compiles, for validation before a run.
pub fn check_template(source: &str) -> Result<(), TemplateError> {
    check_source(source)?;
    env()
        .template_from_str(source)
        .map(|_| ())
        .map_err(describe)
}

/// Checks that `expr` compiles as an expression.
pub fn check_expression(expr: &str) -> Result<(), TemplateError> {
    check_source(expr)?;
    env().compile_expression(expr).map(|_| ()).map_err(describe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_and_evaluates_over_the_context() {
        let ctx = context_of(
            &json!({"input": {"name": "Ada", "n": 4}, "blocks": {"a": {"output": [1, 2]}}, "loop": {"item": "x"}}),
        );
        assert_eq!(
            render(
                "Hi {{ input.name }} {{ blocks.a.output | length }} {{ loop.item }}",
                &ctx
            )
            .unwrap(),
            "Hi Ada 2 x"
        );
        assert!(truthy("input.n > 3", &ctx).unwrap());
        assert!(!truthy("input.missing", &ctx).unwrap());
        assert_eq!(eval("blocks.a.output", &ctx).unwrap(), json!([1, 2]));
        assert_eq!(
            render("{{ input | json }}", &ctx).unwrap(),
            r#"{"n":4,"name":"Ada"}"#
        );
    }

    #[test]
    fn endless_or_huge_templates_stop_with_an_error() {
        let ctx = context_of(&json!({}));
        let e = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &ctx,
        )
        .unwrap_err();
        assert!(e.0.contains("too long"), "{e}");
        let e = render(&"x".repeat(MAX_SOURCE_BYTES + 1), &ctx).unwrap_err();
        assert!(e.0.contains("bytes"), "{e}");
        let e = render("{{ 'x' * 2000000 }}", &ctx).unwrap_err();
        assert!(e.0.contains("rendered text"), "{e}");
        assert!(
            render("{{ input.a.b.c }}", &ctx).is_ok(),
            "chainable undefined"
        );
        assert!(check_template("{% for %}").is_err());
        assert!(check_expression("a >").is_err());
    }

    #[test]
    fn templates_cannot_reach_the_host() {
        let ctx = context_of(&json!({}));
        assert!(render("{% include 'x' %}", &ctx).is_err());
        assert!(render("{% import '/etc/passwd' as p %}", &ctx).is_err());
    }
}
