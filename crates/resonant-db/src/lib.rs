//! The relational side of the store: users, workspaces, members, workflows and the rest of
//! the seed's data model, on SQLite or Postgres with the same SQL.
//!
//! Queries are written once, in the dialect both backends accept (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING`), and [`with_pool!`] runs the same code through whichever pool
//! the store has: the driver types differ, the text does not.
//!
//! A crate of its own so that the compiler keeps SQL out of the server's other layers: the
//! REST handlers, the socket and the engine call functions here, and nothing here knows
//! about them. Provider keys are sealed here too ([`crypto`]): the only way back to a
//! plaintext key is [`providers::provider_keys`].

#![warn(missing_docs)]

pub mod crypto;
pub mod executions;
pub mod leases;
pub mod models;
pub mod providers;
mod queries;
pub mod secrets;
pub mod templates;
pub mod triggers;
pub mod usage;
pub mod versions;
pub mod webhooks;

pub use models::*;
pub use queries::*;
pub use resonant_store::Db;

/// Brings the application's tables up to date: migrations 0003 onwards (`migrations/`).
/// The document log's tables (0001–0002) belong to `resonant-store`, which migrates them
/// when it opens; the two share one migration history, so each ignores the other's versions.
pub async fn migrate(db: &Db) -> std::result::Result<(), sqlx::migrate::MigrateError> {
    match db {
        Db::Sqlite(p) => {
            let mut m = sqlx::migrate!("./migrations/sqlite");
            m.set_ignore_missing(true);
            m.run(p).await
        }
        Db::Postgres(p) => {
            let mut m = sqlx::migrate!("./migrations/postgres");
            m.set_ignore_missing(true);
            m.run(p).await
        }
    }
}

/// A private in-memory SQLite database with the application's tables: the relational side of
/// the `memory:` store (whose documents are not durable either) and of unit tests.
pub async fn memory() -> std::result::Result<Db, DbError> {
    use std::str::FromStr;
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite::memory:")?;
    // One connection that never closes: each in-memory connection is its own database.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(opts)
        .await?;
    let db = Db::Sqlite(pool);
    migrate(&db)
        .await
        .map_err(|e| DbError::Sqlx(sqlx::Error::Migrate(Box::new(e))))?;
    Ok(db)
}

/// Runs `$body` with `$p` bound to the concrete pool of `$db` (SQLite or Postgres).
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            resonant_store::Db::Sqlite($p) => $body,
            resonant_store::Db::Postgres($p) => $body,
        }
    };
}

/// Errors from the relational layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database failed or refused the query.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A unique constraint refused the write (a slug or provider already taken).
    #[error("{0} already exists")]
    Duplicate(&'static str),
    /// A storage quota refused the write; the message says which and by how much.
    #[error("{0}")]
    Quota(String),
    /// A concurrent change kept the write from landing; retrying may succeed.
    #[error("{0}")]
    Conflict(String),
}

impl DbError {
    /// Maps a unique-constraint violation to [`DbError::Duplicate`].
    pub fn unique(e: sqlx::Error, what: &'static str) -> DbError {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => DbError::Duplicate(what),
            _ => DbError::Sqlx(e),
        }
    }
}

/// Milliseconds since the Unix epoch: every timestamp column uses them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new row id: a UUIDv7, time-ordered so that ordering by id is ordering by creation
/// (cursor pagination relies on it).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether `s` has the shape of an id we issue (so a malformed id is a 404, never a query
/// error, and never reveals anything).
pub fn valid_id(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}
