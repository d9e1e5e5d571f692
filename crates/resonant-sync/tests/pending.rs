//! Updates that arrive before their dependencies (pending structs and pending deletes) are
//! acknowledged, so they must survive compaction and a reload: a snapshot replaces the log
//! entries that carried them, so it must carry them itself.

use std::sync::Arc;

use resonant_store::{Journal, JournalConfig, MemoryStore, Store};
use resonant_sync::protocol;
use resonant_sync::{Rooms, SyncConfig};
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

fn rooms(store: Arc<dyn Store>) -> Rooms {
    let (journal, _task) = Journal::start(store.clone(), JournalConfig::default());
    let config = SyncConfig {
        // Every update is followed by a snapshot that drops the log entries before it.
        compact_after_updates: 1,
        ..SyncConfig::default()
    };
    Rooms::new(store, journal, config)
}

fn diff(doc: &Doc, before: &StateVector) -> Vec<u8> {
    doc.transact().encode_diff_v1(before)
}

#[tokio::test]
async fn pending_structs_and_deletes_survive_compaction_and_reload() {
    let client = Doc::with_client_id(7);
    let text = client.get_or_insert_text("t");
    let sv0 = client.transact().state_vector();
    text.insert(&mut client.transact_mut(), 0, "hello");
    let first = diff(&client, &sv0);
    let sv1 = client.transact().state_vector();
    text.insert(&mut client.transact_mut(), 5, " world");
    let second = diff(&client, &sv1);
    let sv2 = client.transact().state_vector();
    // Deletes "hello", which the server will not have seen when this arrives.
    text.remove_range(&mut client.transact_mut(), 0, 5);
    let delete = diff(&client, &sv2);

    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let first_life = rooms(store.clone());
    let (mut session, _outbox) = first_life.join("pending", true).await.unwrap();
    // " world" depends on "hello"; the delete targets "hello": both stay pending.
    session
        .handle(&protocol::encode_sync_update(&second))
        .unwrap();
    session
        .handle(&protocol::encode_sync_update(&delete))
        .unwrap();
    drop(session);
    first_life.shutdown().await;

    let second_life = rooms(store);
    let (mut session, _outbox) = second_life.join("pending", true).await.unwrap();
    session
        .handle(&protocol::encode_sync_update(&first))
        .unwrap();
    let server_text = session
        .room()
        .with_doc(|doc| doc.get_or_insert_text("t").get_string(&doc.transact()));
    assert_eq!(server_text, " world");
    second_life.shutdown().await;
}
