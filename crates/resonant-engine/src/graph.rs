//! A workflow's blocks and connections as a graph, validated before anything runs.
//!
//! The input is the document's content as JSON (`content::to_json`): `blocks` is an array
//! of `{id, type, config, …}` and `connections` an array of React Flow edges
//! `{id, source, target, sourceHandle?, targetHandle?}`. Every problem is reported, each
//! naming the block or connection at fault, so an editor can mark them all at once.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A block's type, as documents and templates name it (the seed's block types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = BlockType)]
pub enum BlockKind {
    /// The execution's input.
    Input,
    /// An AI generation through the router.
    Ai,
    /// Collects a result.
    Output,
    /// Routes to its `true` / `false` handle.
    Condition,
    /// A template over earlier outputs.
    Transform,
    /// Runs its body once per array item; its body returns through the `next` handle.
    Loop,
    /// Joins branches.
    Merge,
    /// Fans out.
    Split,
    /// Waits for a person's approval.
    Human,
    /// An HTTP request.
    Webhook,
    /// Waits.
    Delay,
}

impl BlockKind {
    /// Every type, in the docs' order. `parse` reads this list, so a type missing here is
    /// refused everywhere rather than half-supported.
    pub const ALL: [BlockKind; 11] = [
        BlockKind::Input,
        BlockKind::Ai,
        BlockKind::Output,
        BlockKind::Condition,
        BlockKind::Transform,
        BlockKind::Loop,
        BlockKind::Merge,
        BlockKind::Split,
        BlockKind::Human,
        BlockKind::Webhook,
        BlockKind::Delay,
    ];

    /// The name a document uses (`"ai"`, `"loop"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Input => "input",
            BlockKind::Ai => "ai",
            BlockKind::Output => "output",
            BlockKind::Condition => "condition",
            BlockKind::Transform => "transform",
            BlockKind::Loop => "loop",
            BlockKind::Merge => "merge",
            BlockKind::Split => "split",
            BlockKind::Human => "human",
            BlockKind::Webhook => "webhook",
            BlockKind::Delay => "delay",
        }
    }

    /// The type a document names, if the engine knows it.
    pub fn parse(s: &str) -> Option<BlockKind> {
        BlockKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A block of a validated workflow.
#[derive(Debug, Clone)]
pub struct Block {
    /// Its id in the document.
    pub id: String,
    /// Its type.
    pub kind: BlockKind,
    /// Its type-specific configuration.
    pub config: Value,
}

/// A connection between two blocks.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Its id in the document.
    pub id: String,
    /// The block it leaves.
    pub source: String,
    /// The block it enters.
    pub target: String,
    /// The source block's output handle (`true`/`false` for a condition).
    pub source_handle: Option<String>,
    /// The target block's input handle (`next` closes a loop's body).
    pub target_handle: Option<String>,
}

/// One problem found by validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum Problem {
    /// `blocks` or `connections` is not an array, or an entry is not an object.
    Malformed {
        /// What is wrong.
        message: String,
    },
    /// A block without a string id, or whose id another block has too.
    BadId {
        /// The id (empty when missing).
        block: String,
        /// What is wrong.
        message: String,
    },
    /// A block type the engine does not know.
    UnknownType {
        /// The block.
        block: String,
        /// Its type.
        r#type: String,
    },
    /// A configuration field is missing or has the wrong type or value.
    BadConfig {
        /// The block.
        block: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A connection names a block that does not exist, or a handle its block does not have.
    DanglingConnection {
        /// The connection.
        connection: String,
        /// What is wrong.
        message: String,
    },
    /// Blocks that depend on each other in a circle (outside a loop's body).
    Cycle {
        /// The blocks of the cycle, in order.
        blocks: Vec<String>,
    },
    /// An output block no input reaches.
    UnreachableOutput {
        /// The block.
        block: String,
    },
    /// A workflow without any output block.
    NoOutput,
    /// A connection enters or leaves a loop's body other than through the loop (its `body`
    /// handle in, its `next` handle back).
    CrossesLoop {
        /// The connection.
        connection: String,
        /// What is wrong.
        message: String,
    },
    /// An output block inside a loop's body (it would run once per item): connect it after
    /// the loop instead.
    OutputInLoop {
        /// The block.
        block: String,
    },
}

/// A validated workflow: blocks, connections and an order in which to start them.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The blocks, in document order.
    pub blocks: Vec<Block>,
    /// The connections.
    pub connections: Vec<Connection>,
}

