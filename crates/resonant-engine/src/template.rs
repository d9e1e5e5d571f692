//! The template and expression language of `transform`, `condition`, `ai` prompts, `webhook`
//! requests and `output` blocks: minijinja, sandboxed. A template sees only the values it is
//! given (`input`, `blocks.<id>.output`, `upstream`, `loop.item`/`loop.index`), has no
//! loader, no filesystem and no network, and runs on fuel, so it cannot loop forever.
//!
//! Fuel counts instructions, not bytes: `{{ 'x' | indent(4000000000) }}` is a few
//! instructions and a 4 GB allocation. So every render also has a byte budget
//! ([`set_render_bytes`]) that each step which can build a large value is charged against
//! *before* it allocates: we compile templates ourselves (minijinja's `machinery`) and route
//! `*`, `+`, `~` and raw text through checked functions, output through a checked formatter,
//! and the filters that build strings or lists through checked wrappers. Constant
//! expressions, which minijinja folds while compiling, are sized from the syntax tree first.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use minijinja::machinery::{ast, CodeGenerator, Instruction, Instructions, Vm, WhitespaceConfig};
use minijinja::value::{Rest, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};
use serde_json::Value;

/// Instructions a template may run (a `for` over 1,000 items with some work in each fits).
const FUEL: u64 = 200_000;
/// The largest template source accepted.
pub const MAX_SOURCE_BYTES: usize = 64 << 10;
/// The largest rendered text kept.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Bytes one render may build in all (values, intermediate strings and output together).
static RENDER_BYTES: AtomicUsize = AtomicUsize::new(16 << 20);

/// Sets the byte budget of one render (`--template-render-bytes`); called once at startup.
pub fn set_render_bytes(bytes: usize) {
    RENDER_BYTES.store(bytes.max(1024), Ordering::Relaxed);
}

fn render_bytes() -> usize {
    RENDER_BYTES.load(Ordering::Relaxed)
}

/// Names of the checked operators; a template may not use them itself.
const RESERVED: &str = "__rs_";
const MUL: &str = "__rs_mul";
const ADD: &str = "__rs_add";
const CONCAT: &str = "__rs_concat";

thread_local! {
    /// Bytes the render running on this thread may still build (`None`: not in a render).
    static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The budget of the render running on this thread, removed again on drop. A render runs
/// start to end on one thread (the VM is synchronous), so a thread-local is exact.
struct Meter;

impl Meter {
    fn start() -> Meter {
        LEFT.with(|l| l.set(Some(render_bytes())));
        Meter
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        LEFT.with(|l| l.set(None));
    }
}

fn too_big(what: &str, bytes: usize) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what} would build {bytes} bytes, more than this template may ({} bytes in one render; \
             --template-render-bytes)",
            render_bytes()
        ),
    )
}

/// Charges `bytes` about to be built by `what` to this render's budget, refusing past it.
fn charge(what: &str, bytes: usize) -> Result<(), Error> {
    LEFT.with(|l| match l.get() {
        None => Ok(()),
        Some(left) if bytes > left => Err(too_big(what, bytes)),
        Some(left) => {
            l.set(Some(left - bytes));
            Ok(())
        }
    })
}

/// Refuses (without charging) when `what` would build more than is left.
fn fits(what: &str, bytes: usize) -> Result<(), Error> {
    LEFT.with(|l| match l.get() {
        Some(left) if bytes > left => Err(too_big(what, bytes)),
        _ => Ok(()),
    })
}

/// About how many bytes `v` takes when printed or copied: exact for strings, summed over
/// the items of lists, maps and lazy sequences (`[s] * 1000`, `map(…)`; stopping once past
/// the budget), a small constant for the rest. The sandbox hands templates no one-shot
/// streams, so walking a lazy sequence does not use it up.
fn size_of(v: &minijinja::Value) -> usize {
    fn walk(v: &minijinja::Value, depth: u32, cap: usize) -> usize {
        if let Some(s) = v.as_str() {
            return s.len();
        }
        match v.kind() {
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable if depth < 16 => {
                let mut total = 2usize;
                let Ok(items) = v.try_iter() else {
                    return total;
                };
                let map = v.kind() == ValueKind::Map;
                for item in items {
                    total = total.saturating_add(walk(&item, depth + 1, cap) + 2);
                    if map {
                        if let Ok(value) = v.get_item(&item) {
                            total = total.saturating_add(walk(&value, depth + 1, cap));
                        }
                    }
                    if total > cap {
                        break;
                    }
                }
                total
            }
            _ => v.len().map_or(24, |n| n.saturating_mul(24)).max(24),
        }
    }
    walk(v, 0, render_bytes())
}

