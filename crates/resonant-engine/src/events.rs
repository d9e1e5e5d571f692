//! The execution event log: one writer task persists events and block states in batches
//! (one transaction each) and only then fans the events out to the editors of the workflow,
//! each event encoded once. A reconnecting editor's replay runs in its own task, after the
//! writes queued before it are committed, while live events for that editor are held back
//! (only which executions had some is remembered); the replay then reads those too from the
//! log, so the editor gets exactly the events it missed, then the live ones, with no
//! duplicate and no gap. Replays never run inside the writer: a socket asking for replays
//! cannot slow anyone's execution events, and at most `MAX_REPLAYS` read at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use resonant_sync::{protocol, Peer};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::db::executions::{self as store, Write};
use crate::db::Db;
use crate::lease::Leases;

/// Most writes in one transaction.
const MAX_BATCH: usize = 1024;

/// Replays reading the log at once, server-wide: more wait their turn (their sockets stay
/// paused), so replay requests cannot take the database from the event writer.
const MAX_REPLAYS: usize = 4;

/// Loop iterations wait to start while more messages than this wait for the writer, so one
/// execution's thousands of iterations cannot queue ahead of every other execution's events
/// (a trivial run waited seconds behind a big loop) nor grow the queue without bound.
const BACKLOG_LIMIT: usize = 256;

/// Messages sent to the writer and not yet handled, and a wake-up for those waiting on it.
#[derive(Default)]
struct Backlog {
    queued: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

enum Msg {
    Write {
        write: Write,
        /// For events: the workflow whose editors get it.
        workflow: Option<Arc<str>>,
    },
    Flush(oneshot::Sender<()>),
    Replay(Replay),
    /// Shutdown: the writer commits what came before and ends.
    Close,
}

/// A reconnecting editor's request: the last seq it saw per execution.
struct Replay {
    workflow: Arc<str>,
    peer: Arc<Peer>,
    after: HashMap<String, i64>,
    running: bool,
}

/// One editor's delivery state per execution: the range of seqs sent to it.
#[derive(Default)]
struct Sub {
    sent: HashMap<String, (i64, i64)>,
    /// A replay is on its way: live events wait for it (the replay reads them from the log),
    /// so the editor gets them in order.
    paused: bool,
    /// Replay requests of this socket not answered yet (one is served at a time; the writer
    /// serves replays, so a socket may not queue more).
    replays: u32,
    /// Executions whose events were held back while paused: the replay covers them too.
    held: std::collections::HashSet<String>,
}

/// A workflow's connected editors and what each has been sent.
type Editors = Vec<(Arc<Peer>, Sub)>;

struct Hub {
    /// workflow id → its connected editors.
    workflows: Mutex<HashMap<Arc<str>, Editors>>,
    /// Turns to read the log for a replay.
    replays: Arc<tokio::sync::Semaphore>,
    /// The engine's tasks: replays run in it, so shutdown can wait for them.
    tasks: TaskTracker,
    /// On a cluster: stored events go to the other nodes' editors through this bus.
    bus: std::sync::OnceLock<Arc<dyn resonant_bus::Bus>>,
    /// On a cluster: per workflow with editors here, what stops its bus subscription.
    remote: Mutex<HashMap<Arc<str>, tokio_util::sync::CancellationToken>>,
    /// On a cluster: how long another node's execution may stay quiet before its events are
    /// read from the log (a lost *last* event shows no gap).
    probe: std::sync::OnceLock<Duration>,
    /// Where the probe reads.
    db: Db,
    /// Woken whenever events were stored here: readers of the log that are not sockets
    /// (Server-Sent Events) read again instead of polling.
    stored: tokio::sync::Notify,
}

/// The handle runners and sockets use; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Msg>,
    hub: Arc<Hub>,
    backlog: Arc<Backlog>,
}

/// Keeps a socket registered for its workflow's events; unregisters on drop.
pub struct Subscription {
    hub: Arc<Hub>,
    workflow: Arc<str>,
    peer: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.hub.workflows.lock();
        if let Some(list) = map.get_mut(&self.workflow) {
            list.retain(|(p, _)| p.id() != self.peer);
            if list.is_empty() {
                map.remove(&self.workflow);
                if let Some(stop) = self.hub.remote.lock().remove(&self.workflow) {
                    stop.cancel();
                }
            }
        }
    }
}

