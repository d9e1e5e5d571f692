//! Rate limiting: per IP for connection attempts, per user for API calls and socket messages.
//!
//! Every budget is a GCRA (generic cell rate algorithm): a sustained rate plus a burst, kept
//! as one timestamp per key (the key's "theoretical arrival time", TAT). GCRA needs no
//! background refill and no per-request history, so a key costs a few bytes and a check is
//! one read-modify-write.
//!
//! By default the state lives in this process ([`Limiter::in_process`]). With several nodes
//! behind a load balancer that would give each client N budgets, so [`Limiter::redis`] keeps
//! the state in Redis instead: one Lua script per check (one round trip), timed by the Redis
//! server's clock so that nodes with skewed clocks still agree. If Redis fails during a check
//! the check falls back to the in-process limiter (fail open to a per-node budget) rather
//! than failing the request: a rate limiter that takes the service down with Redis would be
//! worse than one that is briefly N times as generous.
//!
//! Why a GCRA of our own when `admission.rs` uses the `governor` crate's: this one must run
//! the same arithmetic in Redis's Lua and in process, and fall back from one to the other
//! without a client seeing its budget reset, so both read one TAT in milliseconds that we
//! compute; `governor` keeps its state private in its own clock's units. Admission is one
//! server-wide in-process rate, where `governor` fits as it is.
//!
//! Callers answer a [`Decision::Deny`] with `429 Too Many Requests` and a `Retry-After` of
//! [`Decision::retry_after_secs`] over REST, and close sockets with
//! `resonant_sync::close_code::RATE_LIMITED` (4429, mirroring HTTP 429):
//!
//! ```text
//! let limiter = Limiter::new(redis_url.as_deref(), Quotas::default()).await?; // at start
//! limiter.check(Bucket::ConnectIp, &ip_key(peer.ip())).await    // before the upgrade
//! limiter.check(Bucket::ApiUser, &user_id).await                // per REST call
//! limiter.check(Bucket::SocketUser, &user_id).await             // per socket message
//! limiter.check(Bucket::HookTrigger, &trigger_id).await         // per webhook trigger call
//! ```

use resonant_bus::redact;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

/// A budget: `per_second` on average, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Sustained rate in events per second; `<= 0` (or NaN) means unlimited.
    pub per_second: f64,
    /// Most events allowed at once after a quiet period (0 is treated as 1).
    pub burst: u32,
}

impl Quota {
    /// A budget of `per_second` sustained with bursts of `burst`.
    pub const fn new(per_second: f64, burst: u32) -> Quota {
        Quota { per_second, burst }
    }

    /// No limit: checks allow everything without any work (and without a Redis round trip).
    pub const fn unlimited() -> Quota {
        Quota {
            per_second: 0.0,
            burst: 0,
        }
    }

    /// Whether this quota allows everything.
    pub fn is_unlimited(&self) -> bool {
        // NaN counts as unlimited rather than as "deny everything".
        self.per_second.is_nan() || self.per_second <= 0.0
    }
}

/// What is being limited; each bucket has its own quota and its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Connection attempts (WebSocket upgrades), keyed by client IP (see [`ip_key`]).
    ConnectIp,
    /// REST API calls, keyed by user.
    ApiUser,
    /// Socket messages, keyed by user (across all of the user's connections).
    SocketUser,
    /// Calls to a workflow's webhook trigger, keyed by trigger id.
    HookTrigger,
}

impl Bucket {
    /// Every bucket, in a fixed order.
    pub const ALL: [Bucket; 4] = [
        Bucket::ConnectIp,
        Bucket::ApiUser,
        Bucket::SocketUser,
        Bucket::HookTrigger,
    ];

    /// The stable name used in Redis keys and metric labels (never change it: renaming resets
    /// every budget in Redis and breaks dashboards).
    pub const fn name(self) -> &'static str {
        match self {
            Bucket::ConnectIp => "connect_ip",
            Bucket::ApiUser => "api_user",
            Bucket::SocketUser => "socket_user",
            Bucket::HookTrigger => "hook_trigger",
        }
    }

    const fn index(self) -> usize {
        match self {
            Bucket::ConnectIp => 0,
            Bucket::ApiUser => 1,
            Bucket::SocketUser => 2,
            Bucket::HookTrigger => 3,
        }
    }
}

