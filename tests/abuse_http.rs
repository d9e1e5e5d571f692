//! Hostile clients below the document layer, over real sockets against the real binary:
//! request heads that never finish, WebSocket messages that never finish, a socket that sends
//! as fast as it can, and a large document's memory after its room unloads. Each test ends
//! with bounds on the server's memory and, where a canary runs, on another room's latency.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `addr` from the loopback address `from` (all of 127/8 is local, so
/// one host can stand for many clients).
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn metrics_text(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Opens a WebSocket to `path` by hand, reading exactly the server's handshake answer, so
/// the raw socket can go on with hand-made frames.
async fn raw_websocket(addr: SocketAddr, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

const TRICKLERS_PER_IP: usize = 64;
const TRICKLE_IPS: u8 = 20;

/// 1,280 connections (64 from each of 20 addresses) trickle request-head bytes: the server
/// holds a bounded buffer for each, closes every one at the header timeout, gives the memory
/// back, refuses a 65th connection from one address with 503, and a canary room keeps
/// syncing throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_heads_are_capped_per_address_and_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(4);
    let server = sqlite_server(dir.path(), &["--header-read-timeout-secs", "4"]);
    let pid = server.pid();
    let addr = server.addr;
    let mut canary = Canary::start(addr).await;
    canary.beat().await;
    let rss_before = rss_kib(pid);
    let sockets_before = open_sockets(pid);

    // Each trickler sends a head that never ends: 1 KiB of header every 100 ms.
    let mut tricklers = Vec::new();
    let started = Instant::now();
    for ip in 0..TRICKLE_IPS {
        let from = Ipv4Addr::new(127, 0, 0, 2 + ip);
        for _ in 0..TRICKLERS_PER_IP {
            let tcp = connect_from(from, addr).await;
            tricklers.push(tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.into_split();
                let writing = async {
                    wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                        .await?;
                    let line = format!("X-Pad: {}\r\n", "p".repeat(1016));
                    loop {
                        wr.write_all(line.as_bytes()).await?;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    #[allow(unreachable_code)]
                    Ok::<_, std::io::Error>(())
                };
                let mut buf = [0u8; 1024];
                let reading = async {
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                };
                tokio::select! {
                    _ = writing => {}
                    _ = reading => {}
                }
                Instant::now()
            }));
        }
    }
    eprintln!(
        "{} tricklers connected in {:?}",
        tricklers.len(),
        started.elapsed()
    );

    // The 65th from one address is answered 503 with a retry hint, at once.
    let mut extra = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer))
        .await
        .expect("the refused connection is answered and closed at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
    // Another address is still served.
    let ok = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    canary.beat().await;

    // Every trickler is closed by the server, around the header timeout.
    let mut closed_after = Vec::new();
    for t in tricklers {
        let at = tokio::time::timeout(WAIT, t)
            .await
            .expect("the server closed the trickling connection")
            .unwrap();
        closed_after.push(at - started);
    }
    let latest = closed_after.iter().max().unwrap();
    eventually("the server's sockets to be released", || async {
        open_sockets(pid) <= sockets_before
    })
    .await;
    canary.beat().await;
    // The most the server held at any time, the tricklers' time included.
    let rss_held = peak_rss_kib(pid);
    let rss_after = rss_kib(pid);
    let metrics = metrics_text(addr).await;
    let refused = metric(
        &metrics,
        "resonant_connections_refused_total{reason=\"max-http-connections-per-ip\"}",
    );
    let (p99, beats) = canary.p99();
    eprintln!(
        "RSS before {rss_before} KiB, held {rss_held} KiB (+{} KiB), after {rss_after} KiB \
         (+{} KiB); last trickler closed {latest:?} after the first connected; canary {beats} \
         beats, p99 {p99:?}, worst {:?}; refused per-ip {refused}",
        rss_held.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before),
        canary.worst
    );
    assert!(refused >= 1.0, "the refusal is counted: {refused}");
    assert!(
        *latest < timeout + Duration::from_secs(10),
        "closed by the header timeout: latest {latest:?}"
    );
    assert!(
        rss_held < rss_before + 96 * 1024,
        "RSS while held: {rss_before} → {rss_held} KiB"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS after: {rss_before} → {rss_after} KiB"
    );
    assert!(p99 < Duration::from_secs(1), "canary p99 {p99:?}");
}

