//! One connection's outbound side: a byte-bounded queue and a way to close it from anywhere.
//!
//! Fan-out runs inside a room's update observer, which must not block, so each peer has an
//! unbounded queue whose *bytes* are counted: a peer whose backlog passes the limit is
//! closed (close code 4000, the client reconnects and resyncs) instead of being skipped or
//! allowed to grow server memory. A message is never dropped silently.
//!
//! Replies to the client's own requests (a step 2 holding the whole document) are counted
//! apart from broadcasts: a 10 MB document must reach a joiner even though the greeting is
//! still queued, and must not make the next broadcast look like a backlog. Replies have their
//! own limit (one reply of any size, or several up to the limit), so a client that keeps
//! asking without reading is still closed.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use resonant_store::Ticket;
use tokio::sync::Notify;

/// A WebSocket close code and reason the transport should send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code (RFC 6455 or our 4000-range codes, see `docs/protocol.md`).
    pub code: u16,
    /// Human-readable reason (at most 123 bytes on the wire).
    pub reason: Cow<'static, str>,
}

pub use resonant_protocol::close_code;

impl Close {
    /// Builds a close with the given code and reason.
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        let mut reason = reason.into();
        // A close frame's payload is at most 125 bytes, 2 of which are the code.
        if reason.len() > 123 {
            let mut cut = 123;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason = Cow::Owned(reason[..cut].to_string());
        }
        Close { code, reason }
    }
}

static SLOW_CONSUMER_CLOSES: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_slow_consumer_closes_total"));

/// The room's handle on one connection.
pub struct Peer {
    id: u64,
    queue: Arc<Queue>,
    /// Broadcast bytes queued and not yet written.
    queued_bytes: AtomicUsize,
    /// Reply bytes queued and not yet written.
    reply_bytes: AtomicUsize,
    max_queued_bytes: usize,
    close: OnceLock<Close>,
    /// A last message to write before the close frame (the error that explains it).
    last_words: OnceLock<Bytes>,
    close_signal: Notify,
    /// Changes while connected: a member demoted to viewer turns read-only at once.
    can_write: AtomicBool,
    extensions: AtomicBool,
}

impl Peer {
    /// Creates a peer and the receiving end its transport drains.
    pub fn new(id: u64, max_queued_bytes: usize, can_write: bool) -> (Peer, Outbox) {
        let queue = Arc::new(Queue::default());
        let peer = Peer {
            id,
            queue: queue.clone(),
            queued_bytes: AtomicUsize::new(0),
            reply_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            close: OnceLock::new(),
            last_words: OnceLock::new(),
            close_signal: Notify::new(),
            can_write: AtomicBool::new(can_write),
            extensions: AtomicBool::new(false),
        };
        (peer, Outbox { queue })
    }

    /// The connection id (unique within this process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this connection may change the document.
    pub fn can_write(&self) -> bool {
        self.can_write.load(Ordering::Relaxed)
    }

    /// Grants or withdraws the right to change the document (a role change).
    pub fn set_can_write(&self, can_write: bool) {
        self.can_write.store(can_write, Ordering::Relaxed);
    }

    /// Whether the client opted in to extension messages (acks, stateless).
    pub fn extensions(&self) -> bool {
        self.extensions.load(Ordering::Relaxed)
    }

    pub(crate) fn enable_extensions(&self) {
        self.extensions.store(true, Ordering::Relaxed);
    }

    /// Queues a broadcast message (an update or awareness from someone else). Returns false
    /// if the peer is closing (or was just closed for being too slow); the message is then not
    /// delivered and the client will resync on reconnect.
    pub fn send(&self, msg: &Bytes) -> bool {
        self.enqueue(msg, Kind::Broadcast)
    }

    /// Queues the answer to this client's own request (step 2, query awareness).
    pub fn reply(&self, msg: &Bytes) -> bool {
        self.enqueue(msg, Kind::Reply)
    }

    /// Asks the transport to acknowledge the save of `ticket` once the journal has committed
    /// it. Past [`MAX_WAITING_ACKS`] not yet taken by the transport (it is stuck writing to a
    /// client that sends and does not read) the peer is closed as a slow consumer. Returns
    /// false if the peer is closing.
    pub fn acknowledge(&self, ticket: Ticket) -> bool {
        if self.close.get().is_some() {
            return false;
        }
        if !self.queue.push_ack(ticket) {
            SLOW_CONSUMER_CLOSES.increment(1);
            self.close(Close::new(
                close_code::SLOW_CONSUMER,
                "slow consumer: too many save acknowledgements waiting, reconnect to resync",
            ));
            return false;
        }
        true
    }

