//! Block types as data: the names a document uses and a block of a validated workflow. Kept
//! apart from the behaviours (`block/<kind>.rs`), which act on a running execution, so that
//! validation and planning do not depend on them.

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
    /// The workflow's error handler: runs, with what failed, when the execution fails.
    #[serde(rename = "errorHandler")]
    ErrorHandler,
}

impl BlockKind {
    /// Every type, in the docs' order. `parse` reads this list, so a type missing here is
    /// refused everywhere rather than half-supported.
    pub const ALL: [BlockKind; 12] = [
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
        BlockKind::ErrorHandler,
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
            BlockKind::ErrorHandler => "errorHandler",
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
