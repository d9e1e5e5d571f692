//! Scenarios and the pieces they share.

pub mod awareness;
pub mod churn;
pub mod coldload;
pub mod connections;
pub mod fanout;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use resonant_client::protocol::encode_sync_update;
use resonant_client::ws::ConnectError;
use resonant_client::ClientState;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use yrs::{Any, Array, Doc, Map, MapPrelim, Out, ReadTxn, Transact, WriteTxn};

use crate::client::{self, Ended, Event, Target};
use crate::progress;
use crate::report::{Recorder, Timeline};

/// Options shared by every scenario.
#[derive(Debug, Clone)]
pub struct Common {
    /// Where to connect.
    pub target: Target,
    /// Rooms.
    pub rooms: usize,
    /// Clients per room.
    pub clients: usize,
    /// Rate per writer per second.
    pub rate: f64,
    /// Measured window.
    pub duration: Duration,
    /// Room name prefix (rooms are `{prefix}-{i}`).
    pub room_prefix: String,
    /// Local source addresses to spread connections over.
    pub sources: Vec<IpAddr>,
    /// Connections opened per second while ramping up.
    pub connect_rate: f64,
    /// Document edits per second (`awareness`: the room's writer).
    pub doc_rate: f64,
    /// Target document size in bytes (`coldload`).
    pub doc_bytes: usize,
    /// Seconds to wait after everyone left before the cold load (`coldload`).
    pub wait_unload: Duration,
    /// Send our step 1 only after the server's (`coldload`); y-websocket sends it at once.
    pub wait_greeting: bool,
    /// Joins per second per room (`churn`).
    pub churn_rate: f64,
}

impl Common {
    /// The name of room `i`.
    pub fn room(&self, i: usize) -> String {
        format!("{}-{i}", self.room_prefix)
    }

    /// The source address for connection number `n`.
    pub fn source(&self, n: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()])
    }
}

/// A connected, synced client whose reads run in a background task.
pub struct Connected<R> {
    /// Sends frames to the server.
    pub tx: mpsc::UnboundedSender<Bytes>,
    /// Stops the reader.
    pub stop: Arc<Notify>,
    /// The reader task; yields how the connection ended and the handler's result.
    pub task: JoinHandle<(Ended, R)>,
}