/// The quota of each bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quotas {
    /// Connection attempts per client IP.
    pub connect_ip: Quota,
    /// REST API calls per user.
    pub api_user: Quota,
    /// Socket messages per user.
    pub socket_user: Quota,
    /// Calls per webhook trigger.
    pub hook_trigger: Quota,
}

impl Default for Quotas {
    /// Defaults meant to never touch a well-behaved client and to stop scripted floods.
    fn default() -> Quotas {
        Quotas {
            // A client reconnects at most about once a second (with backoff); the burst lets
            // an office behind one NAT reload all its tabs at once after a deploy (every
            // socket gets a 1012 and comes back within a second or two). 10/s sustained still
            // stops a script from turning handshakes (upgrade + room load) into a flood.
            connect_ip: Quota::new(10.0, 60),
            // A page load fires a dozen or two requests in parallel; 60 covers a few page
            // loads back to back, and 20/s sustained is far above what a person clicks.
            api_user: Quota::new(20.0, 60),
            // Editors send many small updates while dragging (one per pointer move, ~60/s)
            // plus awareness at up to ~30/s, per tab, and a user may have a few tabs open:
            // 200/s sustained is about twice that. The burst of 1000 absorbs a reconnect
            // that flushes the updates made offline and a large paste split into many updates.
            socket_user: Quota::new(200.0, 1000),
            // A sender's retries and bursts (a batch of events) fit; a flood does not.
            hook_trigger: Quota::new(10.0, 50),
        }
    }
}

impl Quotas {
    /// The quota of `bucket`.
    pub fn get(&self, bucket: Bucket) -> Quota {
        match bucket {
            Bucket::ConnectIp => self.connect_ip,
            Bucket::ApiUser => self.api_user,
            Bucket::SocketUser => self.socket_user,
            Bucket::HookTrigger => self.hook_trigger,
        }
    }

