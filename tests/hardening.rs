//! Failure modes found by review: store failures, unload races, hostile and broken clients,
//! panics, limits and overload. Each test checks that the bad thing stays contained (the
//! offending room or connection) and that a well-behaved client elsewhere keeps syncing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use resonant_store::fault::FaultStore;
use resonant_store::{SqliteStore, SqliteSync, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, Text, Transact, WriteTxn};

fn push_text(c: &str) -> impl FnOnce(&yrs::Doc, &mut yrs::TransactionMut) + '_ {
    move |_, txn| {
        let t = txn.get_or_insert_text("text");
        let len = t.len(txn);
        t.insert(txn, len, c);
    }
}

fn doc_state(doc: &yrs::Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&yrs::StateVector::default())
}

fn text_of(doc: &yrs::Doc) -> String {
    let txn = doc.transact();
    txn.get_text("text")
        .map(|t| t.get_string(&txn))
        .unwrap_or_default()
}

/// A plain HTTP/1.1 GET; returns the status code and the head (and body, unless the
/// connection was upgraded, which the caller then drops).
async fn http_get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        out.extend_from_slice(&buf[..n]);
    }
    let status: u16 = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
    if status != 101 {
        s.read_to_end(&mut out).await.unwrap();
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// Item 1: a room whose writes can never commit is reset alone; the others keep acking.
#[tokio::test]
async fn a_room_whose_writes_cannot_commit_is_reset_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open_dir(dir.path(), SqliteSync::Normal)
        .await
        .unwrap();
    let faulty = FaultStore::new(Arc::new(sqlite));
    let config = resonant::ServeConfig::for_tests(dir.path().to_path_buf());
    let server = resonant::start_with_store(config, faulty.clone())
        .await
        .unwrap();
    let (bad, good) = (unique_room("bad"), unique_room("good"));
    let mut a = Client::connect_synced(&room_url(server.addr(), &bad)).await;
    let mut b = Client::connect_synced(&room_url(server.addr(), &good)).await;
    a.opt_in().await;
    b.opt_in().await;
    a.edit(push_text("kept ")).await;
    a.until("first ack", |c| c.acks == 1).await;

    faulty.poison_room(&bad);
    a.edit(push_text("dropped")).await;
    let close = a.until_closed().await.expect("close frame");
    assert_eq!(close.0, 1011, "{}", close.1);
    assert_eq!(a.acks, 1, "the dropped write is never acknowledged");
    for i in 0..20 {
        b.edit(push_text("g")).await;
        b.until("acks in the healthy room", |c| c.acks == i + 1)
            .await;
    }

    // Once the store accepts the room again, the client reconnects, resyncs, and what was
    // never acknowledged reaches the store.
    faulty.heal(&bad);
    let mut again = Client::connect(&room_url(server.addr(), &bad)).await;
    again
        .doc
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&doc_state(&a.doc)).unwrap())
        .unwrap();
    again.opt_in().await;
    again.sync().await;
    again
        .until("the resent edit is acked", |c| c.acks >= 1)
        .await;
    let fresh = Client::connect_synced(&room_url(server.addr(), &bad)).await;
    assert_eq!(text_of(&fresh.doc), "kept dropped");
    server.shutdown().await.unwrap();
}

/// Item 2: joins racing the unload deadline, with a multi-MB document and compactions,
/// never load an older state than was acknowledged.
#[tokio::test]
async fn joins_racing_the_unload_deadline_lose_nothing() {
    let mut backends: Vec<Option<String>> = vec![None];
    if let Some(url) = postgres_url() {
        backends.push(Some(url));
    }
    for database_url in backends {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path(), |c| {
            c.database_url = database_url.clone();
            c.room_grace_secs = 0.02;
            c.compact_after_updates = 3;
        })
        .await;
        let room = unique_room("unload-race");
        let url = room_url(server.addr(), &room);
        let mut expected = String::new();
        let big = "m".repeat(2 << 20);
        for i in 0..40u64 {
            let mut c = Client::connect_synced(&url).await;
            assert_eq!(
                text_of(&c.doc).len(),
                expected.len(),
                "iteration {i}: the loaded state is what was acknowledged ({database_url:?})"
            );
            assert!(
                text_of(&c.doc) == expected,
                "iteration {i}: content differs"
            );
            c.opt_in().await;
            let piece = if i == 0 {
                big.clone()
            } else {
                format!("<{i}>")
            };
            c.edit(push_text(&piece)).await;
            c.until("ack", |c| c.acks == 1).await;
            expected.push_str(&piece);
            c.close().await;
            // Land the next join before, at and after the 20 ms grace deadline.
            tokio::time::sleep(Duration::from_millis(i % 5 * 8)).await;
        }
        server.shutdown().await.unwrap();
    }
}