/// `a * b`: string repetition is checked before it allocates; the rest is minijinja's own.
fn checked_mul(a: minijinja::Value, b: minijinja::Value) -> Result<minijinja::Value, Error> {
    let (text, times) = match (a.as_str(), b.as_str()) {
        (Some(s), None) => (Some(s), b.as_usize()),
        (None, Some(s)) => (Some(s), a.as_usize()),
        _ => (None, None),
    };
    if let (Some(s), Some(n)) = (text, times) {
        charge("repeating a string", s.len().saturating_mul(n))?;
        return Ok(minijinja::Value::from(s.repeat(n)));
    }
    if let (Some(n), true) = (
        b.as_usize().or(a.as_usize()),
        matches!(a.kind(), ValueKind::Seq) || matches!(b.kind(), ValueKind::Seq),
    ) {
        // A repeated list is lazy; what is built from it (`| list`, `| join`) is charged.
        let seq = if matches!(a.kind(), ValueKind::Seq) {
            &a
        } else {
            &b
        };
        fits("repeating a list", seq.len().unwrap_or(0).saturating_mul(n))?;
    }
    plain().0.eval(minijinja::context! { a, b })
}

/// `a + b`: string concatenation is checked; lists stay lazy; numbers are minijinja's.
fn checked_add(a: minijinja::Value, b: minijinja::Value) -> Result<minijinja::Value, Error> {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        charge("joining strings", x.len() + y.len())?;
        return Ok(minijinja::Value::from([x, y].concat()));
    }
    plain().1.eval(minijinja::context! { a, b })
}

/// `a ~ b`, checked.
fn checked_concat(a: minijinja::Value, b: minijinja::Value) -> Result<minijinja::Value, Error> {
    charge("joining strings", size_of(&a).saturating_add(size_of(&b)))?;
    Ok(minijinja::Value::from(format!("{a}{b}")))
}

/// `a * b` and `a + b` as minijinja computes them, for what is not a string.
fn plain() -> &'static (
    minijinja::Expression<'static, 'static>,
    minijinja::Expression<'static, 'static>,
) {
    static PLAIN: OnceLock<(
        minijinja::Expression<'static, 'static>,
        minijinja::Expression<'static, 'static>,
    )> = OnceLock::new();
    PLAIN.get_or_init(|| {
        let env = env();
        (
            env.compile_expression("a * b").expect("compiles"),
            env.compile_expression("a + b").expect("compiles"),
        )
    })
}

/// How much a filter may build, from its arguments, checked before it runs.
fn filter_bound(name: &str, args: &[minijinja::Value]) -> usize {
    let Some(v) = args.first() else { return 0 };
    let text = v.as_str();
    let len = text.map_or_else(|| size_of(v), str::len);
    let arg = |i: usize| args.get(i).filter(|a| a.kind() != ValueKind::Map);
    let str_arg = |i: usize| arg(i).and_then(|a| a.as_str()).unwrap_or("");
    match name {
        "indent" => {
            let width = arg(1).map_or(0, |w| w.as_usize().unwrap_or_else(|| size_of(w)));
            // Not a string: it is printed first, with at most one line per byte.
            let lines = text.map_or(len + 1, |t| t.matches('\n').count() + 1);
            len.saturating_add(lines.saturating_mul(width))
        }
        "replace" => {
            let (from, to) = (str_arg(1), str_arg(2));
            let hits = match text {
                Some(t) if from.is_empty() => t.chars().count() + 1,
                Some(t) => t.matches(from).count(),
                // Not a string: it is printed first; count every possible match.
                None => len / from.len().max(1) + 1,
            };
            len.saturating_add(hits.saturating_mul(to.len()))
        }
        "join" => {
            let sep = str_arg(1).len();
            let n = match text {
                Some(t) => t.chars().count(),
                // A lazy sequence may not know its length: count, stopping once the
                // separators alone would not fit.
                None => v.len().unwrap_or_else(|| {
                    let most = render_bytes() / sep.max(1) + 1;
                    v.try_iter().map_or(0, |it| it.take(most).count())
                }),
            };
            len.saturating_add(n.saturating_mul(sep))
        }
        "format" => {
            // `%99999999s` pads: count every number in the format as possible width.
            let widths: usize = text
                .unwrap_or("")
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|d| d.parse::<usize>().ok())
                .fold(0, usize::saturating_add);
            let rest: usize = args[1..].iter().map(size_of).fold(0, usize::saturating_add);
            len.saturating_add(rest).saturating_add(widths)
        }
        "tojson" | "pprint" => {
            let indent = args[1..]
                .iter()
                .find_map(|a| {
                    a.as_usize()
                        .or_else(|| a.get_attr("indent").ok()?.as_usize())
                })
                .unwrap_or(2);
            len.saturating_mul(2 + indent)
        }
        // Lists built item by item: a value per character of a string; about a copy of a
        // list (whose size already counts each item).
        "list" | "batch" | "slice" | "sort" | "unique" | "reverse" | "dictsort" | "items"
        | "groupby" | "split" | "lines" => len.saturating_mul(if text.is_some() { 32 } else { 2 }),
        // Copies that may grow by escaping.
        _ => len.saturating_mul(6),
    }
}

