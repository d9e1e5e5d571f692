//! Command-line and environment configuration for `resonant serve`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use resonant_engine::ai::ProviderKind;
use resonant_store::SqliteSync;
use resonant_sync::SyncConfig;

/// The `resonant` command line.
#[derive(Debug, Parser)]
#[command(
    name = "resonant",
    version,
    about = "Realtime collaboration server for Resonant workflows"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeConfig>),
    /// Print the REST API's OpenAPI document (what `/api/v1/openapi.json` serves) and exit;
    /// the TypeScript SDK generates its REST types from it.
    Openapi,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// SQLite durability level (ignored with Postgres).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteSyncArg {
    /// fsync every commit: survives power loss.
    Full,
    /// fsync at checkpoints: survives a process crash, not a power cut.
    Normal,
}

/// Options for `resonant serve`; every flag can also be set through the environment.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "RESONANT_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, env = "RESONANT_PORT", default_value_t = 1234)]
    pub port: u16,
    /// Directory for the embedded SQLite store (used when no database URL is given).
    #[arg(long, env = "RESONANT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database URL: postgres://… for Postgres, sqlite:… for a specific SQLite file, memory: to persist nothing (benchmarks only).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// SQLite durability: full fsyncs every commit, normal only at checkpoints.
    #[arg(long, env = "RESONANT_SQLITE_SYNC", value_enum, default_value = "full")]
    pub sqlite_sync: SqliteSyncArg,
    /// Largest WebSocket message accepted, in bytes (bigger ones close with 1009).
    #[arg(long, env = "RESONANT_MAX_MESSAGE_BYTES", default_value_t = 16 << 20, value_parser = at_least::<usize, 1024>)]
    pub max_message_bytes: usize,
    /// Inbound bytes per second one connection may send (0: unlimited); past it (after a
    /// burst of twice the largest message) the server stops reading that socket until the
    /// budget refills, so one client cannot make a room or the process swallow data faster.
    #[arg(long, env = "RESONANT_SOCKET_BYTES_PER_SEC", default_value_t = 8 << 20)]
    pub socket_bytes_per_sec: usize,
    /// Most connections per room (more are closed with 1013).
    #[arg(long, env = "RESONANT_MAX_CONNECTIONS_PER_ROOM", default_value_t = 1000, value_parser = at_least::<usize, 1>)]
    pub max_connections_per_room: usize,
    /// Most WebSocket connections in all (more are refused with 503 before the upgrade).
    /// Default: the process's file-descriptor limit minus 256 for the store and logs.
    #[arg(long, env = "RESONANT_MAX_CONNECTIONS", value_parser = at_least::<usize, 1>)]
    pub max_connections: Option<usize>,
    /// Connections from one client address (IPv6: one /64) still sending their request head
    /// or waiting for an answer, at once; more are answered 503 with `Retry-After: 1`
    /// (0: no limit). Peers in `--trusted-proxies` are exempt.
    #[arg(
        long,
        env = "RESONANT_MAX_HTTP_CONNECTIONS_PER_IP",
        default_value_t = 64
    )]
    pub max_http_connections_per_ip: usize,
    /// Seconds a connection may take to send its request head; slower ones are closed.
    #[arg(long, env = "RESONANT_HEADER_READ_TIMEOUT_SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub header_read_timeout_secs: f64,
    /// New connections accepted per second, server-wide; more wait their turn before the
    /// upgrade (about 2 s of them), the rest get 503 with `Retry-After`, so a reconnect storm
    /// cannot take latency from connected clients (0: no limit). The default leaves room for
    /// the refusals: at 1000 offered joins/s on one core, 400 admitted plus ~1000 refused
    /// attempts a second saturated it, 200 kept readers' p99 under 10 ms (docs/benchmarks.md).
    #[arg(long, env = "RESONANT_MAX_JOINS_PER_SEC", default_value_t = 200)]
    pub max_joins_per_sec: u32,
    /// Outbound bytes queued per connection before it is closed as too slow (4000).
    #[arg(long, env = "RESONANT_MAX_QUEUED_BYTES", default_value_t = 8 << 20, value_parser = at_least::<usize, 1024>)]
    pub max_queued_bytes: usize,
    /// Seconds a write to a client may make no progress before the connection is dropped (a
    /// client that stops reading must not pin its socket and queue).
    #[arg(long, env = "RESONANT_WRITE_TIMEOUT_SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub write_timeout_secs: f64,
    /// Seconds a room stays loaded after its last connection leaves. Long enough for a page
    /// reload to find it loaded; short because an empty room's memory does nobody any good (50
    /// rooms held ~6 MB for 30 s after a churn spike; reloading a small room from the store
    /// takes a few ms, docs/benchmarks.md).
    #[arg(long, env = "RESONANT_ROOM_GRACE_SECS", default_value_t = 5.0, value_parser = non_negative_secs)]
    pub room_grace_secs: f64,
    /// Longest awareness coalescing tick in busy rooms, in milliseconds: a room's tick is
    /// 0.15 ms per connection, from 1 ms up to this (a 20-client room coalesces over 3 ms, a
    /// 100-client one over 15).
    #[arg(long, env = "RESONANT_AWARENESS_TICK_MS", default_value_t = 16, value_parser = at_least::<u64, 1>)]
    pub awareness_tick_ms: u64,
    /// Seconds after which an awareness state that was not renewed is removed.
    #[arg(long, env = "RESONANT_AWARENESS_TIMEOUT_SECS", default_value_t = 30.0, value_parser = positive_secs)]
    pub awareness_timeout_secs: f64,
    /// Most awareness client ids one connection may introduce (more are refused with an
    /// `awareness-limit` error; the connection stays).
    #[arg(long, env = "RESONANT_MAX_AWARENESS_IDS", default_value_t = 8, value_parser = at_least::<usize, 1>)]
    pub max_awareness_ids: usize,
    /// Largest awareness state of one client, in bytes of JSON.
    #[arg(long, env = "RESONANT_MAX_AWARENESS_STATE_BYTES", default_value_t = 32 << 10, value_parser = at_least::<usize, 64>)]
    pub max_awareness_state_bytes: usize,
    /// Seconds between WebSocket pings.
    #[arg(long, env = "RESONANT_PING_INTERVAL_SECS", default_value_t = 20.0, value_parser = positive_secs)]
    pub ping_interval_secs: f64,
    /// Seconds without any frame (pongs included) after which a connection is closed; must
    /// be longer than the ping interval.
    #[arg(long, env = "RESONANT_IDLE_TIMEOUT_SECS", default_value_t = 60.0, value_parser = positive_secs)]
    pub idle_timeout_secs: f64,
    /// Compact a room's update log into a snapshot after this many updates.
    #[arg(long, env = "RESONANT_COMPACT_AFTER_UPDATES", default_value_t = 1000, value_parser = at_least::<u64, 1>)]
    pub compact_after_updates: u64,
    /// Compact a room's update log after this many bytes.
    #[arg(long, env = "RESONANT_COMPACT_AFTER_BYTES", default_value_t = 8 << 20, value_parser = at_least::<u64, 1>)]
    pub compact_after_bytes: u64,
    /// Deepest nesting of shared types a document may reach (a root type is level 1); updates
    /// nesting deeper are refused with 1007.
    #[arg(long, env = "RESONANT_MAX_NESTING_DEPTH", default_value_t = 64, value_parser = at_least::<u32, 2>)]
    pub max_nesting_depth: u32,
    /// Most items (inserted runs) one document may hold; updates past it close with 1009.
    #[arg(long, env = "RESONANT_MAX_ROOM_ITEMS", default_value_t = 100_000, value_parser = at_least::<u64, 100>)]
    pub max_room_items: u64,
    /// Largest stored size of one document (snapshot plus log), in bytes; updates past it
    /// close with 1009.
    #[arg(long, env = "RESONANT_MAX_ROOM_BYTES", default_value_t = 64 << 20, value_parser = at_least::<u64, 4096>)]
    pub max_room_bytes: u64,
    /// Bytes of partly received WebSocket messages all connections together may hold; a
    /// connection whose message would go past it is closed.
    #[arg(long, env = "RESONANT_MAX_UNFINISHED_BYTES", default_value_t = 256 << 20, value_parser = at_least::<u64, 65536>)]
    pub max_unfinished_bytes: u64,
    /// Longest a WebSocket message may take to arrive, first byte to last, in seconds.
    #[arg(long, env = "RESONANT_MESSAGE_DEADLINE_SECS", default_value_t = 60.0, value_parser = positive_secs)]
    pub message_deadline_secs: f64,
    /// Shortest time between two store commits, in milliseconds: under load, updates arriving
    /// meanwhile share one transaction (an idle server commits at once). Default 10 on one
    /// node, where only save acknowledgements wait for a commit; 2 with --redis-url, where
    /// other nodes' editors wait for it too.
    #[arg(long, env = "RESONANT_COMMIT_INTERVAL_MS", value_parser = non_negative_secs)]
    pub commit_interval_ms: Option<f64>,
    /// Shared secret for HS256 tokens. With neither this nor --jwks-url the server runs in
    /// development mode (everyone is the owner of one default workspace), allowed on
    /// loopback only.
    #[arg(long, env = "RESONANT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWKS URL for RS256/ES256 tokens (Clerk: https://<your-app>/.well-known/jwks.json).
    #[arg(long, env = "RESONANT_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "RESONANT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "RESONANT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Web origins (`https://app.example.com`) whose pages may open `/sync` sockets,
    /// comma-separated; empty allows any. Development mode allows loopback origins only.
    #[arg(long, env = "RESONANT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Longest token lifetime accepted (`exp` − `iat`), in seconds; longer-lived tokens are
    /// refused (0: no limit).
    #[arg(
        long,
        env = "RESONANT_MAX_TOKEN_LIFETIME_SECS",
        default_value_t = 86_400
    )]
    pub max_token_lifetime_secs: u64,
    /// Networks of reverse proxies (`10.0.0.0/8`, `127.0.0.1`) whose `X-Forwarded-For` names
    /// the client for per-IP limits, comma-separated; from anyone else it is ignored.
    #[arg(long, env = "RESONANT_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// 32-byte key (64 hex characters or base64) that encrypts provider API keys at rest.
    /// Without it, storing provider keys is refused.
    #[arg(long, env = "RESONANT_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Redis URL: rate limits are shared by every node through it. With a Postgres
    /// `--database-url` too, this node joins a cluster: any number of nodes serve the same
    /// rooms, Postgres ordering every document and Redis carrying the news between them.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of this deployment's keys in Redis (deployments sharing one Redis differ here).
    #[arg(long, env = "RESONANT_REDIS_PREFIX", default_value = "resonant")]
    pub redis_prefix: String,
    /// A name for this node in logs (cluster mode); each process also draws a random node id.
    #[arg(long, env = "RESONANT_NODE_NAME")]
    pub node_name: Option<String>,
    /// Cluster mode: how often (ms) a node compares its loaded rooms with the store's heads,
    /// which catches whatever Redis lost (500 ms while Redis is down).
    #[arg(long, env = "RESONANT_BUS_PROBE_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub bus_probe_ms: u64,
    /// Cluster mode: how long (ms) a gap in a room's updates from other nodes may last before
    /// the room reads the missing ones from the store.
    #[arg(long, env = "RESONANT_BUS_GAP_HEAL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub bus_gap_heal_ms: u64,
    /// Cluster mode: how long (s) a node's hold on an execution lasts without renewal (it
    /// renews every fifth of it); a dead node's executions are taken over after about this.
    #[arg(long, env = "RESONANT_EXECUTION_LEASE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub execution_lease_secs: u64,
    /// Resend API key for invitation emails (without it, inviting a new address is refused).
    #[arg(long, env = "RESEND_API_KEY", hide_env_values = true)]
    pub resend_api_key: Option<String>,
    /// Resend API base URL (tests point it at a local mock).
    #[arg(long, env = "RESEND_API_URL", default_value = "https://api.resend.com")]
    pub resend_api_url: String,
    /// Sender address of invitation emails.
    #[arg(
        long,
        env = "RESONANT_EMAIL_FROM",
        default_value = "Resonant <noreply@resonant.dev>"
    )]
    pub email_from: String,
    /// Public base URL of the app, for links in emails (invitation accept links).
    #[arg(
        long,
        env = "RESONANT_PUBLIC_URL",
        default_value = "http://localhost:3000"
    )]
    pub public_url: String,
    /// Clerk (Svix) webhook signing secret (`whsec_…`); without it /webhooks/clerk is off.
    #[arg(long, env = "RESONANT_CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    pub clerk_webhook_secret: Option<String>,
    /// Stripe webhook signing secret; without it /webhooks/stripe is off.
    #[arg(long, env = "RESONANT_STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Monthly token allowance per plan, as plan=tokens pairs.
    #[arg(long, env = "RESONANT_PLAN_TOKENS", default_value = "free=10000,creator=100000,pro=500000,team=2000000,enterprise=10000000", value_parser = parse_plans)]
    pub plan_tokens: PlanTokens,
    /// Seconds between re-reads of the roles of connected users (changes made through this
    /// server's API apply at once; this bounds how late other changes arrive).
    #[arg(long, env = "RESONANT_ACCESS_RECHECK_SECS", default_value_t = 5.0, value_parser = positive_secs)]
    pub access_recheck_secs: f64,
    /// Connection attempts per second per client IP (0: unlimited); over it a socket is
    /// closed with 4429. Rate limits apply only with authentication configured.
    #[arg(long, env = "RESONANT_RATE_CONNECT_PER_SEC", default_value_t = 10.0)]
    pub rate_connect_per_sec: f64,
    /// Burst of connection attempts per client IP.
    #[arg(long, env = "RESONANT_RATE_CONNECT_BURST", default_value_t = 60)]
    pub rate_connect_burst: u32,
    /// REST calls per second per user (0: unlimited); over it 429 with Retry-After.
    #[arg(long, env = "RESONANT_RATE_API_PER_SEC", default_value_t = 20.0)]
    pub rate_api_per_sec: f64,
    /// Burst of REST calls per user.
    #[arg(long, env = "RESONANT_RATE_API_BURST", default_value_t = 60)]
    pub rate_api_burst: u32,
    /// Socket messages per second per user, over all the user's sockets (0: unlimited);
    /// over it the socket is closed with 4429.
    #[arg(long, env = "RESONANT_RATE_SOCKET_PER_SEC", default_value_t = 200.0)]
    pub rate_socket_per_sec: f64,
    /// Burst of socket messages per user.
    #[arg(long, env = "RESONANT_RATE_SOCKET_BURST", default_value_t = 1000)]
    pub rate_socket_burst: u32,
    /// Days finished executions keep their events, block rows and large values; then only
    /// their row stays (status, trigger, times, tokens, cost). 0: keep everything.
    #[arg(long, env = "RESONANT_EXECUTION_RETENTION_DAYS", default_value_t = 30)]
    pub execution_retention_days: u32,
    /// Seconds between retention passes.
    #[arg(long, env = "RESONANT_RETENTION_SWEEP_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_sweep_secs: u64,
    /// Base URL of webhook triggers' URLs (`<base>/hooks/{id}`), as callers outside reach
    /// this server. Default: the scheme and `Host` of the request that asks for the
    /// trigger (`X-Forwarded-Proto` names the scheme behind a proxy).
    #[arg(long, env = "RESONANT_HOOK_BASE_URL")]
    pub hook_base_url: Option<String>,
    /// Calls per second to one webhook trigger (`POST /hooks/{id}`; 0: unlimited); over it
    /// 429 with Retry-After. Shared by every node through Redis like the other limits
    /// (`--redis-url`); counted per node in development mode, which has no other limits.
    #[arg(long, env = "RESONANT_RATE_HOOK_PER_SEC", default_value_t = 10.0)]
    pub rate_hook_per_sec: f64,
    /// Burst of calls to one webhook trigger.
    #[arg(long, env = "RESONANT_RATE_HOOK_BURST", default_value_t = 50)]
    pub rate_hook_burst: u32,
    /// Largest body a webhook trigger accepts, in bytes; larger is 413.
    #[arg(long, env = "RESONANT_HOOK_BODY_BYTES", default_value_t = 1 << 20)]
    pub hook_body_bytes: usize,
    /// Bytes of webhook-trigger bodies all calls together may hold while they arrive; a call
    /// that would take the total past it gets 503 with `Retry-After` before its body is read.
    #[arg(long, env = "RESONANT_HOOK_INFLIGHT_BYTES", default_value_t = 64 << 20)]
    pub hook_inflight_bytes: usize,
    /// Server-Sent Events streams of execution events open at once on this node; more get
    /// 503 with `Retry-After` (each stream reads the event log after every commit here).
    #[arg(long, env = "RESONANT_MAX_EVENT_STREAMS", default_value_t = 1000)]
    pub max_event_streams: usize,
    /// Longest a webhook caller may wait for the run's result (`?wait=true&timeout=`), in
    /// seconds.
    #[arg(long, env = "RESONANT_HOOK_WAIT_MAX_SECS", default_value_t = 30)]
    pub hook_wait_max_secs: u64,
    /// Destinations webhook blocks may reach although they are private, loopback or
    /// link-local: IP networks (`10.0.0.0/8`, `127.0.0.1`) or host names, comma-separated.
    #[arg(long, env = "RESONANT_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<String>,
    /// A JSON file with the AI router's provider table and fallback chains (the seed's
    /// table and chains when absent); see docs/workflow-schema.md.
    #[arg(long, env = "RESONANT_AI_CONFIG")]
    pub ai_config: Option<PathBuf>,
    /// The server's own AI provider keys and base URLs: `--anthropic-api-key` /
    /// `ANTHROPIC_API_KEY`, `--anthropic-base-url` / `ANTHROPIC_BASE_URL`, and the same for
    /// every provider family of the engine's (`ServerKey`).
    #[command(flatten)]
    pub server_keys: ServerKeys,
    /// Milliseconds between the words the keyless `demo` AI provider streams.
    #[arg(long, env = "RESONANT_DEMO_DELAY_MS", default_value_t = 15)]
    pub demo_delay_ms: u64,
    /// Blocks doing work at once across all executions on this server.
    #[arg(long, env = "RESONANT_MAX_CONCURRENT_BLOCKS", default_value_t = 64)]
    pub max_concurrent_blocks: usize,
    /// Bytes of stored version states one workspace may hold; a version past it is refused
    /// with 409 `quota_exceeded` (saving an unchanged document stores nothing).
    #[arg(long, env = "RESONANT_MAX_WORKSPACE_STORED_BYTES", default_value_t = 1 << 30)]
    pub max_workspace_stored_bytes: u64,
    /// Versions one workflow may keep; the next is refused with 409 `quota_exceeded`.
    #[arg(
        long,
        env = "RESONANT_MAX_VERSIONS_PER_WORKFLOW",
        default_value_t = 1000
    )]
    pub max_versions_per_workflow: u64,
    /// Bytes one template render may build (values, intermediate strings, output).
    #[arg(long, env = "RESONANT_TEMPLATE_RENDER_BYTES", default_value_t = 16 << 20)]
    pub template_render_bytes: usize,
    /// Bytes all template renders of one execution may output together.
    #[arg(long, env = "RESONANT_TEMPLATE_EXECUTION_BYTES", default_value_t = 64 << 20)]
    pub template_execution_bytes: usize,
    /// Bytes the template renders of all running executions may hold together; a render
    /// past it fails its block with a clear error (the server stays within memory).
    #[arg(long, env = "RESONANT_TEMPLATE_SERVER_BYTES", default_value_t = 256 << 20)]
    pub template_server_bytes: usize,
    /// Loop iterations one execution may run, over all loops and nesting levels.
    #[arg(
        long,
        env = "RESONANT_MAX_ITERATIONS_PER_EXECUTION",
        default_value_t = 10_000
    )]
    pub max_iterations_per_execution: usize,
    /// Executions one user may have running at once (0: unlimited); over it 429.
    #[arg(long, env = "RESONANT_MAX_RUNNING_PER_USER", default_value_t = 10)]
    pub max_running_per_user: usize,
    /// Executions one workspace may have running at once (0: unlimited); over it 429.
    #[arg(long, env = "RESONANT_MAX_RUNNING_PER_WORKSPACE", default_value_t = 25)]
    pub max_running_per_workspace: usize,
    /// Approval emails one human block may send (its `notify` list is cut to this).
    #[arg(long, env = "RESONANT_MAX_NOTIFY_PER_BLOCK", default_value_t = 10)]
    pub max_notify_per_block: usize,
    /// Approval emails one workspace may send per day (UTC).
    #[arg(
        long,
        env = "RESONANT_MAX_APPROVAL_EMAILS_PER_DAY",
        default_value_t = 100
    )]
    pub max_approval_emails_per_day: usize,
    /// Log format.
    #[arg(long, env = "RESONANT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `resonant=debug`.
    #[arg(long, env = "RESONANT_LOG", default_value = "info")]
    pub log: String,
}