    /// No limit on any bucket.
    pub const fn unlimited() -> Quotas {
        Quotas {
            connect_ip: Quota::unlimited(),
            api_user: Quota::unlimited(),
            socket_user: Quota::unlimited(),
            hook_trigger: Quota::unlimited(),
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within budget; the event was counted.
    Allow,
    /// Over budget; nothing was counted. The next event of this key is allowed after
    /// `retry_after` (if no other event of the key comes first).
    Deny {
        /// How long until one more event fits in the budget.
        retry_after: Duration,
    },
}

impl Decision {
    /// Whether the event is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// The value for a `Retry-After` header: whole seconds, rounded up (a client told "0"
    /// would retry at once and be denied again), at least 1. `None` when allowed.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Decision::Allow => None,
            Decision::Deny { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
        }
    }
}

/// The key for a client IP in [`Bucket::ConnectIp`].
///
/// IPv4 addresses (also when mapped into IPv6) are keyed whole; IPv6 addresses by their /64
/// prefix, because one host is routinely given a whole /64 and could otherwise take a fresh
/// budget (and a fresh key in memory) for every address in it.
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Why [`Limiter::redis`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The URL is not a usable Redis URL.
    #[error("invalid Redis URL {url}: {source}")]
    InvalidUrl {
        /// The URL, with any password masked.
        url: String,
        /// What the Redis client said.
        source: redis::RedisError,
    },
    /// Redis refused the connection, the credentials, or the rate-limit script.
    #[error("could not connect to Redis at {url}: {source}")]
    Connect {
        /// The URL, with any password masked.
        url: String,
        /// What the Redis client said.
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("Redis at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL, with any password masked.
        url: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Settings of the Redis backend beyond its URL.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Key prefix: keys are `{prefix}:{bucket}:{key}`. Distinct deployments sharing one Redis
    /// (or tests) use distinct prefixes.
    pub prefix: String,
    /// How long a check waits for Redis before deciding in process instead. Redis answers
    /// in well under a millisecond when healthy; this bounds what an outage adds to a request.
    pub response_timeout: Duration,
    /// How long [`Limiter::redis`] may take to connect and load the script.
    pub connect_timeout: Duration,
    /// After a Redis failure, checks skip Redis for this long (deciding in process), so an
    /// outage costs one timeout per interval rather than one per request.
    pub retry_interval: Duration,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            prefix: "resonant:rl".to_string(),
            response_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// A rate limiter over all buckets; cheap to clone (clones share the budgets).
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Zero of every timestamp kept in process (see `Limiter::now_nanos`).
    epoch: Instant,
    /// The in-process tables, one per bucket (the fallback when Redis is in use).
    local: [Table; 4],
    redis: Option<RedisBackend>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

static DENIED: LazyLock<[metrics::Counter; 4]> = LazyLock::new(|| {
    Bucket::ALL.map(|b| metrics::counter!("resonant_ratelimit_denied_total", "bucket" => b.name()))
});
static REDIS_ERRORS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_ratelimit_redis_errors_total"));

impl Limiter {
    /// A limiter that keeps its state in this process (one budget per node).
    pub fn in_process(quotas: Quotas) -> Limiter {
        Limiter {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                local: Bucket::ALL.map(|b| Table::new(quotas.get(b))),
                redis: None,
            }),
        }
    }

    /// A limiter that keeps its state in Redis at `url`, shared by every node using it, with
    /// the default [`RedisOptions`]. Fails if Redis cannot be reached now, so that a
    /// misconfigured `REDIS_URL` stops the server at start rather than silently limiting
    /// per node.
    pub async fn redis(url: &str, quotas: Quotas) -> Result<Limiter, RateLimitError> {
        Limiter::redis_with(url, quotas, RedisOptions::default()).await
    }

    /// [`Limiter::redis`] with explicit options.
    pub async fn redis_with(
        url: &str,
        quotas: Quotas,
        options: RedisOptions,
    ) -> Result<Limiter, RateLimitError> {
        let backend = RedisBackend::connect(url, options).await?;
        tracing::info!(url = %redact(url), "rate limits kept in Redis");
        Ok(Limiter {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                local: Bucket::ALL.map(|b| Table::new(quotas.get(b))),
                redis: Some(backend),
            }),
        })
    }

    /// In Redis if `redis_url` is given (the `REDIS_URL` setting), else in process.
    pub async fn new(redis_url: Option<&str>, quotas: Quotas) -> Result<Limiter, RateLimitError> {
        match redis_url {
            Some(url) => Limiter::redis(url, quotas).await,
            None => Ok(Limiter::in_process(quotas)),
        }
    }

    /// Counts one event of `key` in `bucket` and says whether it is within budget. Never
    /// fails: if Redis does not answer, the in-process limiter decides.
    pub async fn check(&self, bucket: Bucket, key: &str) -> Decision {
        let table = &self.inner.local[bucket.index()];
        let Some(gcra) = table.gcra else {
            return Decision::Allow;
        };
        let decision = match &self.inner.redis {
            Some(redis) if redis.available(self.now_nanos()) => {
                // Boxed: the Redis call's future is large, and inline it would size every
                // caller's future, among them every connection's reader for its whole life
                // (720 of the reader's 1,992 bytes), for a path taken only with Redis.
                let result = tokio::time::timeout(
                    redis.options.response_timeout,
                    Box::pin(redis.check(bucket, key, gcra)),
                )
                .await;
                match result {
                    Ok(Ok(decision)) => {
                        // Keys left in process by an earlier outage are given back in time.
                        table.sweep_if_due(self.now_nanos());
                        Some(decision)
                    }
                    Ok(Err(e)) => {
                        redis.failed(self.now_nanos(), &e);
                        None
                    }
                    Err(_) => {
                        redis.failed(self.now_nanos(), &"no answer within the response timeout");
                        None
                    }
                }
            }
            _ => None,
        };
        let decision = decision.unwrap_or_else(|| table.check(gcra, key, self.now_nanos()));
        if !decision.is_allowed() {
            DENIED[bucket.index()].increment(1);
        }
        decision
    }