/// Connects to `room`, syncs, and runs `handler` on every event in a background task; returns
/// once the server's step 2 has arrived (or the connection failed).
pub async fn connect_synced<H: Handler>(
    target: &Target,
    room: &str,
    local: Option<IpAddr>,
    doc: Doc,
    mut handler: H,
) -> anyhow::Result<Connected<H::Output>> {
    // Peers' states are read from each message by the handlers that care; keeping a map of
    // them would only add work to the measured receive path.
    let mut state = ClientState::with_doc(doc).record_peers(false);
    let started = Instant::now();
    let (mut sink, stream, first) = loop {
        // A server too busy to admit answers 503 with `Retry-After` before the upgrade (or,
        // for a full room, closes with 1013 and a hint); either way the client comes back
        // after the hint plus jitter, as clients should, and gives up after `GIVE_UP`.
        let wait = match client::connect(target, room, local).await {
            Ok(ws) => {
                let (mut sink, mut stream) = ws.split();
                sink.send(Message::Binary(state.start_sync())).await?;
                // An admitted connection is greeted with the server's step 1.
                let first = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
                match first {
                    Ok(Some(Ok(Message::Close(Some(frame))))) if u16::from(frame.code) == 1013 => {
                        JOIN_CLOSED_1013.fetch_add(1, Ordering::Relaxed);
                        retry_hint(&frame.reason).unwrap_or(Duration::from_millis(100))
                    }
                    Ok(Some(Ok(Message::Binary(frame)))) => break (sink, stream, frame),
                    Ok(other) => anyhow::bail!("connection ended before sync: {other:?}"),
                    Err(_) => anyhow::bail!("no greeting within 30 s"),
                }
            }
            Err(e) => match e.downcast_ref::<ConnectError>() {
                Some(ConnectError::Busy { retry_after }) => {
                    JOIN_REFUSED_BUSY.fetch_add(1, Ordering::Relaxed);
                    retry_after.unwrap_or(Duration::from_secs(1))
                }
                _ => return Err(e),
            },
        };
        // Retry-After is in whole seconds: up to a second of jitter spreads the clients the
        // server booked into the same second back over it.
        let wait = wait + Duration::from_micros(rand::random::<u64>() % 1_000_000);
        if started.elapsed() + wait > GIVE_UP {
            JOIN_GAVE_UP.fetch_add(1, Ordering::Relaxed);
            anyhow::bail!("server still busy after {GIVE_UP:?} (next retry in {wait:?})");
        }
        tokio::time::sleep(wait).await;
    };
    if let Ok(handled) = state.handle(&first) {
        if let Some(reply) = handled.reply {
            sink.send(Message::Binary(reply)).await?;
        }
    }
    progress::connections(1);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(Message::Binary(frame)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = Arc::new(Notify::new());
    let reader_stop = stop.clone();
    let replies = tx.clone();
    let task = tokio::spawn(async move {
        let mut synced = Some(synced_tx);
        let ended = client::read_loop(stream, state, replies, reader_stop, |ev| {
            if matches!(ev, Event::Synced) {
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
            }
            handler.on_event(ev);
        })
        .await;
        progress::connections(-1);
        (ended, handler.finish())
    });
    match tokio::time::timeout(Duration::from_secs(30), synced_rx).await {
        Ok(Ok(())) => Ok(Connected { tx, stop, task }),
        Ok(Err(_)) => {
            let (ended, _) = task.await?;
            Err(anyhow::anyhow!("connection ended before sync: {ended:?}"))
        }
        Err(_) => Err(anyhow::anyhow!("no sync within 30 s")),
    }
}

/// How long a join keeps retrying a busy server before it counts as failed.
const GIVE_UP: Duration = Duration::from_secs(60);
/// Join attempts refused before the upgrade (HTTP 503), over the whole run.
pub static JOIN_REFUSED_BUSY: AtomicU64 = AtomicU64::new(0);
/// Join attempts closed with 1013 after the upgrade (full room), over the whole run.
pub static JOIN_CLOSED_1013: AtomicU64 = AtomicU64::new(0);
/// Joins that stopped retrying because the next retry would pass `GIVE_UP`.
pub static JOIN_GAVE_UP: AtomicU64 = AtomicU64::new(0);

/// The delay in a `server busy: retry in N ms` close reason.
fn retry_hint(reason: &str) -> Option<Duration> {
    let ms = reason.split("retry in ").nth(1)?.split(' ').next()?;
    Some(Duration::from_millis(ms.parse().ok()?))
}

/// What a scenario does with one connection's events.
pub trait Handler: Send + 'static {
    /// What the handler yields when the connection ends.
    type Output: Send + 'static;
    /// Called for every event, in order.
    fn on_event(&mut self, event: Event<'_>);
    /// Consumes the handler.
    fn finish(self) -> Self::Output;
}

/// A handler that ignores everything (idle clients, writers).
pub struct Ignore;

impl Handler for Ignore {
    type Output = ();
    fn on_event(&mut self, _: Event<'_>) {}
    fn finish(self) {}
}

/// Tallies how connections ended: `Stopped` is ours; anything else is an error.
#[derive(Default)]
pub struct Endings {
    /// Unexpected ends (close frames, socket errors).
    pub errors: u64,
    /// Close codes the server sent, with counts.
    pub close_codes: BTreeMap<u16, u64>,
}

impl Endings {
    /// Counts one ending; `what` names the connection for the message.
    pub fn add(&mut self, ended: &Ended, what: &str) {
        match ended {
            Ended::Stopped => {}
            Ended::Closed(frame) => {
                let code = frame.as_ref().map_or(1005, |f| f.0);
                self.errors += 1;
                *self.close_codes.entry(code).or_default() += 1;
                if self.errors <= 10 {
                    crate::note!("{what} closed by the server with code {code}");
                }
            }
            Ended::Error(e) => {
                self.errors += 1;
                if self.errors <= 10 {
                    crate::note!("{what} ended: {e}");
                }
            }
        }
    }
}

/// Send times of one writer's edits, in µs since the run's epoch (0 = not sent).
pub struct SendTimes {
    /// The clock every send and receive time is measured on.
    pub epoch: Instant,
    /// Scheduled send time of edit `seq` (index), µs since `epoch`.
    pub times: Vec<AtomicU64>,
    /// Edits sent so far (the last seq).
    pub sent: AtomicU64,
    /// The writer's own clock in its state vector after its last edit.
    pub writer_clock: AtomicU64,
}

impl SendTimes {
    /// Room for `edits` edits.
    pub fn new(epoch: Instant, edits: usize) -> Arc<SendTimes> {
        Arc::new(SendTimes {
            epoch,
            times: (0..=edits).map(|_| AtomicU64::new(0)).collect(),
            sent: AtomicU64::new(0),
            writer_clock: AtomicU64::new(0),
        })
    }
}

/// Times one writer's edits as a reader sees them (the block's `position.x` is the edit's
/// sequence number).
pub struct EditTracker {
    times: Arc<SendTimes>,
    rec: Recorder,
    last_seq: u64,
    delivered: u64,
    seen: Arc<AtomicU64>,
}

impl EditTracker {
    /// A tracker of `times`'s edits; `seen` counts deliveries over every reader.
    pub fn new(times: Arc<SendTimes>, timeline: Arc<Timeline>, seen: Arc<AtomicU64>) -> Self {
        EditTracker {
            times,
            rec: Recorder::new(timeline),
            last_seq: 0,
            delivered: 0,
            seen,
        }
    }

    /// Looks at the doc after an update was applied.
    pub fn on_update(&mut self, doc: &Doc) {
        let now = self.times.epoch.elapsed().as_micros() as u64;
        let Some(seq) = position_x(doc) else { return };
        if seq <= self.last_seq || seq as usize >= self.times.times.len() {
            return;
        }
        self.last_seq = seq;
        let sent = self.times.times[seq as usize].load(Ordering::Acquire);
        if sent > 0 {
            self.delivered += 1;
            self.seen.fetch_add(1, Ordering::Relaxed);
            progress::events(1);
            self.rec.record(now, now.saturating_sub(sent));
        }
    }

    /// The latency histogram and the number of edits delivered.
    pub fn finish(self) -> (Histogram<u64>, u64) {
        (self.rec.finish(), self.delivered)
    }
}

impl Handler for EditTracker {
    type Output = (Histogram<u64>, u64);

    fn on_event(&mut self, event: Event<'_>) {
        if let Event::Updated(doc) = event {
            self.on_update(doc);
        }
    }

    fn finish(self) -> Self::Output {
        EditTracker::finish(self)
    }
}

/// The sequence number of the last edit in `doc` (the block's `position.x`).
pub fn position_x(doc: &Doc) -> Option<u64> {
    let txn = doc.transact();
    let blocks = txn.get_array("blocks")?;
    let Out::YMap(block) = blocks.get(&txn, 0)? else {
        return None;
    };
    let Out::YMap(pos) = block.get(&txn, "position")? else {
        return None;
    };
    match pos.get(&txn, "x")? {
        Out::Any(Any::Number(yrs::Number::Float(x))) => Some(x as u64),
        Out::Any(Any::Number(yrs::Number::Int(x))) => Some(x as u64),
        _ => None,
    }
}

/// Replaces the doc's blocks with the one block writers move; returns the update message.
pub fn init_block(doc: &Doc) -> Bytes {
    let update = {
        let mut txn = doc.transact_mut();
        let blocks = txn.get_or_insert_array("blocks");
        let len = blocks.len(&txn);
        blocks.remove_range(&mut txn, 0, len);
        let block = blocks.insert(&mut txn, 0, MapPrelim::default());
        block.insert(&mut txn, "id", "load-block");
        block.insert(&mut txn, "type", "ai");
        let pos = block.insert(&mut txn, "position", MapPrelim::default());
        pos.insert(&mut txn, "x", 0.0);
        pos.insert(&mut txn, "y", 0.0);
        let data = block.insert(&mut txn, "data", MapPrelim::default());
        data.insert(&mut txn, "label", "load test");
        txn.encode_update_v1()
    };
    encode_sync_update(&update)
}

/// Moves the block to `x = seq` (as the editor does when a block is dragged); returns the
/// update message, or `None` if the doc has no block.
pub fn move_block(doc: &Doc, seq: u64) -> Option<Bytes> {
    let update = {
        let mut txn = doc.transact_mut();
        let blocks = txn.get_or_insert_array("blocks");
        let Some(Out::YMap(block)) = blocks.get(&txn, 0) else {
            return None;
        };
        let Some(Out::YMap(pos)) = block.get(&txn, "position") else {
            return None;
        };
        pos.insert(&mut txn, "x", seq as f64);
        pos.insert(&mut txn, "y", (seq % 500) as f64);
        txn.encode_update_v1()
    };
    Some(encode_sync_update(&update))
}

/// One periodic action for [`pace`].
pub struct Job {
    /// Time between two firings.
    pub period: Duration,
    /// First firing, after the pacer starts.
    pub offset: Duration,
    /// Called with the sequence number (1, 2, …) and the scheduled time in µs since the
    /// epoch; returns false to stop this job.
    pub fire: Box<dyn FnMut(u64, u64) -> bool + Send>,
}

/// Fires every job on schedule, open-loop, from one OS thread, until `duration` has passed
/// since the start: OS sleeps are precise to tens of µs, while tokio's timer wheel rounds up
/// to whole milliseconds, which would add up to 1 ms of phantom latency to every send
/// (latency is measured from the *scheduled* time, so a late pacer cannot hide delays).
pub async fn pace(epoch: Instant, duration: Duration, jobs: Vec<Job>) -> anyhow::Result<()> {
    let thread = std::thread::spawn(move || pace_blocking(epoch, duration, jobs));
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("pacing thread panicked"))
}

fn pace_blocking(epoch: Instant, duration: Duration, mut jobs: Vec<Job>) {
    let start = Instant::now();
    let mut heap: BinaryHeap<Reverse<(Instant, usize, u64)>> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| Reverse((start + j.offset, i, 1)))
        .collect();
    while let Some(Reverse((due, i, seq))) = heap.pop() {
        if due.duration_since(start) >= duration {
            continue;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let due_us = (due - epoch).as_micros() as u64;
        let job = &mut jobs[i];
        if (job.fire)(seq, due_us.max(1)) {
            heap.push(Reverse((due + job.period, i, seq + 1)));
        }
    }
}

/// Waits until `done()` or `limit` has passed, checking every 10 ms.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// delivered ÷ expected (0 when nothing was expected).
pub fn ratio(delivered: u64, expected: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        delivered as f64 / expected as f64
    }
}
