//! Protocol, fan-out, awareness, bad input and room lifecycle over real WebSockets.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio_tungstenite::tungstenite::Message;
use yrs::{Array, GetString, Map, MapPrelim, ReadTxn, Text, Transact, WriteTxn};

fn add_block(txn: &mut yrs::TransactionMut, id: &str, x: f64) {
    let blocks = txn.get_or_insert_array("blocks");
    let len = blocks.len(txn);
    let block = blocks.insert(txn, len, MapPrelim::default());
    block.insert(txn, "id", id);
    block.insert(txn, "type", "ai");
    block.insert(txn, "x", x);
}

fn block_count(c: &ClientState) -> u32 {
    let txn = c.doc.transact();
    txn.get_array("blocks").map_or(0, |a| a.len(&txn))
}

#[tokio::test]
async fn edits_reach_other_clients_and_late_joiners() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "workflow-1");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    a.edit(|_, txn| add_block(txn, "b1", 1.0)).await;
    b.until("a's block", |c| block_count(c) == 1).await;
    b.edit(|_, txn| add_block(txn, "b2", 2.0)).await;
    a.until("b's block", |c| block_count(c) == 2).await;
    let mut late = Client::connect_synced(&url).await;
    assert_eq!(
        block_count(&late),
        2,
        "late joiner gets the full state on sync"
    );
    late.until("same content", |c| doc_json(&c.doc) == doc_json(&a.doc))
        .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn sender_does_not_get_its_own_update_back_and_acks_follow_commit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "echo");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    a.opt_in().await;
    let before = a.updates_received;
    for i in 0..5 {
        a.edit(|_, txn| add_block(txn, &format!("b{i}"), i as f64))
            .await;
    }
    a.until("five acks", |c| c.acks == 5).await;
    // Fan-out happens while applying, before the commit that triggers an ack, so an echo
    // would have arrived by now.
    assert_eq!(a.updates_received, before, "no update echoed to its sender");
    b.until("five blocks", |c| block_count(c) == 5).await;
    assert_eq!(
        b.extension_msgs, 0,
        "stock clients never get extension messages"
    );
    // Acknowledged means committed: the store already has every block.
    let store = resonant_store::SqliteStore::open_dir(dir.path(), Default::default())
        .await
        .unwrap();
    let stored = resonant_store::Store::load(&store, "echo").await.unwrap();
    let doc = yrs::Doc::new();
    {
        let mut txn = doc.transact_mut();
        for (_, u) in &stored.updates {
            use yrs::updates::decoder::Decode;
            txn.apply_update(yrs::Update::decode_v1(u).unwrap())
                .unwrap();
        }
    }
    let txn = doc.transact();
    assert_eq!(txn.get_array("blocks").unwrap().len(&txn), 5);
    drop(txn);
    server.shutdown().await.unwrap();
}

/// The pongs a client has received, by id.
fn pongs(c: &ClientState) -> Vec<serde_json::Value> {
    c.stateless
        .iter()
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .filter(|m| m["type"] == "pong")
        .map(|m| m["id"].clone())
        .collect()
}

/// Opts in to extension messages and waits for a pong: the server has taken the opt-in
/// before anything that depends on it is sent.
async fn opt_in_confirmed(c: &mut Client) {
    c.opt_in().await;
    let ping = serde_json::json!({ "type": "ping", "id": 1 }).to_string();
    c.send(resonant_client::protocol::encode_stateless(&ping))
        .await;
    c.until("the pong", |c| !pongs(c).is_empty()).await;
}

/// A `broadcast` request carrying `event`.
fn broadcast(event: serde_json::Value) -> Bytes {
    let msg = serde_json::json!({ "type": "broadcast", "event": event }).to_string();
    resonant_client::protocol::encode_stateless(&msg)
}

fn broadcasts(c: &ClientState) -> Vec<serde_json::Value> {
    c.stateless
        .iter()
        .map(|m| serde_json::from_str::<serde_json::Value>(m).unwrap())
        .filter(|m| m["type"] == "broadcast")
        .collect()
}

