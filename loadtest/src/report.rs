//! The summary every scenario produces: a table for people, JSON for machines.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histogram in microseconds (1 µs to 60 s, 3 significant figures).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Coarser histogram (2 significant figures) for the per-second timeline buckets.
fn coarse_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// Per-second latency histograms over a run, shared by every recorder of one series. Seconds
/// count from [`Timeline::start`] (samples before it land in second 0), by *receive* time.
pub struct Timeline {
    epoch: Instant,
    /// µs after `epoch` where second 0 begins.
    start_us: AtomicU64,
    seconds: Mutex<Vec<Histogram<u64>>>,
}

impl Timeline {
    /// A timeline whose clock is `epoch` (the scenario's send-time epoch).
    pub fn new(epoch: Instant) -> Arc<Timeline> {
        Arc::new(Timeline {
            epoch,
            start_us: AtomicU64::new(0),
            seconds: Mutex::new(Vec::new()),
        })
    }

    /// Marks now as second 0 (the start of the measured window).
    pub fn start(&self) {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.start_us.store(now, Ordering::Relaxed);
    }

    /// The second (since `start`) that `now_us` (µs since the epoch) falls in.
    fn second(&self, now_us: u64) -> usize {
        (now_us.saturating_sub(self.start_us.load(Ordering::Relaxed)) / 1_000_000) as usize
    }

    fn merge(&self, second: usize, h: &Histogram<u64>) {
        let mut secs = self.seconds.lock().unwrap();
        while secs.len() <= second {
            secs.push(coarse_histogram());
        }
        let _ = secs[second].add(h);
    }

    /// One point per second: count and percentiles.
    pub fn points(&self) -> Vec<TimelinePoint> {
        let secs = self.seconds.lock().unwrap();
        secs.iter()
            .enumerate()
            .map(|(i, h)| {
                let l = Latency::from_histogram(h);
                TimelinePoint {
                    t_s: i as u64,
                    count: h.len(),
                    p50_ms: l.p50_ms,
                    p99_ms: l.p99_ms,
                    max_ms: l.max_ms,
                }
            })
            .collect()
    }
}

/// One second of a timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the measured window began.
    pub t_s: u64,
    /// Samples received during this second.
    pub count: u64,
    /// Median latency of those samples, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

/// Records one connection's latencies: a full-precision histogram for the run and the current
/// second's bucket, handed to the shared [`Timeline`] when the second changes (so each
/// connection holds one small bucket, not one per second).
pub struct Recorder {
    /// Every sample of this connection.
    pub hist: Histogram<u64>,
    timeline: Arc<Timeline>,
    second: usize,
    bucket: Histogram<u64>,
}

impl Recorder {
    /// A recorder feeding `timeline`.
    pub fn new(timeline: Arc<Timeline>) -> Recorder {
        Recorder {
            hist: histogram(),
            timeline,
            second: 0,
            bucket: coarse_histogram(),
        }
    }

    /// Records a latency of `latency_us` observed at `now_us` (both in µs; `now_us` since the
    /// timeline's epoch).
    pub fn record(&mut self, now_us: u64, latency_us: u64) {
        let v = latency_us.clamp(1, 60_000_000);
        let _ = self.hist.record(v);
        let second = self.timeline.second(now_us);
        if second != self.second && !self.bucket.is_empty() {
            self.timeline.merge(self.second, &self.bucket);
            self.bucket.reset();
        }
        self.second = second;
        let _ = self.bucket.record(v);
    }

    /// Flushes the last bucket and returns the full histogram.
    pub fn finish(self) -> Histogram<u64> {
        if !self.bucket.is_empty() {
            self.timeline.merge(self.second, &self.bucket);
        }
        self.hist
    }
}

/// A named latency series, kept for the SVG report.
pub struct Series {
    /// Legend name.
    pub name: String,
    /// All samples.
    pub hist: Histogram<u64>,
    /// Per-second points.
    pub timeline: Vec<TimelinePoint>,
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
#[derive(Default, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// What the main latency (`p50_ms`, `p99_ms`, `max_ms`, `latency`) measures.
    pub measures: String,
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
    /// Secondary latency summaries (`awareness`: `doc` for the document edits; `churn`:
    /// `churners` for edits seen by the clients that come and go).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub latencies: BTreeMap<String, Latency>,
    /// Per-second count and percentiles of the main latency, by receive time.
    pub timeline: Vec<TimelinePoint>,
    /// Scenario-specific numbers.
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Every latency series with its full histogram, for `--report`.
    #[serde(skip)]
    pub series: Vec<Series>,
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
        if !self.measures.is_empty() {
            println!("measures        {}", self.measures);
        }
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
        for (name, l) in &self.latencies {
            println!(
                "{:<16}p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} samples)",
                format!("{name} (ms)"),
                l.p50_ms,
                l.p95_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                l.count
            );
        }
        let width = self.extra.keys().map(|k| k.len() + 2).max().unwrap_or(0);
        for (k, v) in &self.extra {
            println!("{k:<width$}{v}");
        }
    }
}