    /// Where the budgets are kept: `"memory"` or `"redis"`.
    pub fn backend(&self) -> &'static str {
        if self.inner.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// How many Redis failures (errors and timeouts) checks have met so far; also counted in
    /// the `resonant_ratelimit_redis_errors_total` metric.
    pub fn redis_errors(&self) -> u64 {
        self.inner
            .redis
            .as_ref()
            .map_or(0, |r| r.errors.load(Ordering::Relaxed))
    }

    /// How many keys of `bucket` the in-process limiter holds (for diagnostics and tests).
    pub fn local_keys(&self, bucket: Bucket) -> usize {
        self.inner.local[bucket.index()].map.len()
    }

    /// Drops in-process keys whose budget is full again (they are indistinguishable from
    /// absent ones). Checks do this by themselves as the tables grow and every
    /// [`SWEEP_INTERVAL`]; this is for tests and for callers that want it sooner.
    pub fn sweep(&self) {
        let now = self.now_nanos();
        for table in &self.inner.local {
            table.sweep(now);
        }
    }

    /// Nanoseconds since this limiter was made, on tokio's clock (so paused-time tests can
    /// move it).
    fn now_nanos(&self) -> u64 {
        nanos(self.inner.epoch.elapsed())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The slowest rate honoured: one event per ~11.6 days. Slower ones are rounded up to it so
/// that, for any sensible burst, interval × burst stays an exact integer in nanoseconds here
/// and in microseconds as a Lua double in the Redis script.
const MIN_PER_SECOND: f64 = 1e-6;

/// A quota as GCRA parameters, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// The emission interval: time one event "costs" (1 / rate).
    interval: u64,
    /// At least 1.
    burst: u32,
}

impl Gcra {
    fn new(quota: Quota) -> Option<Gcra> {
        if quota.is_unlimited() {
            return None;
        }
        let per_second = quota.per_second.max(MIN_PER_SECOND);
        let interval = (1e9 / per_second).round().max(1.0) as u64;
        Some(Gcra {
            interval,
            burst: quota.burst.max(1),
        })
    }

    /// The emission interval in whole microseconds (the Redis script's unit), at least 1.
    fn interval_micros(&self) -> u64 {
        self.interval.div_ceil(1000).max(1)
    }

    /// Given a key's TAT (or `now` if it has none), `Ok(new TAT)` if one more event fits, or
    /// `Err(nanoseconds until it would)`. An event is admitted if, after adding its interval
    /// to the TAT, the TAT is at most `burst` intervals ahead of now.
    fn decide(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let new_tat = tat.max(now).saturating_add(self.interval);
        let ahead = new_tat - now;
        let limit = self.interval.saturating_mul(u64::from(self.burst));
        if ahead > limit {
            Err(ahead - limit)
        } else {
            Ok(new_tat)
        }
    }
}

/// Every this often a check sweeps its table even if it has not grown, so the memory an
/// attack took is given back once it stops.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Tables smaller than this are swept only every [`SWEEP_INTERVAL`].
const MIN_SWEEP_LEN: usize = 4096;

/// The in-process state of one bucket: key → TAT (nanoseconds since the limiter's epoch).
///
/// A key whose TAT has passed has its whole burst available again, exactly like a key never
/// seen, so sweeping such keys loses nothing. A key's TAT is at most `burst / rate` seconds
/// ahead, so only keys used within that long are kept; and the table is swept whenever it has
/// doubled since the last sweep (amortised O(1) per new key), so it stays within about twice
/// the number of such live keys however many distinct keys an attacker cycles through.
struct Table {
    gcra: Option<Gcra>,
    map: DashMap<Box<str>, u64>,
    /// About `map.len()`: exact after a sweep, plus the keys inserted since.
    approx_len: AtomicUsize,
    /// Length at which a new key triggers a sweep.
    sweep_at_len: AtomicUsize,
    /// Time (nanoseconds since the epoch) after which any check triggers a sweep.
    sweep_at_time: AtomicU64,
    /// Held by the one check that is sweeping, so others do not sweep in parallel.
    sweeping: AtomicBool,
}

impl Table {
    fn new(quota: Quota) -> Table {
        Table {
            gcra: Gcra::new(quota),
            map: DashMap::new(),
            approx_len: AtomicUsize::new(0),
            sweep_at_len: AtomicUsize::new(MIN_SWEEP_LEN),
            sweep_at_time: AtomicU64::new(nanos(SWEEP_INTERVAL)),
            sweeping: AtomicBool::new(false),
        }
    }

