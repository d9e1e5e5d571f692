//! `fanout`: R rooms, one writer and M readers each. The writer moves a block (changes
//! `blocks[0].position`, as the editor does) at a fixed rate, open-loop: each edit's latency is
//! measured from when it was *scheduled*, so a stalled writer cannot hide server delays
//! (no coordinated omission). Every reader records when it sees each edit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use yrs::Doc;

use crate::progress;
use crate::report::{self, Latency, Report, Series, Timeline};
use crate::scenario::{
    connect_synced, init_block, move_block, pace, ratio, wait_until, Common, EditTracker, Endings,
    Ignore, Job, SendTimes,
};

/// Runs the scenario; `sample` is called at the start and end of the measured window.
pub async fn run(
    c: &Common,
    mut sample: impl FnMut() -> Option<crate::proc::Sample>,
) -> anyhow::Result<Report> {
    let per_room_edits = (c.rate * c.duration.as_secs_f64()).ceil() as usize + 1;
    let epoch = Instant::now();
    let timeline = Timeline::new(epoch);
    let mut endings = Endings::default();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let seen = Arc::new(AtomicU64::new(0));
    let mut conn_no = 0;
    progress::phase("connecting", None);
    for r in 0..c.rooms {
        let room = c.room(r);
        let times = SendTimes::new(epoch, per_room_edits);
        // The writer creates the block the readers watch.
        let doc = Doc::new();
        let writer =
            connect_synced(&c.target, &room, c.source(conn_no), doc.clone(), Ignore).await?;
        conn_no += 1;
        let _ = writer.tx.send(init_block(&doc));
        for _ in 0..c.clients {
            let reader = EditTracker::new(times.clone(), timeline.clone(), seen.clone());
            match connect_synced(&c.target, &room, c.source(conn_no), Doc::new(), reader).await {
                Ok(conn) => readers.push(conn),
                Err(e) => {
                    endings.errors += 1;
                    crate::note!("reader connect failed: {e:#}");
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
    timeline.start();
    progress::phase("running", Some(c.duration));
    let period = Duration::from_secs_f64(1.0 / c.rate);
    // Writer `i` edits at start + i/rooms·period + k·period.
    let jobs = writers
        .iter()
        .enumerate()
        .map(|(i, (w, doc, times))| {
            let (tx, doc, times) = (w.tx.clone(), doc.clone(), times.clone());
            Job {
                period,
                offset: period.mul_f64(i as f64 / c.rooms as f64),
                fire: Box::new(move |seq, due_us| {
                    if seq as usize >= times.times.len() {
                        return false;
                    }
                    let Some(msg) = move_block(&doc, seq) else {
                        return false;
                    };
                    times.times[seq as usize].store(due_us, Ordering::Release);
                    times.sent.store(seq, Ordering::Release);
                    tx.send(msg).is_ok()
                }),
            }
        })
        .collect();
    pace(epoch, c.duration, jobs).await?;
    let sent_total: u64 = writers
        .iter()
        .map(|(_, _, t)| t.sent.load(Ordering::Acquire))
        .sum();
    let expected = sent_total * c.clients as u64;
    // Drain: give late deliveries up to 5 s to arrive.
    progress::phase("draining", None);
    wait_until(Duration::from_secs(5), || {
        seen.load(Ordering::Relaxed) >= expected
    })
    .await;
    let window = started.elapsed();
    let after = sample();

    let mut hist = report::histogram();
    let mut delivered = 0;
    for r in readers {
        r.stop.notify_one();
        let (ended, (h, d)) = r.task.await?;
        hist.add(&h)?;
        delivered += d;
        endings.add(&ended, "reader");
    }
    for (w, _, _) in writers {
        w.stop.notify_one();
        let _ = w.task.await;
    }
    let latency = Latency::from_histogram(&hist);
    let points = timeline.points();
    let mut extra = BTreeMap::new();
    extra.insert("edits_sent".into(), sent_total.into());
    Ok(Report {
        scenario: "fanout".into(),
        measures: "edit delivery: scheduled send to a reader applying it".into(),
        rooms: c.rooms,
        clients: c.clients,
        rate: c.rate,
        duration_secs: window.as_secs_f64(),
        expected,
        delivered,
        delivered_ratio: ratio(delivered, expected),
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        max_ms: latency.max_ms,
        latency,
        errors: endings.errors,
        close_codes: endings.close_codes,
        server: crate::usage(before, after, Some(delivered), None),
        timeline: points.clone(),
        extra,
        series: vec![Series {
            name: "edits".into(),
            hist,
            timeline: points,
        }],
        ..Default::default()
    })
}
