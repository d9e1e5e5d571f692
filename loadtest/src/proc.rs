//! Samples a server process's CPU time and resident memory from /proc (Linux).

use anyhow::Context;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User + system CPU time, in seconds.
    pub cpu_secs: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Reads CPU time and RSS of `pid`.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces; fields after it are space-separated.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or(&stat);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Sample {
        cpu_secs: ticks as f64 / hz,
        rss_bytes: rss_kb * 1024,
    })
}
