//! Benchmarks of the sync hot path: decoding a frame, applying an update and fanning it out,
//! encoding the outgoing message, and merging awareness.
//!
//! Run with `cargo bench -p resonant-sync --bench hot_path`. Everything runs over an
//! in-memory store, so these numbers are the sync path alone, not SQLite (see
//! `crates/resonant-store/benches/store.rs` for that).
//!
//! The document is a workflow like the editor's: `blocks` is a Y.Array of Y.Maps with
//! `id`, `type`, `position` (a Y.Map with `x`, `y`) and `data` (a Y.Map with `label`). The
//! typical update is a drag: one transaction setting `x` and `y` of one block's position.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use resonant_store::{Journal, JournalConfig, MemoryStore, Store};
use resonant_sync::protocol::{self, ClientMessage};
use resonant_sync::{Outbox, Rooms, Session, SyncConfig};
use tokio::runtime::Runtime;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::{
    Array, ClientID, Doc, Map, MapPrelim, MapRef, ReadTxn, StateVector, Transact, Update, WriteTxn,
};

/// Blocks in the benchmark workflow.
const BLOCKS: u32 = 20;
/// Frames generated, handled and drained per round inside one `iter_custom` call: large
/// enough that the timer's overhead vanishes, small enough that outboxes stay far below the
/// slow-consumer limit.
const CHUNK: u64 = 256;
/// Awareness states in the awareness benchmarks.
const AWARENESS_CLIENTS: u64 = 100;

/// A client's copy of the workflow, producing one real drag update at a time.
struct Writer {
    doc: Doc,
    positions: Vec<MapRef>,
    step: u64,
}

impl Writer {
    fn new() -> Writer {
        let doc = Doc::new();
        let mut positions = Vec::new();
        {
            let mut txn = doc.transact_mut();
            let blocks = txn.get_or_insert_array("blocks");
            for i in 0..BLOCKS {
                let block = blocks.push_back(&mut txn, MapPrelim::default());
                block.insert(&mut txn, "id", format!("block-{i}"));
                block.insert(&mut txn, "type", if i == 0 { "starter" } else { "agent" });
                let position = block.insert(&mut txn, "position", MapPrelim::default());
                position.insert(&mut txn, "x", 100.0 * i as f64);
                position.insert(&mut txn, "y", 80.0);
                let data = block.insert(&mut txn, "data", MapPrelim::default());
                data.insert(&mut txn, "label", format!("Agent {i}"));
                positions.push(position);
            }
        }
        Writer {
            doc,
            positions,
            step: 0,
        }
    }

    /// The whole document as one update (what the first client would upload).
    fn full_state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Moves the next block a little and returns the transaction's v1 update.
    fn drag(&mut self) -> Vec<u8> {
        self.step += 1;
        let position = &self.positions[(self.step % BLOCKS as u64) as usize];
        let mut txn = self.doc.transact_mut();
        position.insert(&mut txn, "x", 100.0 + (self.step % 997) as f64 * 0.5);
        position.insert(&mut txn, "y", 80.0 + (self.step % 389) as f64 * 0.5);
        txn.encode_update_v1()
    }
}

/// A runtime like the server's, minus one core: the benchmark thread plays the connection
/// task calling `handle()`, the worker runs the journal writer and awareness flushes.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Rooms over an in-memory store. Compaction is off: it is amortised over 1000 updates in
/// production, would make the cost per iteration depend on how long the benchmark ran (the
/// room's history grows with every iteration), and is measured by the store benchmarks.
fn rooms(rt: &Runtime) -> Rooms {
    let _guard = rt.enter();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (journal, _task) = Journal::start(store.clone(), JournalConfig::default());
    Rooms::new(
        store,
        journal,
        SyncConfig {
            compact_after_updates: u64::MAX,
            compact_after_bytes: u64::MAX,
            ..SyncConfig::default()
        },
    )
}

fn drain(receivers: &mut [(Session, Outbox)]) -> usize {
    let mut n = 0;
    for (session, outbox) in receivers.iter_mut() {
        while outbox.try_recv(session.peer()).is_some() {
            n += 1;
        }
    }
    n
}

fn bench_codec(c: &mut Criterion) {
    let mut writer = Writer::new();
    let update = writer.drag();
    let frame = protocol::encode_sync_update(&update);

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    // protocol::decode reads the header and borrows the update; it does not parse it.
    g.bench_function("decode", |b| {
        b.iter(|| match ClientMessage::decode(black_box(&frame)) {
            Ok(ClientMessage::Update(u)) => black_box(u.len()),
            _ => unreachable!(),
        })
    });
    // What the room does next with those bytes, for comparison.
    g.bench_function("decode_yrs_update", |b| {
        b.iter(|| black_box(Update::decode_v1(black_box(&update)).unwrap()))
    });
    // The observer's one encode per change, shared by every receiver.
    g.bench_function("encode_once", |b| {
        b.iter(|| black_box(protocol::encode_sync_update(black_box(&update))))
    });
    g.finish();
}

