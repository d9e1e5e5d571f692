//! The store contract, run against SQLite and (when `TEST_DATABASE_URL` is set) the real
//! Postgres server; plus the journal's behaviour when commits fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use resonant_store::fault::{Fault, FaultStore};
use resonant_store::{
    Journal, JournalConfig, MemoryStore, PostgresStore, Snapshot, SqliteStore, SqliteSync, Store,
    StoreError, WriteOp,
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

fn append(room: &Arc<str>, data: &'static [u8]) -> WriteOp {
    WriteOp::Append {
        room: room.clone(),
        data: Bytes::from_static(data),
    }
}

/// A batch id no other write in this test process uses.
fn batch() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn log_snapshot_and_tail_round_trip() {
    for (store, _dir) in stores().await {
        let r = room("contract");
        let other = room("contract-other");
        assert!(store.load(&r).await.unwrap().snapshot.is_none());
        // The store numbers appends per room, in op order, whatever other rooms share the batch.
        let seqs = store
            .write_batch(
                batch(),
                &[
                    append(&r, b"one"),
                    append(&other, b"o1"),
                    append(&r, b"two"),
                    append(&r, b"three"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            seqs,
            vec![Some(1), Some(1), Some(2), Some(3)],
            "{}",
            store.backend()
        );
        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.updates.len(), 3);
        assert_eq!(loaded.last_seq(), 3);
        assert_eq!(loaded.head_seq, 3);

        // A snapshot covering seq 2 drops entries 1–2 in the same transaction; 3 stays.
        let snap = WriteOp::Snapshot(Snapshot {
            room: r.clone(),
            state: Bytes::from_static(b"state@2"),
            up_to_seq: Some(2),
        });
        let seqs = store
            .write_batch(batch(), &[snap, append(&r, b"four")])
            .await
            .unwrap();
        assert_eq!(seqs, vec![None, Some(4)]);
        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.snapshot.as_deref(), Some(&b"state@2"[..]));
        assert_eq!(loaded.snapshot_seq, 2);
        let seqs: Vec<i64> = loaded.updates.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![3, 4]);

        // An older snapshot never replaces a newer one.
        let old = WriteOp::Snapshot(Snapshot {
            room: r.clone(),
            state: Bytes::from_static(b"state@1"),
            up_to_seq: Some(1),
        });
        store.write_batch(batch(), &[old]).await.unwrap();
        assert_eq!(store.load(&r).await.unwrap().snapshot_seq, 2);

        // A snapshot without a seq covers whatever the log holds where it stands in its
        // batch: here the append before it, not the one after.
        let seqs = store
            .write_batch(
                batch(),
                &[
                    append(&r, b"five"),
                    WriteOp::Snapshot(Snapshot {
                        room: r.clone(),
                        state: Bytes::from_static(b"state@5"),
                        up_to_seq: None,
                    }),
                    append(&r, b"six"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(seqs, vec![Some(5), None, Some(6)]);
        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.snapshot_seq, 5);
        assert_eq!(loaded.updates, vec![(6, b"six".to_vec())]);
        assert_eq!(loaded.head_seq, 6);
        // Compaction never lowers the head: the next append gets 7.
        let seqs = store
            .write_batch(batch(), &[append(&r, b"seven")])
            .await
            .unwrap();
        assert_eq!(seqs, vec![Some(7)]);
        assert_eq!(store.load(&other).await.unwrap().head_seq, 1);
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn a_failed_batch_leaves_nothing_behind() {
    for (store, _dir) in stores().await {
        let Some(db) = store.db() else { continue };
        let (r, dead) = (room("atomic"), room("atomic-dead"));
        store
            .write_batch(batch(), &[append(&r, b"one")])
            .await
            .unwrap();
        // A room marked deleted refuses appends; the batch fails after its first append ran.
        let mark = "INSERT INTO rooms (room, head_seq, deleted_at) VALUES ($1, 0, 1)";
        match &db {
            resonant_store::Db::Sqlite(p) => {
                sqlx::query(mark).bind(&*dead).execute(p).await.map(drop)
            }
            resonant_store::Db::Postgres(p) => {
                sqlx::query(mark).bind(&*dead).execute(p).await.map(drop)
            }
        }
        .unwrap();
        let err = store
            .write_batch(batch(), &[append(&r, b"two"), append(&dead, b"x")])
            .await
            .expect_err("a deleted room's append fails the batch");
        assert!(
            matches!(err, StoreError::RoomDeleted(_)),
            "{}: {err}",
            store.backend()
        );
        assert!(!err.is_transient());
        let loaded = store.load(&r).await.unwrap();
        assert_eq!(loaded.updates, vec![(1, b"one".to_vec())]);
        assert_eq!(
            loaded.head_seq, 1,
            "the head's bump rolled back with the rows"
        );
        let seqs = store
            .write_batch(batch(), &[append(&r, b"two")])
            .await
            .unwrap();
        assert_eq!(seqs, vec![Some(2)], "no seq lost to the failed batch");
    }
}

#[tokio::test]
async fn a_retried_batch_is_answered_not_written_twice() {
    for (store, _dir) in stores().await {
        let r = room("retry");
        let id = batch();
        let ops = [append(&r, b"one"), append(&r, b"two")];
        let first = store.write_batch(id, &ops).await.unwrap();
        // The same batch again, as the journal retries it after a lost COMMIT reply.
        let again = store
            .write_batch(id, &ops)
            .await
            .expect("a retry of a committed batch is answered");
        assert_eq!(first, again, "{}", store.backend());
        let loaded = store.load(&r).await.unwrap();
        assert_eq!(
            loaded.updates,
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
        );
        // The same bytes in a new batch are new updates.
        let next = store.write_batch(batch(), &ops).await.unwrap();
        assert_eq!(next, vec![Some(3), Some(4)]);
    }
}

#[tokio::test]
async fn a_second_server_cannot_claim_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open_dir(dir.path(), SqliteSync::Full)
        .await
        .unwrap();
    first.lock_exclusive(Duration::ZERO).await.unwrap();
    let second = SqliteStore::open_dir(dir.path(), SqliteSync::Full)
        .await
        .unwrap();
    let err = second
        .lock_exclusive(Duration::from_millis(200))
        .await
        .expect_err("held by the first");
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    drop(first);
    second
        .lock_exclusive(Duration::from_secs(5))
        .await
        .expect("free once the first is gone");

    if let Some(url) = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        // Its own schema, so this test does not exclude servers that other tests run.
        let schema = format!("lock_{}", std::process::id());
        let admin = PostgresStore::connect(&url)
            .await
            .expect("Postgres reachable");
        drop(admin);
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&pool)
            .await
            .unwrap();
        let scoped = format!(
            "{url}{}options=-c%20search_path%3D{schema}",
            if url.contains('?') { '&' } else { '?' }
        );
        let first = PostgresStore::connect(&scoped).await.unwrap();
        first.lock_exclusive(Duration::ZERO).await.unwrap();
        let second = PostgresStore::connect(&scoped).await.unwrap();
        let err = second
            .lock_exclusive(Duration::from_millis(300))
            .await
            .expect_err("held by the first");
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
        drop(first);
        second
            .lock_exclusive(Duration::from_secs(10))
            .await
            .expect("free once the first is gone");
        drop(second);
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
    }
}

fn journal_on(store: Arc<dyn Store>) -> (Arc<FaultStore>, Journal, tokio::task::JoinHandle<()>) {
    let faulty = FaultStore::new(store);
    let (journal, task) = Journal::start(faulty.clone(), JournalConfig::default());
    (faulty, journal, task)
}

#[tokio::test]
async fn transient_failures_and_lost_commit_replies_lose_and_duplicate_nothing() {
    for (store, _dir) in stores().await {
        let (faulty, journal, task) = journal_on(store);
        faulty.push([
            Fault::Transient,
            Fault::CommitThenFail,
            Fault::Slow(Duration::from_millis(30)),
            Fault::Transient,
            Fault::CommitThenFail,
        ]);
        let r = room("transient");
        let told = Arc::new(Mutex::new(Vec::<(i64, Bytes)>::new()));
        let sink = told.clone();
        journal.set_commit_handler(Box::new(move |done| {
            sink.lock()
                .unwrap()
                .extend(done.iter().map(|c| (c.seq, c.data.clone())));
        }));
        let mut last = 0;
        for seq in 1..=50i64 {
            last = journal.append(r.clone(), Bytes::from(seq.to_string()));
        }
        tokio::time::timeout(Duration::from_secs(60), journal.wait(last))
            .await
            .expect("commits eventually succeed");
        assert!(journal.is_healthy());
        let loaded = faulty.inner().load(&r).await.unwrap();
        let want: Vec<(i64, Vec<u8>)> = (1..=50).map(|s| (s, s.to_string().into_bytes())).collect();
        assert_eq!(loaded.updates, want, "{}", faulty.backend());
        let told: Vec<(i64, Vec<u8>)> = told
            .lock()
            .unwrap()
            .iter()
            .map(|(s, d)| (*s, d.to_vec()))
            .collect();
        assert_eq!(told, want, "each commit told once, with the seqs stored");
        assert_eq!(journal.backlog_bytes(), 0);
        journal.close();
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_room_that_cannot_commit_does_not_stall_the_others() {
    for (store, _dir) in stores().await {
        let (faulty, journal, task) = journal_on(store);
        let failed = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = failed.clone();
        let committed_at_failure = Arc::new(Mutex::new(None));
        let at_failure = committed_at_failure.clone();
        let probe = journal.clone();
        journal.set_failure_handler(Box::new(move |room, err| {
            assert!(!err.is_transient());
            seen.lock().unwrap().push(room.to_string());
            *at_failure.lock().unwrap() = Some(probe.committed());
        }));
        let (bad, good) = (room("bad"), room("good"));
        faulty.poison_room(&bad);
        // One batch holding both rooms' writes.
        faulty.push([Fault::Slow(Duration::from_millis(50))]);
        journal.append(good.clone(), Bytes::from_static(b"warm-up"));
        let mut last = 0;
        for _ in 2..=20 {
            journal.append(bad.clone(), Bytes::from_static(b"b"));
            last = journal.append(good.clone(), Bytes::from_static(b"g"));
        }
        tokio::time::timeout(Duration::from_secs(30), journal.wait(last))
            .await
            .expect("the good room commits");
        assert_eq!(*failed.lock().unwrap(), vec![bad.to_string()]);
        assert!(
            committed_at_failure.lock().unwrap().unwrap() < last,
            "the failure is reported before the batch counts as committed"
        );
        assert_eq!(faulty.inner().load(&good).await.unwrap().last_seq(), 20);
        assert!(faulty.inner().load(&bad).await.unwrap().updates.is_empty());
        // The healed room commits again.
        faulty.heal(&bad);
        let t = journal.append(bad.clone(), Bytes::from_static(b"again"));
        journal.wait(t).await;
        assert_eq!(faulty.inner().load(&bad).await.unwrap().last_seq(), 1);
        assert!(journal.is_healthy());
        journal.close();
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_dead_writer_is_reported() {
    let (faulty, journal, task) = journal_on(Arc::new(MemoryStore::default()));
    faulty.push([Fault::Panic]);
    journal.append(room("dead"), Bytes::from_static(b"x"));
    task.await
        .expect("the panic is caught and reported, not propagated");
    assert!(journal.is_dead());
    assert!(!journal.is_healthy());
}

#[tokio::test]
async fn sqlite_numbering_resumes_after_a_reopen_and_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (r, compacted, old) = (room("reopen"), room("reopen-compacted"), room("reopen-old"));
    {
        let store = SqliteStore::open_dir(dir.path(), SqliteSync::Full)
            .await
            .unwrap();
        let seqs = store
            .write_batch(batch(), &[append(&r, b"a"), append(&r, b"b")])
            .await
            .unwrap();
        assert_eq!(seqs, vec![Some(1), Some(2)]);
        // Compacted up to its head: no update row is left to count from.
        let seqs = store
            .write_batch(
                batch(),
                &[
                    append(&compacted, b"x"),
                    append(&compacted, b"y"),
                    WriteOp::Snapshot(Snapshot {
                        room: compacted.clone(),
                        state: Bytes::from_static(b"state"),
                        up_to_seq: None,
                    }),
                ],
            )
            .await
            .unwrap();
        assert_eq!(seqs, vec![Some(1), Some(2), None]);
        // A database written before heads were kept in memory: only its `rooms` row knows.
        let Some(resonant_store::Db::Sqlite(pool)) = store.db() else {
            unreachable!()
        };
        sqlx::query("INSERT INTO rooms (room, head_seq) VALUES (?, 41)")
            .bind(&*old)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let store = SqliteStore::open_dir(dir.path(), SqliteSync::Full)
        .await
        .unwrap();
    for (room, next) in [(&r, 3), (&compacted, 3), (&old, 42)] {
        let seqs = store
            .write_batch(batch(), &[append(room, b"next")])
            .await
            .unwrap();
        assert_eq!(seqs, vec![Some(next)], "{room}");
        assert_eq!(store.load(room).await.unwrap().head_seq, next);
    }
}

#[tokio::test]
async fn an_in_memory_sqlite_url_is_refused_with_a_pointer_to_memory() {
    // The writer thread opens the database file a second time: an in-memory database would
    // be a second, empty one, and every write would go where no read looks.
    for url in ["sqlite::memory:", "sqlite://:memory:"] {
        let err = match SqliteStore::open_url(url, SqliteSync::Full).await {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("memory:"), "{url}: {err}");
    }
}

#[tokio::test]
async fn sqlite_writes_and_reads_agree_while_the_pool_writes_the_same_file() {
    // The log is written by the writer thread's own connection while the pool (the
    // application's tables) writes the same file: both take SQLite's write lock in turn,
    // neither sees "database is locked", and each batch is numbered from the last.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open_dir(dir.path(), SqliteSync::Normal)
            .await
            .unwrap(),
    );
    let Some(resonant_store::Db::Sqlite(pool)) = store.db() else {
        unreachable!()
    };
    sqlx::query("CREATE TABLE side (n INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    let r = room("shared-file");
    let writes = {
        let store = store.clone();
        let r = r.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..200u32 {
                let got = store
                    .write_batch(
                        batch(),
                        &[WriteOp::Append {
                            room: r.clone(),
                            data: Bytes::copy_from_slice(&i.to_le_bytes()),
                        }],
                    )
                    .await
                    .unwrap();
                seqs.extend(got.into_iter().flatten());
            }
            seqs
        })
    };
    for n in 0..200 {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO side (n) VALUES (?)")
            .bind(n)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let seqs = writes.await.unwrap();
    assert_eq!(seqs, (1..=200).collect::<Vec<i64>>());
    let doc = store.load(&r).await.unwrap();
    assert_eq!(doc.head_seq, 200);
    assert_eq!(doc.updates.len(), 200);
    for (i, (seq, data)) in doc.updates.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1);
        assert_eq!(data[..], (i as u32).to_le_bytes());
    }
}
