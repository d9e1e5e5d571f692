//! The `resonant` server: wires the sync core and the store to HTTP and WebSockets.
//!
//! `GET /sync/{room}` speaks y-websocket; `/healthz`, `/readyz` and `/metrics` are for
//! operators; `/` serves the demo editor. [`start`] runs a server in the current runtime (the
//! binary and the tests both use it) and returns a handle whose [`Server::shutdown`] stops it
//! cleanly.

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod http;
pub mod limits;
mod state;
mod ws;

use auth::{access, identity};
use http::serve;
use limits::{admission, client_ip, ratelimit};

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resonant_store::{Journal, JournalConfig};
use resonant_sync::Rooms;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ServeConfig;
/// The relational side (every SQL statement), as `crate::db`.
pub use resonant_db as db;
/// Provider-key sealing, as `crate::crypto`.
pub use resonant_db::crypto;
/// The execution engine, as `crate::engine`.
pub use resonant_engine as engine;
/// Document ↔ JSON and approval emails, which the engine and the REST API share.
pub use resonant_engine::{content, email};
pub use state::AppState;

/// A running server.
pub struct Server {
    addr: SocketAddr,
    rooms: Rooms,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The rooms of this server (for tests and diagnostics).
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// Stops accepting, closes every socket with 1012, commits everything, and returns once
    /// done (bounded by a 10 s budget).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("server task panicked")?
    }
}

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

/// How long a starting server waits for the previous holder of its store to let go (a
/// process that was just killed takes a moment to release its lock).
const STORE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// The bus to the other nodes of the cluster, as node `node`, keys under `--redis-prefix`.
fn cluster_bus(
    config: &ServeConfig,
    url: &str,
    node: resonant_bus::NodeId,
) -> anyhow::Result<Arc<dyn resonant_bus::Bus>> {
    let info = serde_json::json!({
        "name": config.node_name,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
    })
    .to_string();
    let bus = resonant_bus::RedisBus::connect(
        url,
        &config.redis_prefix,
        node,
        resonant_bus::RedisBusConfig {
            node_info: info,
            ..Default::default()
        },
    )
    .context("starting the cluster bus on Redis (REDIS_URL, --redis-prefix)")?;
    tracing::info!(
        node = %resonant_bus::node_hex(node),
        name = config.node_name.as_deref().unwrap_or(""),
        prefix = %config.redis_prefix,
        "cluster node: rooms are shared with every node on this Postgres and Redis"
    );
    Ok(bus)
}

/// Opens the store, binds the listener and starts serving.
pub async fn start(config: ServeConfig) -> anyhow::Result<Server> {
    config.validate().map_err(anyhow::Error::msg)?;
    let store = resonant_store::open(
        config.database_url.as_deref(),
        &config.data_dir,
        config.sqlite_sync(),
    )
    .await
    .context("opening the store")?;
    start_with_store(config, store).await
}

/// The development mode's encryption key: `<data dir>/encryption.key`, made (readable by its
/// owner only) on the first start. Production sets `--encryption-key` and keeps it elsewhere:
/// a key beside the data it seals protects nothing from whoever copies the directory.
fn dev_encryption_key(dir: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("encryption.key");
    match std::fs::read_to_string(&path) {
        Ok(k) => return Ok(k.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("reading {}", path.display()))
        }
        Err(_) => {}
    }
    let (_, key) = crypto::KeyCipher::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(key.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "DEVELOPMENT MODE: provider keys, secrets and webhook triggers are sealed with a key \
         made in the data directory; set --encryption-key in production"
    );
    Ok(key)
}

