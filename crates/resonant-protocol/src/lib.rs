//! Resonant's wire format, and nothing else: no sockets, no tokio, no storage.
//!
//! - The y-websocket frame numbers and sub-types ([`MSG_SYNC`], [`SYNC_STEP1`], …), shared by
//!   the server (`resonant-sync`) and every Rust client.
//! - The client's side of the frames: encoders for what a client sends and [`ServerMessage`],
//!   a decoder for what a server sends.
//!
//! `docs/protocol.md` is the prose version. It is a crate of its own so that the server and
//! the clients (the test client `resonant-client`, the load tester) share one definition of
//! the bytes, and so that a client does not pull in the server's storage stack: the load
//! tester must stay a generic y-websocket client able to drive other servers too.

#![warn(missing_docs)]

mod frames;

pub use frames::*;