/// Filters that build strings or lists, wrapped: refused when their bound does not fit the
/// render's budget, charged with what they built.
const CHECKED_FILTERS: &[&str] = &[
    "indent",
    "replace",
    "join",
    "format",
    "tojson",
    "pprint",
    "list",
    "batch",
    "slice",
    "sort",
    "unique",
    "reverse",
    "dictsort",
    "items",
    "groupby",
    "split",
    "lines",
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "string",
    "escape",
    "e",
    "urlencode",
];

fn builtin_filter(name: &str) -> Option<minijinja::Value> {
    use minijinja::filters as f;
    use minijinja::Value as V;
    Some(match name {
        "indent" => V::from_function(f::indent),
        "replace" => V::from_function(f::replace),
        "join" => V::from_function(f::join),
        "format" => V::from_function(f::format),
        "pprint" => V::from_function(f::pprint),
        "list" => V::from_function(f::list),
        "batch" => V::from_function(f::batch),
        "slice" => V::from_function(f::slice),
        "sort" => V::from_function(f::sort),
        "unique" => V::from_function(f::unique),
        "reverse" => V::from_function(f::reverse),
        "dictsort" => V::from_function(f::dictsort),
        "items" => V::from_function(f::items),
        "groupby" => V::from_function(f::groupby),
        "split" => V::from_function(f::split),
        "lines" => V::from_function(f::lines),
        "upper" => V::from_function(f::upper),
        "lower" => V::from_function(f::lower),
        "title" => V::from_function(f::title),
        "capitalize" => V::from_function(f::capitalize),
        "trim" => V::from_function(f::trim),
        "string" => V::from_function(f::string),
        "escape" | "e" => V::from_function(f::escape),
        _ => return None,
    })
}