#[tokio::test]
async fn broadcast_events_reach_the_other_opted_in_editors_only_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "broadcast");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    let mut stock = Client::connect_synced(&url).await;
    // A pong proves the server has taken each opt-in before anything is broadcast.
    for c in [&mut a, &mut b] {
        opt_in_confirmed(c).await;
    }
    let event = serde_json::json!({ "kind": "reaction", "emoji": "👍", "at": [1, 2] });
    a.send(broadcast(event.clone())).await;
    b.until("a's event", |c| !broadcasts(c).is_empty()).await;
    let got = broadcasts(&b);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event"], event);
    assert!(got[0]["from"]["userId"].is_string(), "{got:?}");

    // Too large: refused with an error to the sender alone; its connection and the room go on.
    let big = serde_json::json!({ "blob": "x".repeat(9000) });
    a.send(broadcast(big)).await;
    a.until("the refusal", |c| {
        c.stateless
            .iter()
            .any(|m| m.contains("broadcast-too-large"))
    })
    .await;
    a.send(broadcast(serde_json::json!("second"))).await;
    b.until("a's second event", |c| broadcasts(c).len() == 2)
        .await;
    assert_eq!(
        broadcasts(&b)[1]["event"],
        "second",
        "the oversized one never arrived"
    );
    // The sender hears no echo; a stock client (y-websocket) never sees the extension.
    b.edit(|_, txn| add_block(txn, "sync still works", 0.0))
        .await;
    a.until("b's block", |c| block_count(c) == 1).await;
    stock.until("b's block", |c| block_count(c) == 1).await;
    assert!(broadcasts(&a).is_empty());
    assert!(stock.stateless.is_empty(), "{:?}", stock.stateless);
}

/// A flood of broadcasts (a viewer may send them too) is relayed only up to the connection's
/// allowance, 20 events a second with bursts of 40: before, all 500 were copied to every
/// editor's outbox. The sender hears why; the others keep syncing.
#[tokio::test]
async fn a_broadcast_flood_is_cut_to_the_allowance() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "broadcast-flood");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    for c in [&mut a, &mut b] {
        opt_in_confirmed(c).await;
    }
    let started = std::time::Instant::now();
    for i in 0..500 {
        a.send(broadcast(serde_json::json!({ "n": i }))).await;
    }
    // An edit after the flood reaches b behind every broadcast that was relayed.
    a.edit(|_, txn| add_block(txn, "after the flood", 0.0))
        .await;
    b.until("a's block", |c| block_count(c) == 1).await;
    let elapsed = started.elapsed().as_secs_f64();
    let relayed = broadcasts(&b).len();
    let allowed = 40 + (20.0 * elapsed).ceil() as usize;
    assert!(
        (40..=allowed).contains(&relayed),
        "{relayed} of 500 relayed in {elapsed:.2} s (allowance {allowed})"
    );
    a.until("the refusal", |c| {
        c.stateless
            .iter()
            .any(|m| m.contains("broadcast-rate-limited"))
    })
    .await;
}