impl Events {
    /// Starts the writer task on `db` in `tasks`. It runs until [`Events::close`] (or until
    /// no handle is left).
    pub fn start(db: Db, tasks: &TaskTracker) -> Events {
        Events::start_with(db, tasks, None)
    }

    /// [`Events::start`], fenced by `leases` in cluster mode: writes of an execution are
    /// stored only while this node holds its lease at the epoch it runs it under.
    pub(crate) fn start_with(db: Db, tasks: &TaskTracker, leases: Option<Arc<Leases>>) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            workflows: Mutex::default(),
            replays: Arc::new(tokio::sync::Semaphore::new(MAX_REPLAYS)),
            tasks: tasks.clone(),
            bus: std::sync::OnceLock::new(),
            remote: Mutex::default(),
            probe: std::sync::OnceLock::new(),
            db: db.clone(),
            stored: tokio::sync::Notify::new(),
        });
        let backlog = Arc::new(Backlog::default());
        let w = Writer { db, leases };
        tasks.spawn(writer(w, rx, hub.clone(), backlog.clone()));
        Events { tx, hub, backlog }
    }

    /// Ends the writer once what was sent before is committed; later messages are dropped.
    pub fn close(&self) {
        let _ = self.send(Msg::Close);
    }

    fn send(&self, msg: Msg) -> bool {
        self.backlog
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx.send(msg).is_ok()
    }

    /// Waits while the writer is far behind (see [`BACKLOG_LIMIT`]).
    pub async fn backpressure(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let drained = self.backlog.drained.notified();
            if self.backlog.queued.load(Ordering::Relaxed) <= BACKLOG_LIMIT || self.tx.is_closed() {
                return;
            }
            drained.await;
        }
    }

    /// Queues a block or status write (persisted in order with the events).
    pub fn write(&self, write: Write) {
        let _ = self.send(Msg::Write {
            write,
            workflow: None,
        });
    }

    /// Queues an event: persisted, then sent to every opted-in editor of `workflow`.
    pub fn event(&self, workflow: &Arc<str>, execution: &str, seq: i64, json: String) {
        let _ = self.send(Msg::Write {
            write: Write::Event {
                execution: execution.to_owned(),
                seq,
                json,
            },
            workflow: Some(workflow.clone()),
        });
    }

    /// Waits until everything queued before the call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Msg::Flush(tx)) {
            let _ = rx.await;
        }
    }

    /// Joins a cluster: stored events are published for the other nodes' editors, and
    /// theirs reach the editors here; an execution of another node that stays quiet for
    /// `probe` has its later events read from the log (only the first call counts).
    pub fn set_bus(&self, bus: Arc<dyn resonant_bus::Bus>, probe: Duration) {
        let _ = self.hub.probe.set(probe);
        let _ = self.hub.bus.set(bus);
    }

    /// Completes once events were stored on this node after the call (create it, then read
    /// the log, then await it: nothing stored in between is missed). Other nodes' events
    /// are not signalled: a reader that may follow them also reads on a timer.
    pub fn stored(&self) -> tokio::sync::futures::Notified<'_> {
        self.hub.stored.notified()
    }

    /// Registers an editor's socket for `workflow`'s events (delivered once it opts in to
    /// extension messages).
    pub fn subscribe(&self, workflow: &str, peer: Arc<Peer>) -> Subscription {
        let workflow: Arc<str> = workflow.into();
        let id = peer.id();
        let first = {
            let mut map = self.hub.workflows.lock();
            let list = map.entry(workflow.clone()).or_default();
            list.push((peer, Sub::default()));
            list.len() == 1
        };
        if first {
            self.follow_other_nodes(&workflow);
        }
        Subscription {
            hub: self.hub.clone(),
            workflow,
            peer: id,
        }
    }

    /// On a cluster, while `workflow` has editors here: the events other nodes store for it
    /// are sent to them too. A lost one shows as a gap the editor's client fills by replay;
    /// a lost last one (or a bus that lost everything) shows as an unfinished execution
    /// gone quiet, whose later events the probe reads from the log.
    fn follow_other_nodes(&self, workflow: &Arc<str>) {
        let Some(bus) = self.hub.bus.get().cloned() else {
            return;
        };
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some(old) = self
            .hub
            .remote
            .lock()
            .insert(workflow.clone(), stop.clone())
        {
            old.cancel();
        }
        let hub = self.hub.clone();
        let workflow = workflow.clone();
        let probe = self
            .hub
            .probe
            .get()
            .copied()
            .unwrap_or(Duration::from_secs(2));
        self.hub.tasks.spawn(async move {
            let own = bus.node();
            let mut sub = tokio::select! {
                _ = stop.cancelled() => return,
                sub = bus.subscribe(&wf_topic(&workflow)) => sub,
            };
            let mut quiet = Quiet::new(probe);
            let mut tick = tokio::time::interval(probe);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        probe_quiet(&hub, &workflow, &mut quiet).await;
                        continue;
                    }
                    d = sub.recv() => d,
                };
                match delivery {
                    None => return,
                    Some(resonant_bus::Delivery::Message(m)) if m.origin != own => {
                        let Ok(json) = std::str::from_utf8(&m.payload) else {
                            continue;
                        };
                        match serde_json::from_str::<Head>(json) {
                            Ok(h) => {
                                fan_out(&hub, &workflow, &h.execution_id, h.seq, json);
                                let last = h.is_last();
                                quiet.heard(h.execution_id, h.seq, last);
                            }
                            Err(_) => metrics::counter!("resonant_bus_entries_malformed_total")
                                .increment(1),
                        }
                    }
                    // Anything may have been lost: every open execution is read at the next tick.
                    Some(resonant_bus::Delivery::Resync) => quiet.all_due(),
                    Some(_) => {}
                }
            }
        });
    }

    /// Holds live events back from `peer` until its replay is answered; called before the
    /// replay request opts the socket in, so no live event can overtake the replay.
    pub fn pause(&self, workflow: &str, peer: u64) {
        if let Some(list) = self.hub.workflows.lock().get_mut(workflow) {
            if let Some((_, sub)) = list.iter_mut().find(|(p, _)| p.id() == peer) {
                sub.paused = true;
                sub.replays += 1;
            }
        }
    }

    /// Whether `peer` already has a replay in progress besides the one just paused for; if so
    /// the new request is withdrawn (the caller refuses it).
    pub fn replay_busy(&self, workflow: &str, peer: u64) -> bool {
        let mut map = self.hub.workflows.lock();
        let Some(sub) = map
            .get_mut(workflow)
            .and_then(|list| list.iter_mut().find(|(p, _)| p.id() == peer))
            .map(|(_, sub)| sub)
        else {
            return false;
        };
        if sub.replays > 1 {
            sub.replays -= 1;
            return true;
        }
        false
    }

    /// Sends `peer` the events it missed: those after `after[execution]` for each listed
    /// execution and, with `running`, every event of the workflow's unfinished executions
    /// it did not list.
    pub fn replay(
        &self,
        workflow: &str,
        peer: Arc<Peer>,
        after: HashMap<String, i64>,
        running: bool,
    ) {
        let _ = self.send(Msg::Replay(Replay {
            workflow: workflow.into(),
            peer,
            after,
            running,
        }));
    }
}