    fn check(&self, gcra: Gcra, key: &str, now: u64) -> Decision {
        let apply = |tat: &mut u64| match gcra.decide(*tat, now) {
            Ok(new_tat) => {
                *tat = new_tat;
                Decision::Allow
            }
            Err(wait) => Decision::Deny {
                retry_after: Duration::from_nanos(wait),
            },
        };
        // Known keys update in place without allocating; only a new key pays for its copy.
        let existing = self.map.get_mut(key).map(|mut tat| apply(&mut tat));
        let decision = match existing {
            Some(decision) => decision,
            None => {
                let (decision, inserted) = match self.map.entry(Box::from(key)) {
                    Entry::Occupied(mut entry) => (apply(entry.get_mut()), false),
                    Entry::Vacant(entry) => (apply(&mut entry.insert(now)), true),
                };
                // The entry's shard lock is released above: a sweep must not run under it.
                // (The count is approximate under races, which only shifts when we sweep;
                // DashMap's exact len() would lock every shard on every new key.)
                if inserted
                    && self.approx_len.fetch_add(1, Ordering::Relaxed) + 1
                        >= self.sweep_at_len.load(Ordering::Relaxed)
                {
                    self.sweep(now);
                }
                decision
            }
        };
        self.sweep_if_due(now);
        decision
    }

    /// Sweeps if [`SWEEP_INTERVAL`] has passed since the last sweep (one atomic load if not).
    fn sweep_if_due(&self, now: u64) {
        if now >= self.sweep_at_time.load(Ordering::Relaxed) {
            self.sweep(now);
        }
    }

    fn sweep(&self, now: u64) {
        if self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        self.map.retain(|_, tat| *tat > now);
        let len = self.map.len();
        self.approx_len.store(len, Ordering::Relaxed);
        // Retain keeps the capacity; give the memory back once most of it is unused.
        if self.map.capacity() > 4 * len.max(MIN_SWEEP_LEN) {
            self.map.shrink_to_fit();
        }
        self.sweep_at_len
            .store((2 * len).max(MIN_SWEEP_LEN), Ordering::Relaxed);
        self.sweep_at_time
            .store(now.saturating_add(nanos(SWEEP_INTERVAL)), Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }
}

/// GCRA over one key in Redis, in one round trip, on the Redis server's clock.
///
/// Times are integer microseconds (exact in Lua's doubles for centuries). The key holds the
/// TAT and expires when the TAT passes, since a key with its whole burst available is the
/// same as no key. A denied event writes nothing. Needs Redis 5 or later (scripts replicate
/// their effects, so reading TIME before a write is allowed). One key per call, so it also
/// works on Redis Cluster.
const GCRA_LUA: &str = r#"
-- KEYS[1]: the key; its value is the TAT in microseconds on this server's clock.
-- ARGV[1]: emission interval in microseconds (1 / rate); ARGV[2]: burst (>= 1).
-- Returns {1, 0} if allowed, {0, microseconds until one more event fits} if denied.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local limit = interval * tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[1])
local tat = stored and tonumber(stored) or now
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > limit then
  return {0, ahead - limit}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000))
return {1, 0}
"#;

/// Warn about Redis failures at most this often (an outage would otherwise log per request).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

