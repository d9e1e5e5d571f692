//! The store contract, run against SQLite and (when `TEST_DATABASE_URL` is set) the real
//! Postgres server; plus the journal's behaviour when commits fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use resonant_store::{
    Journal, JournalConfig, MemoryStore, PostgresStore, Snapshot, SqliteStore, SqliteSync, Store,
    StoreError, StoredDoc, WriteOp,
};

fn room(prefix: &str) -> Arc<str> {
    format!("{prefix}-{}-{}", std::process::id(), rand_suffix()).into()
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

async fn stores() -> Vec<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open_dir(dir.path(), SqliteSync::Full)
        .await
        .unwrap();
    let mut all: Vec<(Arc<dyn Store>, Option<tempfile::TempDir>)> = vec![
        (Arc::new(sqlite), Some(dir)),
        (Arc::new(MemoryStore::default()), None),
    ];
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            // Set but unreachable must fail the test, never skip it.
            let pg = PostgresStore::connect(&url)
                .await
                .expect("TEST_DATABASE_URL is set, so Postgres must be reachable");
            all.push((Arc::new(pg), None));
        }
        _ => eprintln!("TEST_DATABASE_URL is not set: skipping the Postgres variant"),
    }
    all
}

fn append(room: &Arc<str>, seq: i64, data: &'static [u8]) -> WriteOp {
    WriteOp::Append {
        room: room.clone(),
        seq,
        data: Bytes::from_static(data),
    }
}

#[tokio::test]
async fn log_snapshot_and_tail_round_trip() {
    for (store, _dir) in stores().await {
        let r = room("contract");
        assert!(store.load(&r).await.unwrap().snapshot.is_none());
        store
            .write_batch(&[
                append(&r, 1, b"one"),
                append(&r, 2, b"two"),
                append(&r, 3, b"three"),
            ])
            .await
            .unwrap();
        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.updates.len(), 3);
        assert_eq!(loaded.last_seq(), 3);

        // A snapshot covering seq 2 drops entries 1–2 in the same transaction; 3 stays.
        let snap = WriteOp::Snapshot(Snapshot {
            room: r.clone(),
            state: Bytes::from_static(b"state@2"),
            up_to_seq: 2,
        });
        store
            .write_batch(&[snap, append(&r, 4, b"four")])
            .await
            .unwrap();
        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.snapshot.as_deref(), Some(&b"state@2"[..]));
        assert_eq!(loaded.snapshot_seq, 2);
        let seqs: Vec<i64> = loaded.updates.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![3, 4]);

        // An older snapshot never replaces a newer one.
        let old = WriteOp::Snapshot(Snapshot {
            room: r.clone(),
            state: Bytes::from_static(b"state@1"),
            up_to_seq: 1,
        });
        store.write_batch(&[old]).await.unwrap();
        assert_eq!(store.load(&r).await.unwrap().snapshot_seq, 2);
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn a_failed_batch_leaves_nothing_behind() {
    for (store, _dir) in stores().await {
        let r = room("atomic");
        store.write_batch(&[append(&r, 1, b"one")]).await.unwrap();
        // The duplicate key fails the batch; the new entry before it must not survive.
        let err = store
            .write_batch(&[append(&r, 2, b"two"), append(&r, 1, b"dup")])
            .await;
        assert!(err.is_err());
        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.updates, vec![(1, b"one".to_vec())]);
    }
}

/// Fails its first `failures` commits, then stores in memory.
struct Flaky {
    failures: AtomicUsize,
    written: Mutex<Vec<i64>>,
}

#[async_trait]
impl Store for Flaky {
    async fn load(&self, _: &str) -> Result<StoredDoc, StoreError> {
        Ok(StoredDoc::default())
    }
    async fn write_batch(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        let mut w = self.written.lock().unwrap();
        for op in ops {
            if let WriteOp::Append { seq, .. } = op {
                w.push(*seq);
            }
        }
        Ok(())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "flaky"
    }
}

#[tokio::test]
async fn journal_retries_failed_commits_without_losing_or_reordering() {
    let flaky = Arc::new(Flaky {
        failures: AtomicUsize::new(3),
        written: Mutex::new(Vec::new()),
    });
    let (journal, task) = Journal::start(flaky.clone(), JournalConfig::default());
    let r: Arc<str> = "r".into();
    let mut last = 0;
    for seq in 1..=50 {
        last = journal.append(r.clone(), seq, Bytes::from_static(b"x"));
    }
    assert!(journal.committed() < last);
    tokio::time::timeout(Duration::from_secs(60), journal.wait(last))
        .await
        .expect("commits eventually succeed");
    assert!(journal.is_healthy());
    assert_eq!(*flaky.written.lock().unwrap(), (1..=50).collect::<Vec<_>>());
    assert_eq!(journal.backlog_bytes(), 0);
    journal.close();
    task.await.unwrap();
}
