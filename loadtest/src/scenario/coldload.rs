//! `coldload`: how fast a large document reaches people.
//!
//! 1. One client builds a document of about `--doc-bytes` in a fresh room (a workflow: a
//!    `blocks` array of maps, each with a position, a size and a data map holding a `Y.Text`
//!    prompt typed in bursts; an `edges` array; a long `notes` `Y.Text`), in updates of ~64 KB.
//! 2. A second client joins and waits until its state vector equals the builder's: the server
//!    has everything. Both leave.
//! 3. After `--wait-unload` seconds (the server unloads an idle room after its own grace
//!    period, Resonant's `--room-grace-secs`, 5 s by default: wait longer than that for a
//!    load from the store), a fresh client times connect → complete step 2 (`cold_load_ms`),
//!    then applies it and checks the content against the builder's (a hash of the canonical
//!    JSON of every root type).
//! 4. `--clients` fresh clients join at once; each times connect → complete step 2. Their
//!    step 2 must equal the verified one byte for byte, or (a server that encodes differently)
//!    decode to the same content. The cold client stays connected meanwhile.
//!
//! Joiners do not apply the document while timing: on 100 real machines that work happens in
//! parallel, here it would serialise on the load generator's core.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use resonant_client::protocol::{encode_sync_step1, encode_sync_step2, encode_sync_update};
use resonant_client::ws::binary_frame;
use resonant_client::ServerMessage;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, Map, MapPrelim, ReadTxn, StateVector, Text, TextPrelim,
    TextRef, Transact, Update, WriteTxn,
};

use crate::client::{self, Ended, Target};
use crate::progress;
use crate::report::{Latency, Recorder, Report, Series, Timeline};
use crate::scenario::{connect_synced, ratio, Common, Endings, Ignore};

/// Size of each update the builder sends.
const BATCH_BYTES: usize = 64 << 10;
/// How long one client may take to sync before it counts as failed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

const WORDS: &[&str] = &[
    "summarize",
    "the",
    "input",
    "and",
    "extract",
    "every",
    "customer",
    "name",
    "as",
    "JSON",
    "with",
    "fields",
    "for",
    "email",
    "order",
    "total",
    "then",
    "classify",
    "sentiment",
    "positive",
    "negative",
    "neutral",
    "ignore",
    "signatures",
    "quoted",
    "replies",
    "translate",
    "into",
    "English",
    "if",
    "needed",
    "keep",
    "answers",
    "short",
    "cite",
    "sources",
    "use",
    "tools",
    "when",
    "asked",
    "retry",
    "on",
    "timeout",
    "webhook",
    "payload",
    "schema",
];
const KINDS: &[&str] = &[
    "ai",
    "http",
    "code",
    "condition",
    "input",
    "output",
    "loop",
    "email",
];

fn words(rng: &mut StdRng, n: usize) -> String {
    let mut s = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    s
}

/// Adds one batch of blocks, edges and notes to `doc`; returns the update.
fn build_batch(doc: &Doc, rng: &mut StdRng, next_block: &mut usize) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    let blocks = txn.get_or_insert_array("blocks");
    let edges = txn.get_or_insert_array("edges");
    let notes = txn.get_or_insert_text("notes");
    let start = blocks.len(&txn);
    let mut added = 0;
    while txn.encode_update_v1().len() < BATCH_BYTES || added == 0 {
        for _ in 0..8 {
            let n = *next_block;
            *next_block += 1;
            let block = blocks.push_back(&mut txn, MapPrelim::default());
            block.insert(&mut txn, "id", format!("blk-{n:06}"));
            block.insert(&mut txn, "type", KINDS[rng.gen_range(0..KINDS.len())]);
            let pos = block.insert(&mut txn, "position", MapPrelim::default());
            pos.insert(&mut txn, "x", rng.gen_range(0.0..4000.0f64).round());
            pos.insert(&mut txn, "y", rng.gen_range(0.0..3000.0f64).round());
            let size = block.insert(&mut txn, "size", MapPrelim::default());
            size.insert(&mut txn, "w", 240.0);
            size.insert(&mut txn, "h", rng.gen_range(80.0..400.0f64).round());
            let data = block.insert(&mut txn, "data", MapPrelim::default());
            data.insert(&mut txn, "label", format!("Step {n}"));
            data.insert(&mut txn, "model", "gpt-4o-mini");
            data.insert(&mut txn, "temperature", 0.2);
            data.insert(&mut txn, "retries", rng.gen_range(0..4) as f64);
            // The prompt is typed in bursts at different places, with a correction or two.
            let prompt: TextRef = data.insert(&mut txn, "prompt", TextPrelim::new(""));
            for _ in 0..rng.gen_range(6..16) {
                let len = prompt.len(&txn);
                let at = if len == 0 { 0 } else { rng.gen_range(0..=len) };
                let n = rng.gen_range(3..14);
                let burst = format!("{} ", words(rng, n));
                prompt.insert(&mut txn, at, &burst);
            }
            let len = prompt.len(&txn);
            if len > 20 {
                let at = rng.gen_range(0..len - 10);
                prompt.remove_range(&mut txn, at, rng.gen_range(1..8));
            }
            if n > 0 {
                let edge = edges.push_back(&mut txn, MapPrelim::default());
                edge.insert(&mut txn, "id", format!("e-{n:06}"));
                edge.insert(
                    &mut txn,
                    "source",
                    format!("blk-{:06}", rng.gen_range(0..n)),
                );
                edge.insert(&mut txn, "target", format!("blk-{n:06}"));
            }
            added += 1;
        }
        let len = notes.len(&txn);
        let at = if len == 0 { 0 } else { rng.gen_range(0..=len) };
        let n = rng.gen_range(10..40);
        let para = format!("{}\n", words(rng, n));
        notes.insert(&mut txn, at, &para);
    }
    debug_assert!(blocks.len(&txn) > start);
    txn.encode_update_v1()
}

