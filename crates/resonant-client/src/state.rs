//! The sans-IO core: one client's protocol state, driven frame by frame. It never touches a
//! socket, so the WebSocket transport, the load tester's split reader and an in-process
//! simulation all drive the same code.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, ReadTxn, Transact, TransactionMut, Update};

use crate::protocol::{self, DecodeError, ServerMessage};

/// The transaction origin of updates applied from the server, so a doc observer can tell them
/// from local edits (as y-websocket's provider does) and not send them back.
pub const REMOTE_ORIGIN: &str = "remote";

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The server sent a close frame: its code and reason (`None` when the frame had no code).
    Closed(Option<(u16, String)>),
    /// The transport failed, or the stream ended without a close frame.
    Error(String),
    /// This side stopped reading.
    Stopped,
}

/// Why a server frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The frame is not a server message we know.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A step 2 or update holds bytes that are not a v1 update.
    #[error("undecodable update from the server: {0}")]
    Update(#[source] yrs::encoding::read::Error),
    /// yrs refused to integrate an update.
    #[error("update from the server does not apply: {0}")]
    Apply(#[source] yrs::error::UpdateError),
}

/// What [`ClientState::handle`] did with one frame.
#[derive(Debug)]
pub struct Handled<'f> {
    /// The decoded message, already applied to the state (updates and strings borrow from the
    /// frame).
    pub message: ServerMessage<'f>,
    /// A frame to send back: the answer to the server's step 1 or awareness query.
    pub reply: Option<Bytes>,
}

/// One y-websocket client's protocol state: its document, its own presence, what it has seen
/// from the server, and how the connection ended.
pub struct ClientState {
    /// The client's copy of the document.
    pub doc: Doc,
    /// Awareness states seen from the server (client id → JSON, `None` once removed); empty
    /// unless [`ClientState::record_peers`] is on.
    pub peers: HashMap<u64, Option<Arc<str>>>,
    /// Whether the server's step 2 has arrived since the last [`ClientState::start_sync`].
    pub synced: bool,
    /// Save acknowledgements (`[8, 1]`) received.
    pub acks: usize,
    /// Extension messages (types 5 and 8) received.
    pub extension_msgs: usize,
    /// Stateless JSON messages received, oldest first (take them to consume them).
    pub stateless: Vec<String>,
    /// Document updates (step 2 or update) received.
    pub updates_received: usize,
    /// Awareness messages received.
    pub awareness_msgs: usize,
    /// How the connection ended, once it did.
    pub end: Option<Ended>,
    /// This client's own presence: its clock and JSON state, once set. A plain pair rather
    /// than a yrs `Awareness`, whose sharded map costs kilobytes per client that the load
    /// tester's thousands of connections never use.
    own_awareness: Option<(u32, Arc<str>)>,
    record_peers: bool,
}

impl Default for ClientState {
    fn default() -> Self {
        ClientState::with_doc(Doc::new())
    }
}

impl ClientState {
    /// A client with a fresh, empty document.
    pub fn new() -> ClientState {
        ClientState::default()
    }

    /// A client around an existing document (which may be shared with other code).
    pub fn with_doc(doc: Doc) -> ClientState {
        ClientState {
            doc,
            peers: HashMap::new(),
            synced: false,
            acks: 0,
            extension_msgs: 0,
            stateless: Vec::new(),
            updates_received: 0,
            awareness_msgs: 0,
            end: None,
            own_awareness: None,
            record_peers: true,
        }
    }

    /// Whether to keep every peer's awareness state in [`ClientState::peers`] (on by default).
    /// The load tester turns it off: it reads states from the decoded message and would only
    /// pay for the map on its measured receive path.
    pub fn record_peers(mut self, on: bool) -> ClientState {
        self.record_peers = on;
        self
    }

    /// This client's awareness client id (the document's client id, as in y-websocket).
    pub fn awareness_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    /// Whether the connection has ended.
    pub fn ended(&self) -> bool {
        self.end.is_some()
    }

    /// Starts a (re)sync: returns our step 1. [`ClientState::synced`] turns true when the
    /// server's step 2 arrives.
    pub fn start_sync(&mut self) -> Bytes {
        self.synced = false;
        protocol::encode_sync_step1(&self.doc.transact().state_vector())
    }

    /// Edits the document in one transaction and returns the update frame to send, or `None`
    /// if the transaction changed nothing (y-websocket's provider sends nothing then either).
    pub fn edit(&self, f: impl FnOnce(&Doc, &mut TransactionMut)) -> Option<Bytes> {
        let mut txn = self.doc.transact_mut();
        f(&self.doc, &mut txn);
        let update = txn.encode_update_v1();
        // No new blocks for any client, empty delete set.
        (update != [0, 0]).then(|| protocol::encode_sync_update(&update))
    }

    /// Sets this client's presence and returns the awareness frame to send.
    pub fn set_awareness(&mut self, json: &str) -> Bytes {
        // The clock starts at 1 and grows with every change, as in y-protocols and yrs:
        // receivers ignore a state whose clock is not newer than the one they hold.
        let clock = self.own_awareness.as_ref().map_or(1, |(c, _)| c + 1);
        self.own_awareness = Some((clock, json.into()));
        self.own_awareness_frame().expect("just set")
    }

