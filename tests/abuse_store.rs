//! Issue 15, A1: the SQLite data directory on a real 2 MB tmpfs that fills up. No write may be
//! acknowledged while the disk is full, `/readyz` must say so, service must resume once there
//! is room again, and every acknowledged update must survive kill -9 and a SIGTERM restart.
//! Needs root (it mounts a tmpfs); without it the test fails, it never skips.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use resonant_client::ws::WsClient;
use yrs::{GetString, Text, Transact, WriteTxn};

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("tiny");
        std::fs::create_dir(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs a real {size} tmpfs (run it as root): mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir,
            _parent: parent,
        }
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn start(dir: &Path) -> ServerProcess {
    // jemalloc returns freed pages at once, so RSS tells what is still held.
    // SAFETY: set before any child is spawned; no other thread reads this variable.
    unsafe { std::env::set_var("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0") };
    ServerProcess::start(&["--data-dir", dir.to_str().unwrap()])
}

/// About 20 KB of text that does not compress, tagged `<i>` so it can be found again.
fn paste(i: usize) -> String {
    let mut s = format!("<{i}>");
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    while s.len() < 20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push((b'a' + (x % 26) as u8) as char);
    }
    s
}

async fn send_paste(c: &mut Client, i: usize) {
    let text = paste(i);
    c.edit(move |_, txn| {
        let t = txn.get_or_insert_text("text");
        let len = t.len(txn);
        t.insert(txn, len, &text);
    })
    .await;
}

