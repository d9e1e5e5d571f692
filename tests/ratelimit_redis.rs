//! The Redis rate limiter against a real Redis at `TEST_REDIS_URL`.
//!
//! Tests that need Redis print that they are skipped and pass when `TEST_REDIS_URL` is unset;
//! when it is set, an unreachable Redis fails them. Every test uses its own random key prefix,
//! so parallel runs (and other users of the same Redis) do not collide. Two `Limiter`s on
//! one Redis stand in for two server processes: each has its own connection and its own
//! in-process fallback, exactly as two nodes would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use resonant::limits::ratelimit::{
    Bucket, Decision, Limiter, Quota, Quotas, RateLimitError, RedisOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// `TEST_REDIS_URL`, or `None` after saying the test is skipped.
fn redis_url(test: &str) -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("{test}: skipped (TEST_REDIS_URL is not set)");
            None
        }
    }
}

fn options() -> RedisOptions {
    RedisOptions {
        prefix: format!("resonant:rl:test:{:016x}", rand::random::<u64>()),
        response_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(3),
        retry_interval: Duration::from_millis(200),
    }
}

fn all(q: Quota) -> Quotas {
    Quotas {
        connect_ip: q,
        api_user: q,
        socket_user: q,
        hook_trigger: q,
    }
}

fn retry_after(d: Decision) -> Duration {
    match d {
        Decision::Deny { retry_after } => retry_after,
        Decision::Allow => panic!("expected a denial"),
    }
}

async fn direct(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("TEST_REDIS_URL is set but Redis is unreachable")
}

fn key(options: &RedisOptions, bucket: Bucket, key: &str) -> String {
    format!("{}:{}:{}", options.prefix, bucket.name(), key)
}

/// Polls `cond` every 50 ms until it holds; fails after 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_nodes_share_one_budget() {
    let Some(url) = redis_url("two_nodes_share_one_budget") else {
        return;
    };
    let options = options();
    // 10 at once, then one every 10 s: nothing refills during the test.
    let quotas = all(Quota::new(0.1, 10));
    let a = Limiter::redis_with(&url, quotas, options.clone())
        .await
        .unwrap();
    let b = Limiter::redis_with(&url, quotas, options.clone())
        .await
        .unwrap();
    assert_eq!((a.backend(), b.backend()), ("redis", "redis"));
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            node.check(Bucket::ApiUser, "alice").await,
            Decision::Allow,
            "event {i}"
        );
    }
    for node in [&a, &b] {
        let wait = retry_after(node.check(Bucket::ApiUser, "alice").await);
        // One event refills every 10 s, less the moments the test took.
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "retry after {wait:?}"
        );
    }
    // Other users and other buckets have budgets of their own.
    assert!(a.check(Bucket::ApiUser, "bob").await.is_allowed());
    assert!(b.check(Bucket::SocketUser, "alice").await.is_allowed());
    assert_eq!(a.redis_errors() + b.redis_errors(), 0);
    // Nothing was decided in process.
    assert_eq!(
        a.local_keys(Bucket::ApiUser) + b.local_keys(Bucket::ApiUser),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_on_two_nodes_never_exceed_the_burst() {
    let Some(url) = redis_url("concurrent_checks_on_two_nodes_never_exceed_the_burst") else {
        return;
    };
    let options = options();
    let quotas = all(Quota::new(0.01, 25));
    let nodes = [
        Limiter::redis_with(&url, quotas, options.clone())
            .await
            .unwrap(),
        Limiter::redis_with(&url, quotas, options.clone())
            .await
            .unwrap(),
    ];
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let node = nodes[i % 2].clone();
            tokio::spawn(async move { node.check(Bucket::SocketUser, "carol").await })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap().is_allowed());
    }
    assert_eq!(allowed, 25);
    assert_eq!(nodes[0].redis_errors() + nodes[1].redis_errors(), 0);
}

