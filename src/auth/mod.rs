//! Token verification.
pub mod jwt;