#[tokio::test]
async fn ping_is_answered_with_its_id_and_leaves_sync_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "ping");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    a.edit(|_, txn| add_block(txn, "before", 0.0)).await;
    b.until("a's first block", |c| block_count(c) == 1).await;
    // The id is echoed whatever it is, so a client can match a pong to its probe.
    let id = serde_json::json!({ "probe": 7, "at": "visibilitychange" });
    let ping = serde_json::json!({ "type": "ping", "id": id }).to_string();
    a.send(resonant_client::protocol::encode_stateless(&ping))
        .await;
    a.until("the pong", |c| !pongs(c).is_empty()).await;
    assert_eq!(pongs(&a), [id]);
    // Pinging opted `a` in: its next edit is acknowledged, reaches `b`, and is not echoed.
    let received = a.updates_received;
    a.edit(|_, txn| add_block(txn, "after", 1.0)).await;
    a.until("the edit's ack", |c| c.acks == 1).await;
    b.until("a's second block", |c| block_count(c) == 2).await;
    assert_eq!(a.updates_received, received, "no update echoed");
    let ping = serde_json::json!({ "type": "ping", "id": "second" }).to_string();
    a.send(resonant_client::protocol::encode_stateless(&ping))
        .await;
    a.until("the second pong", |c| pongs(c).len() == 2).await;
    assert_eq!(pongs(&a)[1], "second");
    assert!(
        a.stateless.iter().all(|m| !m.contains("error")),
        "{:?}",
        a.stateless
    );
    // Both documents agree, and the stock client never heard of the pings.
    b.edit(|_, txn| add_block(txn, "from-b", 2.0)).await;
    a.until("b's block", |c| block_count(c) == 3).await;
    assert_eq!(doc_json(&a.doc), doc_json(&b.doc));
    assert_eq!(b.extension_msgs, 0, "stock clients get no pongs");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn awareness_is_relayed_and_removed_when_its_connection_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "presence");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    let a_id = a.awareness_id();
    a.set_awareness(r#"{"user":"ada","cursor":{"x":1,"y":2}}"#)
        .await;
    b.until("a's cursor", |c| {
        c.peers.get(&a_id).is_some_and(|s| s.is_some())
    })
    .await;
    assert!(b.peers[&a_id].as_deref().unwrap().contains("ada"));
    // A late joiner gets current awareness in the greeting.
    let mut c = Client::connect(&url).await;
    c.until("awareness greeting", |c| c.peers.contains_key(&a_id))
        .await;
    a.close().await;
    b.until("a removed", |c| c.peers.get(&a_id) == Some(&None))
        .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_awareness_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.awareness_timeout_secs = 0.3).await;
    let url = room_url(server.addr(), "expiry");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    let a_id = a.awareness_id();
    a.set_awareness(r#"{"user":"ada"}"#).await;
    b.until("a's state", |c| {
        c.peers.get(&a_id).is_some_and(|s| s.is_some())
    })
    .await;
    // a stays connected but never renews its state.
    b.until("a's state expired", |c| c.peers.get(&a_id) == Some(&None))
        .await;
    drop(a);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn awareness_bursts_are_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.awareness_tick_ms = 50).await;
    let url = room_url(server.addr(), "storm");
    let mut observer = Client::connect_synced(&url).await;
    let mut movers = Vec::new();
    for _ in 0..5 {
        movers.push(Client::connect_synced(&url).await);
    }
    let rounds = 40;
    for round in 0..rounds {
        for m in movers.iter_mut() {
            m.set_awareness(&format!(r#"{{"cursor":{round}}}"#)).await;
        }
    }
    let last = format!(r#"{{"cursor":{}}}"#, rounds - 1);
    let ids: Vec<u64> = movers.iter().map(|m| m.awareness_id()).collect();
    observer
        .until("every mover's last cursor", |c| {
            ids.iter()
                .all(|id| c.peers.get(id).and_then(|s| s.as_deref()) == Some(last.as_str()))
        })
        .await;
    let sent = movers.len() * rounds;
    assert!(
        observer.awareness_msgs * 4 < sent,
        "{} awareness messages for {} changes: not coalesced",
        observer.awareness_msgs,
        sent
    );
    server.shutdown().await.unwrap();
}

/// The coalescing tick grows with the room: in a room of three, a change right behind another
/// waits about a millisecond, not the configured (longest) tick.
#[tokio::test]
async fn a_small_rooms_awareness_is_not_held_for_the_longest_tick() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.awareness_tick_ms = 3000).await;
    let url = room_url(server.addr(), "small");
    let mut observer = Client::connect_synced(&url).await;
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    let started = std::time::Instant::now();
    a.set_awareness(r#"{"cursor":1}"#).await;
    b.set_awareness(r#"{"cursor":2}"#).await;
    let (a_id, b_id) = (a.awareness_id(), b.awareness_id());
    observer
        .until("both cursors", |c| {
            c.peers.get(&a_id).is_some_and(|s| s.is_some())
                && c.peers.get(&b_id).is_some_and(|s| s.is_some())
        })
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the second cursor took {took:?} (a fixed 3 s tick would hold it ~3 s)"
    );
    server.shutdown().await.unwrap();
}

async fn expect_close(url: &str, msg: Message, code: u16) {
    let mut c = Client::connect_synced(url).await;
    c.send_message(msg).await;
    let close = c.until_closed().await.expect("a close frame");
    assert_eq!(close.0, code, "close reason: {}", close.1);
    assert!(!close.1.is_empty(), "close frames carry a reason");
}

#[tokio::test]
async fn bad_input_closes_only_the_offender() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.max_message_bytes = 64 << 10).await;
    let url = room_url(server.addr(), "hostile");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;

    expect_close(&url, Message::Text("hello".into()), 1003).await;
    expect_close(
        &url,
        Message::Binary(Bytes::from_static(&[0xff, 0xff])),
        1007,
    )
    .await;
    expect_close(
        &url,
        Message::Binary(Bytes::from_static(&[0, 2, 50, 1, 2])),
        1007,
    )
    .await;
    expect_close(
        &url,
        Message::Binary(Bytes::from_static(&[0, 2, 3, 9, 9, 9])),
        1007,
    )
    .await;
    expect_close(&url, Message::Binary(Bytes::from_static(&[42])), 1007).await;
    expect_close(&url, Message::Binary(Bytes::new()), 1007).await;
    expect_close(&url, Message::Binary(vec![0u8; 100 << 10].into()), 1009).await;
    for _ in 0..20 {
        let junk: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
        let mut c = Client::connect_synced(&url).await;
        c.send(junk.into()).await;
        // Random bytes may happen to be a harmless message; either way the server survives.
        drop(c);
    }

    let long = "x".repeat(129);
    let mut bad_room = Client::connect(&room_url(server.addr(), &long)).await;
    assert_eq!(bad_room.until_closed().await.unwrap().0, 1008);

    a.edit(|_, txn| add_block(txn, "still-alive", 0.0)).await;
    b.until("edit after the attacks", |c| block_count(c) == 1)
        .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn full_room_refuses_with_1013() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.max_connections_per_room = 2).await;
    let url = room_url(server.addr(), "tiny");
    let _a = Client::connect_synced(&url).await;
    let _b = Client::connect_synced(&url).await;
    let mut c = Client::connect(&url).await;
    assert_eq!(c.until_closed().await.unwrap().0, 1013);
    // Other rooms are unaffected.
    Client::connect_synced(&room_url(server.addr(), "other")).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4000_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.max_queued_bytes = 256 << 10).await;
    let url = room_url(server.addr(), "slow");
    let mut writer = Client::connect_synced(&url).await;
    let mut slow = Client::connect_synced(&url).await;
    let mut fast = Client::connect_synced(&url).await;
    writer.opt_in().await;
    // 20 MB of updates: far more than socket buffers plus the 256 KiB queue can hold while
    // `slow` reads nothing.
    let chunk = "y".repeat(200 << 10);
    let edits = 100;
    for _ in 0..edits {
        writer
            .edit(|_, txn| {
                let t = txn.get_or_insert_text("text");
                t.push(txn, &chunk);
            })
            .await;
        // Keep `fast` reading so only `slow` falls behind.
        let want = fast.updates_received + 1;
        fast.until("fast keeps up", |c| c.updates_received == want)
            .await;
    }
    writer.until("all acks", |c| c.acks == edits).await;
    let close = slow
        .until_closed()
        .await
        .expect("close frame after the backlog");
    assert_eq!(close.0, 4000);
    // The slow client reconnects and resyncs everything.
    let again = Client::connect_synced(&url).await;
    let txn = again.doc.transact();
    assert_eq!(
        txn.get_text("text").unwrap().get_string(&txn).len(),
        edits * chunk.len()
    );
    drop(txn);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_room_unloads_after_grace_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.room_grace_secs = 0.2).await;
    let url = room_url(server.addr(), "idle");
    let mut a = Client::connect_synced(&url).await;
    a.opt_in().await;
    for i in 0..10 {
        a.edit(|_, txn| add_block(txn, &format!("b{i}"), 0.0)).await;
    }
    a.until("acks", |c| c.acks == 10).await;
    let expected = doc_json(&a.doc);
    a.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server.rooms().loaded().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "room never unloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.rooms().journal().flush().await;
    let store = resonant_store::SqliteStore::open_dir(dir.path(), Default::default())
        .await
        .unwrap();
    let stored = resonant_store::Store::load(&store, "idle").await.unwrap();
    assert!(stored.snapshot.is_some(), "unload compacts into a snapshot");
    assert!(
        stored.updates.is_empty(),
        "the log is folded into the snapshot"
    );
    assert_eq!(stored.snapshot_seq, 10);
    let b = Client::connect_synced(&url).await;
    assert_eq!(doc_json(&b.doc), expected);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn log_is_compacted_past_its_threshold_and_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.compact_after_updates = 25).await;
    let url = room_url(server.addr(), "compact");
    let mut a = Client::connect_synced(&url).await;
    a.opt_in().await;
    for i in 0..60 {
        a.edit(|_, txn| add_block(txn, &format!("b{i}"), i as f64))
            .await;
    }
    a.until("acks", |c| c.acks == 60).await;
    let store = resonant_store::SqliteStore::open_dir(dir.path(), Default::default())
        .await
        .unwrap();
    let stored = resonant_store::Store::load(&store, "compact")
        .await
        .unwrap();
    assert_eq!(stored.snapshot_seq, 50, "compacted at 25 and 50 updates");
    assert_eq!(stored.updates.len(), 10);
    let expected = doc_json(&a.doc);
    server.shutdown().await.unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let b = Client::connect_synced(&room_url(server.addr(), "compact")).await;
    assert_eq!(doc_json(&b.doc), expected);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn corrupt_stored_document_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let server = start_server(dir.path(), |_| {}).await;
        server.shutdown().await.unwrap();
    }
    let store = resonant_store::SqliteStore::open_dir(dir.path(), Default::default())
        .await
        .unwrap();
    let garbage = resonant_store::WriteOp::Append {
        room: "broken".into(),
        data: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7]),
    };
    resonant_store::Store::write_batch(&store, 1, &[garbage])
        .await
        .unwrap();
    let server = start_server(dir.path(), |c| c.room_grace_secs = 0.05).await;
    let url = room_url(server.addr(), "broken");
    for _ in 0..2 {
        let mut c = Client::connect(&url).await;
        let close = c.until_closed().await.unwrap();
        assert_eq!(close.0, 1011);
        assert!(!c.synced, "never served an empty document");
    }
    server.shutdown().await.unwrap();
    let stored = resonant_store::Store::load(&store, "broken").await.unwrap();
    assert!(
        stored.snapshot.is_none(),
        "nothing was written over the stored data"
    );
    assert_eq!(stored.updates.len(), 1);
}

