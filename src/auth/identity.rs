//! Who is calling: turns a bearer token into a user row, or, with no auth configured, the
//! development user.
//!
//! Development mode exists so that `resonant serve` works out of the box: every caller is
//! the owner of one default workspace and may open any room. It is allowed only while the
//! server listens on loopback (see [`crate::config::ServeConfig::validate`]).

use std::sync::Arc;

use dashmap::DashMap;

use crate::auth::jwt::{AuthError, Claims, JwtConfig, Verifier};
use crate::db::{self, Db, DbError, User, UserProfile};

/// The external id of the development user.
pub const DEV_USER: &str = "dev";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user.
    pub user: User,
    /// When the token stops being valid (Unix seconds); `None` in development mode.
    pub expires_at: Option<i64>,
    /// Whether this is the development user (no auth configured).
    pub dev: bool,
    /// The token's email claim (absent when the token says it is not verified).
    pub email: Option<String>,
}

/// Why a caller was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// No token was sent.
    #[error("missing token: send Authorization: Bearer <token> (REST) or ?token= (WebSocket)")]
    Missing,
    /// The token did not verify.
    #[error("{0}")]
    Invalid(#[from] AuthError),
    /// The user was deleted at the identity provider.
    #[error("user deleted")]
    Deleted,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AuthFailure {
    /// Whether the failure is ours (signing keys or database unavailable), not the caller's.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthFailure::Invalid(AuthError::KeysUnavailable(_)) | AuthFailure::Db(_)
        )
    }
}

/// Turns tokens into principals; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    mode: Mode,
    /// Tokens limit a new user starts with (the free plan's).
    free_tokens: i64,
    /// External id → our user row, so a verified token costs no query. Entries are dropped
    /// when the user changes (webhook); at most [`MAX_CACHED_USERS`] are kept.
    users: DashMap<String, User>,
}

enum Mode {
    Dev(User),
    Jwt(Verifier),
}

/// Most user rows cached: every signed-up account could otherwise sit in memory for ever.
/// Past it an arbitrary entry makes room (the evicted user costs one query next time).
pub const MAX_CACHED_USERS: usize = 10_000;

/// The name of the development workspace.
const DEV_WORKSPACE_SLUG: &str = "default";

impl Authenticator {
    /// Builds the authenticator from the configuration: JWT verification when a secret or
    /// a JWKS URL is configured, otherwise development mode (creating the development user
    /// and its default workspace on first start).
    pub async fn new(
        db: Db,
        jwt: Option<JwtConfig>,
        free_tokens: i64,
    ) -> anyhow::Result<Authenticator> {
        let mode = match jwt {
            Some(config) => Mode::Jwt(Verifier::new(config).map_err(anyhow::Error::msg)?),
            None => {
                let profile = UserProfile {
                    email: Some("dev@localhost".into()),
                    name: Some("Developer".into()),
                    image_url: None,
                };
                let user = db::upsert_user(&db, DEV_USER, &profile, free_tokens, true).await?;
                if db::workspaces_for_user(&db, &user.id, None, 1)
                    .await?
                    .is_empty()
                {
                    match db::create_workspace(&db, &user.id, "Default", DEV_WORKSPACE_SLUG).await {
                        Ok(_) | Err(DbError::Duplicate(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Mode::Dev(user)
            }
        };
        Ok(Authenticator {
            inner: Arc::new(Inner {
                db,
                mode,
                free_tokens,
                users: DashMap::new(),
            }),
        })
    }

    /// Whether no auth is configured (every caller is the development user).
    pub fn is_dev(&self) -> bool {
        matches!(self.inner.mode, Mode::Dev(_))
    }

    /// Authenticates a caller by its token.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthFailure> {
        let verifier = match &self.inner.mode {
            Mode::Dev(user) => {
                return Ok(Principal {
                    user: user.clone(),
                    expires_at: None,
                    dev: true,
                    email: user.email.clone(),
                })
            }
            Mode::Jwt(v) => v,
        };
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let claims = verifier.verify(token).await?;
        let user = self.user_for(&claims).await?;
        Ok(Principal {
            user,
            expires_at: Some(claims.exp),
            dev: false,
            email: claims.email,
        })
    }

    async fn user_for(&self, claims: &Claims) -> Result<User, AuthFailure> {
        if let Some(user) = self.inner.users.get(&claims.sub) {
            return Ok(user.clone());
        }
        let db = &self.inner.db;
        let user = match db::user_by_external(db, &claims.sub).await? {
            Some((_, true)) => return Err(AuthFailure::Deleted),
            Some((user, false)) => user,
            None => {
                let profile = UserProfile {
                    email: claims.email.clone(),
                    name: claims.name.clone(),
                    image_url: claims.image_url.clone(),
                };
                db::upsert_user(db, &claims.sub, &profile, self.inner.free_tokens, false).await?
            }
        };
        let cache = &self.inner.users;
        while cache.len() >= MAX_CACHED_USERS {
            let Some(victim) = cache.iter().next().map(|e| e.key().clone()) else {
                break;
            };
            cache.remove(&victim);
        }
        cache.insert(claims.sub.clone(), user.clone());
        Ok(user)
    }

    /// How many user rows are cached (for tests).
    pub fn cached_users(&self) -> usize {
        self.inner.users.len()
    }

    /// Forgets the cached row of a user that changed (webhook): the next token reloads it.
    pub fn forget(&self, external_id: &str) {
        self.inner.users.remove(external_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_user_cache_is_bounded() {
        let db = crate::db::memory().await.unwrap();
        let secret = "s".repeat(32);
        let config = JwtConfig {
            secret: Some(secret.clone()),
            ..JwtConfig::default()
        };
        let auth = Authenticator::new(db, Some(config), 100).await.unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        let exp = crate::db::now_ms() / 1000 + 600;
        for i in 0..MAX_CACHED_USERS + 100 {
            let claims = serde_json::json!({ "sub": format!("user-{i}"), "exp": exp });
            let token =
                jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
            auth.authenticate(Some(&token)).await.unwrap();
        }
        assert_eq!(auth.cached_users(), MAX_CACHED_USERS);
    }
}