#[tokio::test]
async fn keys_expire_once_the_budget_is_full_again() {
    let Some(url) = redis_url("keys_expire_once_the_budget_is_full_again") else {
        return;
    };
    let options = options();
    // One event costs 2 s of budget; the key lives until the budget is full again.
    let limiter = Limiter::redis_with(&url, all(Quota::new(0.5, 5)), options.clone())
        .await
        .unwrap();
    let mut conn = direct(&url).await;
    let k = key(&options, Bucket::ConnectIp, "192.0.2.1");
    limiter.check(Bucket::ConnectIp, "192.0.2.1").await;
    let pttl: i64 = conn.pttl(&k).await.unwrap();
    assert!(
        (1_500..=2_000).contains(&pttl),
        "PTTL after one event: {pttl}"
    );
    for _ in 0..3 {
        limiter.check(Bucket::ConnectIp, "192.0.2.1").await;
    }
    let pttl: i64 = conn.pttl(&k).await.unwrap();
    assert!(
        (7_500..=8_000).contains(&pttl),
        "PTTL after four events: {pttl}"
    );
    // A denied event writes nothing: the TTL does not grow.
    limiter.check(Bucket::ConnectIp, "192.0.2.1").await;
    assert!(limiter.check(Bucket::ConnectIp, "192.0.2.1").await != Decision::Allow);
    let after: i64 = conn.pttl(&k).await.unwrap();
    assert!(
        after <= 10_000 && after > 7_000,
        "PTTL after denials: {after}"
    );

    // A short window really expires: 100 events/s, burst 2, so the key lives 20 ms.
    let fast = Limiter::redis_with(&url, all(Quota::new(100.0, 2)), options.clone())
        .await
        .unwrap();
    let k = key(&options, Bucket::ApiUser, "dave");
    fast.check(Bucket::ApiUser, "dave").await;
    fast.check(Bucket::ApiUser, "dave").await;
    eventually("the key to expire", || {
        let mut conn = conn.clone();
        let k = k.clone();
        async move { !conn.exists::<_, bool>(&k).await.unwrap() }
    })
    .await;
}

#[tokio::test]
async fn unlimited_quota_makes_no_redis_call() {
    let Some(url) = redis_url("unlimited_quota_makes_no_redis_call") else {
        return;
    };
    let proxy = Proxy::start(&url).await;
    let quotas = Quotas {
        connect_ip: Quota::unlimited(),
        api_user: Quota::new(0.0, 100),
        socket_user: Quota::new(1.0, 1),
        hook_trigger: Quota::unlimited(),
    };
    let limiter = Limiter::redis_with(&proxy.url(), quotas, options())
        .await
        .unwrap();
    let before = proxy.sent();
    for i in 0..1000 {
        assert!(limiter
            .check(Bucket::ConnectIp, &i.to_string())
            .await
            .is_allowed());
        assert!(limiter.check(Bucket::ApiUser, "erin").await.is_allowed());
    }
    assert_eq!(proxy.sent(), before, "no bytes sent to Redis");
    // The same connection does carry limited checks (the counter works).
    assert!(limiter.check(Bucket::SocketUser, "erin").await.is_allowed());
    assert!(proxy.sent() > before);
}

#[tokio::test]
async fn script_is_reloaded_after_a_flush() {
    let Some(url) = redis_url("script_is_reloaded_after_a_flush") else {
        return;
    };
    let options = options();
    let limiter = Limiter::redis_with(&url, all(Quota::new(0.01, 1)), options.clone())
        .await
        .unwrap();
    // As after a Redis restart: EVALSHA gets NOSCRIPT and the client falls back to EVAL.
    let mut conn = direct(&url).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(limiter.check(Bucket::ApiUser, "frank").await.is_allowed());
    assert!(!limiter.check(Bucket::ApiUser, "frank").await.is_allowed());
    assert!(conn
        .exists::<_, bool>(key(&options, Bucket::ApiUser, "frank"))
        .await
        .unwrap());
    assert_eq!(limiter.redis_errors(), 0);
}

#[tokio::test]
async fn redis_outage_falls_back_to_in_process_limits() {
    let Some(url) = redis_url("redis_outage_falls_back_to_in_process_limits") else {
        return;
    };
    let proxy = Proxy::start(&url).await;
    let options = options();
    let limiter = Limiter::redis_with(&proxy.url(), all(Quota::new(0.01, 3)), options.clone())
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(limiter.check(Bucket::ApiUser, "gina").await.is_allowed());
    }
    assert!(!limiter.check(Bucket::ApiUser, "gina").await.is_allowed());
    assert_eq!(limiter.local_keys(Bucket::ApiUser), 0);

    // Redis goes away: connections are cut and new ones are closed at once.
    proxy.set(Mode::Down);
    let started = Instant::now();
    let mut decisions = Vec::new();
    for _ in 0..4 {
        let one = Instant::now();
        decisions.push(limiter.check(Bucket::ApiUser, "gina").await.is_allowed());
        assert!(
            one.elapsed() < Duration::from_secs(2),
            "a check took {:?}",
            one.elapsed()
        );
    }
    // The in-process fallback starts from a full budget of its own (fail open, per node)
    // and still limits.
    assert_eq!(decisions, [true, true, true, false]);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(limiter.redis_errors() >= 1);
    assert_eq!(limiter.local_keys(Bucket::ApiUser), 1);

    // Redis comes back; after the retry interval checks use it again.
    proxy.set(Mode::Up);
    let mut conn = direct(&url).await;
    let k = key(&options, Bucket::ApiUser, "hank");
    eventually("checks to reach Redis again", || {
        let limiter = limiter.clone();
        let mut conn = conn.clone();
        let k = k.clone();
        async move {
            limiter.check(Bucket::ApiUser, "hank").await;
            conn.exists::<_, bool>(&k).await.unwrap()
        }
    })
    .await;
    let errors = limiter.redis_errors();
    assert!(!limiter.check(Bucket::ApiUser, "gina").await.is_allowed());
    let _ = conn.del::<_, ()>(&k).await;
    assert!(limiter.check(Bucket::ApiUser, "hank").await.is_allowed());
    assert_eq!(
        limiter.redis_errors(),
        errors,
        "no failures once Redis is back"
    );
}

