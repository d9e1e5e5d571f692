//! What a version's stored state looks like to the database: the latest state a new one
//! builds on, and a state ready to be stored (built by the server's `version_state`).

/// Most deltas between a stored state and the full state its chain starts from: bounds the
/// work of rebuilding a version.
pub const MAX_CHAIN: i64 = 64;

/// The state a new version would store under the latest one: what the server's `version_state::prepare` builds on.
#[derive(Debug, Clone)]
pub struct Base {
    /// Its key.
    pub key: String,
    /// Its depth in its chain (0: stored full).
    pub depth: i64,
    /// Its v1 state vector (`None` for states stored before deltas existed).
    pub state_vector: Option<Vec<u8>>,
}

/// A document state ready to be stored.
#[derive(Debug)]
pub struct Prepared {
    /// SHA-256 (hex) of the state vector and delete set.
    pub key: String,
    /// The bytes to store: the full state, or a delta against `base`.
    pub data: Vec<u8>,
    /// The state `data` is a delta against, when it is one.
    pub base: Option<String>,
    /// Deltas between this state and a full one.
    pub depth: i64,
    /// The state's v1 state vector.
    pub state_vector: Vec<u8>,
}
