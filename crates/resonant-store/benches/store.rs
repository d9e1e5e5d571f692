//! Benchmarks of the durable path: SQLite batches, snapshot compaction, and the group-commit
//! journal.
//!
//! Run with `cargo bench -p resonant-store --bench store`. Databases live in temporary
//! directories under `RESONANT_BENCH_DIR` (default: the system temp dir); point it at the
//! disk you care about, since `SqliteSync::Full` is as fast as that disk's fsync.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use resonant_store::{
    Journal, JournalConfig, Snapshot, SqliteStore, SqliteSync, Store, StoreError, StoredDoc,
    WriteOp,
};
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// A small update: about what one block drag weighs (Yjs v1).
const APPEND_BYTES: usize = 40;
/// Snapshot size for the compaction benchmark.
const SNAPSHOT_BYTES: usize = 1 << 20;
/// Log entries a compaction deletes: the sync crate's default `compact_after_updates`.
const LOG_PER_SNAPSHOT: i64 = 1000;
/// Appends per journal round.
const JOURNAL_APPENDS: u64 = 1000;

const MODES: [(SqliteSync, &str); 2] = [(SqliteSync::Full, "full"), (SqliteSync::Normal, "normal")];

fn bench_dir() -> TempDir {
    let base = std::env::var_os("RESONANT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("resonant-bench-")
        .tempdir_in(base)
        .expect("temp dir")
}

fn open(rt: &Runtime, sync: SqliteSync) -> (TempDir, Arc<SqliteStore>) {
    let dir = bench_dir();
    let store = rt
        .block_on(SqliteStore::open_dir(dir.path(), sync))
        .expect("open sqlite");
    (dir, Arc::new(store))
}

/// Deterministic, incompressible-looking bytes.
fn payload(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn appends(room: &Arc<str>, next_seq: &mut i64, count: usize) -> Vec<WriteOp> {
    (0..count)
        .map(|_| {
            *next_seq += 1;
            WriteOp::Append {
                room: room.clone(),
                data: payload(APPEND_BYTES, *next_seq as u64),
            }
        })
        .collect()
}

fn bench_write_batch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("sqlite_write_batch");
    for (sync, mode) in MODES {
        let (_dir, store) = open(&rt, sync);
        let room: Arc<str> = Arc::from("bench");
        let mut next_seq = 0i64;
        for ops in [1usize, 100] {
            g.throughput(Throughput::Elements(ops as u64));
            g.bench_with_input(BenchmarkId::new(mode, ops), &ops, |b, &ops| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        // Untimed: building the batch (the journal has it ready).
                        let batch = appends(&room, &mut next_seq, ops);
                        let start = Instant::now();
                        rt.block_on(store.write_batch(next_seq as u64, &batch))
                            .expect("commit");
                        timed += start.elapsed();
                    }
                    timed
                })
            });
        }
    }
    g.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let state = payload(SNAPSHOT_BYTES, 7);
    let mut g = c.benchmark_group("sqlite_snapshot_1mb");
    g.throughput(Throughput::Bytes(SNAPSHOT_BYTES as u64));
    for (sync, mode) in MODES {
        let (_dir, store) = open(&rt, sync);
        let room: Arc<str> = Arc::from("bench");
        let mut next_seq = 0i64;
        g.bench_function(mode, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    // Untimed: the log the compaction replaces, committed as the journal
                    // would have (one batch here, for speed).
                    let log = appends(&room, &mut next_seq, LOG_PER_SNAPSHOT as usize);
                    rt.block_on(store.write_batch(next_seq as u64, &log))
                        .expect("commit log");
                    // Timed: upsert the 1 MB snapshot and delete the log it covers, in one
                    // transaction, as the journal writes a `WriteOp::Snapshot`.
                    let op = WriteOp::Snapshot(Snapshot {
                        room: room.clone(),
                        state: state.clone(),
                        up_to_seq: Some(next_seq),
                    });
                    let start = Instant::now();
                    rt.block_on(
                        store.write_batch(u64::MAX - next_seq as u64, std::slice::from_ref(&op)),
                    )
                    .expect("commit snapshot");
                    timed += start.elapsed();
                }
                timed
            })
        });
    }
    g.finish();
}

/// Accepts and forgets every write: isolates the journal's own overhead.
struct NullStore;

#[async_trait]
impl Store for NullStore {
    async fn load(&self, _room: &str) -> Result<StoredDoc, StoreError> {
        Ok(StoredDoc::default())
    }
    async fn write_batch(
        &self,
        _batch: resonant_store::BatchId,
        ops: &[WriteOp],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        black_box(ops);
        Ok(vec![Some(0); ops.len()])
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "null"
    }
    async fn delete_room(&self, _room: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

fn bench_journal(c: &mut Criterion) {
    // Like the server: the writer task runs on a worker while callers append.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("journal_1000_appends_then_flush");
    g.throughput(Throughput::Elements(JOURNAL_APPENDS));
    let stores: Vec<(&str, Option<TempDir>, Arc<dyn Store>)> = {
        let mut v: Vec<(&str, Option<TempDir>, Arc<dyn Store>)> = Vec::new();
        for (sync, mode) in MODES {
            let (dir, store) = open(&rt, sync);
            v.push((mode, Some(dir), store));
        }
        v.push(("null", None, Arc::new(NullStore)));
        v
    };
    for (name, _dir, store) in stores {
        let (journal, task) = {
            let _guard = rt.enter();
            Journal::start(store, JournalConfig::default())
        };
        let room: Arc<str> = Arc::from("bench");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let data: Vec<Bytes> = (0..JOURNAL_APPENDS)
                        .map(|i| payload(APPEND_BYTES, i))
                        .collect();
                    let start = Instant::now();
                    // Appends are synchronous (the room's observer calls them); the flush
                    // waits for the writer to commit everything, in as many batches as
                    // group commit makes of it.
                    for d in data {
                        journal.append(room.clone(), d);
                    }
                    rt.block_on(journal.flush());
                    timed += start.elapsed();
                }
                timed
            })
        });
        journal.close();
        rt.block_on(task).expect("journal writer");
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_write_batch, bench_snapshot, bench_journal
}
criterion_main!(benches);