/// The shared sandboxed environment (no loader: `include`/`import` find nothing).
fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        // A typo in a field name is an error the user sees, not an empty string: printing,
        // iterating or computing with an undefined value fails; testing it (`{% if x %}`,
        // `x is defined`, `x | default(…)`) does not.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_recursion_limit(64);
        env.add_filter(
            "json",
            |v: minijinja::Value| -> Result<String, minijinja::Error> {
                fits("json", size_of(&v).saturating_mul(2))?;
                let s = serde_json::to_string(&v).map_err(|e| {
                    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
                })?;
                charge("json", s.len())?;
                Ok(s)
            },
        );
        for &name in CHECKED_FILTERS {
            let Some(inner) = builtin_filter(name) else {
                continue;
            };
            env.add_filter(
                name,
                move |state: &State,
                      args: Rest<minijinja::Value>|
                      -> Result<minijinja::Value, Error> {
                    fits(name, filter_bound(name, &args))?;
                    let out = inner.call(state, &args)?;
                    charge(name, size_of(&out))?;
                    Ok(out)
                },
            );
        }
        env.add_function(MUL, checked_mul);
        env.add_function(ADD, checked_add);
        env.add_function(CONCAT, checked_concat);
        // Output (`{{ }}`, captured blocks, macro results) is charged as it is written.
        env.set_formatter(|out, state, v| {
            charge("output", size_of(v))?;
            minijinja::escape_formatter(out, state, v)
        });
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
    if source.contains(RESERVED) {
        return Err(TemplateError(format!(
            "names starting with {RESERVED} are reserved"
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

/// Rewrites compiled instructions so that what allocates goes through the checked
/// functions. Each operator is replaced in place by a call with the same stack effect, so
/// no jump moves; raw text (one instruction that becomes two) jumps to a stub appended
/// after the end, which emits it through the checked formatter and jumps back.
fn bound(code: &mut Instructions<'_>) {
    let n = code.len() as u32;
    let mut raw = Vec::new();
    for i in 0..n {
        let Some(ins) = code.get_mut(i) else { break };
        match ins {
            Instruction::Mul => *ins = Instruction::CallFunction(MUL, Some(2)),
            Instruction::Add => *ins = Instruction::CallFunction(ADD, Some(2)),
            Instruction::StringConcat => *ins = Instruction::CallFunction(CONCAT, Some(2)),
            Instruction::EmitRaw(text) => raw.push((i, *text)),
            _ => {}
        }
    }
    if raw.is_empty() {
        return;
    }
    // The program's end: past every instruction, so the VM stops as it would have.
    code.add(Instruction::Jump(u32::MAX));
    for (i, text) in raw {
        let stub = code.add(Instruction::LoadConst(minijinja::Value::from(text)));
        code.add(Instruction::Emit);
        code.add(Instruction::Jump(i + 1));
        if let Some(ins) = code.get_mut(i) {
            *ins = Instruction::Jump(stub);
        }
    }
}

/// A constant expression's folded size and, for integers, value.
#[derive(Clone, Copy)]
struct Folded {
    bytes: u128,
    int: Option<i128>,
}

/// Sizes every constant expression of a template before minijinja folds it while compiling
/// (`{{ ('x' * 99999999) ~ ('x' * 99999999) ~ … }}` would build gigabytes in the compiler).
struct Consts {
    limit: u128,
}

impl Consts {
    fn stmts(&self, body: &[ast::Stmt<'_>]) -> Result<(), String> {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&self, s: &ast::Stmt<'_>) -> Result<(), String> {
        use ast::Stmt as S;
        match s {
            S::Template(t) => self.stmts(&t.children),
            S::EmitExpr(e) => self.expr(&e.expr).map(drop),
            S::EmitRaw(_) => Ok(()),
            S::ForLoop(f) => {
                self.expr(&f.target)?;
                self.expr(&f.iter)?;
                if let Some(e) = &f.filter_expr {
                    self.expr(e)?;
                }
                self.stmts(&f.body)?;
                self.stmts(&f.else_body)
            }
            S::IfCond(c) => {
                self.expr(&c.expr)?;
                self.stmts(&c.true_body)?;
                self.stmts(&c.false_body)
            }
            S::WithBlock(w) => {
                for (a, b) in &w.assignments {
                    self.expr(a)?;
                    self.expr(b)?;
                }
                self.stmts(&w.body)
            }
            S::Set(x) => {
                self.expr(&x.target)?;
                self.expr(&x.expr).map(drop)
            }
            S::SetBlock(x) => {
                self.expr(&x.target)?;
                if let Some(f) = &x.filter {
                    self.expr(f)?;
                }
                self.stmts(&x.body)
            }
            S::AutoEscape(a) => {
                self.expr(&a.enabled)?;
                self.stmts(&a.body)
            }
            S::FilterBlock(f) => {
                self.expr(&f.filter)?;
                self.stmts(&f.body)
            }
            S::Block(b) => self.stmts(&b.body),
            S::Import(i) => {
                self.expr(&i.expr)?;
                self.expr(&i.name).map(drop)
            }
            S::FromImport(i) => {
                self.expr(&i.expr)?;
                for (a, b) in &i.names {
                    self.expr(a)?;
                    if let Some(b) = b {
                        self.expr(b)?;
                    }
                }
                Ok(())
            }
            S::Extends(e) => self.expr(&e.name).map(drop),
            S::Include(i) => self.expr(&i.name).map(drop),
            S::Macro(m) => self.macro_decl(m),
            S::CallBlock(c) => {
                self.call(&c.call)?;
                self.macro_decl(&c.macro_decl)
            }
            S::Do(d) => self.call(&d.call),
        }
    }

    fn macro_decl(&self, m: &ast::Macro<'_>) -> Result<(), String> {
        for e in m.args.iter().chain(&m.defaults) {
            self.expr(e)?;
        }
        self.stmts(&m.body)
    }

    fn call(&self, c: &ast::Call<'_>) -> Result<(), String> {
        self.expr(&c.expr)?;
        self.args(&c.args)
    }

    fn args(&self, args: &[ast::CallArg<'_>]) -> Result<(), String> {
        for a in args {
            match a {
                ast::CallArg::Pos(e)
                | ast::CallArg::Kwarg(_, e)
                | ast::CallArg::PosSplat(e)
                | ast::CallArg::KwargSplat(e) => {
                    self.expr(e)?;
                }
            }
        }
        Ok(())
    }

    /// Visits `e` once, bottom-up; returns its folded size when it is constant.
    fn expr(&self, e: &ast::Expr<'_>) -> Result<Option<Folded>, String> {
        use ast::Expr as E;
        let folded = match e {
            E::Var(_) => None,
            E::Const(c) => Some(match c.value.as_str() {
                Some(s) => Folded {
                    bytes: s.len() as u128,
                    int: None,
                },
                None => Folded {
                    bytes: 24,
                    int: c.value.as_i64().map(i128::from),
                },
            }),
            E::Slice(s) => {
                self.expr(&s.expr)?;
                for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(x)?;
                }
                None
            }
            E::UnaryOp(u) => self.expr(&u.expr)?.map(|f| Folded {
                bytes: f.bytes,
                int: f.int.and_then(|i| i.checked_neg()),
            }),
            E::BinOp(b) => {
                let l = self.expr(&b.left)?;
                let r = self.expr(&b.right)?;
                match (l, r) {
                    (Some(l), Some(r)) => Some(fold(b.op, l, r)),
                    _ => None,
                }
            }
            E::Compare(c) => {
                let mut all = self.expr(&c.expr)?.is_some();
                for op in &c.ops {
                    all &= self.expr(&op.expr)?.is_some();
                }
                all.then_some(Folded {
                    bytes: 8,
                    int: None,
                })
            }
            E::IfExpr(i) => {
                self.expr(&i.test_expr)?;
                self.expr(&i.true_expr)?;
                if let Some(f) = &i.false_expr {
                    self.expr(f)?;
                }
                None
            }
            E::Filter(f) => {
                if let Some(x) = &f.expr {
                    self.expr(x)?;
                }
                self.args(&f.args)?;
                None
            }
            E::Test(t) => {
                self.expr(&t.expr)?;
                self.args(&t.args)?;
                None
            }
            E::GetAttr(g) => {
                self.expr(&g.expr)?;
                None
            }
            E::GetItem(g) => {
                self.expr(&g.expr)?;
                self.expr(&g.subscript_expr)?;
                None
            }
            E::Call(c) => {
                self.call(c)?;
                None
            }
            E::List(l) => {
                let mut bytes = Some(2u128);
                for x in &l.items {
                    let f = self.expr(x)?;
                    bytes = bytes.zip(f).map(|(b, f)| b.saturating_add(f.bytes + 2));
                }
                bytes.map(|bytes| Folded { bytes, int: None })
            }
            E::Map(m) => {
                let mut bytes = Some(2u128);
                for x in m.keys.iter().chain(&m.values) {
                    let f = self.expr(x)?;
                    bytes = bytes.zip(f).map(|(b, f)| b.saturating_add(f.bytes + 2));
                }
                bytes.map(|bytes| Folded { bytes, int: None })
            }
        };
        if let Some(f) = folded {
            if f.bytes > self.limit {
                return Err(format!(
                    "a constant expression would build {} bytes, more than one render may ({}; \
                     --template-render-bytes)",
                    f.bytes, self.limit
                ));
            }
        }
        Ok(folded)
    }
}

/// The size of `l op r` folded, over-estimated where unsure.
fn fold(op: ast::BinOpKind, l: Folded, r: Folded) -> Folded {
    use ast::BinOpKind as B;
    let number = |int: Option<i128>| Folded { bytes: 24, int };
    match op {
        B::Mul => match (l.int, r.int) {
            (Some(a), Some(b)) => number(a.checked_mul(b)),
            (None, Some(n)) => Folded {
                bytes: l.bytes.saturating_mul(n.max(0) as u128),
                int: None,
            },
            (Some(n), None) => Folded {
                bytes: r.bytes.saturating_mul(n.max(0) as u128),
                int: None,
            },
            (None, None) => number(None),
        },
        B::Add | B::Concat => match (l.int, r.int, op) {
            (Some(a), Some(b), B::Add) => number(a.checked_add(b)),
            _ => Folded {
                bytes: l.bytes.saturating_add(r.bytes).saturating_add(48),
                int: None,
            },
        },
        B::Sub => number(l.int.zip(r.int).and_then(|(a, b)| a.checked_sub(b))),
        B::Pow => number(
            l.int
                .zip(r.int)
                .and_then(|(a, b)| u32::try_from(b).ok().and_then(|b| a.checked_pow(b))),
        ),
        B::ScAnd | B::ScOr => Folded {
            bytes: l.bytes.max(r.bytes),
            int: None,
        },
        _ => number(None),
    }
}

fn check_consts_stmt(t: &ast::Stmt<'_>) -> Result<(), TemplateError> {
    Consts {
        limit: render_bytes() as u128,
    }
    .stmt(t)
    .map_err(TemplateError)
}

/// Runs one of minijinja's parsers, turning a panic inside it into an error: its lexer
/// panics ("empty lexer stack") on an expression with a stray `}}` such as `a }} b`
/// (minijinja 2.24, found by the graph_validate fuzz target; docs/upstream/minijinja-lexer.md),
/// and a user's expression must fail validation, not the request or socket task running it.
fn unpanicked<T>(parse: impl FnOnce() -> Result<T, minijinja::Error>) -> Result<T, TemplateError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)) {
        Ok(parsed) => parsed.map_err(describe),
        Err(_) => Err(TemplateError(
            "syntax error: unexpected `}}` (the expression cannot be parsed)".into(),
        )),
    }
}

fn compile_template(
    source: &str,
) -> Result<(Instructions<'_>, BTreeMap<&str, Instructions<'_>>), TemplateError> {
    check_source(source)?;
    let tree = unpanicked(|| {
        minijinja::machinery::parse(
            source,
            "<template>",
            Default::default(),
            WhitespaceConfig::default(),
        )
    })?;
    check_consts_stmt(&tree)?;
    let mut g = CodeGenerator::new("<template>", source);
    g.compile_stmt(&tree);
    let (mut code, mut blocks) = g.finish();
    bound(&mut code);
    for b in blocks.values_mut() {
        bound(b);
    }
    Ok((code, blocks))
}

fn compile_expr(expr: &str) -> Result<Instructions<'_>, TemplateError> {
    check_source(expr)?;
    let tree = unpanicked(|| minijinja::machinery::parse_expr(expr))?;
    Consts {
        limit: render_bytes() as u128,
    }
    .expr(&tree)
    .map_err(TemplateError)?;
    let mut g = CodeGenerator::new("<expression>", expr);
    g.compile_expr(&tree);
    let (mut code, _) = g.finish();
    bound(&mut code);
    Ok(code)
}

/// A template context from JSON (tests, and callers without lazy values).
pub fn context_of(json: &Value) -> minijinja::Value {
    minijinja::Value::from_serialize(json)
}

/// Renders `source` against `ctx` (a map; see [`context_of`]).
pub fn render(source: &str, ctx: &minijinja::Value) -> Result<String, TemplateError> {
    let (code, blocks) = compile_template(source)?;
    let _meter = Meter::start();
    let mut out = String::new();
    Vm::new(env())
        .eval(
            &code,
            ctx.clone(),
            &blocks,
            &mut minijinja::machinery::make_string_output(&mut out),
            AutoEscape::None,
        )
        .map_err(describe)?;
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(TemplateError(format!(
            "rendered text is {} bytes, more than the {MAX_OUTPUT_BYTES} allowed",
            out.len()
        )));
    }
    Ok(out)
}

