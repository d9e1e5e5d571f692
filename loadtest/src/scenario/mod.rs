//! Scenarios and the pieces they share.

pub mod connections;
pub mod fanout;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use yrs::Doc;

use crate::client::{self, Ended, Event, Target};

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
    let ws = client::connect(target, room, local).await?;
    let (mut sink, stream) = ws.split();
    client::send_step1(&mut sink, &doc).await?;
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
        let ended = client::read_loop(stream, &doc, replies, reader_stop, |ev| {
            if matches!(ev, Event::Synced) {
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
            }
            handler.on_event(ev);
        })
        .await;
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