#[tokio::test]
async fn unresponsive_redis_costs_one_timeout_then_decides_locally() {
    let Some(url) = redis_url("unresponsive_redis_costs_one_timeout_then_decides_locally") else {
        return;
    };
    let proxy = Proxy::start(&url).await;
    let mut options = options();
    options.retry_interval = Duration::from_secs(30);
    let limiter = Limiter::redis_with(&proxy.url(), all(Quota::new(0.01, 2)), options.clone())
        .await
        .unwrap();
    assert!(limiter.check(Bucket::SocketUser, "ivy").await.is_allowed());

    // Redis stops answering but keeps the connection open (a hung server or a black hole).
    proxy.set(Mode::Frozen);
    let started = Instant::now();
    assert!(limiter.check(Bucket::SocketUser, "ivy").await.is_allowed());
    let first = started.elapsed();
    assert!(
        first >= Duration::from_millis(250) && first < Duration::from_secs(2),
        "the first check waited {first:?}, about the response timeout"
    );
    assert_eq!(limiter.redis_errors(), 1);
    // Within the retry interval checks do not wait for Redis at all.
    let started = Instant::now();
    assert!(limiter.check(Bucket::SocketUser, "ivy").await.is_allowed());
    assert!(!limiter.check(Bucket::SocketUser, "ivy").await.is_allowed());
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(limiter.redis_errors(), 1);
}

#[tokio::test]
async fn start_fails_clearly_when_redis_is_unreachable() {
    // No Redis needed: a port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://:hunter2@127.0.0.1:{port}/0");
    let started = Instant::now();
    let mut opts = options();
    opts.connect_timeout = Duration::from_secs(2);
    let err = Limiter::redis_with(&url, Quotas::default(), opts)
        .await
        .expect_err("no Redis there");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        matches!(
            err,
            RateLimitError::Connect { .. } | RateLimitError::Timeout { .. }
        ),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    assert!(!shown.contains("hunter2"), "password leaked: {shown}");

    let err = Limiter::redis("http://127.0.0.1/", Quotas::default())
        .await
        .expect_err("not a Redis URL");
    assert!(matches!(err, RateLimitError::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn new_picks_the_backend() {
    let limiter = Limiter::new(None, Quotas::default()).await.unwrap();
    assert_eq!(limiter.backend(), "memory");
    let Some(url) = redis_url("new_picks_the_backend") else {
        return;
    };
    let limiter = Limiter::new(Some(&url), Quotas::default()).await.unwrap();
    assert_eq!(limiter.backend(), "redis");
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards both ways.
    Up,
    /// Cuts every connection and closes new ones at once (Redis down).
    Down,
    /// Keeps connections open but forwards nothing (Redis hung).
    Frozen,
}

/// A TCP proxy on 127.0.0.1 in front of the test Redis, to cut it off mid-test.
struct Proxy {
    url: String,
    mode: watch::Sender<Mode>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(redis_url: &str) -> Proxy {
        let (prefix, rest) = redis_url.split_once("://").expect("a redis:// URL");
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), authority),
        };
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let upstream = tokio::net::lookup_host(&hostport)
            .await
            .unwrap()
            .next()
            .expect("Redis host resolves");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Up);
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Down {
                    continue;
                }
                tokio::spawn(pipe(client, upstream, rx.clone(), counter.clone()));
            }
        });
        Proxy {
            url: format!("{prefix}://{userinfo}{addr}{path}"),
            mode,
            sent,
            task,
        }
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Bytes forwarded from clients to Redis so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Down);
    }
}

async fn pipe(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    sent: Arc<AtomicU64>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Down => return,
            Mode::Frozen => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Up => {}
        }
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            n = cr.read(&mut up) => {
                let Ok(n @ 1..) = n else { return };
                sent.fetch_add(n as u64, Ordering::SeqCst);
                if sw.write_all(&up[..n]).await.is_err() { return }
            }
            n = sr.read(&mut down) => {
                let Ok(n @ 1..) = n else { return };
                if cw.write_all(&down[..n]).await.is_err() { return }
            }
        }
    }
}
