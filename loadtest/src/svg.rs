//! `--report FILE.svg`: a self-contained SVG with the latency distribution (percentile curve,
//! log-scale x from p0 to p99.99) and a timeline (per-second p50/p99 and sample count), one
//! colour per series. Written by hand: no plotting dependency.

use std::fmt::Write;

use crate::report::{Report, Series};

const W: f64 = 960.0;
const H: f64 = 760.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
/// Highest percentile plotted: x runs over log10(1 / (1 − p)) from 0 to 4.
const MAX_NINES: f64 = 4.0;

/// Renders the report as an SVG document.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let title = format!(
        "{} — {} room(s) × {} client(s), {:.1} s",
        report.scenario, report.rooms, report.clients, report.duration_secs
    );
    let numbers = format!(
        "p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms · delivered {:.4}% · errors {}",
        report.p50_ms,
        report.p99_ms,
        report.max_ms,
        report.delivered_ratio * 100.0,
        report.errors
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text><text x="{LEFT}" y="40">{}</text>"#,
        esc(&title),
        esc(&numbers)
    );
    let series: Vec<&Series> = report
        .series
        .iter()
        .filter(|x| !x.hist.is_empty())
        .collect();
    if series.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="80">no latency samples in this run</text></svg>"#
        );
        return s;
    }
    percentile_panel(&mut s, &series, 72.0, 370.0);
    timeline_panel(&mut s, &series, 430.0, 710.0);
    // Legend.
    let mut x = LEFT;
    for (i, ser) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let label = format!("{} ({} samples)", ser.name, ser.hist.len());
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="14" height="4" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            H - 22.0,
            x + 18.0,
            H - 16.0,
            esc(&label)
        );
        x += 40.0 + 7.0 * label.chars().count() as f64;
    }
    s.push_str("</svg>\n");
    s
}

fn percentile_panel(s: &mut String, series: &[&Series], top: f64, bottom: f64) {
    let max_ms = series
        .iter()
        .map(|x| x.hist.value_at_quantile(1.0 - 10f64.powf(-MAX_NINES)) as f64 / 1e3)
        .fold(0.0, f64::max);
    let ymax = nice_ceil(max_ms);
    let (x0, x1) = (LEFT, W - RIGHT);
    let xs = |nines: f64| x0 + (x1 - x0) * nines / MAX_NINES;
    let ys = |ms: f64| bottom - (bottom - top) * (ms / ymax).min(1.05);
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-weight="bold">Latency by percentile (ms)</text>"#,
        top - 8.0
    );
    frame(s, x0, x1, top, bottom);
    for (label, nines) in [
        ("0%", 0.0),
        ("50%", 2f64.log10()),
        ("90%", 1.0),
        ("99%", 2.0),
        ("99.9%", 3.0),
        ("99.99%", 4.0),
    ] {
        let x = xs(nines);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            bottom + 16.0
        );
    }
    y_ticks(s, ymax, x0, x1, top, bottom, "");
    for (i, ser) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let mut pts = String::new();
        for k in 0..=400 {
            let nines = MAX_NINES * k as f64 / 400.0;
            let q = 1.0 - 10f64.powf(-nines);
            let ms = ser.hist.value_at_quantile(q) as f64 / 1e3;
            let _ = write!(pts, "{:.1},{:.1} ", xs(nines), ys(ms));
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>"#
        );
    }
}

fn timeline_panel(s: &mut String, series: &[&Series], top: f64, bottom: f64) {
    let secs = series
        .iter()
        .map(|x| x.timeline.len())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let max_ms = series
        .iter()
        .flat_map(|x| x.timeline.iter().map(|p| p.p99_ms))
        .fold(0.0, f64::max);
    let ymax = nice_ceil(max_ms);
    let max_count = series[0]
        .timeline
        .iter()
        .map(|p| p.count)
        .max()
        .unwrap_or(0) as f64;
    let cmax = nice_ceil(max_count);
    let (x0, x1) = (LEFT, W - RIGHT);
    let xs = |t: f64| x0 + (x1 - x0) * t / secs;
    let ys = |ms: f64| bottom - (bottom - top) * (ms / ymax).min(1.05);
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-weight="bold">Per second: p99 (solid), p50 (dashed), ms; grey bars: {} samples/s (right axis)</text>"#,
        top - 8.0,
        esc(&series[0].name)
    );
    frame(s, x0, x1, top, bottom);
    // Count bars of the main series, behind the lines.
    let bw = (x1 - x0) / secs;
    for p in &series[0].timeline {
        let h = (bottom - top) * p.count as f64 / cmax;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#eee" stroke="#ddd"/>"##,
            xs(p.t_s as f64) + 1.0,
            bottom - h,
            (bw - 2.0).max(0.5)
        );
    }
    y_ticks(s, ymax, x0, x1, top, bottom, "");
    // Right axis: counts.
    for k in 0..=4 {
        let v = cmax * k as f64 / 4.0;
        let y = bottom - (bottom - top) * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" fill="#888">{}</text>"##,
            x1 + 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    let step = nice_ceil(secs / 10.0).max(1.0);
    let mut t = 0.0;
    while t <= secs {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}s</text>"#,
            xs(t),
            bottom + 16.0,
            fmt_num(t)
        );
        t += step;
    }
    for (i, ser) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        for (dash, pick) in [("", 0usize), (r#" stroke-dasharray="5,4""#, 1)] {
            let pts: String = ser
                .timeline
                .iter()
                .filter(|p| p.count > 0)
                .map(|p| {
                    let ms = if pick == 0 { p.p99_ms } else { p.p50_ms };
                    format!("{:.1},{:.1} ", xs(p.t_s as f64 + 0.5), ys(ms))
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.5"{dash}/>"#
            );
        }
        // Markers, so a run of a second or two still shows its points.
        if ser.timeline.len() <= 120 {
            for p in ser.timeline.iter().filter(|p| p.count > 0) {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"#,
                    xs(p.t_s as f64 + 0.5),
                    ys(p.p99_ms)
                );
            }
        }
    }
}

fn frame(s: &mut String, x0: f64, x1: f64, top: f64, bottom: f64) {
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{top}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        x1 - x0,
        bottom - top
    );
}

fn y_ticks(s: &mut String, ymax: f64, x0: f64, x1: f64, top: f64, bottom: f64, unit: &str) {
    for k in 0..=5 {
        let v = ymax * k as f64 / 5.0;
        let y = bottom - (bottom - top) * k as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}{unit}</text>"##,
            x0 - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `v` (1 for nothing).
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v * (1.0 - 1e-9) {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{histogram, TimelinePoint};

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(3.2), 5.0);
        assert_eq!(nice_ceil(10.0), 10.0);
        assert_eq!(nice_ceil(0.013), 0.02);
    }

    #[test]
    fn renders_a_well_formed_document() {
        let mut hist = histogram();
        for v in 1..=1000u64 {
            hist.record(v * 10).unwrap();
        }
        let report = Report {
            scenario: "fanout <test>".into(),
            series: vec![Series {
                name: "edits".into(),
                hist,
                timeline: vec![TimelinePoint {
                    t_s: 0,
                    count: 1000,
                    p50_ms: 5.0,
                    p99_ms: 9.9,
                    max_ms: 10.0,
                }],
            }],
            ..Default::default()
        };
        let svg = render(&report);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;test&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        let empty = render(&Report::default());
        assert!(empty.contains("no latency samples"));
    }
}