/// Sends a whole request from `from` and returns the status line of the answer.
async fn status_from(from: Ipv4Addr, addr: SocketAddr) -> String {
    let mut tcp = connect_from(from, addr).await;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A trusted proxy carries many users' connections: it is exempt from the per-address cap,
/// while another address with as many unfinished heads is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_are_exempt_from_the_per_address_cap() {
    let dir = tempfile::tempdir().unwrap();
    let server = sqlite_server(
        dir.path(),
        &[
            "--trusted-proxies",
            "127.0.0.3",
            "--max-http-connections-per-ip",
            "8",
        ],
    );
    let addr = server.addr;
    let (proxy, other) = (Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 4));
    let mut held = Vec::new();
    for from in [proxy, other] {
        for _ in 0..20 {
            let mut tcp = connect_from(from, addr).await;
            tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            held.push(tcp);
        }
    }
    assert_eq!(status_from(proxy, addr).await, "HTTP/1.1 200 OK");
    assert_eq!(
        status_from(other, addr).await,
        "HTTP/1.1 503 Service Unavailable"
    );
    drop(held);
    // Once its connections are gone, the address is served again.
    let mut status = String::new();
    let deadline = Instant::now() + WAIT;
    while status != "HTTP/1.1 200 OK" && Instant::now() < deadline {
        status = status_from(other, addr).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// A masked client frame header (mask key zero, so the payload goes as is).
fn frame_header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match len {
        0..=125 => f.push(0x80 | len as u8),
        126..=65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f
}

/// Reads server frames until a close frame (its code) or the end of the connection (`None`).
async fn read_close(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse whatever whole frames are buffered.
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < at + len {
                break;
            }
            if buf[0] & 0x0f == 8 {
                return (len >= 2).then(|| u16::from_be_bytes([buf[at], buf[at + 1]]));
            }
            buf.drain(..at + len);
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Ten sockets each send 15 MiB of a fragmented message that never ends, pinging to look
/// alive: the shared budget (32 MiB here) refuses the ones that would pass it, the deadline
/// the rest; each gets a 1009 close, and the server's peak memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_messages_are_bounded_and_refused_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_secs(5);
    let server = sqlite_server(
        dir.path(),
        &[
            "--max-unfinished-bytes",
            "33554432",
            "--message-deadline-secs",
            "5",
        ],
    );
    let pid = server.pid();
    let addr = server.addr;
    let mut canary = Canary::start(addr).await;
    canary.beat().await;
    let rss_before = rss_kib(pid);
    let mut attackers = Vec::new();
    for i in 0..10 {
        let tcp = raw_websocket(addr, &format!("/sync/unfinished-{i}")).await;
        let (mut rd, mut wr) = tcp.into_split();
        attackers.push(tokio::spawn(async move {
            let started = Instant::now();
            let writing = async {
                let fragment = vec![0u8; 1 << 20];
                for n in 0..15 {
                    wr.write_all(&frame_header(false, if n == 0 { 2 } else { 0 }, 1 << 20))
                        .await?;
                    wr.write_all(&fragment).await?;
                }
                // Look alive, never finish.
                loop {
                    wr.write_all(&frame_header(true, 9, 0)).await?;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                #[allow(unreachable_code)]
                Ok::<_, std::io::Error>(())
            };
            let code = tokio::select! {
                code = read_close(&mut rd) => code,
                _ = writing => {
                    // The write side failed first: the close may still be in flight.
                    read_close(&mut rd).await
                }
            };
            (code, started.elapsed())
        }));
    }
    let mut results = Vec::new();
    for a in attackers {
        results.push(
            tokio::time::timeout(WAIT, a)
                .await
                .expect("the server closed the unfinished message's socket")
                .unwrap(),
        );
    }
    canary.beat().await;
    let peak = peak_rss_kib(pid);
    let rss_after = rss_kib(pid);
    let refusals = metric(
        &metrics_text(addr).await,
        "resonant_unfinished_message_refusals_total",
    );
    let (p99, beats) = canary.p99();
    eprintln!(
        "closes {results:?}; RSS before {rss_before} KiB, peak {peak} KiB (+{} KiB), after \
         {rss_after} KiB; refusals {refusals}; canary {beats} beats, p99 {p99:?}",
        peak.saturating_sub(rss_before)
    );
    for (code, took) in &results {
        assert_eq!(*code, Some(1009), "closed after {took:?}");
        assert!(*took < deadline + Duration::from_secs(10), "took {took:?}");
    }
    assert!(refusals >= 10.0, "refusals {refusals}");
    assert!(
        peak < rss_before + 96 * 1024,
        "peak RSS {rss_before} → {peak} KiB"
    );
    assert!(p99 < Duration::from_secs(1), "canary p99 {p99:?}");
}

/// A socket that sends valid updates as fast as it can is read at its byte budget (128 KiB/s
/// here), measured from the server's own count of bytes read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_socket_is_read_at_its_byte_budget() {
    const BUDGET: f64 = 131_072.0;
    let dir = tempfile::tempdir().unwrap();
    // With 64 KiB messages the burst is 128 KiB: one second of budget, not 32 MiB of it.
    let server = sqlite_server(
        dir.path(),
        &[
            "--socket-bytes-per-sec",
            "131072",
            "--max-message-bytes",
            "65536",
        ],
    );
    let addr = server.addr;
    let mut flooder = Client::connect_synced(&room_url(addr, "flood")).await;
    let flood = tokio::spawn(async move {
        let chunk = "f".repeat(30_000);
        loop {
            let chunk = chunk.clone();
            flooder
                .edit(move |_, txn| {
                    use yrs::{Text, WriteTxn};
                    txn.get_or_insert_text("t").push(txn, &chunk);
                })
                .await;
        }
    });
    // Past the burst and the kernel's buffers filling, then a window of steady state.
    let bytes_in = || async move { metric(&metrics_text(addr).await, "resonant_bytes_in_total") };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (b0, t0) = (bytes_in().await, Instant::now());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (b1, t1) = (bytes_in().await, Instant::now());
    flood.abort();
    let rate = (b1 - b0) / (t1 - t0).as_secs_f64();
    eprintln!(
        "read {} bytes in {:?}: {rate:.0} B/s, {:.2}× the budget",
        b1 - b0,
        t1 - t0,
        rate / BUDGET
    );
    assert!(
        (0.5 * BUDGET..=1.25 * BUDGET).contains(&rate),
        "read at {rate:.0} B/s against a budget of {BUDGET} B/s"
    );
}

/// A4: one client builds a large document from many small items; after it leaves and the
/// room unloads, the server's memory comes back to near where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_documents_memory_is_returned_when_its_room_unloads() {
    let dir = tempfile::tempdir().unwrap();
    let server = sqlite_server(dir.path(), &["--room-grace-secs", "0.5"]);
    let pid = server.pid();
    let addr = server.addr;
    // Warm the server's code paths and pools before the baseline.
    let mut warm = Client::connect_synced(&room_url(addr, "warm")).await;
    warm.edit(|_, txn| {
        use yrs::{Array, WriteTxn};
        txn.get_or_insert_array("blocks").push_back(txn, 1);
    })
    .await;
    warm.close().await;
    let rooms = || async move { metric(&metrics_text(addr).await, "resonant_rooms") };
    eventually("the warm-up room to unload", || async {
        rooms().await == 0.0
    })
    .await;
    let rss_before = rss_kib(pid);

    let mut builder = Client::connect_synced(&room_url(addr, "large")).await;
    // 90,000 small items (the default cap is 100,000), 500 per update. Map entries: each is
    // an item of its own (consecutive array pushes may merge into one run), and appending to
    // a long array costs a walk from its start per push.
    for batch in 0..180 {
        builder
            .edit(move |_, txn| {
                use yrs::{Map, WriteTxn};
                let items = txn.get_or_insert_map("meta");
                for i in 0..500 {
                    items.insert(txn, format!("k{batch}-{i}"), format!("value {i}"));
                }
            })
            .await;
    }
    let sent = builder.doc.transact().state_vector();
    // Another client loading it all proves the room holds the whole document.
    let mut reader = Client::connect(&room_url(addr, "large")).await;
    reader.sync().await;
    reader
        .until("the whole document", |c| {
            c.doc.transact().state_vector() == sent
        })
        .await;
    let rss_loaded = rss_kib(pid);
    builder.close().await;
    reader.close().await;
    eventually("the large room to unload", || async {
        rooms().await == 0.0
    })
    .await;
    // Loaded, the document took +37 MiB here; +4 MiB stayed after the unload.
    const BOUND: u64 = 16 * 1024;
    let unloaded = Instant::now();
    // Freeing after the unload (the journal's last commit, a compaction) may take a moment.
    let settle = Instant::now() + WAIT;
    let mut rss_after = rss_kib(pid);
    while rss_after >= rss_before + BOUND && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_after = rss_kib(pid);
    }
    eprintln!(
        "RSS {rss_after} KiB {:?} after the unload",
        unloaded.elapsed()
    );
    let peak = peak_rss_kib(pid);
    eprintln!(
        "RSS before {rss_before} KiB, loaded {rss_loaded} KiB (+{} KiB), after unload \
         {rss_after} KiB (+{} KiB), peak {peak} KiB",
        rss_loaded.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before)
    );
    assert!(
        rss_after < rss_before + BOUND,
        "RSS after unload: {rss_before} → {rss_after} KiB"
    );
}