impl ServeConfig {
    /// Checks what single flags cannot: combinations that would make no sense at run time.
    pub fn validate(&self) -> Result<(), String> {
        if self.jwt_secret.is_none() && self.jwks_url.is_none() && !self.is_loopback() {
            return Err(format!(
                "no authentication configured and --host {} is not a loopback address: set \
                 --jwt-secret or --jwks-url (development mode, where every caller is the \
                 owner, is allowed on 127.0.0.1/::1/localhost only)",
                self.host
            ));
        }
        if self.jwt_secret.as_deref().is_some_and(|s| s.len() < 32) {
            return Err("--jwt-secret must be at least 32 bytes".into());
        }
        crate::limits::client_ip::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| format!("--trusted-proxies: {e}"))?;
        if self.idle_timeout_secs <= self.ping_interval_secs {
            return Err(format!(
                "--idle-timeout-secs ({}) must be longer than --ping-interval-secs ({}), or idle \
                 but healthy connections would be closed between pings",
                self.idle_timeout_secs, self.ping_interval_secs
            ));
        }
        Ok(())
    }

    /// Defaults for a server on `127.0.0.1:0` with its SQLite store in `data_dir` (tests).
    pub fn for_tests(data_dir: PathBuf) -> ServeConfig {
        let cli = Cli::parse_from(["resonant", "serve", "--port", "0"]);
        let Command::Serve(mut config) = cli.command else {
            unreachable!("parsed `serve`")
        };
        config.data_dir = data_dir;
        config.database_url = None;
        *config
    }

    /// Whether the server listens on a loopback address only.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The JWT settings, or `None` for development mode.
    pub fn jwt_config(&self) -> Option<crate::auth::jwt::JwtConfig> {
        if self.jwt_secret.is_none() && self.jwks_url.is_none() {
            return None;
        }
        Some(crate::auth::jwt::JwtConfig {
            secret: self.jwt_secret.clone(),
            jwks_url: self.jwks_url.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            max_lifetime: (self.max_token_lifetime_secs > 0)
                .then(|| Duration::from_secs(self.max_token_lifetime_secs)),
            ..crate::auth::jwt::JwtConfig::default()
        })
    }

    /// The rate-limit quotas.
    pub fn quotas(&self) -> crate::limits::ratelimit::Quotas {
        use crate::limits::ratelimit::Quota;
        crate::limits::ratelimit::Quotas {
            connect_ip: Quota::new(self.rate_connect_per_sec, self.rate_connect_burst),
            api_user: Quota::new(self.rate_api_per_sec, self.rate_api_burst),
            socket_user: Quota::new(self.rate_socket_per_sec, self.rate_socket_burst),
            hook_trigger: Quota::new(self.rate_hook_per_sec, self.rate_hook_burst),
        }
    }

    /// The room-level part of the configuration.
    pub fn sync_config(&self) -> SyncConfig {
        SyncConfig {
            max_peers_per_room: self.max_connections_per_room,
            unload_grace: secs(self.room_grace_secs),
            awareness_tick: Duration::from_millis(self.awareness_tick_ms),
            awareness_timeout: secs(self.awareness_timeout_secs),
            awareness: resonant_sync::AwarenessLimits {
                max_ids_per_connection: self.max_awareness_ids,
                max_state_bytes: self.max_awareness_state_bytes,
                ..Default::default()
            },
            max_queued_bytes: self.max_queued_bytes,
            compact_after_updates: self.compact_after_updates,
            compact_after_bytes: self.compact_after_bytes,
            max_nesting_depth: self.max_nesting_depth,
            max_room_items: self.max_room_items,
            max_room_bytes: self.max_room_bytes,
        }
    }

    /// The SQLite durability level.
    pub fn sqlite_sync(&self) -> SqliteSync {
        match self.sqlite_sync {
            SqliteSyncArg::Full => SqliteSync::Full,
            SqliteSyncArg::Normal => SqliteSync::Normal,
        }
    }
}