/// Item 3: a client that stops reading is dropped after the write timeout: its socket and
/// queue are freed, and another room keeps syncing.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_freed() {
    let dir = tempfile::tempdir().unwrap();
    // jemalloc returns freed pages at once instead of after its 10 s decay, so RSS tells
    // what is still held.
    // SAFETY: set before the child is spawned; no other thread reads this variable.
    unsafe { std::env::set_var("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0") };
    let server = ServerProcess::start(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--write-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "600",
        "--max-queued-bytes",
        "33554432",
        "--sqlite-sync",
        "normal",
    ]);
    let pid = server.pid();
    let room = room_url(server.addr, "stuck");
    let mut writer = Client::connect_synced(&room).await;
    let mut other = Client::connect_synced(&room_url(server.addr, "elsewhere")).await;
    let mut other_peer = Client::connect_synced(&room_url(server.addr, "elsewhere")).await;
    let baseline_sockets = open_sockets(pid);

    // A client with a tiny receive buffer that completes the handshake and never reads.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp.connect(server.addr).await.unwrap();
    let (stuck, _) = tokio_tungstenite::client_async(&room, tcp).await.unwrap();
    eventually("the stuck client's socket", || async {
        open_sockets(pid) > baseline_sockets
    })
    .await;
    let rss_before = rss_kib(pid);
    let chunk = "s".repeat(256 << 10);
    for _ in 0..40 {
        writer.edit(push_text(&chunk)).await;
    }
    eventually("the stuck connection to be closed", || async {
        open_sockets(pid) == baseline_sockets
    })
    .await;
    let (_, metrics) = http_get(server.addr, "/metrics", "").await;
    assert!(metric(&metrics, "resonant_write_timeouts_total") >= 1.0);
    other_peer.opt_in().await;
    other.edit(push_text("alive")).await;
    other_peer
        .until("the other room syncs", |c| text_of(&c.doc) == "alive")
        .await;
    // 10 MB went to the room. Once the stuck connection is gone, what it held (up to its
    // 32 MiB queue) is freed: RSS settles at the document's size plus caches.
    eventually(
        "RSS to settle once the stuck connection is gone",
        || async { rss_kib(pid) < rss_before + 48 * 1024 },
    )
    .await;
    drop(stuck);
    drop(server);
}

/// Item 4: presence is bounded per connection and per message; refusals are errors, not
/// closes; removed entries are forgotten after the timeout.
#[tokio::test]
async fn presence_floods_are_refused_and_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| {
        c.awareness_timeout_secs = 0.3;
        c.max_awareness_ids = 4;
    })
    .await;
    let url = room_url(server.addr(), "flood");
    let mut hostile = Client::connect_synced(&url).await;
    let mut watcher = Client::connect_synced(&url).await;
    hostile.opt_in().await;
    // One message with 10,000 entries: refused whole.
    let many = awareness_frame((1..=10_000).map(|id| (id, 1, "{\"x\":1}".to_string())));
    hostile.send(many).await;
    hostile
        .until("an awareness-limit error", |c| {
            c.stateless.iter().any(|s| s.contains("awareness-limit"))
        })
        .await;
    // Many messages, each introducing a new id: only 4 are taken.
    for id in 1..=200u64 {
        hostile
            .send(awareness_frame([(id, 1, format!("{{\"n\":{id}}}"))]))
            .await;
    }
    // A state over the size limit.
    let huge = format!("{{\"pad\":\"{}\"}}", "p".repeat(64 << 10));
    hostile.send(awareness_frame([(1, 2, huge)])).await;
    hostile.until("refusals", |c| c.stateless.len() >= 3).await;
    watcher
        .until("the 4 admitted states", |c| {
            c.peers.values().filter(|v| v.is_some()).count() == 4
        })
        .await;
    let room = server.rooms().loaded().into_iter().next().unwrap();
    assert_eq!(room.awareness_entries(), 4);
    assert!(!hostile.ended(), "refusals do not close");
    drop(hostile);
    eventually("removed entries to be forgotten", || async {
        room.awareness_entries() == 0
    })
    .await;
    server.shutdown().await.unwrap();
}