use yrs::{ReadTxn, Transact};

/// 640 connections from 16 addresses each start a 1 MiB body to a webhook trigger (an HMAC
/// one: its URL is all an attacker needs, the signature is checked once the body is in) and
/// never finish it. The bodies arriving at once share one budget (`--hook-inflight-bytes`,
/// 64 MiB): the rest are refused with 503 before their bodies are read, the server's memory
/// stays bounded, a canary room keeps syncing, and the budget is back once they give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_hook_bodies_is_bounded_and_refused_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let key = resonant::crypto::KeyCipher::generate().1;
    let server = sqlite_server(
        dir.path(),
        &["--encryption-key", &key, "--rate-hook-per-sec", "0"],
    );
    let pid = server.pid();
    let addr = server.addr;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let http = http.clone();
        async move { common::api::call(&http, addr, None, method, &path, body).await }
    };
    let (_, list) = call(reqwest::Method::GET, "/api/v1/workspaces".into(), None).await;
    let ws = list["items"][0]["id"].as_str().unwrap().to_string();
    let (_, wf) = call(
        reqwest::Method::POST,
        format!("/api/v1/workspaces/{ws}/workflows"),
        Some(serde_json::json!({"name": "hooked"})),
    )
    .await;
    let wf = wf["id"].as_str().unwrap().to_string();
    let mut editor = Client::connect_synced(&room_url(addr, &format!("workflow-{wf}"))).await;
    editor.opt_in().await;
    common::exec::put_graph(
        &mut editor,
        &serde_json::json!({
            "blocks": [common::exec::block("in", "input", serde_json::json!({})),
                       common::exec::block("out", "output", serde_json::json!({}))],
            "connections": [common::exec::edge("in", "out")],
        }),
    )
    .await;
    editor.close().await;
    let (s, t) = call(
        reqwest::Method::POST,
        format!("/api/v1/workflows/{wf}/triggers"),
        Some(serde_json::json!({"kind": "webhook", "target": "draft"})),
    )
    .await;
    assert_eq!(s, reqwest::StatusCode::CREATED, "{t}");
    let (id, secret) = (
        t["id"].as_str().unwrap().to_string(),
        t["secret"].as_str().unwrap().to_string(),
    );

    let mut canary = Canary::start(addr).await;
    canary.beat().await;
    let rss_before = rss_kib(pid);
    let head = format!(
        "POST /hooks/{id} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Resonant-Signature: t=1,v1=00\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    let mut senders = Vec::new();
    for a in 0..16u8 {
        for _ in 0..40 {
            let from = Ipv4Addr::new(127, 0, 0, 2 + a);
            let head = head.clone();
            senders.push(tokio::spawn(async move {
                let tcp = connect_from(from, addr).await;
                let (mut rd, mut wr) = tcp.into_split();
                let _ = wr.write_all(head.as_bytes()).await;
                // Most of the body, then nothing more.
                let _ = wr.write_all(&vec![b'x'; 900_000]).await;
                let mut answer = vec![0u8; 64];
                let status = match tokio::time::timeout(
                    Duration::from_secs(3),
                    rd.read(&mut answer),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&answer[..n]).into_owned(),
                    _ => String::new(),
                };
                (status, wr, rd)
            }));
        }
    }
    let mut held = Vec::new();
    let (mut refused, mut waiting) = (0, 0);
    for s in senders {
        let (status, wr, rd) = s.await.unwrap();
        if status.starts_with("HTTP/1.1 503") {
            refused += 1;
        } else if status.is_empty() {
            waiting += 1;
        }
        held.push((wr, rd));
    }
    canary.beat().await;
    let peak = peak_rss_kib(pid);
    let (p99, beats) = canary.p99();
    eprintln!(
        "refused {refused}, still sending {waiting} of 640; RSS before {rss_before} KiB, peak \
         {peak} KiB (+{} KiB); canary {beats} beats, p99 {p99:?}",
        peak.saturating_sub(rss_before)
    );
    assert!(refused >= 560, "refused {refused}, waiting {waiting}");
    assert!(waiting <= 64, "admitted {waiting}");
    assert!(
        peak < rss_before + 200 * 1024,
        "peak RSS {rss_before} → {peak} KiB"
    );
    assert!(p99 < Duration::from_secs(1), "canary p99 {p99:?}");
    // They give up: the budget is back, and a real call gets through.
    drop(held);
    let body = r#"{"ok":true}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let r = http
            .post(format!("http://{addr}/hooks/{id}"))
            .header(
                "x-resonant-signature",
                resonant::auth::webhook_sig::sign_stripe(&secret, now, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        if r.status() == reqwest::StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the budget did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
