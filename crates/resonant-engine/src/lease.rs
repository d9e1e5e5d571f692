//! Execution leases in cluster mode (issue 18, docs/scale-out.md §7): several nodes share one
//! Postgres, and a node runs an execution only while it holds the execution's lease.
//!
//! One task per engine renews this node's leases every `renew_every` (the answer doubles as
//! the poll for cancels and decisions made on other nodes), aborts what it no longer holds,
//! fences itself when it cannot renew, and sweeps for executions whose lease lapsed (their
//! node died) to take them over. The event writer refuses writes of executions whose lease
//! this node no longer holds at the epoch it runs them at (`executions::apply_fenced`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::leases;
use crate::run::Decision;
use crate::{Engine, Inner};

/// How this node shares executions with the other nodes of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's id: unique per process incarnation (a restarted process is a new node).
    pub node: String,
    /// How long a lease holds without renewal: a dead node's executions are taken over
    /// after at most this plus one sweep.
    pub lease_ttl: Duration,
    /// How often the node renews its leases (and sees cancels and decisions made elsewhere).
    pub renew_every: Duration,
    /// How often (± 25 %) the node looks for executions whose lease lapsed.
    pub sweep_every: Duration,
}

impl ClusterConfig {
    /// The defaults for node `node`: a 10 s lease renewed every 2 s, a sweep every 2 s.
    pub fn new(node: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            node: node.into(),
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            sweep_every: Duration::from_secs(2),
        }
    }

    /// How long after sending its last successful renewal a node stops its runs: 2 s before
    /// the lease can expire (a quarter of the lease when that is shorter), so the node has
    /// stopped before anyone may take over, whatever the renewal's round trip was.
    pub fn self_fence_after(&self) -> Duration {
        let margin = Duration::from_secs(2).min(self.lease_ttl / 4);
        self.lease_ttl.saturating_sub(margin)
    }
}

/// Counts of what the lease task did since the engine started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Takeover sweeps run.
    pub sweeps: u64,
    /// Executions taken over (or resumed after a restart) by this node.
    pub taken_over: u64,
    /// Runs stopped because another node took their execution over.
    pub lost: u64,
    /// Times this node stopped all its runs because it could not renew its leases.
    pub self_fenced: u64,
    /// Renewals that failed or timed out.
    pub renew_failures: u64,
}

/// A lease this node holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    /// The epoch it runs the execution under.
    pub(crate) epoch: i64,
    /// When the statement that last extended it (insert, takeover or renewal) was sent: the
    /// database set its expiry at or after this, so the node may run it until this plus
    /// `self_fence_after` whatever the round trip took.
    pub(crate) sent: Instant,
}

/// The lease state shared by the engine, its lease task and its event writer.
pub(crate) struct Leases {
    pub(crate) config: ClusterConfig,
    /// The leases this node holds, by execution; the event writer keeps only writes of
    /// executions listed here at the epoch the database still has.
    held: Mutex<HashMap<String, Held>>,
    /// Executions the event writer found taken over: the lease task stops their runs.
    lost_tx: mpsc::UnboundedSender<String>,
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    pub(crate) stop: CancellationToken,
    /// Renew now rather than at the next tick (a wake-up from another node: a cancel or a
    /// decision is waiting in the database).
    pub(crate) poke: tokio::sync::Notify,
    /// Test hook: renewals and sweeps are not sent, as if the database were unreachable.
    paused: AtomicBool,
    /// One sweep at a time (the task's and `Engine::recover`'s).
    sweeping: tokio::sync::Mutex<()>,
    sweeps: AtomicU64,
    taken_over: AtomicU64,
    lost: AtomicU64,
    self_fenced: AtomicU64,
    renew_failures: AtomicU64,
}