#[tokio::test]
async fn concurrent_joiners_share_one_load() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "crowd");
    {
        let mut a = Client::connect_synced(&url).await;
        a.opt_in().await;
        a.edit(|_, txn| add_block(txn, "seed", 0.0)).await;
        a.until("ack", |c| c.acks == 1).await;
    }
    server.shutdown().await.unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "crowd");
    let joins = (0..20).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let joiner = Client::connect_synced(&url).await;
            block_count(&joiner)
        })
    });
    for j in joins {
        assert_eq!(
            j.await.unwrap(),
            1,
            "every joiner sees the stored content once synced"
        );
    }
    assert_eq!(server.rooms().loaded().len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "restart");
    let mut a = Client::connect_synced(&url).await;
    for i in 0..20 {
        a.edit(|_, txn| {
            let meta = txn.get_or_insert_map("meta");
            meta.insert(txn, format!("k{i}"), i as f64);
        })
        .await;
    }
    let mut b = Client::connect_synced(&url).await;
    b.until("all edits", |c| {
        let txn = c.doc.transact();
        txn.get_map("meta").is_some_and(|m| m.len(&txn) == 20)
    })
    .await;
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(a.until_closed().await.unwrap().0, 1012);
    shutdown.await.unwrap().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let c = Client::connect_synced(&room_url(server.addr(), "restart")).await;
    assert_eq!(doc_json(&c.doc), doc_json(&b.doc));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unresponsive_connection_is_closed_by_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| {
        c.ping_interval_secs = 0.1;
        c.idle_timeout_secs = 0.5;
    })
    .await;
    let url = room_url(server.addr(), "keepalive");
    let mut live = Client::connect_synced(&url).await;
    let mut dead = Client::connect_synced(&url).await;
    // `live` keeps reading (so it answers pings) for longer than the idle timeout.
    let started = tokio::time::Instant::now();
    let _ = tokio::time::timeout(Duration::from_millis(1500), live.until("never", |_| false)).await;
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert!(!live.ended(), "a client that answers pings stays connected");
    // `dead` read nothing all this time, so it never sent a pong. Reading now, it may hit the
    // closed socket while answering the queued pings before it sees the close frame.
    let close = dead.until_closed().await;
    assert!(dead.ended());
    if let Some((code, _)) = close {
        assert_eq!(code, 4001);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn acknowledged_update_with_missing_dependencies_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Two edits by one author; the second depends on the first.
    let author = yrs::Doc::new();
    let text = author.get_or_insert_text("text");
    let first = {
        let mut txn = author.transact_mut();
        text.insert(&mut txn, 0, "a");
        txn.encode_update_v1()
    };
    let second = {
        let mut txn = author.transact_mut();
        text.insert(&mut txn, 1, "b");
        txn.encode_update_v1()
    };
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "pending");
    let mut a = Client::connect_synced(&url).await;
    a.opt_in().await;
    // The second edit arrives first: yrs keeps it pending, yet it is acknowledged…
    a.send(resonant_sync::protocol::encode_sync_update(&second))
        .await;
    a.until("ack", |c| c.acks == 1).await;
    drop(a);
    // …so it must outlive a restart (which also compacts the room into a snapshot).
    server.shutdown().await.unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let url = room_url(server.addr(), "pending");
    let mut a = Client::connect_synced(&url).await;
    a.send(resonant_sync::protocol::encode_sync_update(&first))
        .await;
    let mut b = Client::connect_synced(&url).await;
    b.until("both edits integrated", |c| {
        let txn = c.doc.transact();
        txn.get_text("text")
            .is_some_and(|t| t.get_string(&txn) == "ab")
    })
    .await;
    server.shutdown().await.unwrap();
}
