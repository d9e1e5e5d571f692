//! Issue 15 items 2 and 5 over real sockets against the real binary: the yrs use-after-free
//! reproducer (docs/upstream/yrs-uaf.md), subdocuments and forward self-references. Each test
//! ends with the server alive, its memory within a stated bound, and a canary pair in another
//! room still syncing.

mod common;

use std::time::Duration;

use common::*;
use resonant_sync::protocol;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact, WriteTxn};

/// The use-after-free reproducer in its well-formed variant (the validator passes all three;
/// see crates/resonant-sync/tests/yrs_uaf.rs): a hole in client 1's clocks, a pending string
/// split around it, and an update that makes yrs retry and split it again.
const REPRODUCER: [&[u8]; 3] = [
    &[1, 1, 1, 2, 8, 1, 1, b'a', 1, 0x7d, 1, 0],
    &[1, 1, 1, 0, 0x84, 2, 0, 4, b'a', b'b', b'c', b'd', 0],
    &[
        2, 1, 1, 1, 8, 1, 1, b'a', 1, 0x7d, 1, 1, 2, 5, 8, 1, 1, b'a', 1, 0x7d, 2, 0,
    ],
];

fn server(dir: &std::path::Path) -> ServerProcess {
    jemalloc_returns_freed_pages();
    ServerProcess::start(&["--data-dir", dir.to_str().unwrap()])
}

/// Item 2: the reproducer, 200 times in 200 rooms, each followed by a client that syncs the
/// room and edits it. yrs 0.28.1 wrote through a dangling pointer here (heap corruption
/// that may crash the process later, anywhere); the patched yrs integrates it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_yrs_use_after_free_reproducer_leaves_the_server_sane() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let pid = server.pid();
    let mut canary = Canary::start(server.addr).await;
    canary.beat().await;
    let rss_before = rss_kib(pid);
    for i in 0..200 {
        let room = room_url(server.addr, &format!("uaf-{i}"));
        let mut attacker = Client::connect_synced(&room).await;
        for update in REPRODUCER {
            attacker.send(protocol::encode_sync_update(update)).await;
        }
        // Step 1 is answered after the updates before it: the server has applied them.
        attacker.sync().await;
        // What the server holds: client 1's clocks 1 and 2 and client 2's clock 5 behind
        // holes, "a" and "d" (1:0, 1:3) pending; a client syncing it gets exactly that.
        let mut other = Client::connect_synced(&room).await;
        let text = format!("edit {i}");
        other
            .edit(move |_, txn| {
                txn.get_or_insert_map("m").insert(txn, "k", text);
            })
            .await;
        attacker
            .until("the other client's edit", |c| {
                let m = c.doc.get_or_insert_map("m");
                m.get(&c.doc.transact(), "k").is_some()
            })
            .await;
        if i % 20 == 0 {
            canary.beat().await;
        }
        attacker.close().await;
        other.close().await;
    }
    canary.beat().await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "RSS {rss_before} -> {rss_after} KiB; canary worst delivery {:?}",
        canary.worst
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        canary.worst < Duration::from_secs(2),
        "canary delivery took {:?}",
        canary.worst
    );
}

/// Item 5: a subdocument and a struct naming its own client's later clock (which made the
/// reloaded document differ from the served one) are refused with 1007; the room keeps
/// serving and holds neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subdocuments_and_forward_self_references_are_refused_with_1007() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let pid = server.pid();
    let mut canary = Canary::start(server.addr).await;
    canary.beat().await;
    let rss_before = rss_kib(pid);

    let with_subdoc = {
        let doc = Doc::with_client_id(7);
        let map = doc.get_or_insert_map("m");
        map.insert(&mut doc.transact_mut(), "sub", Doc::new());
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        update
    };
    // "abcd" at 1:0 whose origin is 1:10, a clock its client had not reached.
    let forward: &[u8] = &[1, 1, 1, 0, 0x84, 1, 10, 4, b'a', b'b', b'c', b'd', 0];
    for (update, why) in [
        (with_subdoc.as_slice(), "subdocuments are not supported"),
        (forward, "own client's later clock"),
    ] {
        for _ in 0..50 {
            let mut c = Client::connect_synced(&room_url(server.addr, "refused")).await;
            c.send(protocol::encode_sync_update(update)).await;
            let (code, reason) = c.until_closed().await.expect("a close frame");
            assert_eq!(code, 1007, "{reason}");
            assert!(reason.contains(why), "{reason}");
        }
        canary.beat().await;
    }
    let fresh = Client::connect_synced(&room_url(server.addr, "refused")).await;
    assert_eq!(fresh.doc.transact().state_vector().len(), 0);
    let rss_after = rss_kib(pid);
    eprintln!(
        "RSS {rss_before} -> {rss_after} KiB; canary worst delivery {:?}",
        canary.worst
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        canary.worst < Duration::from_secs(2),
        "canary delivery took {:?}",
        canary.worst
    );
}