/// The server's own key and base URL of each provider family, from the flags and environment
/// variables the family names (`engine::ai::ServerKey`): one pair of flags per family in
/// `ProviderKind::ALL`, without a list here.
#[derive(Clone, Default)]
pub struct ServerKeys(Vec<ServerKeyValue>);

/// One family's server key and base URL.
#[derive(Clone)]
struct ServerKeyValue {
    family: String,
    api_key: Option<String>,
    base_url: Option<String>,
}

impl ServerKeys {
    /// Sets a family's key and base URL ("claude", "openai", … as `ProviderKind::key_family`).
    pub fn set(&mut self, family: &str, api_key: Option<String>, base_url: Option<String>) {
        self.0.retain(|v| v.family != family);
        self.0.push(ServerKeyValue {
            family: family.to_string(),
            api_key,
            base_url,
        });
    }

    /// The families given a key, with the key and the base URL (if given).
    pub fn keys(&self) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
        self.0.iter().filter_map(|v| {
            v.api_key
                .as_deref()
                .map(|k| (v.family.as_str(), k, v.base_url.as_deref()))
        })
    }
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for v in &self.0 {
            m.entry(
                &v.family,
                &(v.api_key.as_ref().map(|_| "<redacted>"), &v.base_url),
            );
        }
        m.finish()
    }
}

