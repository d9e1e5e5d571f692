//! Resonant's wire format, and nothing else: no sockets, no tokio, no storage.
//!
//! - The y-websocket frame numbers and sub-types ([`MSG_SYNC`], [`SYNC_STEP1`], …), shared by
//!   the server (`resonant-sync`) and every Rust client.
//! - The WebSocket close codes ([`close_code`]).
//! - Both sides of the frames: encoders, [`ServerMessage`] (a client's decoder) and
//!   [`ClientMessage`] (the server's), and [`validate`], the structural checks the server
//!   runs on client payloads before any yrs decoder.
//!
//! `docs/protocol.md` is the prose version. It is a crate of its own so that the server and
//! the clients (the test client `resonant-client`, the load tester) share one definition of
//! the bytes, and so that a client does not pull in the server's storage stack: the load
//! tester must stay a generic y-websocket client able to drive other servers too.

#![warn(missing_docs)]

mod frames;
mod messages;
pub mod validate;

/// Close codes the server uses.
pub mod close_code {
    /// The client sent a text frame.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame could not be decoded, or yrs rejected the update in it.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The request is not allowed (bad room name).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame exceeded `--max-message-bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The room could not be loaded, or the server failed while handling the message.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is shutting down; reconnect (to another node).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The room is full; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The client did not read fast enough and its outbound queue overflowed; reconnect.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// No frame (not even a pong) arrived for too long.
    pub const TIMEOUT: u16 = 4001;
    /// The token is missing, invalid or expired (like HTTP 401).
    pub const UNAUTHORIZED: u16 = 4401;
    /// The caller may not open this room, or lost access to it (like HTTP 403).
    pub const FORBIDDEN: u16 = 4403;
    /// The workflow was deleted while the connection was open.
    pub const GONE: u16 = 4410;
    /// Too many connection attempts or messages; the reason says when to retry.
    pub const RATE_LIMITED: u16 = 4429;
    /// Every code with its name, for checks that other implementations agree.
    pub const ALL: [(&str, u16); 13] = [
        ("UNSUPPORTED_DATA", UNSUPPORTED_DATA),
        ("INVALID_PAYLOAD", INVALID_PAYLOAD),
        ("POLICY_VIOLATION", POLICY_VIOLATION),
        ("MESSAGE_TOO_BIG", MESSAGE_TOO_BIG),
        ("INTERNAL_ERROR", INTERNAL_ERROR),
        ("SERVICE_RESTART", SERVICE_RESTART),
        ("TRY_AGAIN_LATER", TRY_AGAIN_LATER),
        ("SLOW_CONSUMER", SLOW_CONSUMER),
        ("TIMEOUT", TIMEOUT),
        ("UNAUTHORIZED", UNAUTHORIZED),
        ("FORBIDDEN", FORBIDDEN),
        ("GONE", GONE),
        ("RATE_LIMITED", RATE_LIMITED),
    ];
}

pub use frames::*;
pub use messages::*;
