//! Durability of the real binary: `kill -9` loses nothing acknowledged (or fanned out more
//! than a commit window earlier), SIGTERM closes with 1012 and exits within 10 s. Each test
//! runs against SQLite and, when `TEST_DATABASE_URL` is set, Postgres.

mod common;

use std::time::Duration;

use common::*;
use yrs::{Array, Map, MapPrelim, ReadTxn, Transact, WriteTxn};

enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn args(&self) -> Vec<String> {
        match self {
            Backend::Sqlite(dir) => vec!["--data-dir".into(), dir.path().display().to_string()],
            Backend::Postgres(url) => vec!["--database-url".into(), url.clone()],
        }
    }

    fn start(&self) -> ServerProcess {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServerProcess::start(&args)
    }
}

fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite(tempfile::tempdir().unwrap())];
    if let Some(url) = postgres_url() {
        all.push(Backend::Postgres(url));
    }
    all
}

fn add_block(txn: &mut yrs::TransactionMut, id: &str) {
    let blocks = txn.get_or_insert_array("blocks");
    let len = blocks.len(txn);
    let block = blocks.insert(txn, len, MapPrelim::default());
    block.insert(txn, "id", id);
}

fn block_ids(c: &ClientState) -> Vec<String> {
    let txn = c.doc.transact();
    let Some(blocks) = txn.get_array("blocks") else {
        return Vec::new();
    };
    blocks
        .iter(&txn)
        .map(|v| {
            let map = v.cast::<yrs::MapRef>().unwrap();
            map.get(&txn, "id").unwrap().to_string(&txn)
        })
        .collect()
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_update() {
    for backend in backends() {
        let room = unique_room("kill9-ack");
        let server = backend.start();
        let url = room_url(server.addr, &room);
        let mut a = Client::connect_synced(&url).await;
        a.opt_in().await;
        let n = 200;
        for i in 0..n {
            a.edit(|_, txn| add_block(txn, &format!("b{i}"))).await;
        }
        a.until("every ack", |c| c.acks == n).await;
        server.kill9();

        let server = backend.start();
        let b = Client::connect_synced(&room_url(server.addr, &room)).await;
        let want: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
        assert_eq!(
            block_ids(&b),
            want,
            "every acknowledged edit survives kill -9"
        );
        drop(server);
    }
}

#[tokio::test]
async fn kill_9_keeps_what_was_fanned_out_a_commit_window_earlier() {
    for backend in backends() {
        let room = unique_room("kill9-fanout");
        let server = backend.start();
        let url = room_url(server.addr, &room);
        // A stock client: no acknowledgements, it just edits.
        let mut writer = Client::connect_synced(&url).await;
        let mut watcher = Client::connect_synced(&url).await;
        let n = 100;
        for i in 0..n {
            writer.edit(|_, txn| add_block(txn, &format!("w{i}"))).await;
        }
        watcher
            .until("all edits fanned out", |c| block_ids(c).len() == n)
            .await;
        // The guarantee under test is time-based: whatever was fanned out more than one
        // commit window (a few ms) before the kill is durable. 200 ms is far past it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.kill9();

        let server = backend.start();
        let c = Client::connect_synced(&room_url(server.addr, &room)).await;
        assert_eq!(block_ids(&c), block_ids(&watcher));
        drop(server);
    }
}

#[tokio::test]
async fn sigterm_closes_with_1012_and_exits_quickly_with_everything_saved() {
    for backend in backends() {
        let room = unique_room("sigterm");
        let server = backend.start();
        let url = room_url(server.addr, &room);
        let mut a = Client::connect_synced(&url).await;
        let mut b = Client::connect_synced(&url).await;
        for i in 0..50 {
            a.edit(|_, txn| add_block(txn, &format!("t{i}"))).await;
        }
        b.until("edits", |c| block_ids(c).len() == 50).await;
        let stop = std::thread::spawn(move || server.terminate());
        assert_eq!(a.until_closed().await.map(|c| c.0), Some(1012));
        assert_eq!(b.until_closed().await.map(|c| c.0), Some(1012));
        let (took, status) = stop.join().unwrap();
        assert!(status.success(), "clean exit, got {status}");
        assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

        let server = backend.start();
        let c = Client::connect_synced(&room_url(server.addr, &room)).await;
        assert_eq!(block_ids(&c), block_ids(&b));
        drop(server);
    }
}

#[tokio::test]
async fn readiness_reports_the_store() {
    for backend in backends() {
        let server = backend.start();
        for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
            let body = http_get(server.addr, path).await;
            assert!(body.starts_with("HTTP/1.1 200"), "{path}: {body}");
            assert!(body.ends_with(want), "{path}: {body}");
        }
        let room = unique_room("metrics");
        let mut a = Client::connect_synced(&room_url(server.addr, &room)).await;
        a.opt_in().await;
        a.edit(|_, txn| add_block(txn, "m")).await;
        a.until("ack", |c| c.acks == 1).await;
        let metrics = http_get(server.addr, "/metrics").await;
        for name in [
            "resonant_connections",
            "resonant_rooms",
            "resonant_messages_in_total",
            "resonant_bytes_out_total",
            "resonant_fanout_seconds",
            "resonant_store_commit_seconds",
            "resonant_store_batch_ops",
        ] {
            assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
        }
        drop(server);
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
