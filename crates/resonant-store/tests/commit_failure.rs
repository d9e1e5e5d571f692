//! A full disk during a SQLite write transaction must never turn into an acknowledgement of a
//! write that is not durable (issue 15, A1). The fault store reproduces what SQLite does when
//! the disk fills: `COMMIT` fails with SQLITE_FULL and rolls the transaction back by itself,
//! or a write statement fails with SQLITE_FULL and the transaction stays open. Before the fix
//! sqlx-sqlite kept counting the rolled-back transaction, the next batch opened a SAVEPOINT
//! inside a transaction that never committed, and every later "commit" was acknowledged but
//! lost.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use resonant_store::fault::{Fault, FaultStore};
use resonant_store::{Db, Journal, JournalConfig, SqliteStore, SqliteSync, Store};

async fn close_pool(store: &dyn Store) {
    match store.db() {
        Some(Db::Sqlite(pool)) => pool.close().await,
        _ => unreachable!("a SQLite store"),
    }
}

/// The sequence numbers stored for `room` in the database in `dir`, read by a fresh process's
/// view of the files (a new pool).
async fn stored_seqs(dir: &std::path::Path, room: &str) -> Vec<i64> {
    let store = SqliteStore::open_dir(dir, SqliteSync::Full).await.unwrap();
    let doc = store.load(room).await.unwrap();
    close_pool(&store).await;
    doc.updates.iter().map(|(seq, _)| *seq).collect()
}

async fn run(faults: Vec<Fault>) {
    let dir = tempfile::tempdir().unwrap();
    // Writes go through the writer thread's one connection, so whatever state a failure
    // leaves it in meets the next batch; one pooled connection for reads as well.
    let sqlite: Arc<dyn Store> = Arc::new(
        SqliteStore::open_dir_with_pool(dir.path(), SqliteSync::Full, 1)
            .await
            .unwrap(),
    );
    let faulty = FaultStore::new(sqlite.clone());
    let (journal, task) = Journal::start(faulty.clone(), JournalConfig::default());
    let room: Arc<str> = "full-disk".into();
    let payload = Bytes::from(vec![7u8; 20 << 10]);
    let mut acked = Vec::new();
    let mut seq = 0;
    let mut write = |journal: &Journal| {
        seq += 1;
        (seq, journal.append(room.clone(), payload.clone()))
    };
    for _ in 0..20 {
        let (s, t) = write(&journal);
        journal.wait(t).await;
        acked.push(s);
    }
    faulty.push(faults.clone());
    let stalled = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..100 {
            let (s, t) = write(&journal);
            journal.wait(t).await;
            acked.push(s);
        }
    })
    .await
    .is_err();
    assert!(
        !stalled,
        "faults {faults:?}: commits stalled after {} acknowledged writes (a connection kept \
         SQLite's write lock)",
        acked.len()
    );
    assert_eq!(journal.oldest_unacknowledged(), Duration::ZERO);

    // What a kill -9 now would leave: only what is committed in the files.
    let after_kill = stored_seqs(dir.path(), &room).await;
    // What a clean shutdown leaves: the journal drained, the pool closed.
    journal.close();
    task.await.unwrap();
    close_pool(&*sqlite).await;
    let after_stop = stored_seqs(dir.path(), &room).await;

    for (what, stored) in [("kill -9", &after_kill), ("a clean stop", &after_stop)] {
        let lost: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|s| !stored.contains(s))
            .collect();
        assert!(
            lost.is_empty(),
            "faults {faults:?}: {} of {} acknowledged writes lost after {what}: {:?}…",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)]
        );
    }
}

#[tokio::test]
async fn commit_failing_with_a_full_disk_loses_no_acknowledged_write() {
    // The sequence seen on a real full disk (examples/sqlx_commit_full.rs): a COMMIT fails and
    // SQLite rolls back, then a statement of the retry fails and leaves its transaction open;
    // then there is room again.
    run(vec![Fault::CommitFull, Fault::WriteFull]).await;
}

#[tokio::test]
async fn a_disk_full_for_a_while_loses_no_acknowledged_write() {
    // Several COMMITs fail before a statement does.
    run(vec![
        Fault::CommitFull,
        Fault::CommitFull,
        Fault::CommitFull,
        Fault::WriteFull,
    ])
    .await;
}

#[tokio::test]
async fn oldest_unacknowledged_write_ages_while_a_commit_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> = Arc::new(
        SqliteStore::open_dir(dir.path(), SqliteSync::Full)
            .await
            .unwrap(),
    );
    let faulty = FaultStore::new(sqlite);
    let (journal, _task) = Journal::start(faulty.clone(), JournalConfig::default());
    assert_eq!(journal.oldest_unacknowledged(), Duration::ZERO);
    faulty.push([Fault::Slow(Duration::from_millis(600))]);
    let t = journal.append("slow".into(), Bytes::from_static(b"x"));
    // Queued writes behind the slow commit count too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while journal.oldest_unacknowledged() < Duration::from_millis(300) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the age never grew while the commit hung"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(journal.committed() < t, "not committed yet");
    journal.wait(t).await;
    assert_eq!(journal.oldest_unacknowledged(), Duration::ZERO);
}
