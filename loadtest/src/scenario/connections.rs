//! `connections`: N idle, synced clients spread over R rooms, opened at a fixed connect rate
//! and held for the duration; measures the server's memory per connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use yrs::Doc;

use crate::client::Ended;
use crate::progress;
use crate::report::{Latency, Report};
use crate::scenario::{connect_synced, Common, Ignore};

/// Runs the scenario: `clients` is per room, so N = rooms × clients.
pub async fn run(
    c: &Common,
    mut sample: impl FnMut() -> Option<crate::proc::Sample>,
) -> anyhow::Result<Report> {
    let total = c.rooms * c.clients;
    let mut errors = 0u64;
    let mut close_codes: BTreeMap<u16, u64> = BTreeMap::new();
    // One client per room first, so room (document) memory is not counted per connection.
    let mut conns = Vec::with_capacity(total);
    for r in 0..c.rooms {
        match connect_synced(&c.target, &c.room(r), c.source(r), Doc::new(), Ignore).await {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                errors += 1;
                crate::note!("connect failed: {e:#}");
            }
        }
    }
    progress::phase("connecting", None);
    let warm = conns.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sample();
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(256));
    let period = Duration::from_secs_f64(1.0 / c.connect_rate.max(1.0));
    let mut tick = tokio::time::interval(period);
    let mut pending = Vec::new();
    for n in c.rooms..total {
        tick.tick().await;
        let permit = limit.clone().acquire_owned().await?;
        let target = c.target.clone();
        let room = c.room(n % c.rooms);
        let local = c.source(n);
        pending.push(tokio::spawn(async move {
            let r = connect_synced(&target, &room, local, Doc::new(), Ignore).await;
            drop(permit);
            r
        }));
    }
    for p in pending {
        match p.await? {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                errors += 1;
                if errors <= 10 {
                    crate::note!("connect failed: {e:#}");
                }
            }
        }
    }
    let ramp = started.elapsed();
    crate::note!(
        "connected {}/{total} in {:.1} s",
        conns.len(),
        ramp.as_secs_f64()
    );
    progress::phase("holding", Some(c.duration));
    tokio::time::sleep(c.duration).await;
    let after = sample();
    let opened = conns.len() - warm;
    let mut alive = 0u64;
    for conn in conns {
        conn.stop.notify_one();
        match conn.task.await?.0 {
            Ended::Stopped => alive += 1,
            Ended::Closed(frame) => {
                errors += 1;
                *close_codes.entry(frame.map_or(1005, |f| f.0)).or_default() += 1;
            }
            Ended::Error(_) => errors += 1,
        }
    }
    let mut extra = BTreeMap::new();
    extra.insert("connections".into(), (total as u64).into());
    extra.insert("alive_at_end".into(), alive.into());
    extra.insert("ramp_secs".into(), ramp.as_secs_f64().into());
    let delivered = alive;
    Ok(Report {
        scenario: "connections".into(),
        measures: "nothing (idle connections; see server memory)".into(),
        rooms: c.rooms,
        clients: c.clients,
        rate: c.connect_rate,
        duration_secs: c.duration.as_secs_f64(),
        expected: total as u64,
        delivered,
        delivered_ratio: delivered as f64 / total.max(1) as f64,
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        latency: Latency::default(),
        errors,
        close_codes,
        server: crate::usage(before, after, None, Some(opened)),
        extra,
        ..Default::default()
    })
}