impl Args for ServerKeys {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for flags in ProviderKind::ALL
            .into_iter()
            .filter_map(ProviderKind::server_key)
        {
            // What the derive gave the fields these flags were: the value is named after the
            // field (which is the environment variable's name).
            cmd = cmd
                .arg(
                    Arg::new(flags.api_key_flag)
                        .long(flags.api_key_flag)
                        .env(flags.api_key_env)
                        .hide_env_values(true)
                        .value_name(flags.api_key_env)
                        .help(flags.api_key_help)
                        .action(ArgAction::Set)
                        .value_parser(clap::value_parser!(String))
                        .required(false),
                )
                .arg(
                    Arg::new(flags.base_url_flag)
                        .long(flags.base_url_flag)
                        .env(flags.base_url_env)
                        .value_name(flags.base_url_env)
                        .help(flags.base_url_help)
                        .action(ArgAction::Set)
                        .value_parser(clap::value_parser!(String))
                        .required(false),
                );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServerKeys {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut keys = ServerKeys::default();
        keys.update_from_arg_matches(m)?;
        Ok(keys)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for kind in ProviderKind::ALL {
            let Some(flags) = kind.server_key() else {
                continue;
            };
            let api_key = m.get_one::<String>(flags.api_key_flag).cloned();
            let base_url = m.get_one::<String>(flags.base_url_flag).cloned();
            if api_key.is_some() || base_url.is_some() {
                self.set(kind.key_family(), api_key, base_url);
            }
        }
        Ok(())
    }
}

/// Converts (possibly fractional) seconds from the command line into a duration.
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// Longest duration any option accepts (a year): larger values are a typo, and would
/// overflow timer arithmetic.
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

fn non_negative_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() || !(0.0..=MAX_SECS).contains(&v) {
        return Err(format!(
            "`{s}` must be a finite number from 0 to {MAX_SECS}"
        ));
    }
    Ok(v)
}

