//! Blocks that reach outside the server: AI calls through the router, webhooks, and
//! approval emails. (Being merged: the router and the webhook client land in parallel.)

use super::run::{BlockCtx, BlockDone};
use crate::db::Db;

/// Provider keys usable by one execution.
pub type Keys = ();

/// The outside world, as the engine reaches it.
#[derive(Default)]
pub struct Io;

impl Io {
    /// Loads a workspace's usable provider keys.
    pub async fn keys(&self, _db: &Db, _workspace: &str) -> Keys {}
}

/// Runs an AI block.
pub(super) async fn ai_block(_ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
    Err("AI blocks are not wired yet".into())
}

/// Runs a webhook block.
pub(super) async fn webhook_block(_ctx: &BlockCtx<'_>) -> Result<BlockDone, String> {
    Err("webhook blocks are not wired yet".into())
}

/// Emails the block's approvers, when email is configured.
pub(super) async fn ask_for_approval(_ctx: &BlockCtx<'_>, _wake_at: i64) {}
