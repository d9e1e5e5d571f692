//! Shared helpers for the integration tests: a y-websocket client built on yrs and
//! tokio-tungstenite, and ways to run the server in-process or as the real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use resonant::ServeConfig;
use resonant_sync::protocol::{self, Incoming};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::Awareness;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, TransactionMut, Update};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Starts an in-process server with its SQLite store in `dir`.
pub async fn start_server(dir: &Path, tweak: impl FnOnce(&mut ServeConfig)) -> resonant::Server {
    let mut config = ServeConfig::for_tests(dir.to_path_buf());
    tweak(&mut config);
    resonant::start(config).await.expect("server starts")
}

/// The sync URL of a room on a server.
pub fn room_url(addr: SocketAddr, room: &str) -> String {
    format!("ws://{addr}/sync/{room}")
}

/// A unique room name, so tests sharing a Postgres database do not meet.
pub fn unique_room(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>())
}

/// A y-websocket client: a yrs doc kept in sync over a real WebSocket.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The client's copy of the document.
    pub doc: Doc,
    /// Awareness states seen from the server (client id → JSON, `None` once removed).
    pub peers: HashMap<u64, Option<String>>,
    /// The client's own awareness (its own client id).
    pub awareness: Awareness,
    /// Whether the server's step 2 has arrived.
    pub synced: bool,
    /// Save acknowledgements received.
    pub acks: usize,
    /// Extension (type 5 or 8) messages received.
    pub extension_msgs: usize,
    /// Stateless JSON messages received.
    pub stateless: Vec<String>,
    /// Document updates (step 2 or update) received.
    pub updates_received: usize,
    /// Awareness messages received.
    pub awareness_msgs: usize,
    /// The close frame the server sent, once it did.
    pub closed: Option<(u16, String)>,
    /// Whether the stream has ended.
    pub ended: bool,
}

impl Client {
    /// Connects without waiting for anything.
    pub async fn connect(url: &str) -> Client {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        let (ws, _) = tokio::time::timeout(WAIT, connect)
            .await
            .expect("connect in time")
            .expect("websocket handshake");
        Client {
            ws,
            doc: Doc::new(),
            peers: HashMap::new(),
            awareness: Awareness::new(Doc::new()),
            synced: false,
            acks: 0,
            extension_msgs: 0,
            stateless: Vec::new(),
            updates_received: 0,
            awareness_msgs: 0,
            closed: None,
            ended: false,
        }
    }

    /// Connects, sends our step 1 and waits for the server's step 2.
    pub async fn connect_synced(url: &str) -> Client {
        let mut c = Client::connect(url).await;
        c.sync().await;
        c
    }

    /// Sends step 1 and waits until the server's answer is applied.
    pub async fn sync(&mut self) {
        let sv = self.doc.transact().state_vector();
        self.send(protocol::encode_sync_step1(&sv)).await;
        self.synced = false;
        self.until("synced", |c| c.synced).await;
    }

    /// Sends one raw binary frame.
    pub async fn send(&mut self, bytes: Bytes) {
        self.ws.send(Message::Binary(bytes)).await.expect("send");
    }

    /// Sends any message (text frames, oversized frames, …).
    pub async fn send_message(&mut self, msg: Message) {
        let _ = self.ws.send(msg).await;
    }

    /// Opts in to save acknowledgements.
    pub async fn opt_in(&mut self) {
        self.send(Bytes::from_static(&[8, 1])).await;
    }

    /// Edits the local doc and sends the resulting update.
    pub async fn edit(&mut self, f: impl FnOnce(&Doc, &mut TransactionMut)) {
        let update = {
            let before = self.doc.transact().state_vector();
            let mut txn = self.doc.transact_mut();
            f(&self.doc, &mut txn);
            drop(txn);
            self.doc.transact().encode_diff_v1(&before)
        };
        self.send(protocol::encode_sync_update(&update)).await;
    }

    /// Sets this client's awareness state and sends it.
    pub async fn set_awareness(&mut self, json: &str) {
        self.awareness.set_local_state_raw(json);
        let id = self.awareness.client_id();
        let update = self.awareness.update_with_clients([id]).unwrap();
        self.send(protocol::encode_awareness(&update)).await;
    }

