//! Property test: whatever the interleaving of edits, deliveries and reconnections among
//! several clients, once every message is delivered all clients and the server hold the same
//! document. Runs the real rooms and sessions, without a network, over an in-memory store.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proptest::prelude::*;
use resonant_store::{Journal, JournalConfig, MemoryStore, Store};
use resonant_sync::protocol::{self, Incoming};
use resonant_sync::{Outbox, Rooms, Session, SyncConfig};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, GetString, Map, MapPrelim, ReadTxn, Text, Transact, Update, WriteTxn};

#[derive(Debug, Clone)]
enum Op {
    Edit {
        client: usize,
        kind: u8,
        pos: u32,
        val: u32,
    },
    ToServer {
        client: usize,
        count: usize,
    },
    ToClient {
        client: usize,
        count: usize,
    },
    Reconnect {
        client: usize,
    },
}

fn op(clients: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..clients, 0u8..4, any::<u32>(), any::<u32>())
            .prop_map(|(client, kind, pos, val)| Op::Edit { client, kind, pos, val }),
        3 => (0..clients, 1usize..4).prop_map(|(client, count)| Op::ToServer { client, count }),
        3 => (0..clients, 1usize..6).prop_map(|(client, count)| Op::ToClient { client, count }),
        1 => (0..clients).prop_map(|client| Op::Reconnect { client }),
    ]
}

struct SimClient {
    doc: Doc,
    outgoing: Arc<Mutex<VecDeque<Bytes>>>,
    session: Session,
    outbox: Outbox,
}

impl SimClient {
    async fn join(rooms: &Rooms, doc: Doc, outgoing: Arc<Mutex<VecDeque<Bytes>>>) -> SimClient {
        let (session, outbox) = rooms.join("prop", true).await.expect("join");
        let sv = doc.transact().state_vector();
        // Whatever was in flight on the old connection is lost; sync repairs it.
        outgoing.lock().unwrap().clear();
        outgoing
            .lock()
            .unwrap()
            .push_back(protocol::encode_sync_step1(&sv));
        SimClient {
            doc,
            outgoing,
            session,
            outbox,
        }
    }

    fn new_doc() -> (Doc, Arc<Mutex<VecDeque<Bytes>>>) {
        let doc = Doc::new();
        let outgoing = Arc::new(Mutex::new(VecDeque::new()));
        let queue = outgoing.clone();
        doc.observe_update_v1("sim", move |txn, e| {
            // Updates that came from the server are not sent back.
            if txn.origin().is_none() {
                queue
                    .lock()
                    .unwrap()
                    .push_back(protocol::encode_sync_update(&e.update));
            }
        })
        .unwrap();
        (doc, outgoing)
    }

    fn edit(&self, kind: u8, pos: u32, val: u32) {
        let mut txn = self.doc.transact_mut();
        match kind {
            0 => {
                let text = txn.get_or_insert_text("text");
                let len = text.len(&txn);
                text.insert(&mut txn, pos % (len + 1), &format!("{}", val % 10));
            }
            1 => {
                let text = txn.get_or_insert_text("text");
                let len = text.len(&txn);
                if len > 0 {
                    text.remove_range(&mut txn, pos % len, 1);
                }
            }
            2 => {
                let blocks = txn.get_or_insert_array("blocks");
                let len = blocks.len(&txn);
                let block = blocks.insert(&mut txn, pos % (len + 1), MapPrelim::default());
                block.insert(&mut txn, "id", format!("b{val}"));
            }
            _ => {
                let meta = txn.get_or_insert_map("meta");
                meta.insert(&mut txn, format!("k{}", pos % 5), val as f64);
            }
        }
    }

    /// Delivers up to `count` queued client messages to the server; returns how many.
    fn deliver_to_server(&mut self, count: usize) -> usize {
        let mut n = 0;
        while n < count {
            let Some(msg) = self.outgoing.lock().unwrap().pop_front() else {
                break;
            };
            self.session
                .handle(&msg)
                .expect("server accepts client messages");
            n += 1;
        }
        n
    }

    /// Delivers up to `count` server messages to the client; returns how many.
    fn deliver_to_client(&mut self, count: usize) -> usize {
        let mut n = 0;
        while n < count {
            let Some(msg) = self.outbox.try_recv(self.session.peer()) else {
                break;
            };
            match protocol::decode(&msg).unwrap() {
                Incoming::SyncStep1(sv) => {
                    let update = self.doc.transact().encode_diff_v1(&sv);
                    self.outgoing
                        .lock()
                        .unwrap()
                        .push_back(protocol::encode_sync_step2(&update));
                }
                Incoming::SyncStep2(u) | Incoming::Update(u) => {
                    let mut txn = self.doc.transact_mut_with("server");
                    txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
                }
                _ => {}
            }
            n += 1;
        }
        n
    }
}

fn content(doc: &Doc) -> String {
    let txn = doc.transact();
    let text = txn
        .get_text("text")
        .map(|t| t.get_string(&txn))
        .unwrap_or_default();
    let mut blocks = String::new();
    if let Some(b) = txn.get_array("blocks") {
        b.to_json(&txn).to_json(&mut blocks);
    }
    let meta: std::collections::BTreeMap<String, String> = txn
        .get_map("meta")
        .map(|m| {
            m.iter(&txn)
                .map(|(k, v)| (k.to_string(), v.to_string(&txn)))
                .collect()
        })
        .unwrap_or_default();
    let sv: std::collections::BTreeMap<u64, u32> = txn
        .state_vector()
        .iter()
        .map(|(c, clock)| (c.get(), *clock))
        .collect();
    format!("text={text}\nblocks={blocks}\nmeta={meta:?}\nsv={sv:?}")
}

fn run(clients: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let (journal, _) = Journal::start(store.clone(), JournalConfig::default());
        let config = SyncConfig {
            compact_after_updates: 7,
            ..SyncConfig::default()
        };
        let rooms = Rooms::new(store, journal, config);
        let mut sims = Vec::new();
        for _ in 0..clients {
            let (doc, outgoing) = SimClient::new_doc();
            sims.push(SimClient::join(&rooms, doc, outgoing).await);
        }
        for op in ops {
            match op {
                Op::Edit {
                    client,
                    kind,
                    pos,
                    val,
                } => sims[client].edit(kind, pos, val),
                Op::ToServer { client, count } => {
                    sims[client].deliver_to_server(count);
                }
                Op::ToClient { client, count } => {
                    sims[client].deliver_to_client(count);
                }
                Op::Reconnect { client } => {
                    let old = sims.remove(client);
                    let (doc, outgoing) = (old.doc.clone(), old.outgoing.clone());
                    drop(old);
                    sims.insert(client, SimClient::join(&rooms, doc, outgoing).await);
                }
            }
        }
        // Deliver everything until nothing moves.
        loop {
            let mut moved = 0;
            for s in sims.iter_mut() {
                moved += s.deliver_to_server(usize::MAX);
                moved += s.deliver_to_client(usize::MAX);
            }
            if moved == 0 {
                break;
            }
        }
        let room = sims[0].session.room().clone();
        let server = room.with_doc(content);
        for (i, s) in sims.iter().enumerate() {
            prop_assert_eq!(
                &content(&s.doc),
                &server,
                "client {} differs from the server",
                i
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_converge(
        (clients, ops) in (2usize..5).prop_flat_map(|n| (Just(n), prop::collection::vec(op(n), 1..120)))
    ) {
        run(clients, ops)?;
    }
}
