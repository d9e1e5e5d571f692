//! `awareness`: an awareness storm. R rooms, each with M clients moving their cursors at
//! `--rate` Hz (awareness states like `{"user":{…},"cursor":{"x":…,"y":…},"seq":N,"t":µs}`)
//! and one writer moving a block at `--doc-rate` edits/s, all open-loop from one pacing
//! thread. Every client times every awareness state it receives (receive time minus the
//! scheduled send time `t` in the state: all clients share this process's clock) and, in a
//! separate histogram, every document edit.
//!
//! A server may coalesce awareness (Resonant sends one message per tick in busy rooms, holding
//! only each client's latest state), so intermediate states need not arrive: a (receiver,
//! sender) pair counts as delivered when the sender's *final* state arrived; latency is
//! measured on every state that does arrive.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resonant_client::protocol::encode_awareness;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::AwarenessUpdate;
use yrs::{ClientID, Doc};

use crate::client::Event;
use crate::progress;
use crate::report::{self, Latency, Recorder, Report, Series, Timeline};
use crate::scenario::{
    connect_synced, init_block, move_block, pace, ratio, wait_until, Common, EditTracker, Endings,
    Handler, Ignore, Job, SendTimes,
};

/// One awareness client: times the other clients' states and the writer's edits.
struct Client {
    epoch: Instant,
    own: u64,
    /// Awareness client id of the room's client 0; client i is `base + i`.
    base: u64,
    /// Highest seq seen from each of the room's clients.
    seen: Arc<Vec<AtomicU64>>,
    aware: Recorder,
    states: u64,
    edits: EditTracker,
}

struct ClientResult {
    aware: Histogram<u64>,
    states: u64,
    edits: Histogram<u64>,
    edits_delivered: u64,
}

impl Handler for Client {
    type Output = ClientResult;

    fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Updated(doc) => self.edits.on_update(doc),
            Event::Awareness(update) => {
                let now = self.epoch.elapsed().as_micros() as u64;
                let mut n = 0;
                for (id, entry) in &update.clients {
                    let id = id.get();
                    let Some(i) = id.checked_sub(self.base) else {
                        continue;
                    };
                    if id == self.own || i as usize >= self.seen.len() {
                        continue;
                    }
                    let Some((seq, t)) = seq_and_time(&entry.json) else {
                        continue;
                    };
                    let seen = &self.seen[i as usize];
                    if seq <= seen.load(Ordering::Relaxed) {
                        continue;
                    }
                    seen.store(seq, Ordering::Relaxed);
                    n += 1;
                    self.aware.record(now, now.saturating_sub(t));
                }
                self.states += n;
                progress::events(n);
            }
            _ => {}
        }
    }

    fn finish(self) -> ClientResult {
        let (edits, edits_delivered) = self.edits.finish();
        ClientResult {
            aware: self.aware.finish(),
            states: self.states,
            edits,
            edits_delivered,
        }
    }
}

/// Reads `"seq":N` and `"t":N` from a state we wrote (a quick scan; any JSON parser would do,
/// but this runs for every state every client receives).
fn seq_and_time(json: &str) -> Option<(u64, u64)> {
    fn number_after(json: &str, key: &str) -> Option<u64> {
        let at = json.find(key)? + key.len();
        let digits = json[at..].trim_start();
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    }
    match (number_after(json, "\"seq\":"), number_after(json, "\"t\":")) {
        (Some(s), Some(t)) => Some((s, t)),
        _ => {
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            Some((v.get("seq")?.as_u64()?, v.get("t")?.as_u64()?))
        }
    }
}

/// The awareness message carrying client `id`'s state number `seq`, scheduled at `t_us`.
pub fn awareness_message(id: u64, index: usize, seq: u64, t_us: u64) -> bytes::Bytes {
    // A cursor drifting along a Lissajous curve, different for every client.
    let phase = seq as f64 * 0.05 + index as f64;
    let x = 600.0 + 400.0 * (phase * 1.3).sin();
    let y = 400.0 + 250.0 * (phase * 0.7).cos();
    let color = (index as u32).wrapping_mul(2_654_435_761) >> 20;
    let json = format!(
        r##"{{"user":{{"name":"u{index}","color":"#{color:03x}"}},"cursor":{{"x":{x:.1},"y":{y:.1}}},"seq":{seq},"t":{t_us}}}"##
    );
    let mut clients = HashMap::with_capacity(1);
    clients.insert(
        ClientID::new(id),
        AwarenessUpdateEntry {
            clock: seq as u32 + 1,
            json: json.into(),
        },
    );
    encode_awareness(&AwarenessUpdate { clients })
}

