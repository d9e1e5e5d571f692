//! The live progress line on stderr: phase, elapsed and remaining time, open connections and
//! events so far. Hidden with `--quiet` or when stderr is not a terminal; the counters are
//! plain atomics, cheap enough to bump from every connection either way.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

static CONNECTIONS: AtomicI64 = AtomicI64::new(0);
static EVENTS: AtomicU64 = AtomicU64::new(0);
static BAR: OnceLock<ProgressBar> = OnceLock::new();
static PHASE: Mutex<Option<(String, Instant, Option<Duration>)>> = Mutex::new(None);

/// One more (or fewer) open connection.
pub fn connections(delta: i64) {
    CONNECTIONS.fetch_add(delta, Ordering::Relaxed);
}

/// `n` more events (deliveries, syncs, …) observed.
pub fn events(n: u64) {
    EVENTS.fetch_add(n, Ordering::Relaxed);
}

/// Starts the progress line unless `quiet` or stderr is not a terminal.
pub fn init(quiet: bool) {
    if quiet || !std::io::stderr().is_terminal() {
        return;
    }
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner:.green} {prefix:<12} {elapsed:>4} [{bar:24.cyan/blue}] {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    if BAR.set(bar).is_ok() {
        // A plain thread: the refresh keeps going while the runtime's workers are busy.
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(200));
            if !refresh() {
                return;
            }
        });
    }
}

/// Names the current phase; `length` makes the bar fill over that time and shows what is left.
pub fn phase(name: &str, length: Option<Duration>) {
    *PHASE.lock().unwrap() = Some((name.to_string(), Instant::now(), length));
    if let Some(bar) = BAR.get() {
        bar.set_prefix(name.to_string());
        bar.set_position(0);
    }
    refresh();
}

fn refresh() -> bool {
    let Some(bar) = BAR.get() else { return false };
    if bar.is_finished() {
        return false;
    }
    let phase = PHASE.lock().unwrap().clone();
    let mut remaining = String::new();
    if let Some((_, started, Some(len))) = phase {
        let done = started.elapsed().as_secs_f64() / len.as_secs_f64().max(1e-9);
        bar.set_position((done.min(1.0) * 1000.0) as u64);
        let left = len.saturating_sub(started.elapsed()).as_secs_f64();
        remaining = format!("remaining {left:>4.1}s  ");
    }
    bar.set_message(format!(
        "{remaining}conns {}  events {}",
        CONNECTIONS.load(Ordering::Relaxed),
        EVENTS.load(Ordering::Relaxed)
    ));
    true
}

/// Prints a line without tearing the progress line.
pub fn println(line: &str) {
    match BAR.get() {
        Some(bar) if !bar.is_finished() => bar.suspend(|| eprintln!("{line}")),
        _ => eprintln!("{line}"),
    }
}

/// Removes the progress line (before the summary is printed).
pub fn finish() {
    if let Some(bar) = BAR.get() {
        bar.finish_and_clear();
    }
}

/// `eprintln!` that does not tear the progress line.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => { $crate::progress::println(&format!($($arg)*)) };
}