/// Waits up to `d` for `n` acknowledgements; false when they did not come.
async fn acked_within(c: &mut Client, n: usize, d: Duration) -> bool {
    match tokio::time::timeout(d, WsClient::until(c, "acks", |s| s.acks >= n)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => panic!("the writer's connection failed: {e}"),
        Err(_) => false,
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Checks that a fresh client of a (re)started server sees every acknowledged paste.
async fn assert_all_present(addr: SocketAddr, room: &str, acked: usize, after: &str) {
    let c = Client::connect_synced(&room_url(addr, room)).await;
    let text = {
        let t = c.doc.get_or_insert_text("text");
        t.get_string(&c.doc.transact())
    };
    let lost: Vec<usize> = (0..acked)
        .filter(|i| !text.contains(&format!("<{i}>")))
        .collect();
    assert!(
        lost.is_empty(),
        "after {after}: {} of {acked} acknowledged pastes lost (first: {:?}); {} chars stored",
        lost.len(),
        &lost[..lost.len().min(10)],
        text.len()
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_never_acknowledges_and_loses_nothing_acknowledged() {
    let disk = Tmpfs::mount("2m");
    let server = start(disk.path());
    let pid = server.pid();
    let room = unique_room("full-disk");
    let mut writer = Client::connect_synced(&room_url(server.addr, &room)).await;
    writer.opt_in().await;
    let canary_room = room_url(server.addr, &unique_room("canary"));
    let mut canary_w = Client::connect_synced(&canary_room).await;
    let mut canary_r = Client::connect_synced(&canary_room).await;

    // Fill the disk: paste until an acknowledgement does not come.
    let mut sent = 0;
    loop {
        send_paste(&mut writer, sent).await;
        sent += 1;
        if !acked_within(&mut writer, sent, Duration::from_secs(3)).await {
            break;
        }
        assert!(
            sent < 200,
            "{sent} pastes of 20 KB acknowledged on a 2 MB disk: acks are not durable"
        );
    }
    let acked_when_full = writer.acks;
    eprintln!("disk full after {acked_when_full} acknowledged pastes");
    assert!(acked_when_full >= 10, "the disk filled too early");

    // While full: more pastes, no acknowledgement, readiness fails, fan-out still works.
    for _ in 0..10 {
        send_paste(&mut writer, sent).await;
        sent += 1;
    }
    let full_since = Instant::now();
    eventually("/readyz to report 503 while the disk is full", || async {
        http_get(server.addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 503")
    })
    .await;
    let readyz = http_get(server.addr, "/readyz").await;
    eprintln!(
        "/readyz after {:.1} s full: {}",
        full_since.elapsed().as_secs_f64(),
        readyz.lines().last().unwrap_or("")
    );
    canary_w
        .edit(|_, txn| txn.get_or_insert_text("t").push(txn, "alive"))
        .await;
    canary_r
        .until("the canary's edit while the disk is full", |c| {
            let t = c.doc.get_or_insert_text("t");
            t.get_string(&c.doc.transact()) == "alive"
        })
        .await;
    assert!(
        !acked_within(&mut writer, acked_when_full + 1, Duration::from_secs(1)).await,
        "an acknowledgement arrived while the disk was full"
    );

    // Room again: everything sent is acknowledged, readiness comes back.
    disk.resize("64m");
    writer
        .until("every paste acknowledged once the disk has room", |c| {
            c.acks == sent
        })
        .await;
    eventually("/readyz to report 200 again", || async {
        http_get(server.addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
    for _ in 0..5 {
        send_paste(&mut writer, sent).await;
        sent += 1;
        writer.until("ack", |c| c.acks == sent).await;
    }
    let peak = peak_rss_kib(pid);
    eprintln!(
        "{sent} pastes acknowledged; server peak RSS {} MiB",
        peak / 1024
    );
    assert!(peak < 96 * 1024, "peak RSS {peak} KiB");

    // kill -9: every acknowledged paste is on disk.
    server.kill9();
    let server = start(disk.path());
    assert_all_present(server.addr, &room, sent, "kill -9").await;

    // And through a clean SIGTERM restart, with a few more on top.
    let mut writer = Client::connect_synced(&room_url(server.addr, &room)).await;
    writer.opt_in().await;
    for i in 0..5 {
        send_paste(&mut writer, sent + i).await;
        writer.until("ack", |c| c.acks == i + 1).await;
    }
    sent += 5;
    let (_, status) = server.terminate();
    assert!(status.success(), "clean exit, got {status}");
    let server = start(disk.path());
    assert_all_present(server.addr, &room, sent, "SIGTERM").await;
    drop(server);
}

/// Item A6 over real sockets: the server's single-process advisory lock is lost (its session
/// terminated, as when Postgres restarts). The server must stop acknowledging, report 503, and
/// stay up; nothing it acknowledged before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_postgres_lock_stops_acknowledgements() {
    let Some(base) = postgres_url() else { return };
    let schema = format!("fence_srv_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("TEST_DATABASE_URL is set, so Postgres must be reachable");
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(&sql).execute(&admin).await.unwrap();
    }
    let url = format!(
        "{base}{}options=-c%20search_path%3D{schema}",
        if base.contains('?') { '&' } else { '?' }
    );
    let server = ServerProcess::start(&["--database-url", &url]);
    let pid = server.pid();
    let room = unique_room("fenced");
    let mut writer = Client::connect_synced(&room_url(server.addr, &room)).await;
    writer.opt_in().await;
    send_paste(&mut writer, 0).await;
    writer.until("ack", |c| c.acks == 1).await;

    // The session holding the server's lock (keyed by schema) ends.
    let lock_pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND ((classid::bigint << 32) | objid::bigint)
               = hashtextextended('resonant-server:' || $1, 0)",
    )
    .bind(&schema)
    .fetch_one(&admin)
    .await
    .expect("the server holds its advisory lock");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(lock_pid)
        .execute(&admin)
        .await
        .unwrap();
    // pg_terminate_backend only signals: the session holds the lock until it has exited, and
    // a commit fenced-checked before that is rightly acknowledged. The test is about writes
    // after the lock is gone.
    eventually("the terminated session to release the lock", || async {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = $1)",
        )
        .bind(lock_pid)
        .fetch_one(&admin)
        .await
        .unwrap();
        !held
    })
    .await;

    send_paste(&mut writer, 1).await;
    eventually("/readyz to report 503 once the lock is lost", || async {
        http_get(server.addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 503")
    })
    .await;
    assert!(
        !acked_within(&mut writer, 2, Duration::from_secs(2)).await,
        "a write was acknowledged after the lock was lost"
    );
    let healthz = http_get(server.addr, "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 200"), "server up: {healthz}");
    let rss = rss_kib(pid);
    assert!(rss < 96 * 1024, "RSS {rss} KiB");
    server.kill9();

    // A new process takes the lock; the acknowledged paste is there, the refused one is not.
    let server = ServerProcess::start(&["--database-url", &url]);
    assert_all_present(server.addr, &room, 1, "the fenced process was killed").await;
    drop(server);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
