//! Authentication of clients: verification of the JWTs they present.
pub mod jwt;
