//! `resonant-loadtest`: drives any y-websocket server (Resonant, y-websocket's server, y-sweet,
//! Hocuspocus) with real yrs clients and reports latency, delivery and server cost.
//!
//! Every scenario is bounded in time and connection count and stops by itself. Targets must
//! be loopback addresses unless `--allow-remote` is given.

mod client;
mod proc;
mod progress;
mod report;
mod scenario;
mod svg;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, ValueEnum};

use crate::report::ServerUsage;

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "resonant-loadtest", version, about)]
struct Cli {
    /// Which scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// URL template; `{room}` is replaced by each room's name. Repeat it for the nodes of a
    /// cluster: each room's writer connects to the first, everyone else round-robin to the
    /// others (so their latency is the cross-node one).
    #[arg(long, default_value = "ws://127.0.0.1:1234/sync/{room}")]
    url: Vec<String>,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Clients per room (`fanout`, `churn`: readers besides the writer; `awareness`: cursor
    /// clients besides the writer; `coldload`: joiners at once).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Edits per second per writer (`awareness`: cursor moves per second per client).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Document edits per second by each room's writer (`awareness`).
    #[arg(long, default_value_t = 20.0)]
    doc_rate: f64,
    /// Size of the document to build, bytes (`coldload`).
    #[arg(long, default_value_t = 10_000_000)]
    doc_bytes: usize,
    /// Seconds to wait after everyone left before the cold load (`coldload`). The room only
    /// leaves server memory after the server's own grace period (Resonant:
    /// `--room-grace-secs`, 5 s by default): wait longer than that to load from the store.
    #[arg(long, default_value_t = 0.0)]
    wait_unload: f64,
    /// Cold-load and joining clients send their sync step 1 only once the server's step 1
    /// arrived, instead of as soon as the socket opens as y-websocket's provider does
    /// (`coldload`).
    #[arg(long)]
    wait_greeting: bool,
    /// Joins per second per room; each churner stays 0.5–3 s (`churn`).
    #[arg(long, default_value_t = 10.0)]
    churn_rate: f64,
    /// Measured window in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connections opened per second while ramping up (`connections`).
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Spread connections over this many source addresses 127.0.0.1, 127.0.0.2, …
    #[arg(long, default_value_t = 1)]
    source_addrs: u8,
    /// Room name prefix (a random one by default, so runs don't share documents).
    #[arg(long)]
    room_prefix: Option<String>,
    /// Sample this server process's CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Also write an SVG report (latency by percentile, per-second timeline) to this file.
    #[arg(long, value_name = "FILE.svg")]
    report: Option<std::path::PathBuf>,
    /// No live progress line on stderr (it is also off when stderr is not a terminal).
    #[arg(long, short)]
    quiet: bool,
    /// Allow non-loopback targets.
    #[arg(long)]
    allow_remote: bool,
    /// Refuse runs that would open more connections than this.
    #[arg(long, default_value_t = 50_000)]
    max_connections: usize,
    /// Refuse runs longer than this many seconds.
    #[arg(long, default_value_t = 600.0)]
    max_duration: f64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    /// One writer per room moving a block at `--rate`, `--clients` readers timing each edit.
    Fanout,
    /// `--rooms` × `--clients` idle synced connections; server memory per connection.
    Connections,
    /// `--clients` per room moving cursors at `--rate` Hz plus a writer editing at `--doc-rate`:
    /// awareness and document latency in the same room.
    Awareness,
    /// Build a `--doc-bytes` document, load it into a fresh client, then `--clients` joiners at
    /// once: time to sync.
    Coldload,
    /// A writer at `--rate`, `--clients` stable readers, and clients joining at `--churn-rate`
    /// and leaving after 0.5–3 s: delivery and convergence under churn.
    Churn,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let connections = match cli.scenario {
        // Builder and checker, then the cold client (kept open) and the joiners.
        Scenario::Coldload => cli.clients + 2,
        // Churners overlap for at most 3 s (plus the convergence check).
        Scenario::Churn => cli.rooms * (cli.clients + 1 + (cli.churn_rate * 8.0).ceil() as usize),
        _ => cli.rooms * (cli.clients + 1),
    };
    if connections > cli.max_connections {
        bail!(
            "{connections} connections exceed --max-connections {}",
            cli.max_connections
        );
    }
    if cli.duration > cli.max_duration || cli.duration <= 0.0 {
        bail!("--duration must be in (0, {}] seconds", cli.max_duration);
    }
    if cli.rate <= 0.0 || cli.doc_rate <= 0.0 || cli.churn_rate <= 0.0 {
        bail!("--rate, --doc-rate and --churn-rate must be positive");
    }
    if cli.rooms == 0 {
        bail!("--rooms must be at least 1");
    }
    if !(0.0..=cli.max_duration).contains(&cli.wait_unload) {
        bail!("--wait-unload must be in [0, {}] seconds", cli.max_duration);
    }
    if cli.doc_bytes > 1 << 30 {
        bail!("--doc-bytes is limited to 1 GiB");
    }
    let target = client::Target::parse_all(&cli.url, cli.allow_remote).await?;
    let sources: Vec<IpAddr> = if cli.source_addrs > 1 {
        (1..=cli.source_addrs)
            .map(|i| IpAddr::from([127, 0, 0, i]))
            .collect()
    } else {
        Vec::new()
    };
    let common = scenario::Common {
        target,
        rooms: cli.rooms,
        clients: cli.clients,
        rate: cli.rate,
        duration: Duration::from_secs_f64(cli.duration),
        room_prefix: cli
            .room_prefix
            .clone()
            .unwrap_or_else(|| format!("load-{:08x}", rand::random::<u32>())),
        sources,
        connect_rate: cli.connect_rate,
        doc_rate: cli.doc_rate,
        doc_bytes: cli.doc_bytes,
        wait_unload: Duration::from_secs_f64(cli.wait_unload),
        wait_greeting: cli.wait_greeting,
        churn_rate: cli.churn_rate,
    };
    progress::init(cli.quiet);
    let pid = cli.server_pid;
    let sample = move || pid.and_then(|p| proc::sample(p).ok());
    let result = match cli.scenario {
        Scenario::Fanout => scenario::fanout::run(&common, sample).await,
        Scenario::Connections => scenario::connections::run(&common, sample).await,
        Scenario::Awareness => scenario::awareness::run(&common, sample).await,
        Scenario::Coldload => scenario::coldload::run(&common, sample).await,
        Scenario::Churn => scenario::churn::run(&common, sample).await,
    };
    progress::finish();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let busy = count(&scenario::JOIN_REFUSED_BUSY);
    let closed = count(&scenario::JOIN_CLOSED_1013);
    let gave_up = count(&scenario::JOIN_GAVE_UP);
    if busy + closed > 0 {
        eprintln!(
            "the server refused {busy} join attempts (503) and closed {closed} (1013); \
             they retried after its hint, {gave_up} joins gave up"
        );
    }
    let mut report = result?;
    report.extra.insert("join_refused_busy".into(), busy.into());
    report
        .extra
        .insert("join_closed_1013".into(), closed.into());
    report.extra.insert("join_gave_up".into(), gave_up.into());
    if let Some(path) = &cli.report {
        std::fs::write(path, svg::render(&report))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
    }
    if !report.passed() {
        std::process::exit(2);
    }
    Ok(())
}

/// Server usage between two samples.
fn usage(
    before: Option<proc::Sample>,
    after: Option<proc::Sample>,
    delivered: Option<u64>,
    connections: Option<usize>,
) -> Option<ServerUsage> {
    let (b, a) = (before?, after?);
    let cpu = (a.cpu_secs - b.cpu_secs).max(0.0);
    Some(ServerUsage {
        cpu_secs: cpu,
        cpu_us_per_delivered: delivered.filter(|d| *d > 0).map(|d| cpu * 1e6 / d as f64),
        rss_before_bytes: b.rss_bytes,
        rss_after_bytes: a.rss_bytes,
        rss_per_connection_bytes: connections
            .filter(|c| *c > 0)
            .map(|c| (a.rss_bytes as f64 - b.rss_bytes as f64) / c as f64),
    })
}

/// Each connection is a file descriptor: lift the soft limit as far as allowed (root may
/// also lift the hard limit).
fn raise_fd_limit() {
    use rlimit::Resource;
    const WANT: u64 = 1 << 20;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return;
    };
    if Resource::NOFILE.set(WANT, hard.max(WANT)).is_err() && soft < hard {
        let _ = Resource::NOFILE.set(hard, hard);
    }
}