/// What the writer writes to: the database and, in a cluster, the leases that fence it.
struct Writer {
    db: Db,
    leases: Option<Arc<Leases>>,
}

async fn writer(
    w: Writer,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    hub: Arc<Hub>,
    backlog: Arc<Backlog>,
) {
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let close = batch.iter().position(|m| matches!(m, Msg::Close));
        if let Some(at) = close {
            batch.truncate(at);
        }
        process_in_order(&w, &hub, std::mem::take(&mut batch)).await;
        if close.is_some() {
            return;
        }
        backlog
            .queued
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        backlog.drained.notify_waiters();
    }
}

/// Handles messages strictly in order, committing the writes before each replay or flush.
async fn process_in_order(w: &Writer, hub: &Arc<Hub>, msgs: Vec<Msg>) {
    let mut pending: Vec<Msg> = Vec::new();
    for m in msgs {
        match m {
            Msg::Replay(r) => {
                // What was queued before the request is in the log before the replay reads it.
                settle(w, hub, std::mem::take(&mut pending)).await;
                let (db, turns) = (w.db.clone(), hub.clone());
                hub.tasks.spawn(async move {
                    let hub = turns;
                    let Ok(_turn) = hub.replays.clone().acquire_owned().await else {
                        return;
                    };
                    replay(&db, &hub, r).await;
                });
            }
            other => pending.push(other),
        }
    }
    settle(w, hub, pending).await;
}