impl Workflow {
    /// Parses and validates a document's content; every problem found is returned.
    pub fn parse(content: &Value) -> Result<Workflow, Vec<Problem>> {
        let mut problems = Vec::new();
        let blocks = parse_blocks(content.get("blocks"), &mut problems);
        let ids: HashMap<&str, BlockKind> =
            blocks.iter().map(|b| (b.id.as_str(), b.kind)).collect();
        let handles: HashMap<&str, Vec<String>> = blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Condition)
            .map(|b| (b.id.as_str(), condition_handles(&b.config)))
            .collect();
        let connections =
            parse_connections(content.get("connections"), &ids, &handles, &mut problems);
        if problems.is_empty() {
            check_graph(&blocks, &connections, &mut problems);
        }
        if problems.is_empty() {
            Ok(Workflow {
                blocks,
                connections,
            })
        } else {
            Err(problems)
        }
    }

    /// Connections that close a loop's body (into a loop's `next` handle): not dependencies.
    pub fn is_back_edge(&self, c: &Connection) -> bool {
        is_back_edge(&self.blocks, c)
    }
}

fn malformed(problems: &mut Vec<Problem>, message: impl Into<String>) {
    problems.push(Problem::Malformed {
        message: message.into(),
    });
}

fn parse_blocks(value: Option<&Value>, problems: &mut Vec<Problem>) -> Vec<Block> {
    let Some(items) = value.and_then(Value::as_array) else {
        malformed(problems, "`blocks` must be an array");
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut blocks = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            malformed(problems, format!("blocks[{i}] is not an object"));
            continue;
        };
        let Some(id) = obj
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            problems.push(Problem::BadId {
                block: String::new(),
                message: format!("blocks[{i}] has no string id"),
            });
            continue;
        };
        if !seen.insert(id.to_string()) {
            problems.push(Problem::BadId {
                block: id.into(),
                message: "another block has the same id".into(),
            });
            continue;
        }
        // `/`, `[` and `]` name loop iterations in block keys (`loop[2]/block`).
        if id.contains(['/', '[', ']']) || id.len() > 200 {
            problems.push(Problem::BadId {
                block: id.into(),
                message: "ids may not contain `/`, `[` or `]`, nor be longer than 200 bytes".into(),
            });
            continue;
        }
        let type_name = obj.get("type").and_then(Value::as_str).unwrap_or("");
        let Some(kind) = BlockKind::parse(type_name) else {
            problems.push(Problem::UnknownType {
                block: id.into(),
                r#type: type_name.into(),
            });
            continue;
        };
        let config = obj
            .get("config")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        check_config(id, kind, &config, problems);
        blocks.push(Block {
            id: id.into(),
            kind,
            config,
        });
    }
    blocks
}

/// The configuration each type needs; optional fields are checked when present.
/// The longest delay or approval timeout (ten years): deadlines stay far from overflow.
const MAX_WAIT_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;
/// The most items one loop runs.
pub const MAX_ITERATIONS: u64 = 10_000;