    fn enqueue(&self, msg: &Bytes, kind: Kind) -> bool {
        if self.close.get().is_some() {
            return false;
        }
        let cost = self.cost(msg.len());
        let counter = self.counter(kind);
        let before = counter.fetch_add(cost, Ordering::Relaxed);
        // The limit applies to what is already waiting, and one message counts for at most
        // half the limit: a reader that keeps up (its writer may not have picked up the
        // last large message yet) always gets a paste larger than the whole limit, while a
        // reader that does not read is closed once its backlog passes the limit. The queue
        // so holds at most the limit plus two messages of the largest size the server takes.
        if before >= self.max_queued_bytes {
            counter.fetch_sub(cost, Ordering::Relaxed);
            SLOW_CONSUMER_CLOSES.increment(1);
            self.close(Close::new(
                close_code::SLOW_CONSUMER,
                "slow consumer: outbound queue full, reconnect to resync",
            ));
            return false;
        }
        self.queue.push(msg.clone(), kind)
    }

    fn cost(&self, len: usize) -> usize {
        len.min(self.max_queued_bytes / 2).max(1)
    }

    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Broadcast => &self.queued_bytes,
            Kind::Reply => &self.reply_bytes,
        }
    }

    /// Asks the transport to close this connection (the first reason wins).
    pub fn close(&self, close: Close) {
        if self.close.set(close).is_ok() {
            self.close_signal.notify_waiters();
            // Wakes the transport if it is waiting for a message (it then finds the close).
            self.queue.waker.wake();
        }
    }

    /// Asks the transport to write `last` (if any, and if no other close came first) and then
    /// close with `close`.
    pub fn close_after(&self, close: Close, last: Option<Bytes>) {
        if let Some(last) = last {
            let _ = self.last_words.set(last);
        }
        self.close(close);
    }

    /// Resolves once the connection has been asked to close (any number of waiters).
    pub async fn closed(&self) {
        loop {
            let notified = self.close_signal.notified();
            tokio::pin!(notified);
            // Register before checking, so a close between the check and the await still
            // wakes us.
            notified.as_mut().enable();
            if self.close.get().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the connection has been asked to close.
    pub fn is_closing(&self) -> bool {
        self.close.get().is_some()
    }

    /// Marks a message as written to the socket.
    fn written(&self, len: usize, kind: Kind) {
        self.counter(kind)
            .fetch_sub(self.cost(len), Ordering::Relaxed);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed) + self.reply_bytes.load(Ordering::Relaxed)
    }
}

/// Which limit a queued message counts against.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Broadcast,
    Reply,
}

/// A peer's messages on their way to its transport.
///
/// Not a tokio channel: an unbounded `mpsc` allocates its first block of 32 slots and its
/// shared state up front, ~2 KB for every connection, most of them idle. This deque holds
/// nothing until a message comes and gives a burst's room back once it is written.
#[derive(Default)]
struct Queue {
    waiting: parking_lot::Mutex<Waiting>,
    /// The transport waiting for a message or a close.
    waker: AtomicWaker,
    /// The transport is gone: nothing more will be written.
    dropped: AtomicBool,
}

/// What the transport has not taken yet.
#[derive(Default)]
struct Waiting {
    messages: VecDeque<(Bytes, Kind)>,
    /// Save acknowledgements to send once their tickets commit.
    acks: VecDeque<Ticket>,
}

/// Capacity a drained queue may keep (a burst's is given back).
const KEEP_CAPACITY: usize = 16;

/// Most save acknowledgements waiting for the transport to take them.
pub const MAX_WAITING_ACKS: usize = 1024;

impl Queue {
    fn push(&self, msg: Bytes, kind: Kind) -> bool {
        if self.dropped.load(Ordering::Acquire) {
            return false;
        }
        self.waiting.lock().messages.push_back((msg, kind));
        self.waker.wake();
        true
    }