fn awareness_frame(entries: impl IntoIterator<Item = (u64, u32, String)>) -> Bytes {
    use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
    let clients = entries
        .into_iter()
        .map(|(id, clock, json)| {
            (
                yrs::ClientID::new(id),
                AwarenessUpdateEntry {
                    clock,
                    json: json.into(),
                },
            )
        })
        .collect();
    resonant_sync::protocol::encode_awareness(&AwarenessUpdate { clients })
}

/// Item 6: a panic inside a room closes that room (1011) and nothing else; the next joiner
/// gets everything acknowledged before it.
#[tokio::test]
async fn a_panic_in_a_room_closes_only_that_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let (sick, well) = (
        room_url(server.addr(), "sick"),
        room_url(server.addr(), "well"),
    );
    let mut a = Client::connect_synced(&sick).await;
    let mut a2 = Client::connect_synced(&sick).await;
    let mut w1 = Client::connect_synced(&well).await;
    let mut w2 = Client::connect_synced(&well).await;
    a.opt_in().await;
    a.edit(push_text("before")).await;
    a.until("ack", |c| c.acks == 1).await;
    let room = server
        .rooms()
        .loaded()
        .into_iter()
        .find(|r| &**r.name() == "sick")
        .unwrap();
    room.inject_panic();
    a.edit(push_text(" boom")).await;
    assert_eq!(a.until_closed().await.unwrap().0, 1011);
    assert_eq!(a2.until_closed().await.unwrap().0, 1011);
    w1.edit(push_text("fine")).await;
    w2.until("the other room syncs", |c| text_of(&c.doc) == "fine")
        .await;
    let fresh = Client::connect_synced(&sick).await;
    assert_eq!(text_of(&fresh.doc), "before");
    server.shutdown().await.unwrap();
}

/// Item 7: a message larger than the queue limit reaches every reader that keeps up, even
/// one whose queue is not empty: each reader's writer is still busy with a 6 MB update (it
/// has not read yet) when presence and then a 3 MB paste arrive.
#[tokio::test]
async fn a_paste_larger_than_the_queue_limit_reaches_readers_with_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| {
        c.max_queued_bytes = 1 << 20;
        c.max_message_bytes = 8 << 20;
    })
    .await;
    let url = room_url(server.addr(), "paste");
    let mut writer = Client::connect_synced(&url).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(Client::connect_synced(&url).await);
    }
    let first = "f".repeat(6 << 20);
    writer.edit(push_text(&first)).await;
    writer.set_awareness("{\"cursor\":1}").await;
    let paste = "p".repeat(3 << 20);
    writer.edit(push_text(&paste)).await;
    for r in &mut readers {
        r.until("the paste", |c| {
            text_of(&c.doc).len() == first.len() + paste.len()
        })
        .await;
        assert!(!r.ended());
    }
    server.shutdown().await.unwrap();
}

/// Item 8: an opted-in client gets the `bad-message` error before the close frame.
#[tokio::test]
async fn the_bad_message_error_arrives_before_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let mut c = Client::connect_synced(&room_url(server.addr(), "bad")).await;
    c.opt_in().await;
    c.send(Bytes::from_static(&[0, 2, 50, 1, 2])).await;
    let close = c.until_closed().await.unwrap();
    assert_eq!(close.0, 1007);
    assert!(
        c.stateless.iter().any(|s| s.contains("\"bad-message\"")),
        "{:?}",
        c.stateless
    );
    server.shutdown().await.unwrap();
}

