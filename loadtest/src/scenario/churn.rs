//! `churn`: clients come and go while a document changes. Each room has a writer moving a
//! block at `--rate` (open-loop, as in `fanout`) and `--clients` stable readers that stay the
//! whole run and time every edit. Meanwhile churners join at `--churn-rate` per room per
//! second; each announces its presence (awareness), stays a random 0.5–3 s and leaves. Before
//! leaving, a churner checks that it converged to the writer's state as of that moment (its
//! state vector reached the writer's clock; Yjs updates are causal, so every earlier edit is
//! in). At the end every stable reader must hold the writer's final state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use yrs::{ClientID, Doc, ReadTxn, Transact};

use crate::client::{Ended, Event, Target};
use crate::progress;
use crate::report::{self, Latency, Recorder, Report, Series, Timeline};
use crate::scenario::awareness::awareness_message;
use crate::scenario::{
    connect_synced, init_block, move_block, pace, ratio, wait_until, Common, EditTracker, Endings,
    Handler, Ignore, Job, SendTimes,
};

/// How long a churner may wait for the writer's latest edit before it counts as unconverged.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A reader that times edits and publishes how far its doc has the writer's changes.
struct Follower {
    edits: EditTracker,
    doc: Doc,
    writer: ClientID,
    clock: Arc<AtomicU64>,
}

impl Handler for Follower {
    type Output = (Histogram<u64>, u64);

    fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Updated(doc) => self.edits.on_update(doc),
            Event::Synced => {}
            _ => return,
        }
        let clock = self.doc.transact().state_vector().get(&self.writer);
        self.clock.store(clock as u64, Ordering::Release);
    }

    fn finish(self) -> Self::Output {
        self.edits.finish()
    }
}

/// A stable reader and how far it has the writer's changes.
type Reader = (super::Connected<(Histogram<u64>, u64)>, Arc<AtomicU64>);

struct Room {
    name: String,
    writer: super::Connected<()>,
    doc: Doc,
    times: Arc<SendTimes>,
    readers: Vec<Reader>,
}

/// What became of one churner.
struct Churned {
    /// How long the join took, and when it completed (µs since the epoch).
    joined: Option<(Duration, u64)>,
    converged: bool,
    ended: Option<Ended>,
    edits: Option<Histogram<u64>>,
}

#[allow(clippy::too_many_arguments)]
async fn churner(
    target: Target,
    room: String,
    times: Arc<SendTimes>,
    writer: ClientID,
    timeline: Arc<Timeline>,
    seen: Arc<AtomicU64>,
    stay: Duration,
    index: usize,
) -> Churned {
    let started = Instant::now();
    let doc = Doc::new();
    let clock = Arc::new(AtomicU64::new(0));
    let follower = Follower {
        edits: EditTracker::new(times.clone(), timeline, seen),
        doc: doc.clone(),
        writer,
        clock: clock.clone(),
    };
    let conn = match connect_synced(&target, &room, None, doc, follower).await {
        Ok(conn) => conn,
        Err(e) => {
            crate::note!("churner connect failed: {e:#}");
            return Churned {
                joined: None,
                converged: false,
                ended: None,
                edits: None,
            };
        }
    };
    let joined = started.elapsed();
    progress::events(1);
    let id = rand::thread_rng().gen_range(1..u32::MAX as u64);
    let now = times.epoch.elapsed().as_micros() as u64;
    let _ = conn.tx.send(awareness_message(id, index, 0, now));
    tokio::time::sleep(stay).await;
    let want = times.writer_clock.load(Ordering::Acquire);
    let converged = wait_until(CONVERGE_TIMEOUT, || clock.load(Ordering::Acquire) >= want).await;
    conn.stop.notify_one();
    drop(conn.tx);
    let (ended, (hist, _)) = match conn.task.await {
        Ok(r) => r,
        Err(e) => (Ended::Error(e.to_string()), (report::histogram(), 0)),
    };
    Churned {
        joined: Some((joined, now)),
        converged,
        ended: Some(ended),
        edits: Some(hist),
    }
}