    /// False when too many acknowledgements are waiting already.
    fn push_ack(&self, ticket: Ticket) -> bool {
        if self.dropped.load(Ordering::Acquire) {
            return true;
        }
        {
            let mut waiting = self.waiting.lock();
            if waiting.acks.len() >= MAX_WAITING_ACKS {
                return false;
            }
            waiting.acks.push_back(ticket);
        }
        self.waker.wake();
        true
    }

    fn pop(&self) -> Option<(Bytes, Kind)> {
        let mut waiting = self.waiting.lock();
        let next = waiting.messages.pop_front();
        if waiting.messages.is_empty() && waiting.messages.capacity() > KEEP_CAPACITY {
            waiting.messages = VecDeque::new();
        }
        next
    }

    fn take_acks(&self) -> Option<VecDeque<Ticket>> {
        let mut waiting = self.waiting.lock();
        (!waiting.acks.is_empty()).then(|| std::mem::take(&mut waiting.acks))
    }
}

/// The transport's end of a peer's queue.
pub struct Outbox {
    queue: Arc<Queue>,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.queue.dropped.store(true, Ordering::Release);
        *self.queue.waiting.lock() = Waiting::default();
    }
}

/// What the transport should do next.
#[derive(Debug)]
pub enum Outgoing {
    /// Write this binary frame.
    Message(Bytes),
    /// Acknowledge these tickets' saves, each once the journal has committed it (in order).
    Acks(VecDeque<Ticket>),
    /// Write `last` (if any), send this close frame and stop.
    Close {
        /// The close frame.
        close: Close,
        /// A final message explaining it.
        last: Option<Bytes>,
    },
}

