//! The bounded per-subscription queue and the [`Subscription`] handle around it.
//!
//! Both buses push into a [`Queue`] without ever waiting: a full queue drops the message and
//! owes its subscription one Resync, which the consumer receives before anything else still
//! queued (so a slow consumer cannot postpone its Resync forever by never emptying the queue).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::{Delivery, Message};

/// Messages one subscription may have queued before further ones are dropped (and a Resync
/// owed): about what a room applies in a few milliseconds.
pub const QUEUE_CAPACITY: usize = 256;

static OVERFLOWS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_bus_queue_overflows_total"));

/// What one subscription has waiting. A `parking_lot` mutex held for a push or a pop only,
/// never across an await, so the bus's reader never waits for a consumer.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// One consumer only (the `Subscription` is `&mut` in `recv`), so `notify_one`'s stored
    /// permit covers a push that lands between an empty pop and the wait.
    notify: Notify,
}

#[derive(Default)]
struct State {
    items: VecDeque<Message>,
    resync: bool,
    closed: bool,
}

enum Pop {
    Item(Delivery),
    Empty,
    Closed,
}

impl Queue {
    pub(crate) fn new() -> Arc<Queue> {
        Arc::new(Queue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        })
    }

    /// Queues `message`; a full queue drops it and owes a Resync instead.
    pub(crate) fn push(&self, message: Message) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        if state.items.len() >= QUEUE_CAPACITY {
            state.resync = true;
            OVERFLOWS.increment(1);
            // The consumer has a full queue to read, so it needs no wake-up.
            return;
        }
        state.items.push_back(message);
        drop(state);
        self.notify.notify_one();
    }

    /// Owes the subscription a Resync (several owed before it is read make one).
    pub(crate) fn resync(&self) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        state.resync = true;
        drop(state);
        self.notify.notify_one();
    }

    /// Ends the subscription: what is queued can still be read, then `recv` returns `None`.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_one();
    }

    fn pop(&self) -> Pop {
        let mut state = self.state.lock();
        if state.resync {
            state.resync = false;
            return Pop::Item(Delivery::Resync);
        }
        match state.items.pop_front() {
            Some(message) => Pop::Item(Delivery::Message(message)),
            None if state.closed => Pop::Closed,
            None => Pop::Empty,
        }
    }
}

/// One registration on a topic. Dropping it unregisters exactly this registration, never
/// another subscription of the same topic (Hocuspocus #971: a late unsubscribe from a
/// previous instance must not tear down its successor's).
pub struct Subscription {
    topic: Arc<str>,
    queue: Arc<Queue>,
    unregister: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    pub(crate) fn new(
        topic: Arc<str>,
        queue: Arc<Queue>,
        unregister: Box<dyn FnOnce() + Send + Sync>,
    ) -> Subscription {
        Subscription {
            topic,
            queue,
            unregister: Some(unregister),
        }
    }

    /// A subscription that delivers nothing (invalid topic, or a bus already shut down).
    pub(crate) fn closed(topic: &str) -> Subscription {
        let queue = Queue::new();
        queue.close();
        Subscription {
            topic: topic.into(),
            queue,
            unregister: None,
        }
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next delivery, waiting for one; `None` once the bus is shut down (after anything
    /// still queued).
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            match self.queue.pop() {
                Pop::Item(delivery) => return Some(delivery),
                Pop::Closed => return None,
                Pop::Empty => self.queue.notify.notified().await,
            }
        }
    }

    /// The next delivery if one is queued; `None` when nothing is (or the bus is shut down).
    pub fn try_recv(&mut self) -> Option<Delivery> {
        match self.queue.pop() {
            Pop::Item(delivery) => Some(delivery),
            Pop::Empty | Pop::Closed => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(unregister) = self.unregister.take() {
            unregister();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(n: u8) -> Message {
        Message {
            origin: 1,
            sent_ms: 0,
            payload: Bytes::from(vec![n]),
        }
    }

    #[test]
    fn overflow_drops_and_owes_one_resync_first() {
        let queue = Queue::new();
        let mut sub = Subscription::closed("t");
        sub.queue = queue.clone();
        for i in 0..QUEUE_CAPACITY + 10 {
            queue.push(message(i as u8));
        }
        assert_eq!(sub.try_recv(), Some(Delivery::Resync));
        for i in 0..QUEUE_CAPACITY {
            assert_eq!(sub.try_recv(), Some(Delivery::Message(message(i as u8))));
        }
        assert_eq!(sub.try_recv(), None);
    }

    #[tokio::test]
    async fn recv_wakes_on_push_and_ends_on_close() {
        let queue = Queue::new();
        let mut sub = Subscription::new("t".into(), queue.clone(), Box::new(|| {}));
        let waiter = tokio::spawn(async move {
            let first = sub.recv().await;
            let second = sub.recv().await;
            (first, second)
        });
        queue.push(message(7));
        queue.close();
        let (first, second) = waiter.await.unwrap();
        assert_eq!(first, Some(Delivery::Message(message(7))));
        assert_eq!(second, None);
    }
}