/// Starts serving over a store that is already open (tests wrap stores to inject faults).
pub async fn start_with_store(
    config: ServeConfig,
    store: Arc<dyn resonant_store::Store>,
) -> anyhow::Result<Server> {
    config.validate().map_err(anyhow::Error::msg)?;
    // Development mode on the embedded store seals with a key kept beside the database, so the
    // quick start can store provider keys, secrets and webhook triggers without a flag.
    let dev = config.jwt_secret.is_none() && config.jwks_url.is_none();
    let key = match &config.encryption_key {
        Some(k) => Some(k.clone()),
        None if dev && config.database_url.is_none() && store.backend() == "sqlite" => {
            Some(dev_encryption_key(&config.data_dir)?)
        }
        None => None,
    };
    let cipher = key
        .as_deref()
        .map(crypto::KeyCipher::from_config)
        .transpose()
        .context("invalid --encryption-key (RESONANT_ENCRYPTION_KEY)")?;
    let metrics = metrics_handle();
    // Postgres and Redis together make a cluster node: other nodes may serve the same rooms.
    let clustered = store.backend() == "postgres" && config.redis_url.is_some();
    if clustered {
        store
            .lock_shared(STORE_LOCK_WAIT)
            .await
            .context("joining the cluster on this store")?;
    } else {
        store
            .lock_exclusive(STORE_LOCK_WAIT)
            .await
            .context("claiming the store for this process")?;
    }
    tracing::info!(backend = store.backend(), clustered, "store ready");
    // One node fans an update out before it commits, so the commit window delays only its
    // save acknowledgement: a wider one lets busy rooms share each fsync (10 rooms x 50/s:
    // 2 ms -> 10 ms cut commits ~3,000 -> ~900 and server CPU by ~25%, docs/benchmarks.md).
    // In a cluster, other nodes see an update only after its commit (then XADD), so the
    // window stays short.
    let commit_interval_ms =
        config
            .commit_interval_ms
            .unwrap_or(if clustered { 2.0 } else { 10.0 });
    let journal_config = JournalConfig {
        min_commit_interval: config::secs(commit_interval_ms / 1000.0),
        ..JournalConfig::default()
    };
    let db = match store.db() {
        Some(db) => db,
        // Only the memory store keeps nothing on disk; any other backend without a database
        // would lose users and executions on every restart without a word.
        None if store.backend() == "memory" => db::memory()
            .await
            .context("opening the in-memory database")?,
        None => anyhow::bail!(
            "the {} store has no relational database for users and executions",
            store.backend()
        ),
    };
    db::migrate(&db)
        .await
        .context("migrating the application's tables")?;
    let auth = identity::Authenticator::new(
        db.clone(),
        config.jwt_config(),
        config.plan_tokens.tokens("free"),
    )
    .await
    .context("setting up authentication")?;
    if auth.is_dev() {
        tracing::warn!(
            "DEVELOPMENT MODE: no --jwt-secret or --jwks-url, so every caller is the owner of \
             the default workspace and may open any room (allowed on loopback only)"
        );
    }
    let limiter = if auth.is_dev() {
        // One user and one address would share every budget, so development mode limits
        // only what outsiders call: webhook triggers, on this node.
        Some(ratelimit::Limiter::in_process(ratelimit::Quotas {
            hook_trigger: config.quotas().hook_trigger,
            ..ratelimit::Quotas::unlimited()
        }))
    } else {
        let limiter = ratelimit::Limiter::new(config.redis_url.as_deref(), config.quotas())
            .await
            .context("connecting to Redis for rate limits (REDIS_URL)")?;
        tracing::info!(backend = limiter.backend(), "rate limits");
        Some(limiter)
    };
    let (journal, journal_task) = Journal::start(store.clone(), journal_config);
    // A random node id per process start: a restarted process is a new node, so nothing
    // ever has to tell an old incarnation's leases or presence from a new one's.
    let node = resonant_bus::new_node_id();
    let bus = match (clustered, config.redis_url.as_deref()) {
        (true, Some(url)) => Some(cluster_bus(&config, url, node)?),
        _ => None,
    };
    let rooms = match &bus {
        Some(bus) => {
            let mut cluster = resonant_sync::ClusterConfig::new(bus.clone());
            cluster.probe = Duration::from_millis(config.bus_probe_ms);
            cluster.probe_when_down = cluster.probe.min(Duration::from_millis(500));
            cluster.gap_heal = Duration::from_millis(config.bus_gap_heal_ms);
            Rooms::clustered(store, journal.clone(), config.sync_config(), cluster)
        }
        None => Rooms::new(store, journal.clone(), config.sync_config()),
    };
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    let tracker = TaskTracker::new();
    let max_connections = config
        .max_connections
        .unwrap_or_else(default_max_connections);
    tracing::info!(max_connections, "connection limit");
    let stop = CancellationToken::new();
    let access = access::Access::new(
        db.clone(),
        config::secs(config.access_recheck_secs),
        stop.clone(),
        &tracker,
    );
    if let Some(bus) = &bus {
        access.follow_cluster(bus.clone(), db.clone(), stop.clone(), &tracker);
    }
    let mailer = email::Mailer::new(
        config.resend_api_key.clone(),
        &config.resend_api_url,
        &config.email_from,
    );
    engine::template::set_render_bytes(config.template_render_bytes);
    let engine = engine::Engine::new(
        db.clone(),
        rooms.clone(),
        engine::EngineConfig {
            public_url: config.public_url.clone(),
            max_concurrent_blocks: config.max_concurrent_blocks,
            template_execution_bytes: config.template_execution_bytes,
            template_server_bytes: config.template_server_bytes,
            max_iterations_per_execution: config.max_iterations_per_execution,
            max_running_per_user: config.max_running_per_user,
            max_running_per_workspace: config.max_running_per_workspace,
            max_notify_per_block: config.max_notify_per_block,
            max_approval_emails_per_day: config.max_approval_emails_per_day,
            retention: (config.execution_retention_days > 0)
                .then(|| Duration::from_secs(u64::from(config.execution_retention_days) * 86_400)),
            retention_every: Duration::from_secs(config.retention_sweep_secs),
            cluster: clustered.then(|| {
                let ttl = Duration::from_secs(config.execution_lease_secs);
                engine::ClusterConfig {
                    lease_ttl: ttl,
                    renew_every: ttl / 5,
                    sweep_every: ttl / 5,
                    ..engine::ClusterConfig::new(resonant_bus::node_hex(node))
                }
            }),
            ..engine::EngineConfig::default()
        },
        engine::Io {
            router: Arc::new(engine::ai::Router::new(router_config(&config)?)),
            cipher: cipher.clone(),
            webhooks: engine::http::WebhookClient::new(
                engine::http::EgressPolicy::parse(&config.webhook_allow)
                    .map_err(anyhow::Error::msg)
                    .context("invalid --webhook-allow")?,
            ),
            mailer: Some(mailer.clone()),
            public_url: config.public_url.clone(),
        },
    );
    if let Some(bus) = &bus {
        engine.set_bus(bus.clone(), Duration::from_millis(config.bus_probe_ms));
    }
    let resumed = engine.recover().await.context("resuming executions")?;
    if resumed > 0 {
        tracing::info!(resumed, "executions resumed");
    }
    let state = AppState::new(state::AppInner {
        proxies: client_ip::TrustedProxies::parse(&config.trusted_proxies)
            .map_err(anyhow::Error::msg)?,
        engine: engine.clone(),
        db,
        cipher,
        auth,
        access,
        mailer,
        limiter,
        rooms: rooms.clone(),
        tracker: tracker.clone(),
        metrics,
        connections: Arc::new(Semaphore::new(max_connections)),
        admission: Arc::new(admission::Admission::new(config.max_joins_per_sec)),
        event_streams: Arc::new(Semaphore::new(config.max_event_streams)),
        hook_bodies: Arc::new(Semaphore::new(
            config
                .hook_inflight_bytes
                .div_ceil(1024)
                .clamp(1, Semaphore::MAX_PERMITS),
        )),
        config: Arc::new(config),
    });
    let http_limits = serve::Limits {
        max_http: max_connections,
        max_http_per_ip: state.config.max_http_connections_per_ip,
        header_read_timeout: config::secs(state.config.header_read_timeout_secs),
        proxies: state.proxies.clone(),
    };
    let app = http::router(state);
    let serve_stop = stop.clone();
    let serve_rooms = rooms.clone();
    let task = tokio::spawn(async move {
        let result = serve::serve(listener, app, serve_stop.clone(), http_limits).await;
        // Serving may also end by failing: the tracked background loops stop either way.
        serve_stop.cancel();
        // Accepting has stopped; close the sockets (1012) and commit everything. Executions
        // stop without an end recorded: the next start resumes them.
        // One budget for all of it, so the process exits within SHUTDOWN_BUDGET: each step may
        // use what the ones before it left, up to its own share.
        let begun = tokio::time::Instant::now();
        let end = begun + SHUTDOWN_BUDGET;
        // The engine's share includes the drain of blocks in flight (up to 5 s: an AI call
        // or a webhook request cut short would be paid for, or delivered, again after the
        // restart); it is over at once when no block is working.
        engine.shutdown(begun + Duration::from_secs(7)).await;
        let drain = async {
            serve_rooms.shutdown().await;
            tracker.close();
            tracker.wait().await;
        };
        if tokio::time::timeout_at(end - Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            tracing::warn!("connections did not finish within the shutdown budget");
        }
        if tokio::time::timeout_at(end - Duration::from_secs(1), serve_rooms.journal().flush())
            .await
            .is_err()
        {
            tracing::error!("journal not flushed at shutdown; uncommitted updates are lost");
        }
        serve_rooms.journal().close();
        let _ = tokio::time::timeout_at(end, journal_task).await;
        // The other nodes drop this node's presence at once instead of after its key lapses.
        if let Some(bus) = serve_rooms.bus() {
            let _ = tokio::time::timeout_at(end, bus.shutdown()).await;
        }
        result.context("serving HTTP")
    });
    tracing::info!(%addr, "listening");
    Ok(Server {
        addr,
        rooms,
        stop,
        task,
    })
}

/// The AI router's configuration: the provider table (the seed's, or `--ai-config`'s), the
/// server's own keys and base URLs, and the demo provider's pace.
fn router_config(config: &ServeConfig) -> anyhow::Result<engine::ai::RouterConfig> {
    let mut rc = match &config.ai_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --ai-config {}", path.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("--ai-config {} is not JSON", path.display()))?;
            engine::ai::RouterConfig::from_json(&json)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("invalid --ai-config {}", path.display()))?
        }
        None => engine::ai::RouterConfig::default(),
    };
    for (family, key, base_url) in config.server_keys.keys() {
        rc.server_keys.push(engine::ai::ProviderKey::new(
            family,
            key,
            base_url.map(str::to_string),
        ));
    }
    rc.demo_delay = Duration::from_millis(config.demo_delay_ms);
    Ok(rc)
}

/// The soft file-descriptor limit, less headroom for the store, logs and listeners.
fn default_max_connections() -> usize {
    let fds = rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft);
    (fds.min(1 << 20) as usize).saturating_sub(256).max(16)
}

/// From the stop signal to the exit: executions stopped, sockets closed (1012), the journal
/// committed (docs/protocol.md promises it).
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(10);
