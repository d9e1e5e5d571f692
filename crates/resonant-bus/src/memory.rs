//! The in-process bus: several simulated nodes share one [`MemoryHub`], which can lose,
//! duplicate, reorder and hold back messages on demand, so consumers' healing can be tested in
//! milliseconds without Redis.
//!
//! Delivery is synchronous: `publish` pushes into the subscribers' queues before it returns
//! (unless a fault holds the message back), which keeps tests deterministic.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::future::{self, BoxFuture, FutureExt};
use parking_lot::Mutex;

use crate::queue::{Queue, Subscription};
use crate::{now_ms, valid_topic, Bus, Message, NodeId, PublishOptions};

/// The shared medium of a set of [`MemoryBus`] nodes, with runtime-switchable faults.
#[derive(Clone, Default)]
pub struct MemoryHub {
    inner: Arc<Hub>,
}

#[derive(Default)]
struct Hub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    down: bool,
    stalled: bool,
    reorder: bool,
    drop_every: u64,
    duplicate_every: u64,
    /// Publishes that reached the fault stage (accepted while up, from a live node).
    publishes: u64,
    topics: HashMap<Arc<str>, Vec<Reg>>,
    /// Per topic, the message held back by `reorder` and how many copies it is owed.
    held: HashMap<Arc<str>, (Message, usize)>,
    /// Deliveries made while stalled, with the subscriptions they were addressed to then.
    stalled_out: Vec<(Vec<Weak<Queue>>, Message)>,
    nodes: HashSet<NodeId>,
    dead: HashSet<NodeId>,
    next_reg: u64,
}

struct Reg {
    id: u64,
    node: NodeId,
    queue: Arc<Queue>,
}

impl HubState {
    fn deliver(&mut self, topic: &str, message: Message, copies: usize) {
        let Some(regs) = self.topics.get(topic) else {
            return;
        };
        if self.stalled {
            let to: Vec<Weak<Queue>> = regs.iter().map(|r| Arc::downgrade(&r.queue)).collect();
            for _ in 0..copies {
                self.stalled_out.push((to.clone(), message.clone()));
            }
            return;
        }
        for _ in 0..copies {
            for reg in regs {
                reg.queue.push(message.clone());
            }
        }
    }

    fn release_held(&mut self) {
        for (topic, (message, copies)) in std::mem::take(&mut self.held) {
            self.deliver(&topic, message, copies);
        }
    }
}

impl MemoryHub {
    /// A hub with no nodes, up, and no faults.
    pub fn new() -> MemoryHub {
        MemoryHub::default()
    }

    /// A bus handle for simulated node `node` (alive until [`MemoryHub::kill`]).
    pub fn node(&self, node: NodeId) -> Arc<MemoryBus> {
        self.inner.state.lock().nodes.insert(node);
        Arc::new(MemoryBus {
            hub: self.inner.clone(),
            node,
        })
    }

    /// Simulates `node` dying: it is no longer alive, its publishes are dropped and its
    /// subscriptions end (`recv` returns `None`).
    pub fn kill(&self, node: NodeId) {
        kill(&self.inner, node);
    }

    /// Drops every `k`-th publish (counted across all topics); 0 turns it off.
    pub fn drop_every(&self, k: u64) {
        self.inner.state.lock().drop_every = k;
    }

    /// Delivers every `k`-th publish twice; 0 turns it off.
    pub fn duplicate_every(&self, k: u64) {
        self.inner.state.lock().duplicate_every = k;
    }

    /// While on, holds one message per topic back and delivers it right after the next one on
    /// that topic; turning it off releases whatever is held.
    pub fn set_reorder(&self, on: bool) {
        let mut state = self.inner.state.lock();
        state.reorder = on;
        if !on {
            state.release_held();
        }
    }

    /// Holds every delivery until [`MemoryHub::resume`].
    pub fn stall(&self) {
        self.inner.state.lock().stalled = true;
    }

    /// Delivers everything held by [`MemoryHub::stall`], in publish order.
    pub fn resume(&self) {
        let mut state = self.inner.state.lock();
        state.stalled = false;
        for (to, message) in std::mem::take(&mut state.stalled_out) {
            for queue in to.iter().filter_map(Weak::upgrade) {
                queue.push(message.clone());
            }
        }
    }

