//! Resonant's news bus between nodes: named topics carrying opaque byte payloads.
//!
//! The bus only carries *news*. Every message may be lost, duplicated, reordered or trimmed,
//! and consumers (other crates) heal from their source of truth (Postgres) whenever they see a
//! gap or a [`Delivery::Resync`]. This crate knows nothing of Yjs, SQL, users or HTTP; see
//! `docs/scale-out.md` §5 for the design it implements.
//!
//! # API
//!
//! ```text
//! pub type NodeId = u64;                       // random per process incarnation, never 0
//! pub fn new_node_id() -> NodeId;
//! pub fn node_hex(node: NodeId) -> String;     // 16 lower-case hex digits, as in Redis keys
//! pub fn valid_topic(topic: &str) -> bool;     // non-empty [A-Za-z0-9._:-]{1,512}
//!
//! pub struct Message { pub origin: NodeId, pub sent_ms: i64, pub payload: Bytes }
//! pub enum Delivery { Message(Message), Resync }
//! pub struct PublishOptions { pub max_len: usize, pub ttl: Option<Duration> }   // Default: 1000, None
//!
//! pub trait Bus: Send + Sync + 'static {     // object safe: use Arc<dyn Bus>
//!     fn node(&self) -> NodeId;
//!     fn publish(&self, topic: &str, payload: Bytes, opts: PublishOptions);  // never blocks or fails
//!     fn subscribe(&self, topic: &str) -> BoxFuture<'static, Subscription>;
//!     fn is_up(&self) -> bool;
//!     fn alive(&self, nodes: &[NodeId]) -> BoxFuture<'static, Option<Vec<bool>>>;  // None: can't tell
//!     fn shutdown(&self) -> BoxFuture<'static, ()>;   // idempotent; subscriptions then end
//! }
//!
//! pub struct Subscription;                     // dropping it unregisters exactly this one
//! impl Subscription {
//!     pub fn topic(&self) -> &str;
//!     pub async fn recv(&mut self) -> Option<Delivery>;   // None once the bus is shut down
//!     pub fn try_recv(&mut self) -> Option<Delivery>;     // None: nothing queued (or shut down)
//! }
//! pub const QUEUE_CAPACITY: usize = 256;      // per subscription; overflow → one Resync
//!
//! // In process, with fault injection (tests of consumers):
//! MemoryHub::new() -> MemoryHub;  hub.node(NodeId) -> Arc<MemoryBus>;  hub.kill(NodeId)
//! hub.drop_every(k)  hub.duplicate_every(k)  hub.set_reorder(bool)  hub.stall()  hub.resume()
//! hub.set_up(bool)
//!
//! // Over Redis streams (keys `{prefix}:{topic}`; see `redis_bus.rs` for all keys):
//! RedisBus::connect(url: &str, prefix: &str, node: NodeId, config: RedisBusConfig)
//!     -> Result<Arc<RedisBus>, BusError>      // never waits for Redis; errs on a bad URL/prefix
//! bus.reader_names() -> Vec<String>           // reader connections as named in CLIENT LIST
//! pub struct RedisBusConfig { block, anchor_timeout, keys_per_reader, node_ttl, node_info,
//!                             stream_check, command_timeout }   // Default: 2 s, 250 ms, 1000,
//!                                                               // 10 s, "{}", 5 s, 250 ms
//! ```
//!
//! # Delivery contract
//!
//! - A subscription receives every message published on its topic after it was *anchored*
//!   (unless lost), from every node including its own: filtering by [`Message::origin`] is the
//!   consumer's call.
//! - [`Delivery::Resync`] means "something may have been missed here": heal from the source of
//!   truth. It is delivered only after the subscription is anchored again, so a heal started
//!   on it sees everything a later message would not carry. It may overtake messages queued
//!   before it; those are then already covered by the heal.
//! - Subscriptions never slow the bus down: each has a bounded queue ([`QUEUE_CAPACITY`]) and
//!   a full queue drops the message and owes the subscription one Resync.

#![warn(missing_docs)]

mod codec;
mod memory;
mod publisher;
mod queue;
mod reader;
mod redis_bus;
mod topics;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub use memory::{MemoryBus, MemoryHub};
pub use queue::{Subscription, QUEUE_CAPACITY};
pub use redis_bus::{redact, RedisBus, RedisBusConfig};

