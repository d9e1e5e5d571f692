//! Who is calling and what they may do: JWT verification, the caller's user row, live roles
//! on open sockets, which sites may talk to the server, and incoming webhooks' signatures.

pub mod access;
pub mod identity;
pub mod jwt;
pub(crate) mod origins;
pub mod webhook_sig;
