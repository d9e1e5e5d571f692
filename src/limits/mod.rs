//! Limits on what one client can take: rate limits per IP and per user (GCRA, in memory or
//! Redis), admission of new connections server-wide, and the client address they key on.

pub(crate) mod admission;
pub mod client_ip;
pub mod ratelimit;
