//! Realtime sync for Resonant: the y-websocket protocol, rooms, awareness and fan-out.
//!
//! This crate holds no HTTP or WebSocket code. A transport (the `resonant` binary) joins a
//! room through [`Rooms::join`], feeds each binary frame to [`Session::handle`], and writes
//! whatever the [`Outbox`] yields. Durability comes from `resonant-store`'s journal: every
//! change a room's update observer sees is appended there before fan-out returns.

#![warn(missing_docs)]

mod awareness;
mod cluster;
mod nesting;
mod peer;
pub mod protocol;
mod room;
mod rooms;
mod session;

use std::time::Duration;

pub use awareness::{AwarenessLimits, AwarenessRefusal};
pub use cluster::ClusterConfig;
pub use nesting::{list_holds_text, NestingError};
pub use peer::{close_code, Close, Outbox, Outgoing, Peer};
/// The structural checks run on client payloads before any yrs decoder (the protocol crate's).
pub use resonant_protocol::validate;
pub use room::{ApplyError, LoadError, Room};
pub use rooms::{valid_room_name, JoinError, Rooms, ServerUpdateError};
pub use session::{error_message, Session, SessionError};

/// Tunables for rooms and connections.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Most connections one room accepts.
    pub max_peers_per_room: usize,
    /// How long a room stays loaded after its last connection leaves.
    pub unload_grace: Duration,
    /// Longest awareness coalescing tick in busy rooms (a room's own grows with its size).
    pub awareness_tick: Duration,
    /// Awareness entries not renewed for this long are removed (and removed ones forgotten
    /// after as long again).
    pub awareness_timeout: Duration,
    /// What one connection may put into a room's presence.
    pub awareness: AwarenessLimits,
    /// Outbound bytes queued per connection before it is closed as a slow consumer.
    pub max_queued_bytes: usize,
    /// Compact a room's log into a snapshot after this many updates…
    pub compact_after_updates: u64,
    /// …or this many bytes.
    pub compact_after_bytes: u64,
    /// Deepest nesting of shared types (a root type is level 1) an update may create; deeper
    /// documents would overflow the stack of yrs's recursive deletes and of content readers.
    pub max_nesting_depth: u32,
    /// Most structs (runs of inserted items) one room's document may hold: memory grows with
    /// items, not wire bytes (23 MB of tiny items once took 700 MB).
    pub max_room_items: u64,
    /// Largest stored size (snapshot plus log) of one room's document.
    pub max_room_bytes: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_peers_per_room: 1000,
            unload_grace: Duration::from_secs(5),
            awareness_tick: Duration::from_millis(16),
            awareness_timeout: Duration::from_secs(30),
            awareness: AwarenessLimits::default(),
            max_queued_bytes: 8 << 20,
            compact_after_updates: 1000,
            compact_after_bytes: 8 << 20,
            max_nesting_depth: 64,
            max_room_items: 100_000,
            max_room_bytes: 64 << 20,
        }
    }
}