    /// Takes the medium down (publishes are dropped, `alive` cannot answer) or brings it back
    /// up, when every subscription gets a Resync.
    pub fn set_up(&self, up: bool) {
        let mut state = self.inner.state.lock();
        let was_down = state.down;
        state.down = !up;
        if up && was_down {
            for reg in state.topics.values().flatten() {
                reg.queue.resync();
            }
        }
    }

    /// Whether the medium is up.
    pub fn is_up(&self) -> bool {
        !self.inner.state.lock().down
    }
}

fn kill(hub: &Hub, node: NodeId) {
    let mut state = hub.state.lock();
    state.dead.insert(node);
    for regs in state.topics.values_mut() {
        regs.retain(|reg| {
            if reg.node == node {
                reg.queue.close();
            }
            reg.node != node
        });
    }
    state.topics.retain(|_, regs| !regs.is_empty());
}

/// One simulated node's handle on a [`MemoryHub`].
pub struct MemoryBus {
    hub: Arc<Hub>,
    node: NodeId,
}

impl Bus for MemoryBus {
    fn node(&self) -> NodeId {
        self.node
    }

    fn publish(&self, topic: &str, payload: Bytes, _opts: PublishOptions) {
        if !valid_topic(topic) {
            tracing::debug!(topic, "bus publish to an invalid topic dropped");
            return;
        }
        let message = Message {
            origin: self.node,
            sent_ms: now_ms(),
            payload,
        };
        let mut state = self.hub.state.lock();
        if state.down || state.dead.contains(&self.node) {
            return;
        }
        state.publishes += 1;
        let n = state.publishes;
        if state.drop_every > 0 && n.is_multiple_of(state.drop_every) {
            return;
        }
        let copies = if state.duplicate_every > 0 && n.is_multiple_of(state.duplicate_every) {
            2
        } else {
            1
        };
        let topic: Arc<str> = topic.into();
        if state.reorder {
            match state.held.remove(&topic) {
                Some((held, held_copies)) => {
                    state.deliver(&topic, message, copies);
                    state.deliver(&topic, held, held_copies);
                }
                None => {
                    state.held.insert(topic, (message, copies));
                }
            }
        } else {
            state.deliver(&topic, message, copies);
        }
    }

    fn subscribe(&self, topic: &str) -> BoxFuture<'static, Subscription> {
        if !valid_topic(topic) {
            tracing::debug!(topic, "bus subscription to an invalid topic refused");
            return future::ready(Subscription::closed(topic)).boxed();
        }
        let mut state = self.hub.state.lock();
        if state.dead.contains(&self.node) {
            return future::ready(Subscription::closed(topic)).boxed();
        }
        state.next_reg += 1;
        let id = state.next_reg;
        let queue = Queue::new();
        let topic: Arc<str> = topic.into();
        state.topics.entry(topic.clone()).or_default().push(Reg {
            id,
            node: self.node,
            queue: queue.clone(),
        });
        // Anchoring is immediate in memory; a subscription made while down is owed the Resync
        // that `set_up(true)` gives every subscription.
        drop(state);
        let hub = Arc::downgrade(&self.hub);
        let key = topic.clone();
        let unregister = move || {
            let Some(hub) = hub.upgrade() else {
                return;
            };
            let mut state = hub.state.lock();
            if let Some(regs) = state.topics.get_mut(&key) {
                regs.retain(|reg| reg.id != id);
                if regs.is_empty() {
                    state.topics.remove(&key);
                }
            }
        };
        future::ready(Subscription::new(topic, queue, Box::new(unregister))).boxed()
    }

    fn is_up(&self) -> bool {
        !self.hub.state.lock().down
    }

    fn alive(&self, nodes: &[NodeId]) -> BoxFuture<'static, Option<Vec<bool>>> {
        let state = self.hub.state.lock();
        let answer = (!state.down).then(|| {
            nodes
                .iter()
                .map(|n| state.nodes.contains(n) && !state.dead.contains(n))
                .collect()
        });
        future::ready(answer).boxed()
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        kill(&self.hub, self.node);
        future::ready(()).boxed()
    }
}