/// Commits the writes among `msgs`, then fans out their events and answers their flushes.
async fn settle(w: &Writer, hub: &Arc<Hub>, msgs: Vec<Msg>) {
    let writes: Vec<Write> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Write { write, .. } => Some(write.clone()),
            _ => None,
        })
        .collect();
    let kept = if writes.is_empty() {
        Vec::new()
    } else {
        metrics::counter!("resonant_execution_writes_total").increment(writes.len() as u64);
        let kept = commit(w, &writes).await;
        hub.stored.notify_waiters();
        kept
    };
    let mut kept = kept.into_iter();
    for m in msgs {
        match m {
            Msg::Write { write, workflow } => {
                // An event is sent only if it was stored.
                let stored = kept.next().unwrap_or(false);
                if let (
                    Write::Event {
                        execution,
                        seq,
                        json,
                    },
                    Some(workflow),
                    true,
                ) = (write, workflow, stored)
                {
                    fan_out(hub, &workflow, &execution, seq, &json);
                    if let Some(bus) = hub.bus.get() {
                        bus.publish(
                            &wf_topic(&workflow),
                            Bytes::from(json),
                            resonant_bus::PublishOptions {
                                max_len: 1000,
                                ttl: Some(Duration::from_secs(3600)),
                            },
                        );
                    }
                }
            }
            Msg::Flush(done) => {
                let _ = done.send(());
            }
            Msg::Replay(_) | Msg::Close => {}
        }
    }
}

/// Whether a failed write can succeed when tried again (the database was unreachable or
/// busy) rather than never (a constraint or a value it refuses).
fn transient(e: &crate::db::DbError) -> bool {
    match e {
        // A deadlock or serialization failure (Postgres: the lease rows the writer, the
        // renewal and a takeover lock) ends one of the transactions; tried again, it passes.
        crate::db::DbError::Sqlx(sqlx::Error::Database(d))
            if matches!(d.code().as_deref(), Some("40P01" | "40001")) =>
        {
            true
        }
        crate::db::DbError::Sqlx(sqlx::Error::Database(_))
        | crate::db::DbError::Sqlx(sqlx::Error::Encode(_))
        | crate::db::DbError::Duplicate(_)
        | crate::db::DbError::Quota(_) => false,
        crate::db::DbError::Conflict(_) => true,
        crate::db::DbError::Sqlx(_) => true,
    }
}

/// Commits, retrying while the database is unavailable: an event is never sent before it is
/// stored (so a crash cannot make a sent seq mean something else). A write the database
/// refuses for good (its execution was deleted with its workflow, say) is dropped alone,
/// logged, so it cannot stall every other execution. Returns which writes were kept.
async fn commit(w: &Writer, writes: &[Write]) -> Vec<bool> {
    let mut wait = Duration::from_millis(50);
    loop {
        match apply(w, writes).await {
            Ok(kept) => return kept,
            Err(e) if transient(&e) => {
                tracing::error!(error = %e, writes = writes.len(), "execution log write failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "execution log batch refused; writing one by one");
                break;
            }
        }
    }
    let mut kept = Vec::with_capacity(writes.len());
    for one in writes {
        let mut wait = Duration::from_millis(50);
        loop {
            match apply(w, std::slice::from_ref(one)).await {
                Ok(k) => {
                    kept.push(k[0]);
                    break;
                }
                Err(e) if transient(&e) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, write = ?one, "execution log write refused; dropped");
                    metrics::counter!("resonant_execution_writes_dropped_total").increment(1);
                    kept.push(false);
                    break;
                }
            }
        }
    }
    kept
}