/// Random per process incarnation (a restarted process is a new node); never 0.
pub type NodeId = u64;

/// A fresh random node id (never 0, so 0 can never be mistaken for a real origin).
pub fn new_node_id() -> NodeId {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// A node id as it appears in Redis keys and logs: 16 lower-case hex digits.
pub fn node_hex(node: NodeId) -> String {
    format!("{node:016x}")
}

/// Longest topic name accepted (room names are at most 128 bytes plus a short kind prefix).
const MAX_TOPIC_LEN: usize = 512;

/// Whether `topic` is a valid topic name: 1 to 512 of `[A-Za-z0-9._:-]`, so a Redis key
/// built from it needs no escaping.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// One message as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The node that published it.
    pub origin: NodeId,
    /// The publisher's wall clock (ms since the Unix epoch) at publish; across hosts it
    /// includes clock skew, so use it for latency metrics only.
    pub sent_ms: i64,
    /// The bytes as published.
    pub payload: Bytes,
}

/// What a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A message published on the topic.
    Message(Message),
    /// Something may have been missed on this topic (reader reconnect, read error, re-anchor,
    /// a full queue, a malformed entry): the consumer must heal from its source of truth.
    Resync,
}

/// How a publish is kept on the transport (ignored in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOptions {
    /// Approximate cap on the topic's stream length (`MAXLEN ~`); 0 means uncapped.
    pub max_len: usize,
    /// Expire the topic's stream this long after its last publish (`PEXPIRE`); `None` keeps it.
    pub ttl: Option<Duration>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            max_len: 1000,
            ttl: None,
        }
    }
}

/// Errors the bus reports (only at construction: publishing and reading never fail visibly).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL {url}: {source}")]
    InvalidUrl {
        /// The URL with any password replaced.
        url: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
    /// The prefix is not a valid topic-like name (it is the first part of every key).
    #[error("invalid bus key prefix {0:?}: use 1 to 512 of [A-Za-z0-9._:-]")]
    InvalidPrefix(String),
    /// The bus runs background tasks and must be created inside a Tokio runtime.
    #[error("the Redis bus must be started inside a Tokio runtime")]
    NoRuntime,
}

/// A news bus: topics of opaque bytes between nodes, each message possibly lost, duplicated,
/// reordered or trimmed.
pub trait Bus: Send + Sync + 'static {
    /// This node's id (the `origin` of what it publishes).
    fn node(&self) -> NodeId;

    /// Queues a publish; never blocks, never fails (an invalid topic is dropped with a debug
    /// log, a full queue drops its oldest publish with a metric).
    fn publish(&self, topic: &str, payload: Bytes, opts: PublishOptions);

    /// Subscribes to `topic`. Resolves once anchored (every message published after the anchor
    /// is delivered) or after the anchor timeout, whichever comes first; an unanchored
    /// subscription anchors when the transport is reachable again and then delivers Resync
    /// first. An invalid topic gives a subscription that is already closed.
    fn subscribe(&self, topic: &str) -> BoxFuture<'static, Subscription>;

    /// Whether the bus is currently connected (for `/readyz` and faster probing when it is not).
    fn is_up(&self) -> bool;

    /// Whether each of `nodes` is alive (its liveness key exists), in order; `None` when that
    /// cannot be told right now (transport down).
    fn alive(&self, nodes: &[NodeId]) -> BoxFuture<'static, Option<Vec<bool>>>;

    /// Stops the bus: ends its tasks, withdraws this node's liveness, and closes every
    /// subscription (`recv` returns `None`). Idempotent.
    fn shutdown(&self) -> BoxFuture<'static, ()>;
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked() {
        assert!(valid_topic("doc:room-1.a_b"));
        assert!(!valid_topic(""));
        assert!(!valid_topic("a b"));
        assert!(!valid_topic("a{b}"));
        assert!(!valid_topic("é"));
        assert!(valid_topic(&"a".repeat(512)));
        assert!(!valid_topic(&"a".repeat(513)));
    }

    #[test]
    fn handles_are_shareable_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Subscription>();
        send_sync::<std::sync::Arc<dyn Bus>>();
    }

    #[test]
    fn node_ids_are_non_zero_hex() {
        let id = new_node_id();
        assert_ne!(id, 0);
        assert_eq!(node_hex(1), "0000000000000001");
        assert_eq!(node_hex(id).len(), 16);
    }
}
