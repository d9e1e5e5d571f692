//! The Redis bus against a real Redis: `TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379`).
//!
//! Unset: every test prints "TEST_REDIS_URL is not set: skipping" and passes. Set but
//! unreachable: the tests fail. Each test works under its own random key prefix and never
//! flushes anything, so tests and runs sharing one Redis do not collide. The restart test
//! starts its own `redis-server` (on a free port) because it has to kill it.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use resonant_bus::{
    new_node_id, node_hex, Bus, Delivery, Message, PublishOptions, RedisBus, RedisBusConfig,
    Subscription,
};

/// Generous bound for anything that should take milliseconds (CI machines are slow).
const SOON: Duration = Duration::from_secs(5);

fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("TEST_REDIS_URL is not set: skipping");
            None
        }
    }
}

macro_rules! require_redis {
    () => {
        match redis_url() {
            Some(url) => url,
            None => return,
        }
    };
}

fn random_prefix() -> String {
    format!("bustest-{:016x}", rand::random::<u64>())
}

/// A plain connection for the test's own commands; fails the test if Redis is unreachable.
async fn admin(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("TEST_REDIS_URL parses");
    let connect = client.get_multiplexed_async_connection();
    match tokio::time::timeout(SOON, connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => panic!("TEST_REDIS_URL={url} is set but Redis is unreachable: {error}"),
        Err(_) => panic!("TEST_REDIS_URL={url} is set but Redis did not answer"),
    }
}

/// Deletes every key under `prefix` (the test's own keys only).
async fn cleanup(conn: &mut MultiplexedConnection, prefix: &str) {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(conn)
                .await
                .unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start(url: &str, prefix: &str, config: RedisBusConfig) -> Arc<RedisBus> {
    RedisBus::connect(url, prefix, new_node_id(), config).expect("the bus starts")
}

async fn start_up(url: &str, prefix: &str, config: RedisBusConfig) -> Arc<RedisBus> {
    let bus = start(url, prefix, config);
    wait_for("the bus to connect", SOON, || bus.is_up()).await;
    bus
}

async fn next(sub: &mut Subscription, within: Duration) -> Delivery {
    match tokio::time::timeout(within, sub.recv()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("subscription to {} ended", sub.topic()),
        Err(_) => panic!("nothing on {} within {within:?}", sub.topic()),
    }
}

async fn next_message(sub: &mut Subscription) -> Message {
    match next(sub, SOON).await {
        Delivery::Message(message) => message,
        Delivery::Resync => panic!("Resync on {} where a message was expected", sub.topic()),
    }
}

fn publish(bus: &RedisBus, topic: &str, payload: &[u8]) {
    bus.publish(
        topic,
        Bytes::copy_from_slice(payload),
        PublishOptions::default(),
    );
}

/// `(id, flags, cmd)` of the client named `name` in `CLIENT LIST`.
async fn client(conn: &mut MultiplexedConnection, name: &str) -> Option<(u64, String, String)> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines().find_map(|line| {
        let field = |key: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        (field("name")? == name).then(|| {
            (
                field("id").unwrap().parse().unwrap(),
                field("flags").unwrap_or_default(),
                field("cmd").unwrap_or_default(),
            )
        })
    })
}