/// Applies `writes`, fenced by the node's leases in a cluster; says which were stored. The
/// writes of an execution this node turns out not to hold any more are dropped and its run
/// stopped: the node that took it over continues from what is stored.
async fn apply(w: &Writer, writes: &[Write]) -> Result<Vec<bool>, crate::db::DbError> {
    let Some(leases) = &w.leases else {
        return store::apply(&w.db, writes)
            .await
            .map(|()| vec![true; writes.len()]);
    };
    let epochs = leases.epochs_of(writes.iter().map(Write::execution));
    let fence = store::Fence {
        owner: &leases.config.node,
        epochs: &epochs,
    };
    let kept = store::apply_fenced(&w.db, writes, Some(fence)).await?;
    let mut lost: Vec<&str> = writes
        .iter()
        .zip(&kept)
        .filter(|(_, k)| !**k)
        .map(|(w, _)| w.execution())
        .collect();
    if !lost.is_empty() {
        metrics::counter!("resonant_execution_writes_fenced_total").increment(lost.len() as u64);
        lost.sort_unstable();
        lost.dedup();
        for id in lost {
            tracing::warn!(
                execution = id,
                "execution writes refused: this node no longer holds its lease"
            );
            leases.fenced_out(id);
        }
    }
    Ok(kept)
}

/// What the follower reads of an event: which execution, where, and whether it ends it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    execution_id: String,
    seq: i64,
    #[serde(rename = "type", default)]
    kind: String,
}

impl Head {
    fn is_last(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "execution.completed" | "execution.failed" | "execution.cancelled"
        )
    }
}

/// Longest wait between two reads of one quiet execution (one waiting days for an approval
/// costs a read every half minute while its workflow has editors here).
const QUIET_MAX: Duration = Duration::from_secs(30);

/// Other nodes' unfinished executions heard of on the bus: the last seq heard and when to
/// read the log if nothing more is heard (after `probe`, then twice as long each time the
/// log has nothing new, up to [`QUIET_MAX`]).
struct Quiet {
    probe: Duration,
    open: HashMap<String, (i64, tokio::time::Instant, Duration)>,
}

impl Quiet {
    fn new(probe: Duration) -> Quiet {
        Quiet {
            probe,
            open: HashMap::new(),
        }
    }

    fn heard(&mut self, execution: String, seq: i64, last: bool) {
        if last {
            self.open.remove(&execution);
            return;
        }
        let due = tokio::time::Instant::now() + self.probe;
        let e = self.open.entry(execution).or_insert((seq, due, self.probe));
        *e = (e.0.max(seq), due, self.probe);
    }

    fn all_due(&mut self) {
        let now = tokio::time::Instant::now();
        for e in self.open.values_mut() {
            e.1 = now;
        }
    }
}

/// Reads the log of each quiet execution past its last seq heard, and sends what the bus
/// lost to this workflow's editors here (each is sent an event once, see [`fan_out`]).
async fn probe_quiet(hub: &Hub, workflow: &str, quiet: &mut Quiet) {
    let now = tokio::time::Instant::now();
    let due: Vec<(String, i64)> = quiet
        .open
        .iter()
        .filter(|(_, e)| e.1 <= now)
        .map(|(id, e)| (id.clone(), e.0))
        .collect();
    for (execution, after) in due {
        let rows = match store::events(&hub.db, workflow, &execution, after, 1000).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, execution, "reading a quiet execution's events failed");
                continue;
            }
        };
        metrics::counter!("resonant_execution_events_probed_total").increment(rows.len() as u64);
        let mut last = after;
        let mut ended = false;
        for (seq, json) in &rows {
            fan_out(hub, workflow, &execution, *seq, json);
            last = *seq;
            ended |= serde_json::from_str::<Head>(json).is_ok_and(|h| h.is_last());
        }
        if ended {
            quiet.open.remove(&execution);
        } else if let Some(e) = quiet.open.get_mut(&execution) {
            let wait = if rows.is_empty() {
                (e.2 * 2).min(QUIET_MAX)
            } else {
                quiet.probe
            };
            *e = (e.0.max(last), now + wait, wait);
        }
    }
}