struct RedisBackend {
    conn: ConnectionManager,
    script: redis::Script,
    options: RedisOptions,
    /// Checks skip Redis until this time. Like every time here, in nanoseconds since the
    /// limiter's epoch (see `Limiter::now_nanos`).
    retry_at: AtomicU64,
    errors: AtomicU64,
    /// Next time a failure may be logged, and failures not logged since the last warning.
    warn_at: AtomicU64,
    unlogged: AtomicU64,
}

impl RedisBackend {
    async fn connect(url: &str, options: RedisOptions) -> Result<RedisBackend, RateLimitError> {
        let shown = redact(url);
        let client = redis::Client::open(url).map_err(|source| RateLimitError::InvalidUrl {
            url: shown.clone(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.connect_timeout))
            // Reconnects happen in the background while checks fall back to memory; a short
            // capped backoff brings Redis back soon after it returns.
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let script = redis::Script::new(GCRA_LUA);
        let start = async {
            let mut conn = ConnectionManager::new_with_config(client, config).await?;
            // Loading now checks that scripting works (and the credentials) before serving,
            // and saves the first check the EVALSHA miss.
            script.prepare_invoke().load_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = match tokio::time::timeout(options.connect_timeout, start).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(RateLimitError::Connect { url: shown, source }),
            Err(_) => {
                return Err(RateLimitError::Timeout {
                    url: shown,
                    timeout: options.connect_timeout,
                })
            }
        };
        Ok(RedisBackend {
            conn,
            script,
            options,
            retry_at: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            warn_at: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        })
    }

    /// Whether checks should try Redis at `now` (not within `retry_interval` of a failure).
    fn available(&self, now: u64) -> bool {
        now >= self.retry_at.load(Ordering::Relaxed)
    }

    async fn check(&self, bucket: Bucket, key: &str, gcra: Gcra) -> redis::RedisResult<Decision> {
        let mut conn = self.conn.clone();
        let redis_key = format!("{}:{}:{}", self.options.prefix, bucket.name(), key);
        // EVALSHA, and EVAL's text only if the server lost the script (NOSCRIPT).
        let (allowed, wait_micros): (i64, i64) = self
            .script
            .key(redis_key)
            .arg(gcra.interval_micros())
            .arg(gcra.burst)
            .invoke_async(&mut conn)
            .await?;
        Ok(if allowed == 1 {
            Decision::Allow
        } else {
            Decision::Deny {
                retry_after: Duration::from_micros(wait_micros.max(1) as u64),
            }
        })
    }

    /// Records a failure at `now`: skip Redis for a while, count it, and maybe warn.
    fn failed(&self, now: u64, error: &dyn std::fmt::Display) {
        self.retry_at.store(
            now.saturating_add(nanos(self.options.retry_interval)),
            Ordering::Relaxed,
        );
        self.errors.fetch_add(1, Ordering::Relaxed);
        REDIS_ERRORS.increment(1);
        let warn_at = self.warn_at.load(Ordering::Relaxed);
        let next = now.saturating_add(nanos(WARN_INTERVAL));
        if now >= warn_at
            && self
                .warn_at
                .compare_exchange(warn_at, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                error = %error,
                similar_failures_not_logged = unlogged,
                "Redis rate-limit check failed; deciding in process (per-node budgets) for now"
            );
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(q: Quota) -> Quotas {
        Quotas {
            connect_ip: q,
            api_user: q,
            socket_user: q,
            hook_trigger: q,
        }
    }

    fn deny_after(d: Decision) -> Duration {
        match d {
            Decision::Deny { retry_after } => retry_after,
            Decision::Allow => panic!("expected a denial"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_deny_with_retry_after_then_refill() {
        let limiter = Limiter::in_process(quotas(Quota::new(10.0, 5)));
        assert_eq!(limiter.backend(), "memory");
        for i in 0..5 {
            assert_eq!(
                limiter.check(Bucket::ApiUser, "u1").await,
                Decision::Allow,
                "event {i} is within the burst"
            );
        }
        let d = limiter.check(Bucket::ApiUser, "u1").await;
        // One event every 100 ms refills: the next fits in 100 ms.
        assert_eq!(deny_after(d), Duration::from_millis(100));
        assert_eq!(d.retry_after_secs(), Some(1));
        // A denied event is not counted: still exactly 100 ms.
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(
            deny_after(limiter.check(Bucket::ApiUser, "u1").await),
            Duration::from_millis(60)
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(limiter.check(Bucket::ApiUser, "u1").await, Decision::Allow);
        assert!(!limiter.check(Bucket::ApiUser, "u1").await.is_allowed());
        // After burst / rate the whole burst is back.
        tokio::time::advance(Duration::from_millis(500)).await;
        for _ in 0..5 {
            assert!(limiter.check(Bucket::ApiUser, "u1").await.is_allowed());
        }
        assert!(!limiter.check(Bucket::ApiUser, "u1").await.is_allowed());
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_rate_is_honoured() {
        let limiter = Limiter::in_process(quotas(Quota::new(4.0, 2)));
        let mut allowed = 0;
        // 10 s at 100 attempts per second: 2 (burst) + 4/s × 10 s.
        for _ in 0..1000 {
            if limiter.check(Bucket::SocketUser, "u").await.is_allowed() {
                allowed += 1;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!((41..=42).contains(&allowed), "allowed {allowed}");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_and_buckets_are_independent() {
        let limiter = Limiter::in_process(quotas(Quota::new(1.0, 2)));
        for _ in 0..2 {
            assert!(limiter.check(Bucket::ApiUser, "a").await.is_allowed());
        }
        assert!(!limiter.check(Bucket::ApiUser, "a").await.is_allowed());
        for _ in 0..2 {
            assert!(limiter.check(Bucket::ApiUser, "b").await.is_allowed());
            assert!(limiter.check(Bucket::SocketUser, "a").await.is_allowed());
            assert!(limiter.check(Bucket::ConnectIp, "a").await.is_allowed());
        }
        assert!(!limiter.check(Bucket::ApiUser, "b").await.is_allowed());
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_quota_allows_everything_and_keeps_no_state() {
        let limiter = Limiter::in_process(Quotas {
            connect_ip: Quota::unlimited(),
            api_user: Quota::new(-1.0, 10),
            socket_user: Quota::new(f64::NAN, 0),
            hook_trigger: Quota::unlimited(),
        });
        for bucket in Bucket::ALL {
            for i in 0..10_000 {
                assert!(limiter.check(bucket, &i.to_string()).await.is_allowed());
            }
            assert_eq!(limiter.local_keys(bucket), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_burst_counts_as_one() {
        let limiter = Limiter::in_process(quotas(Quota::new(1.0, 0)));
        assert!(limiter.check(Bucket::ApiUser, "u").await.is_allowed());
        assert_eq!(
            deny_after(limiter.check(Bucket::ApiUser, "u").await),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_forgets_idle_keys_without_changing_decisions() {
        // One event keeps a key for one interval (1 s); five keep it for 5 s.
        let limiter = Limiter::in_process(quotas(Quota::new(1.0, 5)));
        for i in 0..100_000 {
            limiter.check(Bucket::ConnectIp, &format!("k{i}")).await;
        }
        for _ in 0..5 {
            assert!(limiter.check(Bucket::ConnectIp, "hot").await.is_allowed());
        }
        // Every key is still within its window, so the sweeps as the table grew kept them all.
        assert_eq!(limiter.local_keys(Bucket::ConnectIp), 100_001);
        tokio::time::advance(Duration::from_millis(500)).await;
        limiter.sweep();
        assert_eq!(limiter.local_keys(Bucket::ConnectIp), 100_001);
        tokio::time::advance(Duration::from_millis(600)).await;
        limiter.sweep();
        assert_eq!(limiter.local_keys(Bucket::ConnectIp), 1, "only the hot key");
        let cap = limiter.inner.local[Bucket::ConnectIp.index()]
            .map
            .capacity();
        assert!(cap < 1000, "capacity given back: {cap}");
        // The hot key's state survived: 1.1 s refilled one event, and the next is 0.9 s away.
        assert!(limiter.check(Bucket::ConnectIp, "hot").await.is_allowed());
        assert_eq!(
            deny_after(limiter.check(Bucket::ConnectIp, "hot").await),
            Duration::from_millis(900)
        );
        // A swept key starts over with its whole burst, as if never seen.
        for _ in 0..5 {
            assert!(limiter.check(Bucket::ConnectIp, "k7").await.is_allowed());
        }
        assert!(!limiter.check(Bucket::ConnectIp, "k7").await.is_allowed());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_while_keys_cycle() {
        // An attacker cycling through distinct IPs at 10k new keys per second, one attempt
        // each: a key is live for one interval (1 s), so about 10k keys are live at a time.
        // No explicit sweeps: the checks keep the table within twice that.
        let limiter = Limiter::in_process(quotas(Quota::new(1.0, 5)));
        let mut most = 0;
        for i in 0..200_000u32 {
            limiter.check(Bucket::ConnectIp, &i.to_string()).await;
            if i % 100 == 99 {
                tokio::time::advance(Duration::from_millis(10)).await;
                most = most.max(limiter.local_keys(Bucket::ConnectIp));
            }
        }
        // At least the live keys are kept (else decisions would change), at most about twice.
        assert!((9_900..=2 * 10_100).contains(&most), "table grew to {most}");
        // Once the attack stops, the timed sweep gives everything back.
        tokio::time::advance(SWEEP_INTERVAL).await;
        limiter.check(Bucket::ConnectIp, "late").await;
        assert_eq!(limiter.local_keys(Bucket::ConnectIp), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_never_exceed_the_burst() {
        let limiter = Limiter::in_process(quotas(Quota::new(0.001, 50)));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let mut allowed = 0;
                    for _ in 0..100 {
                        if limiter.check(Bucket::SocketUser, "u").await.is_allowed() {
                            allowed += 1;
                        }
                    }
                    allowed
                })
            })
            .collect();
        let mut allowed = 0;
        for t in tasks {
            allowed += t.await.unwrap();
        }
        assert_eq!(allowed, 50);
    }

    #[test]
    fn check_is_send() {
        fn assert_send<T: Send>(_: T) {}
        let limiter = Limiter::in_process(Quotas::default());
        assert_send(limiter.check(Bucket::ApiUser, "u"));
    }

    #[test]
    fn retry_after_secs_rounds_up() {
        let deny = |ms| Decision::Deny {
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(Decision::Allow.retry_after_secs(), None);
        assert_eq!(deny(0).retry_after_secs(), Some(1));
        assert_eq!(deny(1).retry_after_secs(), Some(1));
        assert_eq!(deny(1000).retry_after_secs(), Some(1));
        assert_eq!(deny(1001).retry_after_secs(), Some(2));
    }

    #[test]
    fn ip_keys_group_ipv6_by_64() {
        let key = |s: &str| ip_key(s.parse().unwrap());
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), key("2001:db8:1:2::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn bucket_names_are_stable() {
        let names: Vec<_> = Bucket::ALL.iter().map(|b| b.name()).collect();
        assert_eq!(
            names,
            ["connect_ip", "api_user", "socket_user", "hook_trigger"]
        );
        for (i, b) in Bucket::ALL.iter().enumerate() {
            assert_eq!(b.index(), i);
        }
    }

    #[test]
    fn redact_masks_passwords() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://:hunter2@redis:6379"),
            "redis://:***@redis:6379"
        );
        assert_eq!(
            redact("redis://app:hunter2@redis/1"),
            "redis://app:***@redis/1"
        );
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn gcra_intervals() {
        let g = Gcra::new(Quota::new(200.0, 1000)).unwrap();
        assert_eq!(g.interval, 5_000_000);
        assert_eq!(g.interval_micros(), 5_000);
        let fast = Gcra::new(Quota::new(1e12, 1)).unwrap();
        assert_eq!((fast.interval, fast.interval_micros()), (1, 1));
        let slow = Gcra::new(Quota::new(1e-12, 1)).unwrap();
        assert_eq!(slow.interval, 1_000_000_000_000_000);
    }
}