impl Leases {
    pub(crate) fn new(config: ClusterConfig) -> Arc<Leases> {
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        Arc::new(Leases {
            config,
            held: Mutex::default(),
            lost_tx,
            lost_rx: Mutex::new(Some(lost_rx)),
            stop: CancellationToken::new(),
            poke: tokio::sync::Notify::new(),
            paused: AtomicBool::new(false),
            sweeping: tokio::sync::Mutex::new(()),
            sweeps: 0.into(),
            taken_over: 0.into(),
            lost: 0.into(),
            self_fenced: 0.into(),
            renew_failures: 0.into(),
        })
    }

    pub(crate) fn hold(&self, execution: &str, epoch: i64, sent: Instant) {
        self.held
            .lock()
            .insert(execution.to_owned(), Held { epoch, sent });
    }

    pub(crate) fn forget(&self, execution: &str) -> Option<Held> {
        self.held.lock().remove(execution)
    }

    /// The epochs of the executions among `ids` (for one fenced write).
    pub(crate) fn epochs_of<'a>(&self, ids: impl Iterator<Item = &'a str>) -> HashMap<String, i64> {
        let held = self.held.lock();
        ids.filter_map(|id| held.get(id).map(|h| (id.to_owned(), h.epoch)))
            .collect()
    }

    /// The event writer found `execution` no longer ours: its writes are being dropped, so
    /// its run must stop now rather than at the next renewal.
    pub(crate) fn fenced_out(&self, execution: &str) {
        if self.forget(execution).is_some() {
            let _ = self.lost_tx.send(execution.to_owned());
        }
    }

    /// When the first held lease must be given up for want of a renewal.
    fn next_fence(&self) -> Option<Instant> {
        let after = self.config.self_fence_after();
        self.held.lock().values().map(|h| h.sent + after).min()
    }

    /// Takes out of `held` the leases whose fence time has come.
    fn due(&self, now: Instant) -> Vec<String> {
        let after = self.config.self_fence_after();
        let mut held = self.held.lock();
        let due: Vec<String> = held
            .iter()
            .filter(|(_, h)| h.sent + after <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &due {
            held.remove(id);
        }
        due
    }

    /// A renewal sent at `sent` extended `execution`'s lease at `epoch`.
    fn renewed(&self, execution: &str, epoch: i64, sent: Instant) {
        if let Some(h) = self.held.lock().get_mut(execution) {
            if h.epoch == epoch && h.sent < sent {
                h.sent = sent;
            }
        }
    }

    pub(crate) fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> LeaseStats {
        LeaseStats {
            sweeps: self.sweeps.load(Ordering::Relaxed),
            taken_over: self.taken_over.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            self_fenced: self.self_fenced.load(Ordering::Relaxed),
            renew_failures: self.renew_failures.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_sweep(&self, taken: usize) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.taken_over.fetch_add(taken as u64, Ordering::Relaxed);
        metrics::counter!("resonant_execution_takeovers_total").increment(taken as u64);
    }

    pub(crate) fn count_lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("resonant_execution_leases_lost_total").increment(1);
    }

    /// Serialises sweeps.
    pub(crate) async fn sweep_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.sweeping.lock().await
    }
}

