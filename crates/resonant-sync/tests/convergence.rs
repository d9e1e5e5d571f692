//! Property test: whatever the interleaving of edits, deliveries and reconnections among
//! several clients, once every message is delivered all clients and the server hold the same
//! document. Runs the real rooms and sessions, without a network, over an in-memory store.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use resonant_client::ClientState;
use resonant_store::{Journal, JournalConfig, MemoryStore, Store};
use resonant_sync::{Outbox, Rooms, Session, SyncConfig};
use yrs::types::ToJson;
use yrs::{Array, Doc, GetString, Map, MapPrelim, ReadTxn, Text, Transact, WriteTxn};

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

/// A client without a socket: the shared sans-IO client core, with queues standing in for the
/// network in both directions.
struct SimClient {
    client: ClientState,
    /// Frames on their way to the server, in order.
    outgoing: VecDeque<Bytes>,
    session: Session,
    outbox: Outbox,
}

impl SimClient {
    async fn join(rooms: &Rooms, mut client: ClientState) -> SimClient {
        let (session, outbox) = rooms.join("prop", true).await.expect("join");
        // A new connection starts with an empty queue (whatever was in flight on the old one
        // is lost; sync repairs it) and our step 1.
        let outgoing = VecDeque::from([client.start_sync()]);
        SimClient {
            client,
            outgoing,
            session,
            outbox,
        }
    }

    fn edit(&mut self, kind: u8, pos: u32, val: u32) {
        let frame = self.client.edit(|_, txn| match kind {
            0 => {
                let text = txn.get_or_insert_text("text");
                let len = text.len(txn);
                text.insert(txn, pos % (len + 1), &format!("{}", val % 10));
            }
            1 => {
                let text = txn.get_or_insert_text("text");
                let len = text.len(txn);
                if len > 0 {
                    text.remove_range(txn, pos % len, 1);
                }
            }
            2 => {
                let blocks = txn.get_or_insert_array("blocks");
                let len = blocks.len(txn);
                let block = blocks.insert(txn, pos % (len + 1), MapPrelim::default());
                block.insert(txn, "id", format!("b{val}"));
            }
            _ => {
                let meta = txn.get_or_insert_map("meta");
                meta.insert(txn, format!("k{}", pos % 5), val as f64);
            }
        });
        self.outgoing.extend(frame);
    }

    /// Delivers up to `count` queued client messages to the server; returns how many.
    fn deliver_to_server(&mut self, count: usize) -> usize {
        let mut n = 0;
        while n < count {
            let Some(msg) = self.outgoing.pop_front() else {
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
            let handled = self
                .client
                .handle(&msg)
                .expect("client accepts server messages");
            self.outgoing.extend(handled.reply);
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
            sims.push(SimClient::join(&rooms, ClientState::new()).await);
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
                    // Dropping the session leaves the room; the client state lives on.
                    let SimClient { client: state, .. } = sims.remove(client);
                    sims.insert(client, SimClient::join(&rooms, state).await);
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
                &content(&s.client.doc),
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