/// The bus topic of a workflow's execution events.
fn wf_topic(workflow: &str) -> String {
    format!("wf:{workflow}")
}

fn fan_out(hub: &Hub, workflow: &str, execution: &str, seq: i64, json: &str) {
    let mut map = hub.workflows.lock();
    let Some(list) = map.get_mut(workflow) else {
        return;
    };
    let mut msg: Option<Bytes> = None;
    for (peer, sub) in list.iter_mut() {
        if !peer.extensions() {
            continue;
        }
        if sub.paused {
            sub.held.insert(execution.to_owned());
            continue;
        }
        let entry = sub
            .sent
            .entry(execution.to_owned())
            .or_insert((seq, seq - 1));
        if seq <= entry.1 {
            continue;
        }
        entry.1 = seq;
        let bytes = msg.get_or_insert_with(|| protocol::encode_stateless(json));
        peer.send(bytes);
    }
}

async fn replay(db: &Db, hub: &Hub, r: Replay) {
    // Only real execution ids are read: an invented one finds nothing and leaves no state.
    let mut wanted: HashMap<String, i64> = r
        .after
        .into_iter()
        .filter(|(id, _)| crate::db::valid_id(id))
        .collect();
    if r.running {
        match store::running_in(db, &r.workflow).await {
            Ok(ids) => {
                for id in ids {
                    wanted.entry(id).or_insert(0);
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing running executions for a replay failed"),
        }
    }
    loop {
        // Executions whose live events were held back while this replay waited or ran; once
        // none are left the socket is unpaused under the same lock fan_out takes, so no event
        // can slip between the last read and the first live one.
        {
            let mut map = hub.workflows.lock();
            let Some(sub) = map
                .get_mut(&*r.workflow)
                .and_then(|list| list.iter_mut().find(|(p, _)| p.id() == r.peer.id()))
                .map(|(_, sub)| sub)
            else {
                return;
            };
            for e in sub.held.drain() {
                let last = sub.sent.get(&e).map_or(0, |(_, last)| *last);
                wanted.entry(e).or_insert(last);
            }
            if wanted.is_empty() {
                sub.replays = sub.replays.saturating_sub(1);
                sub.paused = sub.replays > 0;
                return;
            }
        }
        for (execution, after) in std::mem::take(&mut wanted) {
            replay_one(db, hub, &r.workflow, &r.peer, execution, after).await;
        }
    }
}

/// Sends `peer` the events of `execution` after seq `after` that it was not sent live.
async fn replay_one(
    db: &Db,
    hub: &Hub,
    workflow: &str,
    peer: &Arc<Peer>,
    execution: String,
    after: i64,
) {
    let after = after.max(0);
    let sent_of = |execution: &str| {
        let map = hub.workflows.lock();
        map.get(workflow).and_then(|list| {
            list.iter()
                .find(|(p, _)| p.id() == peer.id())
                .and_then(|(_, s)| s.sent.get(execution).copied())
        })
    };
    // What this editor already got live is not sent twice.
    let already = sent_of(&execution);
    let mut from = after;
    let mut last_sent = after;
    let mut found = false;
    loop {
        let rows = match store::events(db, workflow, &execution, from, 1000).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, execution, "replay read failed");
                peer.reply(&resonant_sync::error_message(
                    "replay-failed",
                    "could not read the execution's events",
                ));
                break;
            }
        };
        let done = rows.len() < 1000 || peer.is_closing();
        for (seq, json) in rows {
            found = true;
            from = seq;
            last_sent = seq;
            if already.is_some_and(|(first, last)| (first..=last).contains(&seq)) {
                continue;
            }
            peer.send(&protocol::encode_stateless(&json));
        }
        if done {
            break;
        }
    }
    if !found && already.is_none() {
        return;
    }
    let mut map = hub.workflows.lock();
    if let Some(list) = map.get_mut(workflow) {
        if let Some((_, sub)) = list.iter_mut().find(|(p, _)| p.id() == peer.id()) {
            let e = sub.sent.entry(execution).or_insert((after + 1, last_sent));
            e.0 = e.0.min(after + 1);
            e.1 = e.1.max(last_sent);
        }
    }
}
