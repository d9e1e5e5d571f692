//! Unit tests of the router's pure parts.