fn eval_value(expr: &str, ctx: &minijinja::Value) -> Result<minijinja::Value, TemplateError> {
    let code = compile_expr(expr)?;
    let _meter = Meter::start();
    let mut sink = String::new();
    let (v, _) = Vm::new(env())
        .eval(
            &code,
            ctx.clone(),
            &BTreeMap::new(),
            &mut minijinja::machinery::make_string_output(&mut sink),
            AutoEscape::None,
        )
        .map_err(describe)?;
    Ok(v.unwrap_or_default())
}

/// Evaluates an expression (`input.score > 3 and upstream.ok`) against `ctx` to a JSON value.
pub fn eval(expr: &str, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
    let v = eval_value(expr, ctx)?;
    if v.is_undefined() {
        return Ok(Value::Null);
    }
    // A lazy value (`['x' * 1000000] * 300`) is sized before it is copied out.
    let size = size_of(&v);
    if size > render_bytes() {
        return Err(describe(too_big("the expression's value", size)));
    }
    serde_json::to_value(&v).map_err(|e| TemplateError(e.to_string()))
}

/// Evaluates an expression to a truth value, with Jinja's truthiness.
pub fn truthy(expr: &str, ctx: &minijinja::Value) -> Result<bool, TemplateError> {
    Ok(eval_value(expr, ctx)?.is_true())
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

/// What a template or expression reads of the execution's `blocks` and the workspace's
/// `secrets`: the names it spells out (`blocks.a`, `blocks['a-b']`, `secrets.TOKEN`), and
/// whether it also reaches them another way (`blocks[name]`, `{% set b = blocks %}`), which
/// validation cannot follow.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reads {
    /// Block ids read by name.
    pub blocks: BTreeSet<String>,
    /// Whether `blocks` is read other than by a constant name.
    pub any_block: bool,
    /// Secret names read.
    pub secrets: BTreeSet<String>,
    /// Whether `secrets` is read other than by a constant name.
    pub any_secret: bool,
}