/// Runs the scenario; `sample` is called at the start and end of the measured window.
pub async fn run(
    c: &Common,
    mut sample: impl FnMut() -> Option<crate::proc::Sample>,
) -> anyhow::Result<Report> {
    let per_room_edits = (c.rate * c.duration.as_secs_f64()).ceil() as usize + 1;
    let epoch = Instant::now();
    let timeline = Timeline::new(epoch);
    let churn_timeline = Timeline::new(epoch);
    let join_timeline = Timeline::new(epoch);
    let seen = Arc::new(AtomicU64::new(0));
    let churn_seen = Arc::new(AtomicU64::new(0));
    let mut endings = Endings::default();
    let mut rooms = Vec::new();
    progress::phase("connecting", None);
    for r in 0..c.rooms {
        let name = c.room(r);
        let doc = Doc::new();
        let writer = connect_synced(&c.target, &name, None, doc.clone(), Ignore).await?;
        let _ = writer.tx.send(init_block(&doc));
        let times = SendTimes::new(epoch, per_room_edits);
        let writer_id = doc.client_id();
        times.writer_clock.store(
            doc.transact().state_vector().get(&writer_id) as u64,
            Ordering::Release,
        );
        let mut readers = Vec::new();
        for _ in 0..c.clients {
            let reader_doc = Doc::new();
            let clock = Arc::new(AtomicU64::new(0));
            let follower = Follower {
                edits: EditTracker::new(times.clone(), timeline.clone(), seen.clone()),
                doc: reader_doc.clone(),
                writer: writer_id,
                clock: clock.clone(),
            };
            match connect_synced(&c.target, &name, None, reader_doc, follower).await {
                Ok(conn) => readers.push((conn, clock)),
                Err(e) => {
                    endings.errors += 1;
                    crate::note!("reader connect failed: {e:#}");
                }
            }
        }
        rooms.push(Room {
            name,
            writer,
            doc,
            times,
            readers,
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = sample();
    let started = Instant::now();
    for t in [&timeline, &churn_timeline, &join_timeline] {
        t.start();
    }
    progress::phase("running", Some(c.duration));
    let period = Duration::from_secs_f64(1.0 / c.rate);
    let jobs = rooms
        .iter()
        .enumerate()
        .map(|(i, room)| {
            let (tx, doc, times) = (room.writer.tx.clone(), room.doc.clone(), room.times.clone());
            let writer_id = doc.client_id();
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
                    let clock = doc.transact().state_vector().get(&writer_id);
                    times.times[seq as usize].store(due_us, Ordering::Release);
                    times.sent.store(seq, Ordering::Release);
                    times.writer_clock.store(clock as u64, Ordering::Release);
                    tx.send(msg).is_ok()
                }),
            }
        })
        .collect();
    let pacer = tokio::spawn(pace(epoch, c.duration, jobs));

    // Churners: joins evenly spaced over the run, round-robin over the rooms.
    let join_period = Duration::from_secs_f64(1.0 / (c.churn_rate * c.rooms as f64));
    let mut churners = Vec::new();
    let mut tick = tokio::time::interval(join_period);
    let mut rng = rand::thread_rng();
    let mut k = 0usize;
    loop {
        tick.tick().await;
        if started.elapsed() >= c.duration {
            break;
        }
        let room = &rooms[k % rooms.len()];
        let stay = Duration::from_secs_f64(rng.gen_range(0.5..3.0));
        churners.push(tokio::spawn(churner(
            c.target.clone(),
            room.name.clone(),
            room.times.clone(),
            room.doc.client_id(),
            churn_timeline.clone(),
            churn_seen.clone(),
            stay,
            k,
        )));
        k += 1;
    }
    pacer.await??;
    let sent_total: u64 = rooms
        .iter()
        .map(|r| r.times.sent.load(Ordering::Acquire))
        .sum();
    let expected = sent_total * c.clients as u64;

    // Churners still connected finish their stay and their convergence check.
    progress::phase("draining", None);
    let mut join = Recorder::new(join_timeline.clone());
    let mut churn_edits = report::histogram();
    let (mut joined, mut converged, mut failed_connects) = (0u64, 0u64, 0u64);
    for task in churners {
        let ch = task.await?;
        match ch.joined {
            Some((took, at)) => {
                joined += 1;
                join.record(at, took.as_micros() as u64);
            }
            None => failed_connects += 1,
        }
        converged += u64::from(ch.converged);
        if let Some(ended) = &ch.ended {
            endings.add(ended, "churner");
        }
        if let Some(h) = ch.edits {
            churn_edits.add(&h)?;
        }
    }
    let unconverged = joined - converged;

    // Stable readers: every edit, and the writer's final state.
    wait_until(CONVERGE_TIMEOUT, || {
        seen.load(Ordering::Relaxed) >= expected
            && rooms.iter().all(|r| {
                let want = r.times.writer_clock.load(Ordering::Acquire);
                r.readers
                    .iter()
                    .all(|(_, clock)| clock.load(Ordering::Acquire) >= want)
            })
    })
    .await;
    let window = started.elapsed();
    let after = sample();
    let mut hist = report::histogram();
    let mut delivered = 0;
    let mut stable_converged = 0u64;
    let mut stable = 0u64;
    for room in rooms {
        let want = room.times.writer_clock.load(Ordering::Acquire);
        for (conn, clock) in room.readers {
            stable += 1;
            stable_converged += u64::from(clock.load(Ordering::Acquire) >= want);
            conn.stop.notify_one();
            let (ended, (h, d)) = conn.task.await?;
            hist.add(&h)?;
            delivered += d;
            endings.add(&ended, "reader");
        }
        room.writer.stop.notify_one();
        let _ = room.writer.task.await;
    }
    let errors = endings.errors + failed_connects + unconverged + (stable - stable_converged);
    let latency = Latency::from_histogram(&hist);
    let join_hist = join.finish();
    let mut latencies = BTreeMap::new();
    latencies.insert(
        "churners".to_string(),
        Latency::from_histogram(&churn_edits),
    );
    latencies.insert("join".to_string(), Latency::from_histogram(&join_hist));
    let mut extra = BTreeMap::new();
    extra.insert("edits_sent".into(), sent_total.into());
    extra.insert("churn_rate".into(), c.churn_rate.into());
    extra.insert("churn_joins".into(), (joined + failed_connects).into());
    extra.insert("churn_joined".into(), joined.into());
    extra.insert("churn_connect_failures".into(), failed_connects.into());
    extra.insert("churn_converged".into(), converged.into());
    extra.insert("churn_unconverged".into(), unconverged.into());
    extra.insert("stable_converged".into(), stable_converged.into());
    extra.insert("stable_readers".into(), stable.into());
    let points = timeline.points();
    Ok(Report {
        scenario: "churn".into(),
        measures: "edit delivery to the stable readers (churners' edits and join times: \
                   latencies.churners, latencies.join)"
            .into(),
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
        errors,
        close_codes: endings.close_codes,
        server: crate::usage(before, after, Some(delivered), None),
        latencies,
        timeline: points.clone(),
        extra,
        series: vec![
            Series {
                name: "stable readers".into(),
                hist,
                timeline: points,
            },
            Series {
                name: "churners".into(),
                hist: churn_edits,
                timeline: churn_timeline.points(),
            },
            Series {
                name: "join (connect to synced)".into(),
                hist: join_hist,
                timeline: join_timeline.points(),
            },
        ],
    })
}