/// Item 9: past `--max-connections` upgrades are refused with 503 before any WebSocket.
#[tokio::test]
async fn connections_past_the_cap_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |c| c.max_connections = Some(3)).await;
    let url = room_url(server.addr(), "capped");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect_synced(&url).await);
    }
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, text) = http_get(server.addr(), "/sync/capped", upgrade).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
    held.pop().unwrap().close().await;
    eventually("a slot frees up", || async {
        http_get(server.addr(), "/sync/capped", upgrade).await.0 == 101
    })
    .await;
    held[0].edit(push_text("still")).await;
    held[1].until("sync", |c| text_of(&c.doc) == "still").await;
    server.shutdown().await.unwrap();
}

/// Item 9: nonsense configuration is refused by the CLI with a clear message.
#[test]
fn nonsense_configuration_is_refused_at_start() {
    for (args, needle) in [
        (&["--ping-interval-secs", "0"][..], "greater than 0"),
        (&["--idle-timeout-secs", "inf"][..], "finite"),
        (&["--room-grace-secs=-1"][..], "finite"),
        (&["--max-connections-per-room", "0"][..], "at least 1"),
        (
            &["--ping-interval-secs", "30", "--idle-timeout-secs", "10"][..],
            "longer than --ping-interval-secs",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_resonant"))
            .arg("serve")
            .args(["--port", "0", "--data-dir"])
            .arg(std::env::temp_dir().join("resonant-never-started"))
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Item 10: SIGTERM while a room is still loading closes its joiner with 1012 too.
#[tokio::test]
async fn shutdown_during_a_room_load_closes_its_joiners() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open_dir(dir.path(), SqliteSync::Normal)
        .await
        .unwrap();
    let faulty = FaultStore::new(Arc::new(sqlite));
    faulty.slow_loads(Duration::from_millis(500));
    let config = resonant::ServeConfig::for_tests(dir.path().to_path_buf());
    let server = resonant::start_with_store(config, faulty.clone() as Arc<dyn Store>)
        .await
        .unwrap();
    let mut joiner = Client::connect(&room_url(server.addr(), "loading")).await;
    // The upgrade has happened; the room load is in progress for another 500 ms.
    let shutdown = tokio::spawn(server.shutdown());
    let close = joiner.until_closed().await.expect("close frame");
    assert_eq!(close.0, 1012, "{}", close.1);
    shutdown.await.unwrap().unwrap();
}

/// Item 11 / C19: a burst of joins past the admission rate queues for its turn; past the
/// queue (about 2 s of joins) the rest are refused before the upgrade with 503 and a
/// `Retry-After` at a slot booked for them (spread at the admission rate), while a connected
/// client keeps syncing.
#[tokio::test]
async fn joins_past_the_admission_rate_queue_then_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    // A burst of 2 (a quarter second at 8/s): `a` and `b` get in, then the storm begins.
    let server = start_server(dir.path(), |c| c.max_joins_per_sec = 8).await;
    let url = room_url(server.addr(), "storm");
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    let storm: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                match tokio_tungstenite::connect_async(&url).await {
                    // A refused join never becomes a WebSocket.
                    Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                        assert_eq!(response.status(), 503);
                        let secs: u64 = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or_else(|| panic!("no Retry-After in {response:?}"));
                        assert!(
                            (2..=120).contains(&secs),
                            "a slot after the queue: {secs} s"
                        );
                        Err(secs)
                    }
                    // An admitted one is greeted with the server's sync step 1.
                    Ok((mut ws, _)) => match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
                        Some(Ok(Message::Binary(_))) => Ok(ws),
                        other => panic!("unexpected {other:?}"),
                    },
                    Err(e) => panic!("unexpected {e}"),
                }
            })
        })
        .collect();
    a.edit(push_text("x")).await;
    b.until("connected clients keep syncing", |c| text_of(&c.doc) == "x")
        .await;
    let (mut admitted, mut hints) = (Vec::new(), Vec::new());
    for s in storm {
        match s.await.unwrap() {
            Ok(ws) => admitted.push(ws),
            Err(secs) => hints.push(secs),
        }
    }
    assert!(
        (10..=20).contains(&admitted.len()),
        "about 2 s of joins queue and get in: {} admitted, {} refused",
        admitted.len(),
        hints.len()
    );
    // About 20 refusals booked an eighth of a second apart span more than one second.
    let (min, max) = (hints.iter().min().unwrap(), hints.iter().max().unwrap());
    assert!(
        max - min >= 1,
        "refused clients come back spread out: {hints:?}"
    );
    server.shutdown().await.unwrap();
}