fn check_config(id: &str, kind: BlockKind, config: &Value, problems: &mut Vec<Problem>) {
    let mut bad = |field: &str, message: &str| {
        problems.push(Problem::BadConfig {
            block: id.into(),
            field: field.into(),
            message: message.into(),
        })
    };
    let Some(c) = config.as_object() else {
        bad("config", "must be an object");
        return;
    };
    let string = |f: &str| c.get(f).map(|v| v.as_str().is_some());
    let number = |f: &str| c.get(f).map(Value::as_f64);
    let one_of = |f: &str, allowed: &[&str]| {
        c.get(f)
            .map(|v| v.as_str().is_some_and(|s| allowed.contains(&s)))
    };
    match kind {
        BlockKind::Ai => {
            if string("userPromptTemplate") != Some(true) {
                bad("userPromptTemplate", "required: a string");
            }
            if string("systemPrompt") == Some(false) {
                bad("systemPrompt", "must be a string");
            }
            match number("temperature") {
                Some(Some(t)) if (0.0..=2.0).contains(&t) => {}
                None => {}
                _ => bad("temperature", "must be a number from 0 to 2"),
            }
            match c.get("maxTokens").map(Value::as_u64) {
                Some(Some(n)) if n > 0 => {}
                None => {}
                _ => bad("maxTokens", "must be a positive integer"),
            }
            if one_of("outputFormat", &["text", "json", "markdown"]) == Some(false) {
                bad("outputFormat", "must be text, json or markdown");
            }
        }
        BlockKind::Condition => match c.get("cases") {
            None => {
                if string("expression") != Some(true) {
                    bad("expression", "required: a string (or `cases` for a switch)");
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
                                bad("cases", &format!("handle `{h}` is used twice"));
                            }
                            if let Err(err) = super::template::check_expression(e) {
                                bad("cases", &format!("case `{h}`: {err}"));
                            }
                        }
                        _ => bad(
                            "cases",
                            "each case needs a `handle` (not `default`) and an `expression`",
                        ),
                    }
                }
            }
            Some(_) => bad("cases", "must be a non-empty array of {handle, expression}"),
        },
        BlockKind::Transform => {
            if string("template") != Some(true) {
                bad("template", "required: a string");
            }
            if one_of("outputFormat", &["text", "json"]) == Some(false) {
                bad("outputFormat", "must be text or json");
            }
        }
        BlockKind::Loop => match c.get("maxIterations").map(Value::as_u64) {
            Some(Some(n)) if n > 0 && n <= MAX_ITERATIONS => {}
            None => {}
            _ => bad(
                "maxIterations",
                &format!("must be an integer from 1 to {MAX_ITERATIONS}"),
            ),
        },
        BlockKind::Merge => {
            if one_of("join", &["all", "any", "all-non-skipped"]) == Some(false) {
                bad("join", "must be all, any or all-non-skipped");
            }
        }
        BlockKind::Delay => match number("seconds") {
            Some(Some(s)) if (0.0..=MAX_WAIT_SECS).contains(&s) => {}
            _ => bad("seconds", "required: a number of seconds, 0 to 10 years"),
        },
        BlockKind::Webhook => {
            if string("url") != Some(true) {
                bad("url", "required: a string");
            }
            let templated = c
                .get("method")
                .and_then(Value::as_str)
                .is_some_and(|m| m.contains("{{"));
            if !templated
                && one_of("method", &["GET", "POST", "PUT", "PATCH", "DELETE"]) == Some(false)
            {
                bad(
                    "method",
                    "must be GET, POST, PUT, PATCH or DELETE (or a template)",
                );
            }
            if c.get("headers").is_some_and(|h| {
                !h.as_object()
                    .is_some_and(|m| m.values().all(|v| v.is_string()))
            }) {
                bad("headers", "must be an object of strings");
            }
        }
        BlockKind::Human => {
            if one_of("onTimeout", &["approve", "reject"]) == Some(false) {
                bad("onTimeout", "must be approve or reject");
            }
            match number("timeoutSeconds") {
                Some(Some(s)) if s > 0.0 && s <= MAX_WAIT_SECS => {}
                None => {}
                _ => bad(
                    "timeoutSeconds",
                    "must be a positive number of seconds, up to 10 years",
                ),
            }
            for list in ["approvers", "notify"] {
                if c.get(list).is_some_and(|v| {
                    !v.as_array()
                        .is_some_and(|a| a.iter().all(|x| x.is_string()))
                }) {
                    bad(list, "must be an array of strings");
                }
            }
        }
        BlockKind::Input | BlockKind::Output | BlockKind::Split => {}
    }
    if kind == BlockKind::Loop {
        match c.get("concurrency").map(Value::as_u64) {
            Some(Some(n)) if (1..=16).contains(&n) => {}
            None => {}
            _ => bad("concurrency", "must be an integer from 1 to 16"),
        }
    }
    // Templates and expressions are compiled now, so a syntax error is reported before
    // anything runs rather than halfway through.
    let templates: &[&str] = match kind {
        BlockKind::Ai => &["userPromptTemplate", "systemPrompt"],
        BlockKind::Transform | BlockKind::Output => &["template"],
        BlockKind::Webhook => &["url", "method", "body"],
        BlockKind::Human => &["message"],
        _ => &[],
    };
    for field in templates {
        if let Some(Value::String(t)) = c.get(*field) {
            if let Err(e) = super::template::check_template(t) {
                bad(field, &e.to_string());
            }
        }
    }
    let expressions: &[&str] = match kind {
        BlockKind::Condition if c.get("cases").is_none() => &["expression"],
        BlockKind::Loop => &["items"],
        _ => &[],
    };
    for field in expressions {
        match c.get(*field) {
            Some(Value::String(e)) => {
                if let Err(err) = super::template::check_expression(e) {
                    bad(field, &err.to_string());
                }
            }
            Some(_) => bad(field, "must be a string (an expression)"),
            None => {}
        }
    }
    // `timeoutMs` is the retry policy's attempt timeout, but an editor shows it as a field
    // of its own, so its problem names it; the policy is then checked without it.
    let retry = match c
        .get("timeoutMs")
        .filter(|v| !v.is_null())
        .map(Value::as_u64)
    {
        Some(Some(ms)) if ms > 0 => super::retry::RetryPolicy::from_config(config),
        None => super::retry::RetryPolicy::from_config(config),
        Some(_) => {
            bad("timeoutMs", "must be a positive integer (milliseconds)");
            let retry = c.get("retry").cloned().unwrap_or(Value::Null);
            super::retry::RetryPolicy::from_config(&serde_json::json!({ "retry": retry }))
        }
    };
    if let Err(e) = retry {
        bad("retry", &e);
    }
}