    fn own_awareness_frame(&self) -> Option<Bytes> {
        let (clock, json) = self.own_awareness.as_ref()?;
        let entry = AwarenessUpdateEntry {
            clock: *clock,
            json: json.clone(),
        };
        let clients = HashMap::from([(ClientID::new(self.awareness_id()), entry)]);
        Some(protocol::encode_awareness(&AwarenessUpdate { clients }))
    }

    /// Applies one server frame; returns the decoded message and what to send back.
    pub fn handle<'f>(&mut self, frame: &'f [u8]) -> Result<Handled<'f>, ClientError> {
        let message = ServerMessage::decode(frame)?;
        let mut reply = None;
        match &message {
            ServerMessage::SyncStep1(sv) => {
                let update = self.doc.transact().encode_diff_v1(sv);
                reply = Some(protocol::encode_sync_step2(&update));
            }
            ServerMessage::SyncStep2(update) => {
                self.apply(update)?;
                self.synced = true;
            }
            ServerMessage::Update(update) => self.apply(update)?,
            ServerMessage::Awareness(update) => {
                self.awareness_msgs += 1;
                if self.record_peers {
                    for (id, entry) in &update.clients {
                        // y-protocols encodes a removed state as the JSON `null`.
                        let state = (&*entry.json != "null").then(|| entry.json.clone());
                        self.peers.insert(id.get(), state);
                    }
                }
            }
            ServerMessage::QueryAwareness => reply = self.own_awareness_frame(),
            ServerMessage::Stateless(json) => {
                self.extension_msgs += 1;
                self.stateless.push(json.to_string());
            }
            ServerMessage::SyncStatus(status) => {
                self.extension_msgs += 1;
                self.acks += usize::from(*status == 1);
            }
            ServerMessage::AuthDenied(_) | ServerMessage::AuthGranted => {}
        }
        Ok(Handled { message, reply })
    }

    fn apply(&mut self, update: &[u8]) -> Result<(), ClientError> {
        self.updates_received += 1;
        let update = Update::decode_v1(update).map_err(ClientError::Update)?;
        self.doc
            .transact_mut_with(REMOTE_ORIGIN)
            .apply_update(update)
            .map_err(ClientError::Apply)
    }

    /// Records how the connection ended (the first end wins).
    pub fn set_ended(&mut self, how: Ended) {
        self.end.get_or_insert(how);
    }

    /// The server's close frame (code, reason), if the connection ended with one.
    pub fn close_frame(&self) -> Option<&(u16, String)> {
        match &self.end {
            Some(Ended::Closed(frame)) => frame.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Array, GetString, Map, MapPrelim, StateVector, Text, WriteTxn};

    /// A minimal y-websocket server for one room: a yrs doc that answers step 1 and relays
    /// updates, speaking the bytes a real server sends.
    struct Server {
        doc: Doc,
    }

    impl Server {
        /// The greeting: the server's step 1.
        fn step1(&self) -> Bytes {
            // Same layout in both directions.
            protocol::encode_sync_step1(&self.doc.transact().state_vector())
        }

        /// Handles a client frame; returns the answer for the sender and the frame to relay.
        fn handle(&self, frame: &[u8]) -> (Option<Bytes>, Option<Bytes>) {
            match ServerMessage::decode(frame).unwrap() {
                ServerMessage::SyncStep1(sv) => {
                    let update = self.doc.transact().encode_diff_v1(&sv);
                    (Some(protocol::encode_sync_step2(&update)), None)
                }
                ServerMessage::SyncStep2(u) | ServerMessage::Update(u) => {
                    let update = Update::decode_v1(u).unwrap();
                    self.doc.transact_mut().apply_update(update).unwrap();
                    (None, Some(protocol::encode_sync_update(u)))
                }
                ServerMessage::Awareness(u) => (None, Some(protocol::encode_awareness(&u))),
                other => panic!("unexpected client frame {other:?}"),
            }
        }
    }

    fn text(doc: &Doc) -> String {
        let txn = doc.transact();
        txn.get_text("text")
            .map(|t| t.get_string(&txn))
            .unwrap_or_default()
    }

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn syncs_both_ways_and_relays_edits() {
        let server = Server { doc: Doc::new() };
        server
            .doc
            .get_or_insert_text("text")
            .insert(&mut server.doc.transact_mut(), 0, "stored ");
        let mut a = ClientState::new();
        // `a` has an offline edit the server lacks.
        // (Its frame is lost in flight: the handshake must repair that.)
        let _ = a.edit(|_, txn| {
            let blocks = txn.get_or_insert_array("blocks");
            let block = blocks.push_back(txn, MapPrelim::default());
            block.insert(txn, "id", "b1");
        });

        // The handshake as a real connection runs it: greeting, then our step 1.
        let greeting = server.step1();
        let handled = a.handle(&greeting).unwrap();
        assert!(matches!(handled.message, ServerMessage::SyncStep1(_)));
        let (none, relay) = server.handle(&handled.reply.expect("step 2 for the server"));
        assert!(none.is_none() && relay.is_some());
        let step1 = a.start_sync();
        assert!(!a.synced);
        let step2 = server.handle(&step1).0.unwrap();
        let handled = a.handle(&step2).unwrap();
        assert!(matches!(handled.message, ServerMessage::SyncStep2(_)));
        assert!(handled.reply.is_none());
        assert!(a.synced);
        assert_eq!(text(&a.doc), "stored ");
        assert_eq!(state(&a.doc), state(&server.doc));

        // A second client joins and receives `a`'s later edit as an update.
        let mut b = ClientState::new();
        let (step2, _) = server.handle(&b.start_sync());
        b.handle(&step2.unwrap()).unwrap();
        assert_eq!(state(&b.doc), state(&server.doc));
        let edit = a.edit(|_, txn| {
            let t = txn.get_or_insert_text("text");
            let len = t.len(txn);
            t.insert(txn, len, "and edited");
        });
        let (_, relay) = server.handle(&edit.unwrap());
        assert!(
            a.edit(|_, _| {}).is_none(),
            "an empty transaction sends nothing"
        );
        let relay = relay.unwrap();
        let handled = b.handle(&relay).unwrap();
        assert!(matches!(handled.message, ServerMessage::Update(_)));
        assert_eq!(text(&b.doc), "stored and edited");
        assert_eq!(b.updates_received, 2);
        let txn = b.doc.transact();
        assert_eq!(txn.get_array("blocks").unwrap().len(&txn), 1);
    }

    #[test]
    fn remote_updates_carry_the_remote_origin() {
        let author = Doc::new();
        author
            .get_or_insert_text("text")
            .insert(&mut author.transact_mut(), 0, "hi");
        let mut c = ClientState::new();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        c.doc
            .observe_update_v1("test", move |txn, _| {
                let remote = txn.origin() == Some(&yrs::Origin::from(REMOTE_ORIGIN));
                log.lock().unwrap().push(remote);
            })
            .unwrap();
        c.handle(&protocol::encode_sync_update(&state(&author)))
            .unwrap();
        let _ = c.edit(|_, txn| txn.get_or_insert_text("text").push(txn, "!"));
        assert_eq!(*seen.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn tracks_awareness_extensions_and_the_end() {
        let mut c = ClientState::new();
        let mut clients = HashMap::new();
        for (id, json) in [(11, r#"{"user":"ada"}"#), (12, "null")] {
            let entry = AwarenessUpdateEntry {
                clock: 1,
                json: json.into(),
            };
            clients.insert(ClientID::new(id), entry);
        }
        let frame = protocol::encode_awareness(&AwarenessUpdate { clients });
        c.handle(&frame).unwrap();
        assert_eq!(c.awareness_msgs, 1);
        assert_eq!(c.peers[&11].as_deref(), Some(r#"{"user":"ada"}"#));
        assert_eq!(c.peers[&12], None);

        // Peers can be left unrecorded; the message still carries them.
        let mut quiet = ClientState::new().record_peers(false);
        match quiet.handle(&frame).unwrap().message {
            ServerMessage::Awareness(u) => assert_eq!(u.clients.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        assert!(quiet.peers.is_empty());

        // The server asking for our presence gets it once we have one, at its latest clock.
        assert!(c.handle(&[3]).unwrap().reply.is_none());
        let _ = c.set_awareness(r#"{"cursor":1}"#);
        let sent = c.set_awareness(r#"{"cursor":2}"#);
        let reply = c.handle(&[3]).unwrap().reply.unwrap();
        assert_eq!(reply, sent);
        match ServerMessage::decode(&reply).unwrap() {
            ServerMessage::Awareness(u) => {
                let e = &u.clients[&ClientID::new(c.awareness_id())];
                assert_eq!((e.clock, &*e.json), (2, r#"{"cursor":2}"#));
            }
            other => panic!("unexpected {other:?}"),
        }

        c.handle(&[8, 1]).unwrap();
        c.handle(&[8, 1]).unwrap();
        c.handle(&protocol::encode_stateless(r#"{"type":"hello"}"#))
            .unwrap();
        assert_eq!((c.acks, c.extension_msgs), (2, 3));
        assert_eq!(c.stateless, vec![r#"{"type":"hello"}"#.to_string()]);

        assert!(!c.ended());
        c.set_ended(Ended::Closed(Some((1012, "restart".into()))));
        c.set_ended(Ended::Error("later".into()));
        assert_eq!(c.close_frame(), Some(&(1012, "restart".to_string())));
        assert!(c.ended());
    }

    #[test]
    fn refuses_bad_frames_without_changing_the_doc() {
        let mut c = ClientState::new();
        assert!(matches!(c.handle(&[42]), Err(ClientError::Decode(_))));
        // A well-framed update whose body is not an update.
        assert!(matches!(
            c.handle(&protocol::encode_sync_update(&[0xff, 0xff, 0xff])),
            Err(ClientError::Update(_))
        ));
        assert_eq!(c.doc.transact().state_vector(), StateVector::default());
        assert!(!c.synced);
    }
}