impl Reads {
    fn scan(&mut self, code: &Instructions<'_>) {
        let n = code.len() as u32;
        for i in 0..n {
            let Some(Instruction::Lookup(var)) = code.get(i) else {
                continue;
            };
            let (names, any) = match *var {
                "blocks" => (&mut self.blocks, &mut self.any_block),
                "secrets" => (&mut self.secrets, &mut self.any_secret),
                _ => continue,
            };
            match (code.get(i + 1), code.get(i + 2)) {
                (Some(Instruction::GetAttr(name)), _) => {
                    names.insert((*name).to_owned());
                }
                (Some(Instruction::LoadConst(v)), Some(Instruction::GetItem))
                    if v.as_str().is_some() =>
                {
                    names.insert(v.as_str().unwrap_or_default().to_owned());
                }
                _ => *any = true,
            }
        }
    }
}

/// What template `source` reads (see [`Reads`]).
pub fn template_reads(source: &str) -> Result<Reads, TemplateError> {
    let (code, blocks) = compile_template(source)?;
    let mut reads = Reads::default();
    reads.scan(&code);
    blocks.values().for_each(|b| reads.scan(b));
    Ok(reads)
}

/// What expression `expr` reads (see [`Reads`]).
pub fn expression_reads(expr: &str) -> Result<Reads, TemplateError> {
    let code = compile_expr(expr)?;
    let mut reads = Reads::default();
    reads.scan(&code);
    Ok(reads)
}

