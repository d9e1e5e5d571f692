//! Reproducer: a document nesting Y.Maps 20 000 deep (one 160 kB update) followed by an
//! 8-byte update deleting the outermost map overflows the stack while yrs deletes the
//! nested types recursively, aborting the whole server process. Each update passes the
//! validator (nothing in either is implausible; the depth builds up through parent ids).
//! Run from `fuzz/`: `cargo run --release --example deep_types [DEPTH]`; it applies the two
//! updates through a real session inside a tokio worker thread (2 MiB stack, as the server
//! runs) and aborts with "has overflowed its stack".

use std::sync::Arc;

use resonant_store::{Journal, JournalConfig, MemoryStore, Store};
use resonant_sync::{protocol, Rooms, SyncConfig};
use yrs::{Doc, Map, MapPrelim, ReadTxn, StateVector, Transact};

/// The two client updates: create the nested maps, then delete the outermost one.
fn updates(depth: usize) -> (Vec<u8>, Vec<u8>) {
    let doc = Doc::with_client_id(1);
    let root = doc.get_or_insert_map("m");
    {
        let mut txn = doc.transact_mut();
        let mut cur = root.insert(&mut txn, "k", MapPrelim::default());
        for _ in 0..depth {
            cur = cur.insert(&mut txn, "k", MapPrelim::default());
        }
    }
    let before = doc.transact().state_vector();
    let create = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    // yrs's local delete recurses just the same: give it room.
    root.remove(&mut doc.transact_mut(), "k");
    let delete = doc.transact().encode_diff_v1(&before);
    (create, delete)
}

fn main() {
    let depth = std::env::args()
        .nth(1)
        .map_or(20_000, |d| d.parse().expect("DEPTH"));
    let (create, delete) = std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || updates(depth))
        .unwrap()
        .join()
        .unwrap();
    eprintln!(
        "depth {depth}: create update {} bytes, delete update {} bytes",
        create.len(),
        delete.len()
    );
    // STACK_MB: the worker stack size (the server's binary uses 256 MiB; tokio's default is 2).
    let stack_mb: usize = std::env::var("STACK_MB").map_or(2, |s| s.parse().expect("STACK_MB"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(stack_mb << 20)
        .build()
        .unwrap();
    rt.block_on(async move {
        tokio::spawn(async move {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
            let (journal, _writer) = Journal::start(store.clone(), JournalConfig::default());
            let rooms = Rooms::new(store, journal, SyncConfig::default());
            let (mut session, _outbox) = rooms.join("deep", true).await.unwrap();
            session
                .handle(&protocol::encode_sync_update(&create))
                .unwrap();
            eprintln!("created; deleting the outermost map");
            let r = session.handle(&protocol::encode_sync_update(&delete));
            eprintln!(
                "delete handled: {:?} (no crash at this depth)",
                r.map(|_| ())
            );
        })
        .await
        .unwrap();
    });
}