/// Waits until the reader is blocked in `XREAD` (flag `b`), returning its client id.
async fn blocked_reader(conn: &mut MultiplexedConnection, bus: &RedisBus) -> u64 {
    let name = format!("resonant-reader:{}", node_hex(bus.node()));
    let start = Instant::now();
    loop {
        if let Some((id, flags, cmd)) = client(conn, &name).await {
            if flags.contains('b') && cmd == "xread" {
                return id;
            }
        }
        assert!(start.elapsed() < SOON, "the reader never blocked in XREAD");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn messages_published_on_one_node_arrive_on_another_in_order() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let a = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let b = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let mut on_b = b.subscribe("doc:r1").await;
    let mut on_a = a.subscribe("doc:r1").await;
    // Every byte value, so the payload is binary-safe end to end.
    let binary: Vec<u8> = (0..=255).collect();
    for i in 0..200u32 {
        let mut payload = i.to_be_bytes().to_vec();
        payload.extend_from_slice(&binary);
        publish(&a, "doc:r1", &payload);
    }
    for i in 0..200u32 {
        let m = next_message(&mut on_b).await;
        assert_eq!(m.origin, a.node());
        assert_eq!(&m.payload[..4], &i.to_be_bytes(), "in order");
        assert_eq!(&m.payload[4..], &binary[..]);
        assert!(m.sent_ms > 0);
        let own = next_message(&mut on_a).await;
        assert_eq!(own, m, "the origin's own subscription gets it too");
    }
    assert_eq!(on_b.try_recv(), None, "nothing twice");

    // The entry as stored: n, t, m.
    let entries: redis::Value = redis::cmd("XREVRANGE")
        .arg(format!("{prefix}:doc:r1"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let text = format!("{entries:?}");
    assert!(
        text.contains(&format!("{:?}", a.node().to_string())),
        "n is the decimal node id: {text}"
    );
    for s in [b"n", b"t", b"m"] {
        assert!(text.contains(&format!("{:?}", std::str::from_utf8(s).unwrap())));
    }
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn publish_options_cap_and_expire_the_stream() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let a = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let mut sub = a.subscribe("capped").await;
    let opts = PublishOptions {
        max_len: 10,
        ttl: Some(Duration::from_secs(60)),
    };
    for i in 0..500u32 {
        a.publish("capped", Bytes::from(i.to_be_bytes().to_vec()), opts);
    }
    // The last one arriving means every pipeline before it was applied.
    loop {
        let m = next_message(&mut sub).await;
        if m.payload[..] == 499u32.to_be_bytes() {
            break;
        }
    }
    let key = format!("{prefix}:capped");
    let len: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    // MAXLEN ~ trims whole radix-tree nodes (100 entries by default), so only roughly.
    assert!((10..500).contains(&len), "XLEN {len}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {ttl}");
    a.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

/// redis-rs 1.x times replies out after 500 ms by default; with that, an `XREAD BLOCK 2000`
/// that waits longer fails, the reader reconnects (new client id) and the subscription gets
/// a Resync. Here the read outlives 500 ms and the message arrives on the same connection.
#[tokio::test]
async fn an_xread_blocked_past_500ms_survives_and_delivers() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let config = RedisBusConfig {
        block: Duration::from_secs(2),
        ..RedisBusConfig::default()
    };
    let a = start_up(&url, &prefix, config.clone()).await;
    let b = start_up(&url, &prefix, config).await;
    let mut sub = b.subscribe("quiet").await;
    let reader = blocked_reader(&mut conn, &b).await;
    let blocked_at = Instant::now();
    // The condition under test is "blocked for longer than 500 ms", so time has to pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        blocked_reader(&mut conn, &b).await,
        reader,
        "same connection: no reply timeout"
    );
    assert!(
        blocked_at.elapsed() < Duration::from_secs(2),
        "still the first XREAD"
    );
    publish(&a, "quiet", b"late");
    let m = next_message(&mut sub).await;
    assert_eq!(&m.payload[..], b"late");
    assert!(b.is_up());
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn a_new_subscription_is_read_at_once_not_after_the_block() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let config = RedisBusConfig {
        block: Duration::from_secs(5),
        ..RedisBusConfig::default()
    };
    let a = start_up(&url, &prefix, config.clone()).await;
    let b = start_up(&url, &prefix, config).await;
    let _other = b.subscribe("other").await;
    blocked_reader(&mut conn, &b).await;
    let started = Instant::now();
    let mut sub = b.subscribe("new").await;
    publish(&a, "new", b"first");
    let m = next_message(&mut sub).await;
    assert_eq!(&m.payload[..], b"first");
    let took = started.elapsed();
    // Without the poke the reader would see the new key only after its 5 s XREAD.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn a_killed_reader_reconnects_resyncs_and_keeps_delivering() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let a = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let b = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let mut sub = b.subscribe("t").await;
    let mut other = b.subscribe("u").await;
    publish(&a, "t", b"before");
    assert_eq!(&next_message(&mut sub).await.payload[..], b"before");
    let reader = blocked_reader(&mut conn, &b).await;
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(reader)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(next(&mut sub, SOON).await, Delivery::Resync);
    assert_eq!(next(&mut other, SOON).await, Delivery::Resync);
    let again = blocked_reader(&mut conn, &b).await;
    assert_ne!(again, reader, "a new connection");
    publish(&a, "t", b"after");
    assert_eq!(&next_message(&mut sub).await.payload[..], b"after");
    assert_eq!(sub.try_recv(), None);
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn a_malformed_entry_resyncs_its_topic_only() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let a = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let b = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let mut bad = b.subscribe("bad").await;
    let mut good = b.subscribe("good").await;
    let xadd = |fields: &[&str]| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(format!("{prefix}:bad")).arg("*").arg(fields);
        cmd
    };
    let _: String = xadd(&["n", "oops"]).query_async(&mut conn).await.unwrap();
    assert_eq!(next(&mut bad, SOON).await, Delivery::Resync);
    publish(&a, "good", b"fine");
    assert_eq!(
        &next_message(&mut good).await.payload[..],
        b"fine",
        "the other topic is unaffected"
    );
    // Missing m, and missing n: malformed too. Unknown fields next to valid ones are ignored.
    let _: String = xadd(&["n", "1"]).query_async(&mut conn).await.unwrap();
    assert_eq!(next(&mut bad, SOON).await, Delivery::Resync);
    let _: String = xadd(&["m", "x"]).query_async(&mut conn).await.unwrap();
    assert_eq!(next(&mut bad, SOON).await, Delivery::Resync);
    let _: String = xadd(&["v", "2", "n", "5", "m", "ok"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let m = next_message(&mut bad).await;
    assert_eq!((m.origin, &m.payload[..], m.sent_ms), (5, &b"ok"[..], 0));
    publish(&a, "bad", b"healed");
    assert_eq!(&next_message(&mut bad).await.payload[..], b"healed");
    assert_eq!(good.try_recv(), None, "no Resync on the other topic");
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

/// Deleting a stream the reader is in. A new entry in a later millisecond gets an id above the
/// cursor (ids are time-based) and simply arrives. One written in the same millisecond as the
/// deleted last entry gets that entry's very id, and one in a stream restarted *below* the
/// cursor a lower id: `XREAD` skips both, and the periodic check (a last id below the cursor,
/// or the cursor's id with other content) re-anchors the topic with a Resync. On localhost the
/// first DEL below usually hits the same millisecond, so both outcomes are exercised over runs.
#[tokio::test]
async fn a_stream_deleted_under_the_reader_keeps_delivering_or_resyncs() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let config = RedisBusConfig {
        block: Duration::from_millis(300),
        stream_check: Duration::from_millis(100),
        ..RedisBusConfig::default()
    };
    let a = start_up(&url, &prefix, config.clone()).await;
    let b = start_up(&url, &prefix, config).await;
    let mut sub = b.subscribe("t").await;
    let key = format!("{prefix}:t");
    publish(&a, "t", b"1");
    assert_eq!(&next_message(&mut sub).await.payload[..], b"1");

    // A plain DEL, as an operator might do: the next publish arrives, or a Resync does.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    publish(&a, "t", b"2");
    match next(&mut sub, SOON).await {
        Delivery::Message(m) => {
            assert_eq!(&m.payload[..], b"2");
            eprintln!("after a plain DEL: the next publish arrived");
        }
        Delivery::Resync => eprintln!("after a plain DEL: same millisecond, Resync"),
    }

    // Force the restart below the cursor: an entry far in the future moves the cursor there,
    // then the stream is deleted and new entries get today's ids.
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("99999999999999-0")
        .arg(&["n", "1", "m", "future"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(&next_message(&mut sub).await.payload[..], b"future");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    publish(&a, "t", b"3");
    assert_eq!(
        next(&mut sub, SOON).await,
        Delivery::Resync,
        "3 sorts below the cursor: only the check can tell"
    );
    publish(&a, "t", b"4");
    assert_eq!(&next_message(&mut sub).await.payload[..], b"4");
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn dropping_a_subscription_leaves_the_others_of_its_topic_alone() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let a = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let first = a.subscribe("t").await;
    let mut second = a.subscribe("t").await;
    drop(first);
    publish(&a, "t", b"x");
    assert_eq!(&next_message(&mut second).await.payload[..], b"x");
    a.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn topics_beyond_keys_per_reader_start_more_readers() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let config = RedisBusConfig {
        keys_per_reader: 2,
        ..RedisBusConfig::default()
    };
    let a = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let b = start_up(&url, &prefix, config).await;
    let topics = ["t0", "t1", "t2", "t3", "t4"];
    let mut subs = Vec::new();
    for topic in topics {
        subs.push(b.subscribe(topic).await);
    }
    assert_eq!(b.reader_names().len(), 3, "2 + 2 + 1 keys");
    wait_for("every reader to connect", SOON, || b.is_up()).await;
    for topic in topics {
        publish(&a, topic, topic.as_bytes());
    }
    for (sub, topic) in subs.iter_mut().zip(topics) {
        assert_eq!(&next_message(sub).await.payload[..], topic.as_bytes());
    }
    for name in b.reader_names() {
        assert!(client(&mut conn, &name).await.is_some(), "{name} connected");
    }
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn liveness_follows_the_node_key() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let short = RedisBusConfig {
        node_ttl: Duration::from_secs(1),
        node_info: r#"{"name":"test"}"#.into(),
        ..RedisBusConfig::default()
    };
    let watcher = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let graceful = start_up(&url, &prefix, short.clone()).await;
    let crashed = start_up(&url, &prefix, short).await;
    let nodes = [graceful.node(), crashed.node(), new_node_id()];
    let start = Instant::now();
    loop {
        if watcher.alive(&nodes).await == Some(vec![true, true, false]) {
            break;
        }
        assert!(start.elapsed() < SOON, "the node keys never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let info: String = redis::cmd("GET")
        .arg(format!("{prefix}:node:{}", node_hex(graceful.node())))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(info, r#"{"name":"test"}"#);

    graceful.shutdown().await;
    assert_eq!(
        watcher.alive(&nodes[..1]).await,
        Some(vec![false]),
        "a shutdown withdraws the key at once"
    );

    // Renewed every 200 ms with a 1 s TTL, so it outlives the drop by 800 ms at least.
    let crashed_node = crashed.node();
    drop(crashed);
    assert_eq!(watcher.alive(&[crashed_node]).await, Some(vec![true]));
    let dropped_at = Instant::now();
    loop {
        if watcher.alive(&[crashed_node]).await == Some(vec![false]) {
            break;
        }
        assert!(
            dropped_at.elapsed() < Duration::from_secs(3),
            "the dropped node's key did not expire"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(watcher.alive(&[]).await, Some(vec![]));
    watcher.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn shutdown_ends_subscriptions() {
    let url = require_redis!();
    let prefix = random_prefix();
    let mut conn = admin(&url).await;
    let a = start_up(&url, &prefix, RedisBusConfig::default()).await;
    let mut sub = a.subscribe("t").await;
    let waiter = tokio::spawn(async move { sub.recv().await });
    a.shutdown().await;
    assert!(!a.is_up());
    let ended = tokio::time::timeout(SOON, waiter).await.unwrap().unwrap();
    assert_eq!(ended, None);
    assert_eq!(
        a.subscribe("t").await.recv().await,
        None,
        "refused after shutdown"
    );
    a.shutdown().await;
    cleanup(&mut conn, &prefix).await;
}

/// A `redis-server` of the test's own, on a free port, killed with the guard.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    async fn start(port: u16) -> OwnRedis {
        let server = std::env::var("TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {server} (set TEST_REDIS_SERVER): {e}"));
        let own = OwnRedis { child, port };
        let client = redis::Client::open(own.url()).unwrap();
        let start = Instant::now();
        while client.get_multiplexed_async_connection().await.is_err() {
            assert!(start.elapsed() < SOON, "own redis-server did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        own
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes until one arrives: right after a Redis restart the publisher's first command
/// may fail (it is what tells redis-rs to reconnect), and a lost publish is within contract.
async fn publish_until_received(from: &RedisBus, sub: &mut Subscription, payload: &[u8]) {
    let start = Instant::now();
    loop {
        publish(from, sub.topic(), payload);
        match tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
            Ok(Some(Delivery::Message(m))) if &m.payload[..] == payload => return,
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => assert!(start.elapsed() < SOON, "{payload:?} never arrived"),
        }
    }
}

#[tokio::test]
async fn subscriptions_made_while_redis_is_down_anchor_later_and_redis_restarts_resync() {
    // Gated like the others, though it runs its own server: it is a Redis test.
    let _ = require_redis!();
    let port = OwnRedis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = random_prefix();
    let config = RedisBusConfig::default();
    let b = start(&url, &prefix, config.clone());
    assert!(!b.is_up());
    let asked = Instant::now();
    let mut sub = b.subscribe("t").await;
    assert!(
        asked.elapsed() < config.anchor_timeout + Duration::from_millis(500),
        "subscribe resolves after the anchor timeout: {:?}",
        asked.elapsed()
    );
    assert_eq!(sub.try_recv(), None);

    let server = OwnRedis::start(port).await;
    wait_for("the bus to connect", SOON, || b.is_up()).await;
    assert_eq!(
        next(&mut sub, SOON).await,
        Delivery::Resync,
        "anchored late: Resync first"
    );
    let a = start_up(&url, &prefix, config).await;
    publish_until_received(&a, &mut sub, b"up").await;

    drop(server);
    wait_for("the bus to notice", SOON, || !b.is_up()).await;
    let _server = OwnRedis::start(port).await;
    assert_eq!(
        next(&mut sub, SOON).await,
        Delivery::Resync,
        "after the restart"
    );
    assert!(b.is_up());
    publish_until_received(&a, &mut sub, b"again").await;
    a.shutdown().await;
    b.shutdown().await;
}