/// Checks that `source` compiles (and folds no oversized constant), for validation before a
/// run.
pub fn check_template(source: &str) -> Result<(), TemplateError> {
    compile_template(source).map(drop)
}

/// Checks that `expr` compiles as an expression.
pub fn check_expression(expr: &str) -> Result<(), TemplateError> {
    compile_expr(expr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stray_closing_brace_in_an_expression_is_a_syntax_error() {
        // minijinja's lexer panics on these; they must come back as errors.
        for expr in [
            "a }} b",
            "blocks.gen}}.output < length > 10",
            "}}",
            "x }}}} y",
        ] {
            let err = check_expression(expr).unwrap_err();
            assert!(err.0.contains("syntax error"), "{expr}: {}", err.0);
        }
        assert_eq!(
            render("{{ a }} }} {{ b }}", &context_of(&json!({"a": 1, "b": 2}))).unwrap(),
            "1 }} 2"
        );
    }

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
        // A value that is not there is an error when printed (a typo must not print ""),
        // and not when tested or given a default.
        let e = render("{{ input.a.b.c }}", &ctx).unwrap_err();
        assert!(e.0.contains("undefined"), "{e}");
        let ctx = context_of(&json!({"input": {}}));
        let e = render("{{ input.nmae }}", &ctx).unwrap_err();
        assert!(e.0.contains("undefined"), "{e}");
        assert_eq!(
            render("{% if input.a %}a{% endif %}{{ input.a | default('none') }}{{ input.a is defined }}", &ctx).unwrap(),
            "noneFalse"
        );
        assert!(check_template("{% for %}").is_err());
        assert!(check_expression("a >").is_err());
    }

    #[test]
    fn byte_bombs_stop_before_they_allocate() {
        let ctx = context_of(&json!({"words": ["a", "b"]}));
        for (bomb, what) in [
            ("{{ 'x\ny' | indent(4000000000) | length }}", "indent"),
            ("{{ ('x' * 100000) | join('y' * 50000) | length }}", "join"),
            ("{{ ('x' * 100000) | replace('x', 'y' * 50000) | length }}", "replace"),
            ("{{ ('x' * 100000) | replace('', 'y' * 50000) | length }}", "replace"),
            (
                "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
                "joining strings",
            ),
            (
                "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
                "joining strings",
            ),
            (
                "{% set ns = namespace(n=1) %}{% for i in range(30) %}{% set ns.n = ns.n * 2 %}{% endfor %}{{ 'x' * ns.n }}",
                "repeating a string",
            ),
            ("{{ '%999999999s' | format('x') }}", "format"),
            ("{% for i in range(300) %}{{ 'x' * 1000000 }}{% endfor %}", "output"),
            ("{{ (('x' * 1000000) | list) | length }}", "list"),
            // Through a variable, so nothing is folded while compiling.
            ("{% set s = 'x' * 1000000 %}{{ ([s] * 1000) | join | length }}", "join"),
            ("{% set s = 'x' * 1000000 %}{{ (([s] * 1000) ~ '') | length }}", "joining strings"),
            ("{% set s = 'x' * 1000000 %}{{ [s] * 1000 }}", "output"),
            ("{% set s = 'x' * 1000000 %}{{ ([s] + [s]) * 500 }}", "output"),
            ("{% set e = [''] %}{{ (e * 1000000) | join('y' * 100000) | length }}", "join"),
            ("{{ range(1000) | replace('', 'y' * 100000) | length }}", "replace"),
            ("{{ range(1000) | replace(',', 'y' * 100000) | length }}", "replace"),
            ("{% set e = [''] %}{{ (e * 1000000) | map('upper') | join('y' * 100000) | length }}", "join"),
            ("{{ (['x' * 1000000] * 1000) | join | length }}", "constant expression"),
        ] {
            let e = render(bomb, &ctx).unwrap_err();
            assert!(
                e.0.contains(what) && e.0.contains("--template-render-bytes"),
                "{bomb}: {e}"
            );
        }
        // Raw text repeated by a loop is output too.
        let raw = format!(
            "{{% for i in range(10000) %}}{}{{% endfor %}}",
            "r".repeat(4000)
        );
        assert!(render(&raw, &ctx).unwrap_err().0.contains("output"));
        // Constant folding happens while compiling: refused before, at validation too.
        let folded = "{{ ('x' * 99999999) ~ ('x' * 99999999) }}";
        assert!(check_template(folded)
            .unwrap_err()
            .0
            .contains("constant expression"));
        assert!(render(folded, &ctx).is_err());
        assert!(check_expression("('x' * 99999999) ~ 'y'").is_err());
        // A lazy value is sized before it is copied out of an expression.
        assert!(eval("['x' * 1000000] * 300", &ctx).is_err());
        // Ordinary templates still work, numbers and lists included.
        assert_eq!(
            render(
                "{{ 2 * 3 }} {{ 1 + 2 }} {{ [1] + [2] }} {{ 'ab' * 2 }} {{ 'a' ~ 1 }} {{ words | join(',') | upper }} {{ {'b': 1, 'a': 2} | dictsort }}",
                &ctx
            )
            .unwrap(),
            "6 3 [1, 2] abab a1 A,B [[\"a\", 2], [\"b\", 1]]"
        );
        assert_eq!(
            eval("words * 2", &ctx).unwrap(),
            json!(["a", "b", "a", "b"])
        );
        // Keyword arguments pass through the wrapped filters.
        let people = context_of(&json!({"p": [{"n": 2, "s": "b"}, {"n": 1, "s": "a"}]}));
        assert_eq!(
            render(
                "{{ p | sort(attribute='n') | map(attribute='s') | join(',') }} {{ {'x': 2, 'y': 1} | dictsort(by='value') }} {{ 'a\nb' | indent(2, first=true) }}",
                &people
            )
            .unwrap(),
            "a,b [[\"y\", 1], [\"x\", 2]]   a\n  b"
        );
        assert!(render("{{ __rs_mul }}", &ctx)
            .unwrap_err()
            .0
            .contains("reserved"));
        assert_eq!(
            render("{{ range(100000) | list | length }}", &ctx).unwrap(),
            "100000"
        );
        assert_eq!(
            render("{% for w in words %}<{{ w }}>{% endfor %}!", &ctx).unwrap(),
            "<a><b>!"
        );
    }

    #[test]
    fn templates_cannot_reach_the_host() {
        let ctx = context_of(&json!({}));
        assert!(render("{% include 'x' %}", &ctx).is_err());
        assert!(render("{% import '/etc/passwd' as p %}", &ctx).is_err());
    }
}