struct Room {
    writer: super::Connected<()>,
    doc: Doc,
    times: Arc<SendTimes>,
    /// Connected clients: (index in room, connection, what it has seen).
    clients: Vec<(usize, super::Connected<ClientResult>, Arc<Vec<AtomicU64>>)>,
    /// Last seq each client of the room sent.
    last_sent: Arc<Vec<AtomicU64>>,
}

/// Runs the scenario; `sample` is called at the start and end of the measured window.
pub async fn run(
    c: &Common,
    mut sample: impl FnMut() -> Option<crate::proc::Sample>,
) -> anyhow::Result<Report> {
    let m = c.clients;
    let edits_per_room = (c.doc_rate * c.duration.as_secs_f64()).ceil() as usize + 1;
    let epoch = Instant::now();
    let aware_timeline = Timeline::new(epoch);
    let edit_timeline = Timeline::new(epoch);
    let edits_seen = Arc::new(AtomicU64::new(0));
    // Awareness client ids: distinct from every doc's random client id in practice, and
    // from other runs' ids.
    let id_base = 1 + (rand::random::<u32>() as u64 >> 4) * 4096;
    let mut endings = Endings::default();
    let mut rooms = Vec::new();
    let mut conn_no = 0;
    progress::phase("connecting", None);
    for r in 0..c.rooms {
        let room = c.room(r);
        let base = id_base + (r * m) as u64;
        let doc = Doc::new();
        let writer =
            connect_synced(&c.target, &room, c.source(conn_no), doc.clone(), Ignore).await?;
        conn_no += 1;
        let _ = writer.tx.send(init_block(&doc));
        let times = SendTimes::new(epoch, edits_per_room);
        let mut clients = Vec::new();
        for i in 0..m {
            let seen: Arc<Vec<AtomicU64>> = Arc::new((0..m).map(|_| AtomicU64::new(0)).collect());
            let handler = Client {
                epoch,
                own: base + i as u64,
                base,
                seen: seen.clone(),
                aware: Recorder::new(aware_timeline.clone()),
                states: 0,
                edits: EditTracker::new(times.clone(), edit_timeline.clone(), edits_seen.clone()),
            };
            match connect_synced(&c.target, &room, c.source(conn_no), Doc::new(), handler).await {
                Ok(conn) => {
                    // Presence on join, as a provider does (seq 0 is not timed).
                    let now = epoch.elapsed().as_micros() as u64;
                    let _ = conn.tx.send(awareness_message(base + i as u64, i, 0, now));
                    clients.push((i, conn, seen));
                }
                Err(e) => {
                    endings.errors += 1;
                    crate::note!("client connect failed: {e:#}");
                }
            }
            conn_no += 1;
        }
        rooms.push(Room {
            writer,
            doc,
            times,
            clients,
            last_sent: Arc::new((0..m).map(|_| AtomicU64::new(0)).collect()),
        });
    }
    // Let every client see the block and everyone's presence before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = sample();
    let started = Instant::now();
    aware_timeline.start();
    edit_timeline.start();
    progress::phase("running", Some(c.duration));
    let period = Duration::from_secs_f64(1.0 / c.rate);
    let doc_period = Duration::from_secs_f64(1.0 / c.doc_rate);
    let total = rooms.iter().map(|r| r.clients.len()).sum::<usize>().max(1);
    let mut jobs = Vec::new();
    let mut k = 0;
    for (r, room) in rooms.iter().enumerate() {
        let base = id_base + (r * m) as u64;
        for (i, conn, _) in &room.clients {
            let (i, tx, last) = (*i, conn.tx.clone(), room.last_sent.clone());
            // Spread every client's moves evenly over the period.
            jobs.push(Job {
                period,
                offset: period.mul_f64(k as f64 / total as f64),
                fire: Box::new(move |seq, due_us| {
                    last[i].store(seq, Ordering::Release);
                    tx.send(awareness_message(base + i as u64, i, seq, due_us))
                        .is_ok()
                }),
            });
            k += 1;
        }
        let (tx, doc, times) = (room.writer.tx.clone(), room.doc.clone(), room.times.clone());
        jobs.push(Job {
            period: doc_period,
            offset: doc_period.mul_f64((r as f64 + 0.5) / c.rooms as f64),
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
        });
    }
    pace(epoch, c.duration, jobs).await?;

    // Expected: every client's final state at every other client; every edit at every client.
    let mut pairs_expected = 0u64;
    let mut states_sent = 0u64;
    let mut edits_expected = 0u64;
    let mut edits_sent = 0u64;
    for room in &rooms {
        let n = room.clients.len() as u64;
        pairs_expected += n * n.saturating_sub(1);
        states_sent += room
            .clients
            .iter()
            .map(|(i, _, _)| room.last_sent[*i].load(Ordering::Acquire))
            .sum::<u64>();
        let sent = room.times.sent.load(Ordering::Acquire);
        edits_sent += sent;
        edits_expected += sent * n;
    }
    let pairs_done = |rooms: &[Room]| -> u64 {
        let mut done = 0;
        for room in rooms {
            for (i, _, seen) in &room.clients {
                for (j, _, _) in &room.clients {
                    if i != j
                        && seen[*j].load(Ordering::Relaxed)
                            >= room.last_sent[*j].load(Ordering::Relaxed)
                    {
                        done += 1;
                    }
                }
            }
        }
        done
    };
    progress::phase("draining", None);
    wait_until(Duration::from_secs(5), || {
        edits_seen.load(Ordering::Relaxed) >= edits_expected && pairs_done(&rooms) >= pairs_expected
    })
    .await;
    let pairs_delivered = pairs_done(&rooms);
    let window = started.elapsed();
    let after = sample();

    let mut aware = report::histogram();
    let mut edits = report::histogram();
    let mut states_seen = 0;
    let mut edits_delivered = 0;
    for room in rooms {
        for (_, conn, _) in room.clients {
            conn.stop.notify_one();
            let (ended, res) = conn.task.await?;
            aware.add(&res.aware)?;
            edits.add(&res.edits)?;
            states_seen += res.states;
            edits_delivered += res.edits_delivered;
            endings.add(&ended, "client");
        }
        room.writer.stop.notify_one();
        let _ = room.writer.task.await;
    }
    let latency = Latency::from_histogram(&aware);
    let doc_latency = Latency::from_histogram(&edits);
    let expected = pairs_expected + edits_expected;
    let delivered = pairs_delivered + edits_delivered;
    let states_possible: u64 = states_sent * (m.saturating_sub(1)) as u64;
    let mut extra = BTreeMap::new();
    extra.insert("awareness_sent".into(), states_sent.into());
    extra.insert("awareness_received".into(), states_seen.into());
    extra.insert(
        "awareness_received_share".into(),
        ratio(states_seen, states_possible).into(),
    );
    extra.insert("awareness_pairs_expected".into(), pairs_expected.into());
    extra.insert("awareness_pairs_delivered".into(), pairs_delivered.into());
    extra.insert("doc_rate".into(), c.doc_rate.into());
    extra.insert("doc_edits_sent".into(), edits_sent.into());
    extra.insert("doc_expected".into(), edits_expected.into());
    extra.insert("doc_delivered".into(), edits_delivered.into());
    extra.insert(
        "doc_delivered_ratio".into(),
        ratio(edits_delivered, edits_expected).into(),
    );
    extra.insert("doc_p50_ms".into(), doc_latency.p50_ms.into());
    extra.insert("doc_p99_ms".into(), doc_latency.p99_ms.into());
    extra.insert("doc_max_ms".into(), doc_latency.max_ms.into());
    let aware_points = aware_timeline.points();
    let mut latencies = BTreeMap::new();
    latencies.insert("doc".to_string(), doc_latency);
    Ok(Report {
        scenario: "awareness".into(),
        measures: "awareness delivery: scheduled send of a state to another client decoding it \
                   (document edits: see latencies.doc)"
            .into(),
        rooms: c.rooms,
        clients: m,
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
        server: crate::usage(before, after, Some(states_seen + edits_delivered), None),
        latencies,
        timeline: aware_points.clone(),
        extra,
        series: vec![
            Series {
                name: "awareness".into(),
                hist: aware,
                timeline: aware_points,
            },
            Series {
                name: "doc edits".into(),
                hist: edits,
                timeline: edit_timeline.points(),
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::sync::Message as YMessage;
    use yrs::updates::decoder::Decode;

    #[test]
    fn state_round_trips() {
        let msg = awareness_message(4097, 17, 42, 1_234_567);
        let YMessage::Awareness(update) = YMessage::decode_v1(&msg).unwrap() else {
            panic!("not awareness");
        };
        let entry = &update.clients[&ClientID::new(4097)];
        assert_eq!(entry.clock, 43);
        assert_eq!(seq_and_time(&entry.json), Some((42, 1_234_567)));
        let v: serde_json::Value = serde_json::from_str(&entry.json).unwrap();
        assert_eq!(v["user"]["name"], "u17");
        assert!(v["cursor"]["x"].is_f64());
    }

    #[test]
    fn reformatted_json_still_parses() {
        assert_eq!(seq_and_time(r#"{"t": 5, "seq": 3}"#), Some((3, 5)));
        assert_eq!(seq_and_time("null"), None);
    }
}