/// A hash of the document's content: canonical JSON (map keys sorted) of every root type.
fn content_hash(doc: &Doc) -> u64 {
    fn feed(any: &Any, h: &mut std::collections::hash_map::DefaultHasher) {
        match any {
            Any::Map(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                "{".hash(h);
                for k in keys {
                    k.hash(h);
                    feed(&m[k], h);
                }
                "}".hash(h);
            }
            Any::Array(a) => {
                "[".hash(h);
                for v in a.iter() {
                    feed(v, h);
                }
                "]".hash(h);
            }
            other => {
                let mut s = String::new();
                other.to_json(&mut s);
                s.hash(h);
            }
        }
    }
    let txn = doc.transact();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let root = |a: Option<ArrayRef>| a.map(|a| a.to_json(&txn)).unwrap_or(Any::Null);
    feed(&root(txn.get_array("blocks")), &mut h);
    feed(&root(txn.get_array("edges")), &mut h);
    txn.get_text("notes")
        .map(|t| t.get_string(&txn))
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Why a client did not sync.
#[derive(Debug)]
struct SyncFailed {
    /// The server's close code, if it sent one.
    code: Option<u16>,
    reason: String,
}

impl std::fmt::Display for SyncFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "closed with {code} before sync: {}", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

impl From<Ended> for SyncFailed {
    fn from(ended: Ended) -> SyncFailed {
        match ended {
            Ended::Closed(frame) => {
                let (code, reason) = frame.unwrap_or((1005, String::new()));
                SyncFailed {
                    code: Some(code),
                    reason,
                }
            }
            Ended::Error(e) => failed(e),
            Ended::Stopped => failed("stopped"),
        }
    }
}

fn failed(reason: impl std::fmt::Display) -> SyncFailed {
    SyncFailed {
        code: None,
        reason: reason.to_string(),
    }
}

/// Connects, asks for everything, and returns when the complete step 2 arrived and its
/// update. Answers the server's step 1 as an empty client would. Like
/// y-websocket's provider, it sends its step 1 as soon as the socket opens, unless
/// `wait_greeting` (then only after the server's step 1 arrived). With `hold`, the connection
/// stays open (reading and discarding) until `hold` is notified.
async fn fetch_state(
    target: &Target,
    room: &str,
    wait_greeting: bool,
    hold: Option<Arc<Notify>>,
) -> Result<(Instant, Bytes), SyncFailed> {
    let ws = client::connect_with(target, room, None, 256 << 10)
        .await
        .map_err(|e| failed(format!("{e:#}")))?;
    progress::connections(1);
    let (mut sink, mut stream) = ws.split();
    let result = tokio::time::timeout(SYNC_TIMEOUT, async {
        let mut step1 = Some(Message::Binary(encode_sync_step1(&StateVector::default())));
        if !wait_greeting {
            sink.send(step1.take().unwrap()).await.map_err(failed)?;
        }
        loop {
            let frame = match binary_frame(stream.next().await) {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(ended) => return Err(SyncFailed::from(ended)),
            };
            match ServerMessage::decode(&frame) {
                Ok(ServerMessage::SyncStep2(update)) => {
                    // A view into the frame, not a copy.
                    return Ok((Instant::now(), frame.slice_ref(update)));
                }
                Ok(ServerMessage::SyncStep1(_)) => {
                    // We hold nothing: an empty update.
                    let none = Doc::new()
                        .transact()
                        .encode_diff_v1(&StateVector::default());
                    let step2 = Message::Binary(encode_sync_step2(&none));
                    sink.send(step2).await.map_err(failed)?;
                    if let Some(step1) = step1.take() {
                        sink.send(step1).await.map_err(failed)?;
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(failed(format!("no sync within {SYNC_TIMEOUT:?}"))));
    match (hold, &result) {
        (Some(hold), Ok(_)) => {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = hold.notified() => break,
                        msg = stream.next() => if !matches!(msg, Some(Ok(_))) { break },
                    }
                }
                let _ = sink.close().await;
                progress::connections(-1);
            });
        }
        _ => {
            let _ = sink.close().await;
            progress::connections(-1);
        }
    }
    result
}

/// Applies a step 2 to a fresh doc and hashes its content.
fn hash_update(update: &[u8]) -> anyhow::Result<u64> {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(update)?)?;
    Ok(content_hash(&doc))
}

/// Reads one unlabelled sample from the server's Prometheus `/metrics`, if it has one.
fn scrape_metric(target: &Target, name: &str) -> Option<f64> {
    let mut s =
        std::net::TcpStream::connect_timeout(&target.addr(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs the scenario; `sample` is called around the joiners' phase.
pub async fn run(
    c: &Common,
    mut sample: impl FnMut() -> Option<crate::proc::Sample>,
) -> anyhow::Result<Report> {
    let room = c.room(0);
    let mut endings = Endings::default();
    let mut extra = BTreeMap::new();

    // 1. Build.
    progress::phase("building", None);
    let build_started = Instant::now();
    let doc = Doc::new();
    let builder = connect_synced(&c.target, &room, None, doc.clone(), Ignore).await?;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut next_block = 0;
    let mut sent = 0usize;
    let mut updates = 0u64;
    while sent < c.doc_bytes {
        let update = build_batch(&doc, &mut rng, &mut next_block);
        sent += update.len();
        updates += 1;
        progress::events(1);
        builder.tx.send(encode_sync_update(&update))?;
        // Let the socket drain now and then rather than queueing the whole document.
        if updates.is_multiple_of(16) {
            tokio::task::yield_now().await;
        }
    }
    let (reference, want_sv, doc_bytes) = {
        let txn = doc.transact();
        let state = txn.encode_state_as_update_v1(&StateVector::default());
        (content_hash(&doc), txn.state_vector(), state.len())
    };
    extra.insert("doc_bytes".into(), doc_bytes.into());
    extra.insert("doc_blocks".into(), next_block.into());
    extra.insert("build_updates".into(), updates.into());

    // 2. Wait until the server has all of it: a fresh client's sync must reach the builder's
    // state vector. (Not measured: this client always waits for the server's greeting.)
    progress::phase("verifying", None);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = fetch_state(&c.target, &room, true, None)
            .await
            .map_err(|e| anyhow::anyhow!("verifying client: {e}"))?;
        let sv = Update::decode_v1(&state.1)?.state_vector();
        if sv == want_sv {
            if hash_update(&state.1)? != reference {
                anyhow::bail!("the server's copy of the built document differs from it");
            }
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the server did not hold the built document within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    extra.insert(
        "build_secs".into(),
        build_started.elapsed().as_secs_f64().into(),
    );
    builder.stop.notify_one();
    drop(builder.tx);
    let (ended, ()) = builder.task.await?;
    endings.add(&ended, "builder");

    // 3. Cold load.
    progress::phase("unloading", Some(c.wait_unload));
    tokio::time::sleep(c.wait_unload).await;
    let loads_before = scrape_metric(&c.target, "resonant_room_loads_total");
    progress::phase("cold load", None);
    let holder = Arc::new(Notify::new());
    let mut verified = 0u64;
    let mut reference_state: Option<Bytes> = None;
    let cold_started = Instant::now();
    match fetch_state(&c.target, &room, c.wait_greeting, Some(holder.clone())).await {
        Ok((cold_synced, cold_state)) => {
            let cold = cold_synced - cold_started;
            let apply_started = Instant::now();
            let bytes = cold_state.clone();
            let cold_hash = tokio::task::spawn_blocking(move || hash_update(&bytes)).await??;
            let cold_apply = apply_started.elapsed();
            if cold_hash == reference {
                verified += 1;
                reference_state = Some(cold_state);
            } else {
                endings.errors += 1;
                crate::note!("cold load: content differs from what was built");
            }
            let cold_ms = cold.as_secs_f64() * 1e3;
            extra.insert("cold_load_ms".into(), cold_ms.into());
            extra.insert(
                "cold_load_applied_ms".into(),
                (cold_ms + cold_apply.as_secs_f64() * 1e3).into(),
            );
        }
        Err(e) => endings.failed(&e, "cold client"),
    }
    let reference_state = match reference_state {
        Some(s) => s,
        None => {
            // Joiners still need something verified to compare with (not measured).
            let (_, state) = fetch_state(&c.target, &room, true, None)
                .await
                .map_err(|e| anyhow::anyhow!("reference client: {e}"))?;
            if hash_update(&state)? != reference {
                anyhow::bail!("the server's copy of the built document differs from it");
            }
            state
        }
    };
    if let (Some(b), Some(a)) = (
        loads_before,
        scrape_metric(&c.target, "resonant_room_loads_total"),
    ) {
        extra.insert("server_room_loads".into(), (a - b).into());
    }

    // 4. N joiners at once.
    progress::phase("joining", None);
    let before = sample();
    let epoch = Instant::now();
    let timeline = Timeline::new(epoch);
    timeline.start();
    let wait_greeting = c.wait_greeting;
    let reference_state = Arc::new(reference_state);
    let tasks: Vec<_> = (0..c.clients)
        .map(|_| {
            let (target, room) = (c.target.clone(), room.clone());
            let want = reference_state.clone();
            tokio::spawn(async move {
                let (synced, state) = fetch_state(&target, &room, wait_greeting, None).await?;
                progress::events(1);
                // Not byte-identical (a server that encodes per client): compare the content.
                let identical = state == *want;
                let same = identical
                    || tokio::task::spawn_blocking(move || hash_update(&state).ok())
                        .await
                        .ok()
                        .flatten()
                        == Some(reference);
                Ok::<_, SyncFailed>((synced - epoch, identical, same))
            })
        })
        .collect();
    let mut rec = Recorder::new(timeline.clone());
    let mut all_synced = Duration::ZERO;
    let mut not_identical = 0u64;
    for t in tasks {
        match t.await? {
            Ok((at, identical, same)) => {
                rec.record(at.as_micros() as u64, at.as_micros() as u64);
                all_synced = all_synced.max(at);
                not_identical += u64::from(!identical);
                if same {
                    verified += 1;
                } else {
                    endings.errors += 1;
                    crate::note!("joiner: content differs from what was built");
                }
            }
            Err(e) => endings.failed(&e, "joiner"),
        }
    }
    let after = sample();
    holder.notify_one();
    extra.insert("joiners_not_byte_identical".into(), not_identical.into());

    let hist = rec.finish();
    let latency = Latency::from_histogram(&hist);
    let expected = 1 + c.clients as u64;
    extra.insert(
        "all_synced_ms".into(),
        (all_synced.as_secs_f64() * 1e3).into(),
    );
    extra.insert("content_hash".into(), format!("{reference:016x}").into());
    let points = timeline.points();
    Ok(Report {
        scenario: "coldload".into(),
        measures: "joiners' time to sync: all start at once, until each has the complete step 2 \
                   (the cold load itself: extra.cold_load_ms)"
            .into(),
        rooms: 1,
        clients: c.clients,
        rate: 0.0,
        duration_secs: all_synced.as_secs_f64(),
        expected,
        delivered: verified,
        delivered_ratio: ratio(verified, expected),
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        max_ms: latency.max_ms,
        latency,
        errors: endings.errors,
        close_codes: endings.close_codes,
        server: crate::usage(before, after, None, None),
        timeline: points.clone(),
        extra,
        series: vec![Series {
            name: "time to sync".into(),
            hist,
            timeline: points,
        }],
        ..Default::default()
    })
}

impl Endings {
    /// Counts a client that did not sync.
    fn failed(&mut self, e: &SyncFailed, what: &str) {
        self.errors += 1;
        if let Some(code) = e.code {
            *self.close_codes.entry(code).or_default() += 1;
        }
        if self.errors <= 10 {
            crate::note!("{what}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_document_round_trips_with_the_same_hash() {
        let doc = Doc::new();
        let mut rng = StdRng::seed_from_u64(1);
        let mut n = 0;
        let mut size = 0;
        for _ in 0..3 {
            size += build_batch(&doc, &mut rng, &mut n).len();
        }
        assert!(size >= 3 * BATCH_BYTES);
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(hash_update(&state).unwrap(), content_hash(&doc));
        assert_ne!(hash_update(&state).unwrap(), content_hash(&Doc::new()));
    }
}
