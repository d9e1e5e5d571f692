//! The session fuzzer's reload findings (fuzz/findings/README.md §3), replayed as the
//! `session` target does: frames through a real session over an in-memory store, then the
//! room unloaded and loaded again from what the journal stored. After the fix the reloaded
//! document equals the one served (state vector and delete set), or the server refused the
//! update that would have made them differ.
//!
//! The cause, in `reload_diverges_without_pending.session`: struct `101:11` names `101:20`,
//! a later clock of its own client, as its origin. Live, it waited until `101:20` arrived
//! (yrs integrates a struct past its client's clock when its dependencies are there) and
//! then integrated; on reload yrs integrates each client's structs in clock order, so
//! `101:11` waits for `101:20`, which waits behind `101:11`: nothing from 11 on loads
//! (served `{101: 22}`, reloaded `{101: 11}`). No encoder produces such a struct (a struct
//! can only refer to what existed when it was made), so the validator refuses it.
//! `reload_diverges_after_reused_ids.session` holds a subdocument, refused as well.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use resonant_store::{Journal, JournalConfig, MemoryStore, Store};
use resonant_sync::{close_code, protocol, Rooms, SyncConfig};
use yrs::{Doc, ReadTxn, Snapshot, Text, Transact};

fn finding(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/findings")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The session target's input format: frames behind little-endian u16 lengths.
fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = u16::from_le_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let (frame, rest) = rest.split_at(len.min(rest.len()));
        out.push(frame);
        data = rest;
    }
    out
}

/// A document's state: its state vector (clients at clock 0 left out: yrs lists a client
/// whose only structs sit behind a hole at 0, a reload does not) and delete set.
#[derive(Debug, PartialEq)]
struct State {
    clocks: BTreeMap<u64, u32>,
    deleted: String,
}

fn state_of(snapshot: Snapshot) -> State {
    State {
        clocks: snapshot
            .state_map
            .iter()
            .filter(|(_, &clock)| clock > 0)
            .map(|(c, &clock)| (c.get(), clock))
            .collect(),
        deleted: format!("{:?}", snapshot.delete_set),
    }
}

/// The room's document state, and whether structs or deletes wait.
fn state(rooms: &Rooms) -> (State, bool) {
    let room = rooms.loaded().pop().expect("room is loaded");
    room.with_doc(|doc: &Doc| {
        let txn = doc.transact();
        let pending = txn.store().pending_update().is_some() || txn.store().pending_ds().is_some();
        (state_of(txn.snapshot()), pending)
    })
}

struct Replay {
    /// The close code of the first refused frame, if any.
    refused: Option<u16>,
    served: (State, bool),
    reloaded: (State, bool),
}

async fn replay(data: &[u8]) -> Replay {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (journal, writer) = Journal::start(store.clone(), JournalConfig::default());
    let rooms = Rooms::new(store.clone(), journal.clone(), SyncConfig::default());
    let (mut session, _out) = rooms.join("fuzz", true).await.unwrap();
    let mut refused = None;
    for frame in frames(data) {
        if let Err(e) = session.handle(frame) {
            // The transport closes the connection on the first error.
            refused = Some(e.close().code);
            break;
        }
    }
    let served = state(&rooms);
    drop(session);
    rooms.shutdown().await;
    journal.close();
    writer.await.unwrap();

    let (journal, writer) = Journal::start(store.clone(), JournalConfig::default());
    let rooms = Rooms::new(store, journal.clone(), SyncConfig::default());
    let conn = rooms
        .join("fuzz", false)
        .await
        .expect("stored document loads");
    let reloaded = state(&rooms);
    drop(conn);
    rooms.shutdown().await;
    journal.close();
    writer.await.unwrap();
    Replay {
        refused,
        served,
        reloaded,
    }
}

#[tokio::test]
async fn forward_self_reference_is_refused_and_the_reload_matches() {
    let r = replay(&finding("reload_diverges_without_pending.session")).await;
    assert_eq!(r.refused, Some(close_code::INVALID_PAYLOAD));
    assert_eq!(r.served, r.reloaded);
}

#[tokio::test]
async fn reused_ids_with_a_subdocument_are_refused_and_the_reload_matches() {
    let r = replay(&finding("reload_diverges_after_reused_ids.session")).await;
    assert_eq!(r.refused, Some(close_code::INVALID_PAYLOAD));
    assert_eq!(r.served, r.reloaded);
}

/// The re-used ids finding without its subdocument: every update is accepted. Client 202
/// sends 202:0..24 where 202:2 names a parent that does not exist, so 202:2 and everything
/// after it waits; then it sends 202:0..6 again with different content, which integrates.
/// The pending copy of 202:2..6 was stale, and the structs after it (now integrable) used to
/// stay pending until some update of client 111 made yrs retry, while the snapshot, which
/// merges the pending structs in, loaded them: served `{202: 6}`, reloaded `{202: 12}`.
#[tokio::test]
async fn reused_ids_reload_as_served() {
    let r = replay(&finding("reload_diverges_reused_ids_no_subdoc.session")).await;
    assert_eq!(r.refused, None);
    assert_eq!(r.served, r.reloaded);
}

#[tokio::test]
async fn every_session_finding_reloads_as_served() {
    for name in [
        "reload_diverges_without_pending.session",
        "reload_diverges_after_reused_ids.session",
        "reload_diverges_reused_ids_no_subdoc.session",
        "yrs_use_after_free_split_at.session",
        "yrs_uaf_minimal.session",
    ] {
        let r = replay(&finding(name)).await;
        assert_eq!(r.served, r.reloaded, "{name} (refused: {:?})", r.refused);
    }
}

/// The refused shape, built by a real client and then edited by hand: everything a client
/// really sends reloads as served.
#[tokio::test]
async fn a_real_clients_edits_reload_as_served() {
    let client = Doc::with_client_id(101);
    let text = client.get_or_insert_text("content");
    let mut frames_in = Vec::new();
    let mut sv = client.transact().state_vector();
    for (pos, s) in [(0, "Hello world"), (5, ", dear"), (0, "🎉 "), (5, "!")] {
        text.insert(&mut client.transact_mut(), pos, s);
        let update = client.transact().encode_diff_v1(&sv);
        sv = client.transact().state_vector();
        frames_in.push(protocol::encode_sync_update(&update));
    }
    text.remove_range(&mut client.transact_mut(), 0, 5);
    frames_in.push(protocol::encode_sync_update(
        &client.transact().encode_diff_v1(&sv),
    ));
    let mut data = Vec::new();
    for f in &frames_in {
        data.extend((f.len() as u16).to_le_bytes());
        data.extend_from_slice(f);
    }
    let r = replay(&data).await;
    assert_eq!(r.refused, None);
    assert!(!r.served.1, "nothing pending");
    assert_eq!(r.served, r.reloaded);
    assert_eq!(r.served.0, state_of(client.transact().snapshot()));
}