fn positive_secs(s: &str) -> Result<f64, String> {
    let v = non_negative_secs(s)?;
    if v == 0.0 {
        return Err("must be greater than 0".into());
    }
    Ok(v)
}

fn at_least<T, const MIN: u64>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr + TryFrom<u64> + PartialOrd,
{
    let v: T = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    let min = T::try_from(MIN).map_err(|_| "bad minimum".to_string())?;
    if v < min {
        return Err(format!("must be at least {MIN}"));
    }
    Ok(v)
}

/// Monthly token allowance per plan (free, creator, pro, team, enterprise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTokens(pub Vec<(String, i64)>);

impl PlanTokens {
    /// The allowance of `plan`, or the free plan's for an unknown plan.
    pub fn tokens(&self, plan: &str) -> i64 {
        self.0
            .iter()
            .find(|(p, _)| p == plan)
            .or_else(|| self.0.iter().find(|(p, _)| p == "free"))
            .map(|(_, t)| *t)
            .unwrap_or(0)
    }
}

fn parse_plans(s: &str) -> Result<PlanTokens, String> {
    let mut plans = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (plan, tokens) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not plan=tokens"))?;
        let tokens: i64 = tokens
            .trim()
            .parse()
            .ok()
            .filter(|t| *t >= 0)
            .ok_or_else(|| format!("`{tokens}` is not a token count"))?;
        plans.push((plan.trim().to_string(), tokens));
    }
    if !plans.iter().any(|(p, _)| p == "free") {
        return Err("the plan table must include `free`".into());
    }
    Ok(PlanTokens(plans))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> ServeConfig {
        let cli = Cli::parse_from(["resonant", "serve"].iter().chain(args));
        let Command::Serve(config) = cli.command else {
            unreachable!("parsed `serve`")
        };
        *config
    }

    #[test]
    fn development_mode_is_allowed_on_loopback_only() {
        for host in ["127.0.0.1", "::1", "localhost"] {
            assert!(config(&["--host", host]).validate().is_ok(), "{host}");
        }
        for host in ["0.0.0.0", "::", "10.1.2.3"] {
            let err = config(&["--host", host]).validate().unwrap_err();
            assert!(err.contains("--jwt-secret"), "{host}: {err}");
        }
        let secret = "s".repeat(32);
        assert!(config(&["--host", "0.0.0.0", "--jwt-secret", &secret])
            .validate()
            .is_ok());
        assert!(config(&[
            "--host",
            "0.0.0.0",
            "--jwks-url",
            "https://example.com/jwks"
        ])
        .validate()
        .is_ok());
        let err = config(&["--jwt-secret", "short"]).validate().unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
    }

    #[test]
    fn server_keys_come_from_each_familys_flags() {
        let c = config(&[
            "--anthropic-api-key",
            "sk-anthropic",
            "--anthropic-base-url",
            "http://a.test",
            "--llama-api-key",
            "sk-llama",
            "--gemini-base-url",
            "http://g.test",
        ]);
        let keys: Vec<_> = c.server_keys.keys().collect();
        assert!(keys.contains(&("claude", "sk-anthropic", Some("http://a.test"))));
        assert!(keys.contains(&("llama", "sk-llama", None)));
        // A base URL without a key is no key.
        if std::env::var_os("GEMINI_API_KEY").is_none() {
            assert!(!keys.iter().any(|(family, ..)| *family == "gemini"));
        }
        assert!(!format!("{c:?}").contains("sk-anthropic"));
    }

    #[test]
    fn plan_table_parses_and_falls_back_to_free() {
        let plans = parse_plans("free=10, pro=500").unwrap();
        assert_eq!(plans.tokens("pro"), 500);
        assert_eq!(plans.tokens("unknown"), 10);
        assert!(parse_plans("pro=500").unwrap_err().contains("free"));
        assert!(parse_plans("free=-1").is_err());
        assert!(parse_plans("free").is_err());
    }
}