fn bench_apply_and_fanout(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("apply_and_fanout");
    g.throughput(Throughput::Elements(1));
    for receivers in [1usize, 10, 100] {
        let rooms = rooms(&rt);
        let mut writer = Writer::new();
        let (mut session, mut receivers_v) = rt.block_on(async {
            let (session, _outbox) = rooms.join("bench", true).await.expect("join");
            let mut rs = Vec::new();
            for _ in 0..receivers {
                rs.push(rooms.join("bench", true).await.expect("join"));
            }
            (session, rs)
        });
        // The writer's own outbox only ever holds its greeting; it is never written to by
        // its own updates (fan-out skips the sender).
        session
            .handle(&protocol::encode_sync_update(&writer.full_state()))
            .expect("initial state");
        drain(&mut receivers_v);

        let _guard = rt.enter();
        let mut frames = Vec::with_capacity(CHUNK as usize);
        g.bench_with_input(
            BenchmarkId::from_parameter(receivers),
            &receivers,
            |b, &n| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let round = left.min(CHUNK);
                        left -= round;
                        // Untimed: the client side (a new real update per iteration).
                        frames.clear();
                        frames.extend(
                            (0..round).map(|_| protocol::encode_sync_update(&writer.drag())),
                        );
                        // Timed: decode, apply to the room's doc, observer encodes once,
                        // journals, and enqueues the same Bytes to all N receivers.
                        let start = Instant::now();
                        for frame in &frames {
                            black_box(session.handle(frame).expect("update applies"));
                        }
                        timed += start.elapsed();
                        // Untimed: the receivers' transports writing to their sockets.
                        let got = drain(&mut receivers_v);
                        assert_eq!(got as u64, round * n as u64, "one message per receiver");
                    }
                    timed
                })
            },
        );
        // Leaving a room may spawn tasks (unload timer), so sessions end inside the runtime.
        drop(receivers_v);
        drop(session);
        drop(_guard);
    }
    g.finish();
}

/// The awareness JSON of a client with a cursor, as y-websocket clients send it.
fn awareness_json(client: u64, step: u64) -> Arc<str> {
    format!(
        r##"{{"user":{{"name":"User {client}","color":"#30bced"}},"cursor":{{"x":{},"y":{}}},"selectedBlock":"block-{}"}}"##,
        step % 1920,
        step % 1080,
        step % BLOCKS as u64
    )
    .into()
}

fn awareness_update(client: u64, clock: u32) -> AwarenessUpdate {
    AwarenessUpdate {
        clients: HashMap::from([(
            ClientID::new(client),
            AwarenessUpdateEntry {
                clock,
                json: awareness_json(client, clock as u64),
            },
        )]),
    }
}

fn bench_awareness(c: &mut Criterion) {
    let mut g = c.benchmark_group("awareness_merge");
    g.throughput(Throughput::Elements(1));

    // yrs alone: one client's new state merged into an Awareness holding 100 states.
    {
        let mut awareness = Awareness::new(Doc::new());
        for client in 1..=AWARENESS_CLIENTS {
            awareness
                .apply_update(awareness_update(client, 1))
                .expect("awareness applies");
        }
        let mut clocks = vec![1u32; AWARENESS_CLIENTS as usize + 1];
        let mut step = 0u64;
        g.bench_function("yrs", |b| {
            b.iter_batched(
                || {
                    step += 1;
                    let client = 1 + step % AWARENESS_CLIENTS;
                    clocks[client as usize] += 1;
                    awareness_update(client, clocks[client as usize])
                },
                |update| awareness.apply_update(update).expect("awareness applies"),
                BatchSize::SmallInput,
            )
        });
    }

    // The server path: an awareness frame through Session::handle in a room with 100
    // connections, each holding one awareness state. Client k's frames go through session k,
    // round-robin. In a busy room the first change of a 16 ms tick is relayed at once and
    // the rest are coalesced into one message per tick, sent by a task on the runtime's
    // worker; the timed part is therefore mostly decode + merge + marking the client dirty,
    // with one immediate relay to 99 peers per tick. Outboxes are drained untimed.
    {
        let rt = runtime();
        let rooms = rooms(&rt);
        let mut sessions = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..AWARENESS_CLIENTS {
                v.push(rooms.join("aw", true).await.expect("join"));
            }
            v
        });
        let _guard = rt.enter();
        for (k, (session, _)) in sessions.iter_mut().enumerate() {
            let frame = protocol::encode_awareness(&awareness_update(k as u64 + 1, 1));
            session.handle(&frame).expect("awareness applies");
        }
        std::thread::sleep(Duration::from_millis(50));
        drain(&mut sessions);
        let mut clocks = vec![1u32; AWARENESS_CLIENTS as usize];
        let mut step = 0u64;
        let mut frames = Vec::with_capacity(CHUNK as usize);
        g.bench_function("session", |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(CHUNK);
                    left -= round;
                    frames.clear();
                    for _ in 0..round {
                        step += 1;
                        let k = (step % AWARENESS_CLIENTS) as usize;
                        clocks[k] += 1;
                        let update = awareness_update(k as u64 + 1, clocks[k]);
                        frames.push((k, protocol::encode_awareness(&update)));
                    }
                    let start = Instant::now();
                    for (k, frame) in &frames {
                        black_box(sessions[*k].0.handle(frame).expect("awareness applies"));
                    }
                    timed += start.elapsed();
                    drain(&mut sessions);
                }
                timed
            })
        });
        // Leaving relays awareness removals, which may spawn a flush task: drop the sessions
        // inside the runtime.
        drop(sessions);
        drop(_guard);
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_codec, bench_apply_and_fanout, bench_awareness
}
criterion_main!(benches);