/// The lease task: renews, fences, sweeps, until the engine shuts down (or is dropped).
pub(crate) async fn run(engine: Weak<Inner>, leases: Arc<Leases>) {
    let Some(mut lost_rx) = leases.lost_rx.lock().take() else {
        return;
    };
    let config = leases.config.clone();
    let mut renew = tokio::time::interval(config.renew_every.max(Duration::from_millis(10)));
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sweep = Instant::now() + jittered(config.sweep_every);
    // Far enough never to come while nothing is held (recomputed every turn).
    let idle = Duration::from_secs(3600);
    loop {
        let fence_at = leases.next_fence().unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            biased;
            _ = leases.stop.cancelled() => return,
            Some(id) = lost_rx.recv() => {
                let Some(inner) = engine.upgrade() else { return };
                Engine { inner }.drop_run(&id, "its writes were refused: another node took it over");
            }
            _ = tokio::time::sleep_until(fence_at) => {
                let Some(inner) = engine.upgrade() else { return };
                let due = leases.due(Instant::now());
                let engine = Engine { inner };
                let mut stopped = 0;
                for id in &due {
                    stopped += usize::from(engine.stop_run(id));
                }
                if stopped > 0 {
                    tracing::error!(
                        executions = stopped,
                        "execution leases not renewed in time: runs stopped (self-fenced); \
                         other nodes take them over once the leases expire"
                    );
                    leases.self_fenced.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("resonant_execution_lease_self_fences_total").increment(1);
                }
            }
            _ = renew.tick() => {
                let Some(inner) = engine.upgrade() else { return };
                renew_once(&Engine { inner }, &leases, fence_at).await;
            }
            _ = leases.poke.notified() => {
                let Some(inner) = engine.upgrade() else { return };
                renew_once(&Engine { inner }, &leases, fence_at).await;
                renew.reset();
            }
            _ = tokio::time::sleep_until(next_sweep) => {
                let Some(inner) = engine.upgrade() else { return };
                let engine = Engine { inner };
                // Bounded, so that a hung database cannot hold the loop past a fence.
                let by = fence_at.min(Instant::now() + config.lease_ttl);
                match tokio::time::timeout_at(by, engine.sweep()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "execution takeover sweep failed"),
                    Err(_) => tracing::warn!("execution takeover sweep timed out"),
                }
                next_sweep = Instant::now() + jittered(config.sweep_every);
            }
        }
    }
}

/// `every` ± 25 %, so that nodes started together do not sweep in step.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

/// Renews the leases of this node's runs; stops those it no longer holds, cancels those
/// someone asked to cancel, and wakes blocks decided elsewhere.
async fn renew_once(engine: &Engine, leases: &Leases, fence_at: Instant) {
    let inner = &engine.inner;
    let ids: Vec<String> = inner.running.lock().keys().cloned().collect();
    if ids.is_empty() || leases.is_paused() {
        return;
    }
    let config = &leases.config;
    let sent = Instant::now();
    let renewed = tokio::time::timeout_at(
        fence_at,
        leases::renew(&inner.db, &config.node, &ids, config.lease_ttl),
    )
    .await;
    let rows = match renewed {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            leases.renew_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, executions = ids.len(), "execution lease renewal failed");
            return;
        }
        Err(_) => {
            leases.renew_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(executions = ids.len(), "execution lease renewal timed out");
            return;
        }
    };
    let answered: HashMap<&str, &leases::Renewed> =
        rows.iter().map(|r| (r.execution.as_str(), r)).collect();
    for id in &ids {
        match answered.get(id.as_str()) {
            None => engine.drop_run(id, "another node took it over"),
            Some(r) => {
                leases.renewed(id, r.epoch, sent);
                if r.cancel_requested {
                    engine.cancel(id);
                }
            }
        }
    }
    let by = leases.next_fence().unwrap_or(fence_at);
    wake_decided(engine, by).await;
}

/// Hands decisions stored by other nodes to this node's waiting human blocks.
async fn wake_decided(engine: &Engine, by: Instant) {
    let inner = &engine.inner;
    let waiting: Vec<String> = inner
        .running
        .lock()
        .iter()
        .filter(|(_, (c, _))| !c.waiting.lock().is_empty())
        .map(|(id, _)| id.clone())
        .collect();
    if waiting.is_empty() {
        return;
    }
    let found =
        match tokio::time::timeout_at(by, leases::pending_decisions(&inner.db, &waiting)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading decisions made on other nodes failed");
                return;
            }
            Err(_) => return,
        };
    for d in found {
        let Ok(decision) = serde_json::from_str::<Decision>(&d.decision) else {
            tracing::warn!(
                execution = d.execution,
                block = d.block,
                "stored decision does not parse"
            );
            continue;
        };
        let control = inner
            .running
            .lock()
            .get(&d.execution)
            .map(|(c, _)| c.clone());
        let Some(control) = control else { continue };
        let tx = control.waiting.lock().remove(&d.block);
        if let Some(tx) = tx {
            let _ = tx.send(decision);
        }
    }
}
