//! Command-line and environment configuration for `resonant serve`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
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
    Serve(ServeConfig),
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
    /// Most connections per room (more are closed with 1013).
    #[arg(long, env = "RESONANT_MAX_CONNECTIONS_PER_ROOM", default_value_t = 1000, value_parser = at_least::<usize, 1>)]
    pub max_connections_per_room: usize,
    /// Most WebSocket connections in all (more are refused with 503 before the upgrade).
    /// Default: the process's file-descriptor limit minus 256 for the store and logs.
    #[arg(long, env = "RESONANT_MAX_CONNECTIONS", value_parser = at_least::<usize, 1>)]
    pub max_connections: Option<usize>,
    /// New connections accepted per second, server-wide; more are closed at once with 1013
    /// and a retry hint, so a reconnect storm cannot take latency from connected clients
    /// (0: no limit). The default is what one core sustained with p99 delivery under 10 ms
    /// in `resonant-loadtest churn` (see docs/benchmarks.md).
    #[arg(long, env = "RESONANT_MAX_JOINS_PER_SEC", default_value_t = 400)]
    pub max_joins_per_sec: u32,
    /// Outbound bytes queued per connection before it is closed as too slow (4000).
    #[arg(long, env = "RESONANT_MAX_QUEUED_BYTES", default_value_t = 8 << 20, value_parser = at_least::<usize, 1024>)]
    pub max_queued_bytes: usize,
    /// Seconds a write to a client may make no progress before the connection is dropped (a
    /// client that stops reading must not pin its socket and queue).
    #[arg(long, env = "RESONANT_WRITE_TIMEOUT_SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub write_timeout_secs: f64,
    /// Seconds a room stays loaded after its last connection leaves.
    #[arg(long, env = "RESONANT_ROOM_GRACE_SECS", default_value_t = 30.0, value_parser = non_negative_secs)]
    pub room_grace_secs: f64,
    /// Awareness coalescing tick in busy rooms, in milliseconds.
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
    /// Shortest time between two store commits, in milliseconds: under load, updates arriving
    /// meanwhile share one transaction (an idle server commits at once).
    #[arg(long, env = "RESONANT_COMMIT_INTERVAL_MS", default_value_t = 2.0, value_parser = non_negative_secs)]
    pub commit_interval_ms: f64,
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
        let Command::Serve(mut config) = cli.command;
        config.data_dir = data_dir;
        config.database_url = None;
        config
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