/// Items 5 and 9: a frame that claims far more entries than it holds is refused at once,
/// and oversized presence is refused before it is decoded.
#[tokio::test]
async fn frames_claiming_huge_counts_are_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let pid = server.pid();
    let url = room_url(server.addr, "bombs");
    let peak_before = peak_rss_kib(pid);
    // Sync step 1 whose state vector claims 2^28 entries, in 8 bytes.
    let mut sv_bomb = vec![0u8, 0, 5];
    sv_bomb.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x01]);
    // Awareness claiming 2^30 clients.
    let aw_bomb = vec![1u8, 5, 0x80, 0x80, 0x80, 0x80, 0x04];
    // 2 MB of presence: over the per-type limit, refused before decoding.
    let mut aw_big = vec![1u8, 0x80, 0x80, 0x80, 0x01];
    aw_big.extend(std::iter::repeat_n(1u8, 2 << 20));
    for (frame, codes) in [
        (sv_bomb, &[1007][..]),
        (aw_bomb, &[1007][..]),
        (aw_big, &[1009][..]),
    ] {
        let mut c = Client::connect_synced(&url).await;
        c.send_message(Message::Binary(frame.into())).await;
        let close = c.until_closed().await.expect("close");
        assert!(codes.contains(&close.0), "{close:?}");
    }
    let mut a = Client::connect_synced(&url).await;
    let mut b = Client::connect_synced(&url).await;
    a.edit(push_text("ok")).await;
    b.until("sync after the bombs", |c| text_of(&c.doc) == "ok")
        .await;
    let peak_after = peak_rss_kib(pid);
    assert!(
        peak_after < peak_before + 32 * 1024,
        "peak RSS {peak_before} KiB -> {peak_after} KiB"
    );
}

/// A durable-looking store that has no relational database: the server used to put users and
/// executions in a private in-memory SQLite without a word, losing them on every restart.
struct NoDatabase(resonant_store::MemoryStore);

#[async_trait::async_trait]
impl Store for NoDatabase {
    async fn load(
        &self,
        room: &str,
    ) -> Result<resonant_store::StoredDoc, resonant_store::StoreError> {
        self.0.load(room).await
    }
    async fn write_batch(
        &self,
        batch: resonant_store::BatchId,
        ops: &[resonant_store::WriteOp],
    ) -> Result<Vec<Option<i64>>, resonant_store::StoreError> {
        self.0.write_batch(batch, ops).await
    }
    async fn ping(&self) -> Result<(), resonant_store::StoreError> {
        self.0.ping().await
    }
    fn backend(&self) -> &'static str {
        "custom"
    }
    async fn delete_room(&self, room: &str) -> Result<(), resonant_store::StoreError> {
        self.0.delete_room(room).await
    }
}

#[tokio::test]
async fn a_store_without_a_database_is_refused_unless_it_is_the_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = resonant::ServeConfig::for_tests(dir.path().to_path_buf());
    let err = match resonant::start_with_store(
        config,
        Arc::new(NoDatabase(resonant_store::MemoryStore::default())),
    )
    .await
    {
        Ok(_) => panic!("a store without a relational database was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("no relational database"), "{err}");
    // The memory store says what it is: its users and executions live in memory, as its
    // documents do.
    let config = resonant::ServeConfig::for_tests(dir.path().to_path_buf());
    let server =
        resonant::start_with_store(config, Arc::new(resonant_store::MemoryStore::default()))
            .await
            .unwrap();
    server.shutdown().await.unwrap();
}
