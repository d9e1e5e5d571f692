//! `fanout`: R rooms, one writer and M readers each. The writer moves a block (changes
//! `blocks[0].position`, as the editor does) at a fixed rate, open-loop: each edit's latency is
//! measured from when it was *scheduled*, so a stalled writer cannot hide server delays
//! (no coordinated omission). Every reader records when it sees each edit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::{Any, Array, Doc, Map, MapPrelim, Out, ReadTxn, Transact, WriteTxn};

use crate::client::{self, Ended, Event};
use crate::report::{self, Latency, Report};
use crate::scenario::{connect_synced, Common, Handler, Ignore};

/// Send times of one room's edits, in µs since the run's epoch (0 = not sent).
struct SendTimes {
    epoch: Instant,
    times: Vec<AtomicU64>,
    sent: AtomicU64,
}

struct Reader {
    times: Arc<SendTimes>,
    hist: Histogram<u64>,
    last_seq: u64,
    delivered: u64,
    seen: Arc<AtomicU64>,
}

impl Handler for Reader {
    type Output = (Histogram<u64>, u64);

    fn on_event(&mut self, event: Event<'_>) {
        let Event::Updated(doc) = event else { return };
        let now = self.times.epoch.elapsed().as_micros() as u64;
        let Some(seq) = position_x(doc) else { return };
        if seq <= self.last_seq || seq as usize >= self.times.times.len() {
            return;
        }
        self.last_seq = seq;
        let sent = self.times.times[seq as usize].load(Ordering::Acquire);
        if sent > 0 {
            self.delivered += 1;
            self.seen.fetch_add(1, Ordering::Relaxed);
            let _ = self.hist.record(now.saturating_sub(sent).max(1));
        }
    }

    fn finish(self) -> Self::Output {
        (self.hist, self.delivered)
    }
}

fn position_x(doc: &Doc) -> Option<u64> {
    let txn = doc.transact();
    let blocks = txn.get_array("blocks")?;
    let Out::YMap(block) = blocks.get(&txn, 0)? else {
        return None;
    };
    let Out::YMap(pos) = block.get(&txn, "position")? else {
        return None;
    };
    match pos.get(&txn, "x")? {
        Out::Any(Any::Number(yrs::Number::Float(x))) => Some(x as u64),
        Out::Any(Any::Number(yrs::Number::Int(x))) => Some(x as u64),
        _ => None,
    }
}

