//! Execution retention (`--execution-retention-days`): executions that finished longer ago
//! than the retention keep their row (status, trigger, times, tokens, cost: the history and
//! what was billed) and lose their events, block rows, pinned graph and large values, in
//! batches, so the log does not grow for ever.

use std::sync::Weak;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::executions::{self as store, Pruned};
use crate::db::now_ms;
use crate::{Engine, Inner};

/// Executions pruned per transaction.
const BATCH: i64 = 500;

impl Engine {
    /// Prunes every execution that finished before `cutoff` (Unix ms), a batch at a time;
    /// what it removed.
    pub async fn prune_executions(&self, cutoff: i64) -> Result<Pruned, crate::db::DbError> {
        let mut total = Pruned::default();
        loop {
            let p = store::prune(&self.inner.db, cutoff, BATCH).await?;
            total.executions += p.executions;
            total.events += p.events;
            total.blocks += p.blocks;
            if p.executions < BATCH as u64 {
                return Ok(total);
            }
            // Other writers get the database between batches.
            tokio::task::yield_now().await;
        }
    }
}

/// Prunes what is older than `keep` now and then every `every`, until `stop`.
pub(crate) async fn run(
    inner: Weak<Inner>,
    keep: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        {
            let Some(inner) = inner.upgrade() else { return };
            let engine = Engine { inner };
            let cutoff = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            match engine.prune_executions(cutoff).await {
                Ok(p) if p.executions > 0 => tracing::info!(
                    executions = p.executions,
                    events = p.events,
                    blocks = p.blocks,
                    "pruned executions past the retention"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "pruning executions failed; trying again later")
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
