//! A y-websocket client in Rust, shared by Resonant's integration tests, its load tester and
//! in-process simulations, so the three no longer carry a client each.
//!
//! Three layers, each usable alone:
//! - [`protocol`]: encoders for client-to-server frames and [`ServerMessage`], a decoder for
//!   server-to-client frames (sync, awareness, auth, query-awareness, and Resonant's
//!   extensions: stateless `[5, json]` and save acknowledgements `[8, 1]`).
//! - [`ClientState`]: the sans-IO core. It holds one client's yrs document, its presence and
//!   what it has seen; [`ClientState::handle`] applies a server frame and returns the frame
//!   to send back, if any. No sockets and no async, so a simulation can drive it directly.
//! - [`ws`] (feature `ws`, on by default): connecting over tokio-tungstenite, a [`WsClient`]
//!   that waits for conditions with a timeout, and a split-stream [`read_loop`].
//!
//! This is also the Rust client for workflow execution events to come: they will arrive as
//! stateless `[5, json]` messages, which [`ClientState`] already collects.
//!
//! [`WsClient`]: ws::WsClient
//! [`read_loop`]: ws::read_loop

#![warn(missing_docs)]

/// The wire format, from the `resonant-protocol` crate (re-exported under its old name).
pub use resonant_protocol as protocol;
mod state;
#[cfg(feature = "ws")]
pub mod ws;

pub use protocol::{DecodeError, ServerMessage};
pub use state::{ClientError, ClientState, Ended, Handled, REMOTE_ORIGIN};