    /// Processes incoming messages until `pred` holds; panics after [`WAIT`].
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Client) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(self) {
            assert!(
                !self.ended,
                "connection ended while waiting for {what} (close: {:?})",
                self.closed
            );
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("timed out waiting for {what}"),
                Ok(next) => self.handle(next).await,
            }
        }
    }

    /// Processes incoming messages until the server closes the connection; returns the close.
    pub async fn until_closed(&mut self) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.ended {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("timed out waiting for the server to close"),
                Ok(next) => self.handle(next).await,
            }
        }
        self.closed.clone()
    }

    async fn handle(
        &mut self,
        next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) {
        let msg = match next {
            None | Some(Err(_)) => {
                if let Some(Err(e)) = &next {
                    eprintln!("client stream error: {e}");
                }
                self.ended = true;
                return;
            }
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Binary(b) => self.handle_binary(&b).await,
            Message::Close(frame) => {
                self.closed = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                self.ended = true;
            }
            _ => {}
        }
    }

    async fn handle_binary(&mut self, b: &[u8]) {
        match protocol::decode(b).expect("server sends valid messages") {
            Incoming::SyncStep1(sv) => {
                let update = self.doc.transact().encode_diff_v1(&sv);
                self.send(protocol::encode_sync_step2(&update)).await;
            }
            Incoming::SyncStep2(u) => {
                self.apply(u);
                self.synced = true;
            }
            Incoming::Update(u) => self.apply(u),
            Incoming::Awareness(update) => {
                self.awareness_msgs += 1;
                for (id, entry) in update.clients {
                    let json = entry.json.to_string();
                    self.peers
                        .insert(id.get(), (json != "null").then_some(json));
                }
            }
            Incoming::SyncStatus => {
                self.extension_msgs += 1;
                self.acks += 1;
            }
            Incoming::Stateless(s) => {
                self.extension_msgs += 1;
                self.stateless.push(s.to_string());
            }
            Incoming::Auth | Incoming::QueryAwareness => {}
        }
    }

    fn apply(&mut self, update: &[u8]) {
        self.updates_received += 1;
        let update = Update::decode_v1(update).expect("valid update from server");
        self.doc.transact_mut().apply_update(update).expect("apply");
    }

    /// The whole document as a v1 update (for comparing two docs' content).
    pub fn state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The JSON of a doc's root types, with object keys sorted (for comparing content).
pub fn doc_json(doc: &Doc) -> String {
    use yrs::types::ToJson;
    let txn = doc.transact();
    let mut out = serde_json::Map::new();
    for name in ["blocks", "connections"] {
        if let Some(arr) = txn.get_array(name) {
            out.insert(name.into(), canonical(&arr.to_json(&txn)));
        }
    }
    for name in ["meta", "viewport"] {
        if let Some(map) = txn.get_map(name) {
            out.insert(name.into(), canonical(&map.to_json(&txn)));
        }
    }
    if let Some(t) = txn.get_text("text") {
        use yrs::GetString;
        out.insert("text".into(), t.get_string(&txn).into());
    }
    serde_json::Value::Object(out).to_string()
}

fn canonical(any: &yrs::Any) -> serde_json::Value {
    let mut s = String::new();
    any.to_json(&mut s);
    // serde_json's map is ordered by key, so equal content prints equally.
    serde_json::from_str(&s).expect("yrs prints valid JSON")
}

/// The server binary, run as a child process (for kill -9 and signal tests).
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `resonant serve --port 0` with extra arguments and waits for its address.
    pub fn start(args: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_resonant"))
            .arg("serve")
            .args(["--port", "0", "--log", "warn"])
            .args(args)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn resonant");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(WAIT).expect("server prints its address");
        let addr = line
            .strip_prefix("resonant listening on ")
            .expect("address line")
            .parse()
            .expect("socket address");
        ServerProcess { child, addr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then waits for exit; returns how long it took and the exit status.
    pub fn terminate(mut self) -> (Duration, std::process::ExitStatus) {
        let started = std::time::Instant::now();
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait");
        (started.elapsed(), status)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `TEST_DATABASE_URL` if set. Tests that need Postgres skip (saying so) when it is unset,
/// and fail when it is set but the server is unreachable.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("TEST_DATABASE_URL is not set: skipping the Postgres variant");
            None
        }
    }
}