/// The handles a condition leaves through: `true`/`false`, or its switch cases' and `default`.
pub fn condition_handles(config: &Value) -> Vec<String> {
    match config.get("cases").and_then(Value::as_array) {
        Some(cases) => cases
            .iter()
            .filter_map(|c| c.get("handle").and_then(Value::as_str).map(str::to_owned))
            .chain(std::iter::once("default".to_owned()))
            .collect(),
        None => vec!["true".into(), "false".into()],
    }
}

fn parse_connections(
    value: Option<&Value>,
    blocks: &HashMap<&str, BlockKind>,
    handles: &HashMap<&str, Vec<String>>,
    problems: &mut Vec<Problem>,
) -> Vec<Connection> {
    let Some(items) = value.and_then(Value::as_array) else {
        malformed(problems, "`connections` must be an array");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let text = |f: &str| item.get(f).and_then(Value::as_str).map(str::to_string);
        let id = text("id").unwrap_or_else(|| format!("connections[{i}]"));
        let mut dangling = |message: String| {
            problems.push(Problem::DanglingConnection {
                connection: id.clone(),
                message,
            })
        };
        let (Some(source), Some(target)) = (text("source"), text("target")) else {
            dangling("needs a source and a target block id".into());
            continue;
        };
        let Some(&source_kind) = blocks.get(source.as_str()) else {
            dangling(format!("source block `{source}` does not exist"));
            continue;
        };
        if !blocks.contains_key(target.as_str()) {
            dangling(format!("target block `{target}` does not exist"));
            continue;
        }
        let source_handle = text("sourceHandle");
        if source_kind == BlockKind::Condition {
            let allowed = &handles[source.as_str()];
            if !source_handle.as_ref().is_some_and(|h| allowed.contains(h)) {
                dangling(format!(
                    "leaves condition `{source}` without one of its handles ({})",
                    allowed.join(", ")
                ));
                continue;
            }
        }
        out.push(Connection {
            id,
            source,
            target,
            source_handle,
            target_handle: text("targetHandle"),
        });
    }
    out
}

fn is_back_edge(blocks: &[Block], c: &Connection) -> bool {
    c.target_handle.as_deref() == Some("next")
        && blocks
            .iter()
            .any(|b| b.id == c.target && b.kind == BlockKind::Loop)
}

fn check_graph(blocks: &[Block], connections: &[Connection], problems: &mut Vec<Problem>) {
    let index: HashMap<&str, usize> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.as_str(), i))
        .collect();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); blocks.len()];
    for c in connections.iter().filter(|c| !is_back_edge(blocks, c)) {
        next[index[c.source.as_str()]].push(index[c.target.as_str()]);
    }
    if let Some(cycle) = find_cycle(&next) {
        problems.push(Problem::Cycle {
            blocks: cycle.into_iter().map(|i| blocks[i].id.clone()).collect(),
        });
        return;
    }
    let outputs: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].kind == BlockKind::Output)
        .collect();
    if outputs.is_empty() {
        problems.push(Problem::NoOutput);
        return;
    }
    // Reachability from the inputs (or, without input blocks, from every block nothing feeds).
    let mut starts: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].kind == BlockKind::Input)
        .collect();
    if starts.is_empty() {
        let mut fed = vec![false; blocks.len()];
        next.iter().flatten().for_each(|&t| fed[t] = true);
        starts = (0..blocks.len()).filter(|&i| !fed[i]).collect();
    }
    let mut seen = vec![false; blocks.len()];
    let mut stack = starts;
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut seen[i], true) {
            stack.extend(&next[i]);
        }
    }
    for i in outputs.into_iter().filter(|&i| !seen[i]) {
        problems.push(Problem::UnreachableOutput {
            block: blocks[i].id.clone(),
        });
    }
}

