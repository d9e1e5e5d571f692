//! The summary every scenario produces: a table for people, JSON for machines.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histogram in microseconds (1 µs to 60 s, 3 significant figures).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// What the server process used during the measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerUsage {
    /// CPU seconds (user + system) used during the window.
    pub cpu_secs: f64,
    /// CPU microseconds per delivered update (or per connection, for `connections`).
    pub cpu_us_per_delivered: Option<f64>,
    /// RSS at the start of the window.
    pub rss_before_bytes: u64,
    /// RSS at the end of the window.
    pub rss_after_bytes: u64,
    /// (after − before) ÷ connections, for `connections`.
    pub rss_per_connection_bytes: Option<f64>,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Rooms used.
    pub rooms: usize,
    /// Clients per room (readers for `fanout`).
    pub clients: usize,
    /// Target edit or move rate per writer per second.
    pub rate: f64,
    /// Measured window in seconds.
    pub duration_secs: f64,
    /// Deliveries expected (sent × receivers).
    pub expected: u64,
    /// Deliveries observed.
    pub delivered: u64,
    /// delivered ÷ expected; anything below 1 is a failure.
    pub delivered_ratio: f64,
    /// Median delivery latency, ms.
    pub p50_ms: f64,
    /// 99th percentile delivery latency, ms.
    pub p99_ms: f64,
    /// Maximum delivery latency, ms.
    pub max_ms: f64,
    /// Full latency summary.
    pub latency: Latency,
    /// Connection errors (failed connects, handshakes, unexpected ends).
    pub errors: u64,
    /// Close codes received from the server, with counts.
    pub close_codes: BTreeMap<u16, u64>,
    /// Server resource use, when `--server-pid` was given.
    pub server: Option<ServerUsage>,
    /// Scenario-specific numbers.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// Whether the run met its delivery guarantee.
    pub fn passed(&self) -> bool {
        self.delivered_ratio >= 1.0 && self.errors == 0
    }

    /// Prints the human-readable table.
    pub fn print_table(&self) {
        let l = &self.latency;
        println!("scenario        {}", self.scenario);
        println!(
            "shape           {} room(s) x {} client(s), rate {}/s, {:.1} s",
            self.rooms, self.clients, self.rate, self.duration_secs
        );
        println!(
            "latency (ms)    p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} samples)",
            l.p50_ms, l.p95_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        );
        println!(
            "delivered       {}/{} ({:.4}%){}",
            self.delivered,
            self.expected,
            self.delivered_ratio * 100.0,
            if self.delivered_ratio < 1.0 {
                "  FAILED: not everything arrived"
            } else {
                ""
            }
        );
        println!("errors          {}", self.errors);
        if !self.close_codes.is_empty() {
            println!("close codes     {:?}", self.close_codes);
        }
        if let Some(s) = &self.server {
            println!(
                "server          cpu {:.3} s, rss {:.1} MiB -> {:.1} MiB",
                s.cpu_secs,
                s.rss_before_bytes as f64 / 1048576.0,
                s.rss_after_bytes as f64 / 1048576.0
            );
            if let Some(c) = s.cpu_us_per_delivered {
                println!("                cpu per delivered update {c:.2} us");
            }
            if let Some(r) = s.rss_per_connection_bytes {
                println!("                rss per connection {:.0} bytes", r);
            }
        }
        for (k, v) in &self.extra {
            println!("{k:<16}{v}");
        }
    }
}
