//! The scheduling view of a validated workflow: blocks by index, connections by index, and
//! the scopes a run is made of: the top level, and each loop's body (run once per item).

use std::collections::{HashMap, HashSet, VecDeque};

use super::block::kind::BlockKind;
use super::graph::{Problem, Workflow};

/// One scope: the blocks it runs and the connections between them.
#[derive(Debug, Default)]
pub struct Scope {
    /// The loop whose body this is (`None` at the top level).
    pub owner: Option<usize>,
    /// Its blocks, in document order.
    pub blocks: Vec<usize>,
    /// Connections between its blocks (back edges excluded).
    pub edges: Vec<usize>,
    /// For a body: connections from the loop's `body` handle into it (they carry the item).
    pub entries: Vec<usize>,
    /// For a body: the blocks returning into the loop's `next` handle (the iteration's result).
    pub returns: Vec<usize>,
}

/// The workflow prepared for running.
pub struct Plan {
    /// The validated workflow.
    pub workflow: Workflow,
    /// Block id → index.
    pub index: HashMap<String, usize>,
    /// Scope 0 is the top level; loop `l`'s body is `body_of[l]`.
    pub scopes: Vec<Scope>,
    /// Loop block index → its body's scope index.
    pub body_of: HashMap<usize, usize>,
    /// Block index → the scope it runs in.
    pub scope_of: Vec<usize>,
    /// The scope of the error handler and what it leads to, run when the execution fails.
    pub handler: Option<usize>,
}

impl Plan {
    /// Splits a validated workflow into scopes. Refuses connections that cross a loop's body
    /// other than through the loop, and outputs inside a body. With `input` blocks, blocks
    /// no input reaches (drafts left on the canvas) are not part of the run.
    pub fn new(workflow: Workflow) -> Result<Plan, Vec<Problem>> {
        let index: HashMap<String, usize> = workflow
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id.clone(), i))
            .collect();
        let n = workflow.blocks.len();
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (ci, c) in workflow.connections.iter().enumerate() {
            if !workflow.is_back_edge(c) {
                out[index[&c.source]].push(ci);
            }
        }
        // Each loop's body: what its `body` handle reaches without passing through the loop.
        let mut bodies: Vec<(usize, HashSet<usize>)> = Vec::new();
        for (l, b) in workflow.blocks.iter().enumerate() {
            if b.kind != BlockKind::Loop {
                continue;
            }
            let mut seen = HashSet::new();
            let mut queue: VecDeque<usize> = out[l]
                .iter()
                .filter(|&&ci| workflow.connections[ci].source_handle.as_deref() == Some("body"))
                .map(|&ci| index[&workflow.connections[ci].target])
                .collect();
            while let Some(b) = queue.pop_front() {
                if b == l || !seen.insert(b) {
                    continue;
                }
                for &ci in &out[b] {
                    queue.push_back(index[&workflow.connections[ci].target]);
                }
            }
            bodies.push((l, seen));
        }
        // A block belongs to the smallest body holding it (nested loops), else the top.
        let mut scope_of = vec![0usize; n];
        let mut scopes = vec![Scope::default()];
        let mut body_of = HashMap::new();
        let mut order: Vec<usize> = (0..bodies.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(bodies[i].1.len()));
        for &i in &order {
            let (l, ref set) = bodies[i];
            let s = scopes.len();
            scopes.push(Scope {
                owner: Some(l),
                ..Scope::default()
            });
            body_of.insert(l, s);
            for &b in set {
                scope_of[b] = s;
            }
        }
        let mut problems = Vec::new();
        let reach = |starts: Vec<usize>| {
            let mut seen = vec![false; n];
            let mut queue: VecDeque<usize> = starts.into();
            for &b in &queue {
                seen[b] = true;
            }
            while let Some(b) = queue.pop_front() {
                for &ci in &out[b] {
                    let t = index[&workflow.connections[ci].target];
                    if !seen[t] {
                        seen[t] = true;
                        queue.push_back(t);
                    }
                }
            }
            seen
        };
        // What the run covers: everything an input reaches (through loops into their
        // bodies), or, when there is no input block, everything but the error handler's
        // flow.
        let kind_is = |k: BlockKind| -> Vec<usize> {
            (0..n).filter(|&i| workflow.blocks[i].kind == k).collect()
        };
        let has_input = workflow.blocks.iter().any(|b| b.kind == BlockKind::Input);
        let handlers = kind_is(BlockKind::ErrorHandler);
        let handled = reach(handlers.clone());
        let mut reached = if has_input {
            reach(kind_is(BlockKind::Input))
        } else {
            let mut fed = vec![false; n];
            for c in &workflow.connections {
                if !workflow.is_back_edge(c) {
                    fed[index[&c.target]] = true;
                }
            }
            reach((0..n).filter(|&i| !fed[i] && !handled[i]).collect())
        };
        // The error handler's flow is a scope of its own, apart from the run's.
        let handler = (!handlers.is_empty()).then(|| {
            scopes.push(Scope::default());
            scopes.len() - 1
        });
        for b in 0..n {
            if !handled[b] {
                continue;
            }
            if reached[b] {
                problems.push(Problem::BadConfig {
                    block: workflow.blocks[b].id.clone(),
                    field: "type".into(),
                    message: "follows both the error handler and the run's start: a block \
                              belongs to one of them"
                        .into(),
                });
            }
            reached[b] = true;
            if scope_of[b] == 0 {
                scope_of[b] = handler.unwrap_or(0);
            }
        }
        for (b, &s) in scope_of.iter().enumerate() {
            if reached[b] {
                scopes[s].blocks.push(b);
            }
            if s != 0 && Some(s) != handler && workflow.blocks[b].kind == BlockKind::Output {
                problems.push(Problem::OutputInLoop {
                    block: workflow.blocks[b].id.clone(),
                });
            }
        }
        for (ci, c) in workflow.connections.iter().enumerate() {
            let (src, dst) = (index[&c.source], index[&c.target]);
            if workflow.is_back_edge(c) {
                if let Some(&s) = body_of.get(&dst) {
                    if scope_of[src] == s {
                        scopes[s].returns.push(src);
                    }
                }
                continue;
            }
            if let Some(&s) = body_of.get(&src) {
                if c.source_handle.as_deref() == Some("body") && scope_of[dst] == s {
                    scopes[s].entries.push(ci);
                    continue;
                }
            }
            if scope_of[src] == scope_of[dst] {
                if reached[src] && reached[dst] {
                    scopes[scope_of[src]].edges.push(ci);
                }
            } else {
                problems.push(Problem::CrossesLoop {
                    connection: c.id.clone(),
                    message: format!(
                        "`{}` and `{}` are in different loop bodies: a body is entered through its loop's `body` handle and left through the loop",
                        c.source, c.target
                    ),
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Plan {
            workflow,
            index,
            scopes,
            body_of,
            scope_of,
            handler,
        })
    }
}