/// A cycle in the graph, if any, as the node indexes along it (iterative DFS: a document can
/// hold thousands of blocks, and recursion depth would follow the longest chain).
fn find_cycle(next: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; next.len()];
    for root in 0..next.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, index of the next child to visit); the stack is the current path.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::Open;
        while let Some(&mut (node, ref mut child)) = path.last_mut() {
            if let Some(&to) = next[node].get(*child) {
                *child += 1;
                match mark[to] {
                    Mark::New => {
                        mark[to] = Mark::Open;
                        path.push((to, 0));
                    }
                    Mark::Open => {
                        let start = path.iter().position(|&(n, _)| n == to).unwrap_or(0);
                        return Some(path[start..].iter().map(|&(n, _)| n).collect());
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn block(id: &str, kind: &str, config: Value) -> Value {
        json!({ "id": id, "type": kind, "config": config, "position": { "x": 0, "y": 0 } })
    }

    fn edge(id: &str, source: &str, target: &str) -> Value {
        json!({ "id": id, "source": source, "target": target })
    }

    fn ai(id: &str) -> Value {
        block(
            id,
            "ai",
            json!({ "userPromptTemplate": "Summarise {{ input.text }}", "temperature": 0.7 }),
        )
    }

    #[test]
    fn a_valid_workflow_parses() {
        let content = json!({
            "blocks": [
                block("in", "input", json!({})),
                ai("gen"),
                block("check", "condition", json!({ "expression": "blocks.gen.output | length > 10" })),
                block("yes", "output", json!({})),
                block("no", "output", json!({})),
            ],
            "connections": [
                edge("e1", "in", "gen"),
                edge("e2", "gen", "check"),
                json!({ "id": "e3", "source": "check", "target": "yes", "sourceHandle": "true" }),
                json!({ "id": "e4", "source": "check", "target": "no", "sourceHandle": "false" }),
            ],
        });
        let wf = Workflow::parse(&content).expect("valid");
        assert_eq!(wf.blocks.len(), 5);
        assert_eq!(wf.connections.len(), 4);
    }

    #[test]
    fn every_problem_is_reported_naming_its_block() {
        let content = json!({
            "blocks": [
                block("in", "input", json!({})),
                block("mystery", "teleport", json!({})),
                block("gen", "ai", json!({ "temperature": 5, "outputFormat": "yaml" })),
                block("in", "output", json!({})),
                block("wait", "delay", json!({})),
                block("out", "output", json!({})),
            ],
            "connections": [edge("e1", "in", "gen"), edge("e2", "gen", "ghost")],
        });
        let problems = Workflow::parse(&content).unwrap_err();
        let has = |p: &Problem| problems.contains(p);
        assert!(
            has(&Problem::UnknownType {
                block: "mystery".into(),
                r#type: "teleport".into()
            }),
            "{problems:?}"
        );
        assert!(has(&Problem::BadConfig {
            block: "gen".into(),
            field: "userPromptTemplate".into(),
            message: "required: a string".into()
        }));
        assert!(problems.iter().any(|p| matches!(p, Problem::BadConfig { block, field, .. } if block == "gen" && field == "temperature")));
        assert!(problems.iter().any(|p| matches!(p, Problem::BadConfig { block, field, .. } if block == "gen" && field == "outputFormat")));
        assert!(problems.iter().any(|p| matches!(p, Problem::BadConfig { block, field, .. } if block == "wait" && field == "seconds")));
        assert!(problems
            .iter()
            .any(|p| matches!(p, Problem::BadId { block, .. } if block == "in")));
        assert!(problems.iter().any(|p| matches!(p, Problem::DanglingConnection { connection, message } if connection == "e2" && message.contains("ghost"))));
    }

    #[test]
    fn template_syntax_retry_policies_and_lists_are_checked_before_running() {
        let content = json!({
            "blocks": [
                block("in", "input", json!({})),
                block("t", "transform", json!({ "template": "{% for x in %}" })),
                block("c", "condition", json!({ "expression": "a >" })),
                block("l", "loop", json!({ "items": 3, "concurrency": 99 })),
                block("w", "webhook", json!({ "url": "https://x/{{ y", "retry": { "attempts": 0 }, "headers": { "a": 1 } })),
                block("h", "human", json!({ "approvers": "me", "timeoutSeconds": -1 })),
                block("out", "output", json!({})),
            ],
            "connections": [edge("e1", "in", "out")],
        });
        let problems = Workflow::parse(&content).unwrap_err();
        for (b, f) in [
            ("t", "template"),
            ("c", "expression"),
            ("l", "items"),
            ("l", "concurrency"),
            ("w", "url"),
            ("w", "retry"),
            ("w", "headers"),
            ("h", "approvers"),
            ("h", "timeoutSeconds"),
        ] {
            assert!(
                problems.iter().any(|p| matches!(p, Problem::BadConfig { block, field, .. } if block == b && field == f)),
                "{b}.{f} in {problems:?}"
            );
        }
    }

    #[test]
    fn a_cycle_is_refused_with_its_blocks() {
        let content = json!({
            "blocks": [block("in", "input", json!({})), ai("a"), ai("b"), ai("c"), block("out", "output", json!({}))],
            "connections": [edge("1", "in", "a"), edge("2", "a", "b"), edge("3", "b", "c"), edge("4", "c", "a"), edge("5", "c", "out")],
        });
        let problems = Workflow::parse(&content).unwrap_err();
        let Some(Problem::Cycle { blocks }) = problems.first() else {
            panic!("{problems:?}")
        };
        let mut sorted = blocks.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c"]);
    }

    #[test]
    fn a_loop_body_may_return_to_its_loop() {
        let content = json!({
            "blocks": [
                block("in", "input", json!({})),
                block("each", "loop", json!({ "maxIterations": 10 })),
                ai("body"),
                block("out", "output", json!({})),
            ],
            "connections": [
                edge("1", "in", "each"),
                json!({ "id": "2", "source": "each", "target": "body", "sourceHandle": "body" }),
                json!({ "id": "3", "source": "body", "target": "each", "targetHandle": "next" }),
                json!({ "id": "4", "source": "each", "target": "out", "sourceHandle": "done" }),
            ],
        });
        let wf = Workflow::parse(&content).expect("a loop's back edge is not a cycle");
        assert!(wf.is_back_edge(&wf.connections[2]));
        assert!(!wf.is_back_edge(&wf.connections[0]));
    }

    #[test]
    fn outputs_must_be_reachable_and_exist() {
        let content = json!({
            "blocks": [block("in", "input", json!({})), ai("a"), block("out", "output", json!({})), block("lost", "output", json!({}))],
            "connections": [edge("1", "in", "a"), edge("2", "a", "out")],
        });
        assert_eq!(
            Workflow::parse(&content).unwrap_err(),
            vec![Problem::UnreachableOutput {
                block: "lost".into()
            }]
        );
        let none = json!({ "blocks": [block("in", "input", json!({}))], "connections": [] });
        assert_eq!(Workflow::parse(&none).unwrap_err(), vec![Problem::NoOutput]);
    }

    #[test]
    fn condition_edges_need_a_branch_handle_and_junk_is_reported() {
        let content = json!({
            "blocks": [block("c", "condition", json!({ "expression": "true" })), block("o", "output", json!({}))],
            "connections": [edge("e", "c", "o")],
        });
        let problems = Workflow::parse(&content).unwrap_err();
        assert!(
            matches!(&problems[..], [Problem::DanglingConnection { connection, .. }] if connection == "e"),
            "{problems:?}"
        );
        let junk = json!({ "blocks": 7, "connections": [1] });
        assert_eq!(Workflow::parse(&junk).unwrap_err().len(), 2);
    }

    #[test]
    fn a_long_chain_does_not_exhaust_the_stack() {
        let n = 100_000;
        let mut blocks = vec![block("b0", "input", json!({}))];
        let mut connections = Vec::new();
        for i in 1..n {
            blocks.push(block(
                &format!("b{i}"),
                if i == n - 1 { "output" } else { "split" },
                json!({}),
            ));
            connections.push(edge(
                &format!("e{i}"),
                &format!("b{}", i - 1),
                &format!("b{i}"),
            ));
        }
        let content = json!({ "blocks": blocks, "connections": connections });
        assert!(Workflow::parse(&content).is_ok());
    }
}