impl Outbox {
    /// Waits for the next message, or for a close request (which takes priority).
    pub async fn recv(&mut self, peer: &Peer) -> Outgoing {
        std::future::poll_fn(|cx| {
            if let Some(out) = self.ready(peer) {
                return Poll::Ready(out);
            }
            self.queue.waker.register(cx.waker());
            // Checked again once registered: a message or close that came in between would
            // otherwise wait for the next one.
            match self.ready(peer) {
                Some(out) => Poll::Ready(out),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn ready(&self, peer: &Peer) -> Option<Outgoing> {
        if let Some(close) = peer.close.get() {
            return Some(Outgoing::Close {
                close: close.clone(),
                last: peer.last_words.get().cloned(),
            });
        }
        if let Some(acks) = self.queue.take_acks() {
            return Some(Outgoing::Acks(acks));
        }
        let (msg, kind) = self.queue.pop()?;
        peer.written(msg.len(), kind);
        Some(Outgoing::Message(msg))
    }

    /// Takes a message that is already queued, without waiting (to batch writes).
    pub fn try_recv(&mut self, peer: &Peer) -> Option<Bytes> {
        if peer.is_closing() {
            return None;
        }
        let (msg, kind) = self.queue.pop()?;
        peer.written(msg.len(), kind);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_close_wakes_a_writer_waiting_for_its_next_message() {
        let (peer, mut outbox) = Peer::new(1, 1 << 20, true);
        let peer = std::sync::Arc::new(peer);
        let waiting = tokio::spawn({
            let peer = peer.clone();
            async move { outbox.recv(&peer).await }
        });
        tokio::task::yield_now().await;
        peer.close(Close::new(close_code::FORBIDDEN, "access revoked"));
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the close woke the waiting writer")
            .unwrap();
        match out {
            Outgoing::Close { close, .. } => assert_eq!(close.code, close_code::FORBIDDEN),
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn overflowing_peer_is_closed_not_skipped() {
        let (peer, mut outbox) = Peer::new(1, 10, true);
        let msg = Bytes::from_static(&[0u8; 6]);
        assert!(peer.send(&msg));
        assert!(
            peer.send(&msg),
            "below the limit: one more message of any size"
        );
        assert!(!peer.send(&msg), "the backlog is past the limit");
        assert!(peer.is_closing());
        match outbox.recv(&peer).await {
            Outgoing::Close { close, .. } => assert_eq!(close.code, close_code::SLOW_CONSUMER),
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn empty_queue_takes_one_large_message() {
        let (peer, mut outbox) = Peer::new(1, 10, true);
        let big = Bytes::from(vec![0u8; 100]);
        assert!(peer.send(&big));
        match outbox.recv(&peer).await {
            Outgoing::Message(m) => assert_eq!(m.len(), 100),
            other => panic!("expected message, got {other:?}"),
        }
        assert_eq!(peer.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_large_reply_passes_a_queued_greeting_and_does_not_block_broadcasts() {
        let (peer, mut outbox) = Peer::new(1, 10, true);
        let small = Bytes::from_static(&[0u8; 6]);
        assert!(peer.send(&small), "the greeting");
        assert!(
            peer.reply(&Bytes::from(vec![0u8; 100])),
            "the whole document"
        );
        assert!(
            peer.send(&Bytes::from_static(&[0u8; 3])),
            "a broadcast after it"
        );
        assert!(!peer.is_closing());
        // A client that keeps asking without reading is still bounded.
        assert!(peer.reply(&small));
        assert!(!peer.reply(&small));
        assert!(peer.is_closing());
        drop(outbox.try_recv(&peer));
    }

    #[tokio::test]
    async fn a_message_larger_than_the_limit_reaches_a_reader_with_a_backlog() {
        let (peer, mut outbox) = Peer::new(1, 10, true);
        let large = Bytes::from(vec![0u8; 100]);
        assert!(peer.send(&large), "a large update, not yet written");
        assert!(peer.send(&Bytes::from_static(&[0u8; 3])), "presence");
        assert!(peer.send(&large), "a large paste");
        assert!(!peer.is_closing());
        for len in [100, 3, 100] {
            assert!(matches!(outbox.recv(&peer).await, Outgoing::Message(m) if m.len() == len));
        }
        assert_eq!(peer.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn the_error_explaining_a_close_is_written_before_it() {
        let (peer, mut outbox) = Peer::new(1, 10, true);
        assert!(peer.send(&Bytes::from_static(&[1])));
        peer.close_after(Close::new(1007, "bad"), Some(Bytes::from_static(b"why")));
        match outbox.recv(&peer).await {
            Outgoing::Close { close, last } => {
                assert_eq!(close.code, 1007);
                assert_eq!(last.as_deref(), Some(&b"why"[..]));
            }
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_drained_queue_gives_a_bursts_room_back() {
        let (peer, mut outbox) = Peer::new(1, 1 << 20, true);
        assert_eq!(
            peer.queue.waiting.lock().messages.capacity(),
            0,
            "idle: nothing held"
        );
        for _ in 0..100 {
            assert!(peer.send(&Bytes::from_static(&[1])));
        }
        assert!(peer.queue.waiting.lock().messages.capacity() >= 100);
        assert!(matches!(outbox.recv(&peer).await, Outgoing::Message(_)));
        while outbox.try_recv(&peer).is_some() {}
        assert!(peer.queue.waiting.lock().messages.capacity() <= KEEP_CAPACITY);
        assert_eq!(peer.queued_bytes(), 0);
    }

    #[test]
    fn nothing_is_queued_for_a_transport_that_is_gone() {
        let (peer, outbox) = Peer::new(1, 1 << 20, true);
        assert!(peer.send(&Bytes::from_static(&[1])));
        drop(outbox);
        assert!(!peer.send(&Bytes::from_static(&[1])));
        assert!(peer.queue.waiting.lock().messages.is_empty());
    }

    #[tokio::test]
    async fn acknowledgements_go_first_and_a_transport_that_takes_none_is_closed() {
        let (peer, mut outbox) = Peer::new(1, 1 << 20, true);
        assert!(peer.send(&Bytes::from_static(&[1])));
        assert!(peer.acknowledge(7));
        assert!(peer.acknowledge(8));
        match outbox.recv(&peer).await {
            Outgoing::Acks(t) => assert_eq!(Vec::from(t), vec![7, 8]),
            other => panic!("expected acks, got {other:?}"),
        }
        assert!(matches!(outbox.recv(&peer).await, Outgoing::Message(_)));
        for t in 0..MAX_WAITING_ACKS as u64 {
            assert!(peer.acknowledge(t));
        }
        assert!(!peer.acknowledge(0), "the transport took none of them");
        match outbox.recv(&peer).await {
            Outgoing::Close { close, .. } => assert_eq!(close.code, close_code::SLOW_CONSUMER),
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[test]
    fn close_reason_is_truncated_to_fit_a_frame() {
        let c = Close::new(1000, "é".repeat(100));
        assert!(c.reason.len() <= 123);
    }
}
