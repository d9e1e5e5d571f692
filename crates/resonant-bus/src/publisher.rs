//! The publisher: a bounded outbox in front of one pipelined connection.
//!
//! `publish` only queues. One task drains the queue into a pipeline (`XADD … MAXLEN ~` and
//! `PEXPIRE` per message) over the shared control connection. A publish is news, not data
//! (the data is in Postgres already), so when Redis is slow or down the outbox drops its
//! *oldest* entries rather than making anyone wait, and failures are only counted.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::codec::{FIELD_NODE, FIELD_PAYLOAD, FIELD_TIME};
use crate::redis_bus::Control;
use crate::{NodeId, PublishOptions};

/// Payload bytes (plus a per-entry overhead) the outbox holds before dropping the oldest.
pub(crate) const OUTBOX_BYTES: usize = 1 << 20;
/// Counted per queued publish on top of its payload and key, so a flood of empty payloads
/// is bounded too.
const ENTRY_OVERHEAD: usize = 64;
/// Most publishes sent in one pipeline.
const BATCH: usize = 512;
/// How long a last flush at shutdown may take.
const FINAL_FLUSH: Duration = Duration::from_millis(500);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

static MESSAGES_OUT: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_messages_out_total"));
static PUBLISH_ERRORS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_publish_errors_total"));
static PUBLISH_DROPPED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_publish_dropped_total"));

/// One queued publish.
pub(crate) struct Outgoing {
    pub(crate) key: String,
    pub(crate) payload: Bytes,
    pub(crate) sent_ms: i64,
    pub(crate) opts: PublishOptions,
}

impl Outgoing {
    fn cost(&self) -> usize {
        self.payload.len() + self.key.len() + ENTRY_OVERHEAD
    }
}

/// The publisher's queue.
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
    limit: usize,
}

#[derive(Default)]
struct OutboxState {
    items: VecDeque<Outgoing>,
    bytes: usize,
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            notify: Notify::new(),
            limit,
        }
    }

    /// Queues `item`, dropping the oldest queued publishes beyond the limit.
    pub(crate) fn push(&self, item: Outgoing) {
        let mut state = self.state.lock();
        state.bytes += item.cost();
        state.items.push_back(item);
        let mut dropped = 0;
        // Keeps at least the newest publish even if it alone is over the limit.
        while state.bytes > self.limit && state.items.len() > 1 {
            let oldest = state.items.pop_front().expect("more than one item");
            state.bytes -= oldest.cost();
            dropped += 1;
        }
        drop(state);
        if dropped > 0 {
            PUBLISH_DROPPED.increment(dropped);
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<Outgoing> {
        let mut state = self.state.lock();
        let n = state.items.len().min(BATCH);
        let batch: Vec<Outgoing> = state.items.drain(..n).collect();
        state.bytes -= batch.iter().map(Outgoing::cost).sum::<usize>();
        batch
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().items.len()
    }
}

/// The publisher task: sends what is queued until `cancel`, then tries one last flush.
pub(crate) async fn run(
    outbox: Arc<Outbox>,
    control: Arc<Control>,
    node: NodeId,
    cancel: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let batch = outbox.take();
        if batch.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = outbox.notify.notified() => continue,
            }
        }
        resonant_failpoint::hit("bus.before-xadd").await;
        let sending = send(&control, node, batch);
        tokio::pin!(sending);
        let ok = tokio::select! {
            _ = cancel.cancelled() => {
                // Shutting down: give the batch in flight a moment to get out.
                let _ = tokio::time::timeout(FINAL_FLUSH, &mut sending).await;
                break;
            }
            ok = &mut sending => ok,
        };
        if ok {
            backoff = MIN_BACKOFF;
        } else {
            // Redis is failing: let publishes pile up (and the oldest drop) rather than spin.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    let rest = outbox.take();
    if !rest.is_empty() {
        let _ = tokio::time::timeout(FINAL_FLUSH, send(&control, node, rest)).await;
    }
}

/// Sends one batch; `false` when the round trip itself failed.
async fn send(control: &Control, node: NodeId, batch: Vec<Outgoing>) -> bool {
    let mut pipe = redis::pipe();
    // Results per command, so one bad key (say, not a stream) fails only its own publish.
    pipe.ignore_errors();
    for item in &batch {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&item.key);
        if item.opts.max_len > 0 {
            xadd.arg("MAXLEN").arg("~").arg(item.opts.max_len);
        }
        xadd.arg("*")
            .arg(FIELD_NODE)
            .arg(node)
            .arg(FIELD_TIME)
            .arg(item.sent_ms)
            .arg(FIELD_PAYLOAD)
            .arg(item.payload.as_ref());
        pipe.add_command(xadd);
        if let Some(ttl) = item.opts.ttl {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            pipe.cmd("PEXPIRE").arg(&item.key).arg(ms);
        }
    }
    match control
        .query_pipe::<Vec<redis::RedisResult<redis::Value>>>(&pipe)
        .await
    {
        Ok(results) => {
            let mut results = results.into_iter();
            let (mut sent, mut failed) = (0u64, 0u64);
            for item in &batch {
                let xadd = results.next();
                let pexpire = item.opts.ttl.and_then(|_| results.next());
                match (xadd, pexpire) {
                    (Some(Ok(_)), None | Some(Ok(_))) => sent += 1,
                    (error, _) => {
                        failed += 1;
                        tracing::debug!(key = %item.key, ?error, "bus publish failed");
                    }
                }
            }
            MESSAGES_OUT.increment(sent);
            PUBLISH_ERRORS.increment(failed);
            true
        }
        Err(error) => {
            PUBLISH_ERRORS.increment(batch.len() as u64);
            tracing::debug!(%error, dropped = batch.len(), "bus publish batch failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> Outgoing {
        Outgoing {
            key: "k".into(),
            payload: Bytes::from(vec![0; n]),
            sent_ms: 0,
            opts: PublishOptions::default(),
        }
    }

    #[test]
    fn the_outbox_drops_its_oldest_beyond_the_limit() {
        let outbox = Outbox::new(1000);
        for _ in 0..3 {
            outbox.push(item(300));
        }
        assert_eq!(outbox.len(), 2, "3 × (300 + 1 + 64) is over 1000");
        outbox.push(item(5000));
        assert_eq!(
            outbox.len(),
            1,
            "the newest stays even alone over the limit"
        );
        assert_eq!(outbox.take()[0].payload.len(), 5000);
        assert_eq!(outbox.state.lock().bytes, 0);
    }

    #[test]
    fn batches_are_bounded() {
        let outbox = Outbox::new(usize::MAX);
        for _ in 0..BATCH + 3 {
            outbox.push(item(0));
        }
        assert_eq!(outbox.take().len(), BATCH);
        assert_eq!(outbox.take().len(), 3);
        assert!(outbox.take().is_empty());
    }
}
