//! The `resonant` binary: parses the command line, sets up logging, runs the server until
//! SIGINT or SIGTERM.

use clap::Parser;
use resonant::config::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

// jemalloc instead of glibc malloc: after a churn spike (~1000 joins/s) glibc kept ~80-95 MB
// of freed memory in its per-thread arenas once every client had left (malloc_stats: 5-17 MB
// in use; malloc_trim(0) brought RSS from ~95 to ~21 MB), so RSS never came back down. This
// is retention, not a leak. jemalloc's background thread (`background_threads` feature)
// returns freed pages to the OS after its decay time.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's default decay (10 s dirty, then 10 s muzzy) kept a churn spike's pages for
// ~20 s after everyone left. Dirty pages now decay over 2 s and then are returned at once
// (no muzzy stage): a muzzy page is MADV_FREE'd, which Linux still counts in RSS until memory
// runs short, so with a 2 s muzzy decay RSS 10 s after a churn spike held 3.4 MB of such
// pages (33.3 vs 30.1 MB, docs/benchmarks.md). `_RJEM_MALLOC_CONF` still overrides it at run
// time. jemalloc reads this symbol (prefixed `_rjem_` as tikv-jemalloc-sys builds it) as its
// compiled-in options before the first allocation.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:2000,muzzy_decay_ms:0\0";

/// Stack size of the runtime's threads. yrs integrates and deletes nested types recursively,
/// so a document nested 20,000 levels deep (160 kB of updates) overflowed tokio's default
/// 2 MiB stack and aborted the whole process (found by `cargo fuzz`, see
/// fuzz/findings/deep_types.rs). Only the pages a thread touches are committed, so a large
/// reservation costs nothing until a deep document needs it. Measured with that reproducer:
/// 2 MiB aborts at 20,000 levels; 256 MiB survives 500,000 (4.5 MB of updates) and aborts
/// at 1,000,000 (9 MB). A per-room nesting limit is the complete fix, still to do.
const WORKER_STACK: usize = 256 << 20;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Command::Serve(config) => *config,
        Command::Openapi => {
            let mut doc = resonant::http::api::router().1.to_pretty_json()?;
            doc.push('\n');
            // write_all, not println!: a closed pipe (`| head`) is an error, not a panic.
            std::io::Write::write_all(&mut std::io::stdout().lock(), doc.as_bytes())?;
            return Ok(());
        }
    };
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    raise_fd_limit();
    let server = resonant::start(config).await?;
    // Scripts and tests read the bound address from this line (useful with --port 0).
    println!("resonant listening on {}", server.addr());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Every connection is a file descriptor: lift the soft limit as far as allowed (root may
/// also lift the hard limit), so the connection count is not capped by a default of 1024.
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
