//! A workflow's blocks and connections as a graph, validated before anything runs.
//!
//! The input is the document's content as JSON (`content::to_json`): `blocks` is an array
//! of `{id, type, config, …}` and `connections` an array of React Flow edges
//! `{id, source, target, sourceHandle?, targetHandle?}`. Every problem is reported, each
//! naming the block or connection at fault, so an editor can mark them all at once.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::block::kind::{Block, BlockKind};

/// The source handle a block's failure leaves through when its `onError` is `route`.
pub const ERROR_HANDLE: &str = "error";

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

/// What validation asks of the block types (`block::Rules`): passed in, so the graph does
/// not depend on the block behaviours, which act on a running execution of a graph.
pub(crate) trait TypeRules {
    /// Problems with a block's configuration for its type, as `(field, message)`.
    fn check(&self, kind: BlockKind, config: &Value) -> Vec<(String, String)>;
    /// The handles a condition leaves through.
    fn condition_handles(&self, config: &Value) -> Vec<String>;
    /// What each of a block's templates and expressions reads, by field.
    fn reads(&self, kind: BlockKind, config: &Value) -> Vec<(String, crate::template::Reads)>;
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
    pub(crate) fn parse(content: &Value, rules: &dyn TypeRules) -> Result<Workflow, Vec<Problem>> {
        let mut problems = Vec::new();
        let blocks = parse_blocks(content.get("blocks"), rules, &mut problems);
        for b in blocks
            .iter()
            .filter(|b| b.kind == BlockKind::ErrorHandler)
            .skip(1)
        {
            problems.push(Problem::BadConfig {
                block: b.id.clone(),
                field: "type".into(),
                message: "a workflow has at most one error handler".into(),
            });
        }
        let ids: HashMap<&str, BlockKind> =
            blocks.iter().map(|b| (b.id.as_str(), b.kind)).collect();
        let handles: HashMap<&str, Vec<String>> = blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Condition)
            .map(|b| (b.id.as_str(), rules.condition_handles(&b.config)))
            .collect();
        // Blocks whose failures leave through their `error` handle.
        let route_errors: HashSet<&str> = blocks
            .iter()
            .filter(|b| b.config.get("onError").and_then(Value::as_str) == Some("route"))
            .map(|b| b.id.as_str())
            .collect();
        let connections = parse_connections(
            content.get("connections"),
            &ids,
            &handles,
            &route_errors,
            &mut problems,
        );
        if problems.is_empty() {
            check_graph(&blocks, &connections, &mut problems);
        }
        if problems.is_empty() {
            check_reads(&blocks, &connections, rules, &mut problems);
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

fn parse_blocks(
    value: Option<&Value>,
    rules: &dyn TypeRules,
    problems: &mut Vec<Problem>,
) -> Vec<Block> {
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
        for (field, message) in rules.check(kind, &config) {
            problems.push(Problem::BadConfig {
                block: id.into(),
                field,
                message,
            });
        }
        blocks.push(Block {
            id: id.into(),
            kind,
            config,
        });
    }
    blocks
}

fn parse_connections(
    value: Option<&Value>,
    blocks: &HashMap<&str, BlockKind>,
    handles: &HashMap<&str, Vec<String>>,
    route_errors: &HashSet<&str>,
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
        let Some(&target_kind) = blocks.get(target.as_str()) else {
            dangling(format!("target block `{target}` does not exist"));
            continue;
        };
        if target_kind == BlockKind::ErrorHandler {
            dangling(format!(
                "enters the error handler `{target}`, which has no inputs: it runs when the \
                 execution fails"
            ));
            continue;
        }
        let source_handle = text("sourceHandle");
        if source_handle.as_deref() == Some(ERROR_HANDLE) {
            if !route_errors.contains(source.as_str()) {
                dangling(format!(
                    "leaves `{source}` through its error handle, but its onError is not `route`"
                ));
                continue;
            }
        } else if source_kind == BlockKind::Condition {
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
    // The error handler starts a flow of its own.
    starts.extend((0..blocks.len()).filter(|&i| blocks[i].kind == BlockKind::ErrorHandler));
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

/// Every `blocks.<id>` a template names must be a block that has finished when the template
/// runs: one upstream of it. Anything else reads nothing (a parallel branch's block may or
/// may not have run; a loop body's blocks have no output outside their iteration).
fn check_reads(
    blocks: &[Block],
    connections: &[Connection],
    rules: &dyn TypeRules,
    problems: &mut Vec<Problem>,
) {
    let index: HashMap<&str, usize> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.as_str(), i))
        .collect();
    let mut prev: Vec<Vec<usize>> = vec![Vec::new(); blocks.len()];
    for c in connections.iter().filter(|c| !is_back_edge(blocks, c)) {
        prev[index[c.target.as_str()]].push(index[c.source.as_str()]);
    }
    for (i, b) in blocks.iter().enumerate() {
        let reads = rules.reads(b.kind, &b.config);
        if reads.iter().all(|(_, r)| r.blocks.is_empty()) {
            continue;
        }
        // This block's ancestors, found once for all its fields.
        let mut upstream = vec![false; blocks.len()];
        let mut stack = prev[i].clone();
        while let Some(j) = stack.pop() {
            if !std::mem::replace(&mut upstream[j], true) {
                stack.extend(&prev[j]);
            }
        }
        for (field, r) in &reads {
            for id in &r.blocks {
                let message = match index.get(id.as_str()) {
                    None => format!("blocks.{id}: no block has this id"),
                    Some(&j) if j == i => format!("blocks.{id} is this block itself"),
                    Some(&j) if !upstream[j] => format!(
                        "blocks.{id} is not upstream of this block, so it may not have run \
                         when this block does: connect it to this block (directly or \
                         through others)"
                    ),
                    Some(_) => continue,
                };
                problems.push(Problem::BadConfig {
                    block: b.id.clone(),
                    field: field.clone(),
                    message,
                });
            }
        }
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

    fn parse(content: &Value) -> Result<Workflow, Vec<Problem>> {
        Workflow::parse(content, &crate::block::Rules)
    }

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
    fn templates_may_read_only_blocks_upstream_of_them() {
        // in -> a -> out, and b in parallel (in -> b -> out).
        let with = |template: &str| {
            json!({
                "blocks": [
                    block("in", "input", json!({})),
                    block("a", "transform", json!({ "template": template })),
                    block("b", "transform", json!({ "template": "b" })),
                    block("b-2", "transform", json!({ "template": "{{ blocks['a'].output }}" })),
                    block("out", "output", json!({ "template": "{{ blocks.a.output }} {{ blocks['b-2'].output }}" })),
                ],
                "connections": [
                    edge("e1", "in", "a"), edge("e2", "in", "b"), edge("e3", "a", "b-2"),
                    edge("e4", "a", "out"), edge("e5", "b", "out"), edge("e6", "b-2", "out"),
                ],
            })
        };
        assert!(parse(&with("{{ blocks.in.output }} {{ input.x }}")).is_ok());
        let problems = |t: &str| match parse(&with(t)) {
            Ok(_) => panic!("{t} parsed"),
            Err(p) => p,
        };
        // A parallel branch's block: it may not have run yet.
        match &problems("{{ blocks.b.output }}")[..] {
            [Problem::BadConfig {
                block,
                field,
                message,
            }] => {
                assert_eq!((block.as_str(), field.as_str()), ("a", "template"));
                assert!(message.contains("not upstream"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Downstream, itself, unknown; in the subscript form too.
        assert!(format!("{:?}", problems("{{ blocks['out'].output }}")).contains("not upstream"));
        assert!(format!("{:?}", problems("{{ blocks.a.output }}")).contains("this block itself"));
        assert!(
            format!("{:?}", problems("{{ blocks.gone.output }}")).contains("no block has this id")
        );
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
        let wf = parse(&content).expect("valid");
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
        let problems = parse(&content).unwrap_err();
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
        let problems = parse(&content).unwrap_err();
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
        let problems = parse(&content).unwrap_err();
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
        let wf = parse(&content).expect("a loop's back edge is not a cycle");
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
            parse(&content).unwrap_err(),
            vec![Problem::UnreachableOutput {
                block: "lost".into()
            }]
        );
        let none = json!({ "blocks": [block("in", "input", json!({}))], "connections": [] });
        assert_eq!(parse(&none).unwrap_err(), vec![Problem::NoOutput]);
    }

    #[test]
    fn condition_edges_need_a_branch_handle_and_junk_is_reported() {
        let content = json!({
            "blocks": [block("c", "condition", json!({ "expression": "true" })), block("o", "output", json!({}))],
            "connections": [edge("e", "c", "o")],
        });
        let problems = parse(&content).unwrap_err();
        assert!(
            matches!(&problems[..], [Problem::DanglingConnection { connection, .. }] if connection == "e"),
            "{problems:?}"
        );
        let junk = json!({ "blocks": 7, "connections": [1] });
        assert_eq!(parse(&junk).unwrap_err().len(), 2);
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
        assert!(parse(&content).is_ok());
    }
}