/// Runs the scenario; `sample` is called at the start and end of the measured window.
pub async fn run(
    c: &Common,
    mut sample: impl FnMut() -> Option<crate::proc::Sample>,
) -> anyhow::Result<Report> {
    let per_room_edits = (c.rate * c.duration.as_secs_f64()).ceil() as usize + 1;
    let epoch = Instant::now();
    let mut errors = 0u64;
    let mut close_codes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let seen = Arc::new(AtomicU64::new(0));
    let mut conn_no = 0;
    for r in 0..c.rooms {
        let room = c.room(r);
        let times = Arc::new(SendTimes {
            epoch,
            times: (0..=per_room_edits).map(|_| AtomicU64::new(0)).collect(),
            sent: AtomicU64::new(0),
        });
        // The writer creates the block the readers watch.
        let doc = Doc::new();
        let writer =
            connect_synced(&c.target, &room, c.source(conn_no), doc.clone(), Ignore).await?;
        conn_no += 1;
        let init = {
            let mut txn = doc.transact_mut();
            let blocks = txn.get_or_insert_array("blocks");
            let len = blocks.len(&txn);
            blocks.remove_range(&mut txn, 0, len);
            let block = blocks.insert(&mut txn, 0, MapPrelim::default());
            block.insert(&mut txn, "id", "load-block");
            block.insert(&mut txn, "type", "ai");
            let pos = block.insert(&mut txn, "position", MapPrelim::default());
            pos.insert(&mut txn, "x", 0.0);
            pos.insert(&mut txn, "y", 0.0);
            let data = block.insert(&mut txn, "data", MapPrelim::default());
            data.insert(&mut txn, "label", "load test");
            txn.encode_update_v1()
        };
        let _ = writer
            .tx
            .send(client::encode(&YMessage::Sync(SyncMessage::Update(init))));
        for _ in 0..c.clients {
            let reader = Reader {
                times: times.clone(),
                hist: report::histogram(),
                last_seq: 0,
                delivered: 0,
                seen: seen.clone(),
            };
            match connect_synced(&c.target, &room, c.source(conn_no), Doc::new(), reader).await {
                Ok(conn) => readers.push(conn),
                Err(e) => {
                    errors += 1;
                    eprintln!("reader connect failed: {e:#}");
                }
            }
            conn_no += 1;
        }
        writers.push((writer, doc, times));
    }
    // Let every reader receive the block before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = sample();
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / c.rate);
    // One pacing thread schedules every writer's edits: OS sleeps are precise to tens of µs,
    // while tokio's timer wheel rounds up to whole milliseconds, which would add up to 1 ms
    // of phantom latency to every edit (latency is measured from the scheduled time).
    let plan: Vec<_> = writers
        .iter()
        .map(|(w, doc, times)| (w.tx.clone(), doc.clone(), times.clone()))
        .collect();
    let rooms = c.rooms;
    let duration = c.duration;
    let pacer = std::thread::spawn(move || pace(plan, rooms, period, duration));
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("pacing thread panicked"))?;
    let sent_total: u64 = writers
        .iter()
        .map(|(_, _, t)| t.sent.load(Ordering::Acquire))
        .sum();
    let expected = sent_total * c.clients as u64;
    // Drain: give late deliveries up to 5 s to arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let window = started.elapsed();
    let after = sample();

    let mut hist = report::histogram();
    let mut delivered = 0;
    for r in readers {
        r.stop.notify_one();
        let (ended, (h, d)) = r.task.await?;
        hist.add(&h)?;
        delivered += d;
        match ended {
            Ended::Stopped => {}
            Ended::Closed(code) => {
                errors += 1;
                *close_codes.entry(code).or_default() += 1;
            }
            Ended::Error(e) => {
                errors += 1;
                eprintln!("reader ended: {e}");
            }
        }
    }
    for (w, _, _) in writers {
        w.stop.notify_one();
        let _ = w.task.await;
    }
    let latency = Latency::from_histogram(&hist);
    let mut extra = BTreeMap::new();
    extra.insert("edits_sent".into(), sent_total.into());
    Ok(Report {
        scenario: "fanout".into(),
        rooms: c.rooms,
        clients: c.clients,
        rate: c.rate,
        duration_secs: window.as_secs_f64(),
        expected,
        delivered,
        delivered_ratio: if expected == 0 {
            0.0
        } else {
            delivered as f64 / expected as f64
        },
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        max_ms: latency.max_ms,
        latency,
        errors,
        close_codes,
        server: crate::usage(before, after, Some(delivered), None),
        extra,
    })
}

/// Makes every writer's edits on schedule: writer `i` edits at
/// `start + i/rooms·period + k·period` for k = 1, 2, … until `duration` has passed.
fn pace(
    plan: Vec<(
        tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
        Doc,
        Arc<SendTimes>,
    )>,
    rooms: usize,
    period: Duration,
    duration: Duration,
) {
    let Some(epoch) = plan.first().map(|(_, _, t)| t.epoch) else {
        return;
    };
    let start = Instant::now();
    for seq in 1u64.. {
        for (i, (tx, doc, times)) in plan.iter().enumerate() {
            let offset = period.mul_f64(i as f64 / rooms as f64);
            let due = start + offset + period * (seq as u32 - 1);
            if due.duration_since(start) >= duration || seq as usize >= times.times.len() {
                return;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let update = {
                let mut txn = doc.transact_mut();
                let blocks = txn.get_or_insert_array("blocks");
                let Some(Out::YMap(block)) = blocks.get(&txn, 0) else {
                    return;
                };
                let Some(Out::YMap(pos)) = block.get(&txn, "position") else {
                    return;
                };
                pos.insert(&mut txn, "x", seq as f64);
                pos.insert(&mut txn, "y", (seq % 500) as f64);
                txn.encode_update_v1()
            };
            let due_us = (due - epoch).as_micros() as u64;
            times.times[seq as usize].store(due_us.max(1), Ordering::Release);
            times.sent.store(seq, Ordering::Release);
            let _ = tx.send(client::encode(&YMessage::Sync(SyncMessage::Update(update))));
        }
    }
}
