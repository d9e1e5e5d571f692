//! JWT verification: HS256 with a shared secret, RS256/ES256 with keys from a JWKS URL
//! (Clerk's format), or both at once.
//!
//! The header's `alg` picks the key source and nothing else can: HS256 only ever meets the
//! shared secret, RS256/ES256 only ever meet JWKS keys of the matching type (RSA, EC P-256),
//! so a token cannot have an RSA public key used as an HMAC secret (algorithm confusion), and
//! `alg: none` or any other algorithm is refused. Keys named in the token itself (`jku`,
//! `jwk`, `x5u`) are never used.
//!
//! JWKS keys are cached. A token naming an unknown `kid` (the issuer rotated its keys) makes
//! the cache refetch, but at most once per [`JwtConfig::min_refetch_interval`], since anyone
//! can send a token with a made-up `kid`; verifications waiting on the same refetch share it.
//! The cache is also refreshed lazily once older than [`JwtConfig::cache_ttl`], so keys the
//! issuer withdrew stop being trusted. When the JWKS cannot be fetched, the keys already
//! cached keep working; only tokens that need a key the cache lacks fail, with
//! [`AuthError::KeysUnavailable`] (a server-side problem, not the client's).

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Default clock skew allowed on `exp` and `nbf`: enough for NTP-synced clocks, yet small
/// next to the 60 s lifetime of a Clerk session token (30 s would stretch it by half).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(10);

/// Default minimum time between two JWKS fetches (forged `kid`s must not make us hammer it).
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Default age past which the cached JWKS is refetched on the next verification.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10 * 60);

/// Time limit of one JWKS fetch, connection and body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A JWKS holds a few keys (Clerk's is about 1 KiB); anything far larger is not one.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Tokens longer than this are refused before any decoding (real ones are about 1 KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
const MIN_SECRET_BYTES: usize = 32;

/// How tokens are verified; at least one of `secret` and `jwks_url` must be set.
#[derive(Clone)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens (at least 32 bytes); `None` refuses HS256.
    pub secret: Option<String>,
    /// JWKS URL for RS256/ES256 tokens (https, or http on loopback); `None` refuses them.
    pub jwks_url: Option<String>,
    /// Required `iss` claim, compared exactly; `None` accepts any issuer.
    pub issuer: Option<String>,
    /// Required `aud` claim; `None` refuses tokens that carry an `aud` (RFC 7519 §4.1.3).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in whole seconds (see [`DEFAULT_LEEWAY`]).
    pub leeway: Duration,
    /// Minimum time between two JWKS fetches (see [`DEFAULT_MIN_REFETCH_INTERVAL`]).
    pub min_refetch_interval: Duration,
    /// Age past which the cached JWKS is refetched (see [`DEFAULT_CACHE_TTL`]).
    pub cache_ttl: Duration,
    /// Longest lifetime accepted (`exp` minus `iat`, or minus now when `iat` is absent or in
    /// the future); `None` accepts any. A leaked long-lived token would outlive a deletion.
    pub max_lifetime: Option<Duration>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
            cache_ttl: DEFAULT_CACHE_TTL,
            max_lifetime: None,
        }
    }
}

// Hand-written so that logging a config never prints the secret.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("min_refetch_interval", &self.min_refetch_interval)
            .field("cache_ttl", &self.cache_ttl)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The external user id (`sub`), never empty.
    pub sub: String,
    /// Expiry (`exp`), in Unix seconds: a connection authenticated by this token may be
    /// closed then.
    pub exp: i64,
    /// `email`, if the token carries it (Clerk session tokens do not unless customised) and
    /// does not say it is unverified (`email_verified: false`).
    pub email: Option<String>,
    /// `name`, if the token carries it.
    pub name: Option<String>,
    /// `image_url`, or else `picture` (the OpenID Connect name), if the token carries either.
    pub image_url: Option<String>,
}

/// Why a token was refused; `Display` is short, user-facing and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a JWS compact token, or its header or claims are not JSON objects.
    #[error("token malformed")]
    Malformed,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// The signature does not match the key.
    #[error("token signature invalid")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("token audience not accepted")]
    WrongAudience,
    /// The header's `alg` is not one this server is configured to accept.
    #[error("token algorithm not accepted")]
    UnsupportedAlgorithm,
    /// The header's `kid` names a JWKS key of another type than the header's `alg`.
    #[error("token algorithm does not match its key")]
    KeyMismatch,
    /// No JWKS key has the header's `kid`, even after a refetch.
    #[error("token signing key unknown")]
    UnknownKey,
    /// `exp` is further from `iat` than the configured maximum lifetime.
    #[error("token lifetime longer than this server accepts")]
    LifetimeTooLong,
    /// A required claim is absent or of the wrong type.
    #[error("token missing claim: {0}")]
    MissingClaim(&'static str),
    /// The JWKS could not be fetched, so the token could not be checked: a server-side
    /// failure (the caller may answer 503), not a verdict on the token.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// Verifies tokens; cheap to clone (the key cache is shared between clones).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    hmac: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    max_lifetime_secs: Option<i64>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.inner.hmac.is_some())
            .field(
                "jwks_url",
                &self.inner.jwks.as_ref().map(|j| j.url.as_str()),
            )
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish()
    }
}

impl Verifier {
    /// Checks the configuration; fails if neither a secret nor a JWKS URL is given, or if
    /// either is unusable. Fetches nothing yet: the first RS256/ES256 token does.
    pub fn new(config: JwtConfig) -> Result<Verifier, String> {
        if config.secret.is_none() && config.jwks_url.is_none() {
            return Err("JWT verification needs a secret or a JWKS URL".into());
        }
        let hmac = match config.secret {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(format!(
                    "the JWT secret must be at least {MIN_SECRET_BYTES} bytes"
                ));
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        let jwks = match config.jwks_url {
            Some(url) => Some(Jwks::new(
                &url,
                config.min_refetch_interval,
                config.cache_ttl,
            )?),
            None => None,
        };
        if config.issuer.as_deref() == Some("") {
            return Err("the JWT issuer must not be empty".into());
        }
        if config.audience.as_deref() == Some("") {
            return Err("the JWT audience must not be empty".into());
        }
        Ok(Verifier {
            inner: Arc::new(Inner {
                hmac,
                jwks,
                issuer: config.issuer,
                audience: config.audience,
                leeway_secs: config.leeway.as_secs(),
                max_lifetime_secs: config.max_lifetime.map(|d| d.as_secs() as i64),
            }),
        })
    }

    /// Verifies `token` (the bare JWT, without `Bearer `) and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let header = parse_header(token)?;
        // The key source follows from the algorithm alone, never from `kid`: that is what
        // keeps an RSA public key from being tried as an HMAC secret.
        let (alg, key) = match header.alg.as_str() {
            "HS256" => match &self.inner.hmac {
                Some(key) => (Algorithm::HS256, key.clone()),
                None => return Err(AuthError::UnsupportedAlgorithm),
            },
            "RS256" | "ES256" => {
                let Some(jwks) = &self.inner.jwks else {
                    return Err(AuthError::UnsupportedAlgorithm);
                };
                let alg = if header.alg == "RS256" {
                    Algorithm::RS256
                } else {
                    Algorithm::ES256
                };
                (alg, jwks.key_for(header.kid.as_deref(), alg).await?)
            }
            _ => return Err(AuthError::UnsupportedAlgorithm),
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation(alg))
            .map_err(|e| map_error(e.kind()))?;
        let claims = claims_from(&data.claims)?;
        if let Some(max) = self.inner.max_lifetime_secs {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let iat = data
                .claims
                .get("iat")
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
                .unwrap_or(now)
                .min(now);
            if claims.exp.saturating_sub(iat) > max {
                return Err(AuthError::LifetimeTooLong);
            }
        }
        Ok(claims)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        // `Validation::new` accepts exactly `alg` and requires `exp`; jsonwebtoken checks the
        // signature before any claim, so nothing about an unsigned token's claims leaks.
        let mut validation = Validation::new(alg);
        validation.leeway = self.inner.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.inner.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &self.inner.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// The parts of a JOSE header that choose the key.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions listed here must be understood; we understand none.
    #[serde(default)]
    crit: Option<Value>,
}

/// Reads the header ourselves rather than through `jsonwebtoken::decode_header`, whose
/// algorithm enum cannot represent `none`: that would report "malformed" where "algorithm
/// not accepted" is the truth.
fn parse_header(token: &str) -> Result<Header, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed);
    }
    Ok(header)
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Crypto(_) => AuthError::BadSignature,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => AuthError::UnsupportedAlgorithm,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "sub" => "sub",
            "iss" => "iss",
            "aud" => "aud",
            "nbf" => "nbf",
            _ => "unknown",
        }),
        _ => AuthError::Malformed,
    }
}

fn claims_from(claims: &Map<String, Value>) -> Result<Claims, AuthError> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let sub = text("sub").ok_or(AuthError::MissingClaim("sub"))?;
    // jsonwebtoken has checked that `exp` is a non-negative number; it may be a float.
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.round() as i64)))
        .ok_or(AuthError::MissingClaim("exp"))?;
    Ok(Claims {
        sub,
        exp,
        email: text("email").filter(|_| claims.get("email_verified") != Some(&Value::Bool(false))),
        name: text("name"),
        image_url: text("image_url").or_else(|| text("picture")),
    })
}

/// The JWKS source: its URL, its HTTP client and the key cache.
struct Jwks {
    url: reqwest::Url,
    client: reqwest::Client,
    min_refetch_interval: Duration,
    cache_ttl: Duration,
    state: Mutex<JwksState>,
    /// Held while fetching, so concurrent verifications wait for one fetch instead of each
    /// making their own.
    fetch_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct JwksState {
    /// The keys of the last successful fetch (a failed fetch keeps them).
    keys: Option<Arc<KeySet>>,
    /// When `keys` were fetched.
    fetched_at: Option<Instant>,
    /// When the last fetch, successful or not, ended: the rate limit counts from there.
    last_attempt: Option<Instant>,
    /// Why the last fetch failed; `None` once one succeeds.
    last_error: Option<String>,
    /// Number of fetches ended; a waiter that sees it move knows someone fetched for it.
    generation: u64,
}

/// A consistent view of the cache, taken without holding its lock.
struct Snapshot {
    keys: Option<Arc<KeySet>>,
    fresh: bool,
    generation: u64,
    last_error: Option<String>,
}

impl Jwks {
    fn new(url: &str, min_refetch_interval: Duration, cache_ttl: Duration) -> Result<Jwks, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("invalid JWKS URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            // Plain http would let anyone on the path substitute their own keys.
            "http" if is_loopback(&url) => {}
            "http" => return Err("the JWKS URL must use https (http only on loopback)".into()),
            _ => return Err("the JWKS URL must be an https URL".into()),
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            // An https URL must not be redirected to plain http.
            .https_only(url.scheme() == "https")
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("resonant/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the JWKS HTTP client: {e}"))?;
        Ok(Jwks {
            url,
            client,
            min_refetch_interval,
            cache_ttl,
            state: Mutex::new(JwksState::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, JwksState> {
        // The state is consistent after every statement, so a panic elsewhere cannot leave
        // it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> Snapshot {
        let state = self.state();
        Snapshot {
            keys: state.keys.clone(),
            fresh: state
                .fetched_at
                .is_some_and(|at| at.elapsed() < self.cache_ttl),
            generation: state.generation,
            last_error: state.last_error.clone(),
        }
    }

    /// The key that must have signed a token with this `kid` and `alg`.
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let before = self.snapshot();
        if let Some(keys) = &before.keys {
            match keys.find(kid, alg) {
                Lookup::Found(key) if before.fresh => return Ok(key),
                Lookup::Found(key) => {
                    // Past its TTL: refresh, unless another verification already is, in
                    // which case this one goes on with the key it has rather than wait.
                    let Ok(fetching) = self.fetch_lock.try_lock() else {
                        return Ok(key);
                    };
                    self.fetch_if_due(&fetching, before.generation).await;
                    drop(fetching);
                    // A successful refresh drops keys the issuer withdrew; a failed one
                    // leaves the cache as it was, so the key keeps working.
                    return match self.snapshot().keys.map(|keys| keys.find(kid, alg)) {
                        Some(Lookup::Found(key)) => Ok(key),
                        Some(Lookup::Mismatch) => Err(AuthError::KeyMismatch),
                        _ => Err(AuthError::UnknownKey),
                    };
                }
                Lookup::Mismatch => return Err(AuthError::KeyMismatch),
                Lookup::Missing => {}
            }
        }
        // Nothing cached yet, or an unknown `kid` (perhaps a rotation): refetch, if due.
        {
            let fetching = self.fetch_lock.lock().await;
            self.fetch_if_due(&fetching, before.generation).await;
        }
        let after = self.snapshot();
        match after.keys.map(|keys| keys.find(kid, alg)) {
            Some(Lookup::Found(key)) => Ok(key),
            Some(Lookup::Mismatch) => Err(AuthError::KeyMismatch),
            // While the JWKS is failing, an unknown `kid` may well be a new key: say the
            // keys are unavailable rather than blame the token.
            _ => match after.last_error {
                Some(error) => Err(AuthError::KeysUnavailable(error)),
                None => Err(AuthError::UnknownKey),
            },
        }
    }

    /// Fetches the JWKS unless another fetch ended since the caller took its snapshot (it
    /// then uses that one) or the last fetch ended less than the refetch interval ago.
    /// Taking the guard proves the caller holds `fetch_lock`.
    async fn fetch_if_due(&self, _fetching: &tokio::sync::MutexGuard<'_, ()>, seen: u64) {
        {
            let state = self.state();
            if state.generation != seen
                || state
                    .last_attempt
                    .is_some_and(|at| at.elapsed() < self.min_refetch_interval)
            {
                return;
            }
        }
        let result = self.fetch().await;
        metrics::counter!(
            "resonant_jwks_fetches_total",
            "outcome" => if result.is_ok() { "ok" } else { "error" }
        )
        .increment(1);
        let mut state = self.state();
        state.generation += 1;
        state.last_attempt = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.keys.len(), "JWKS fetched");
                state.keys = Some(Arc::new(keys));
                state.fetched_at = state.last_attempt;
                state.last_error = None;
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "JWKS fetch failed; keeping cached keys");
                state.last_error = Some(error);
            }
        }
    }

    /// One GET of the JWKS; the error is short enough to reach the client.
    async fn fetch(&self) -> Result<KeySet, String> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.fetch_body())
            .await
            .map_err(|_| "JWKS request timed out".to_string())??;
        let set: RawKeySet =
            serde_json::from_slice(&body).map_err(|_| "JWKS response is not a JWK set")?;
        let keys = KeySet::from_raw(set);
        if keys.keys.is_empty() {
            return Err("JWKS has no usable RS256/ES256 key".into());
        }
        Ok(keys)
    }

    async fn fetch_body(&self) -> Result<Vec<u8>, String> {
        let describe = |e: reqwest::Error| {
            tracing::debug!(error = %e, "JWKS request failed");
            if e.is_timeout() {
                "JWKS request timed out".to_string()
            } else {
                "JWKS server unreachable".to_string()
            }
        };
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("JWKS server answered HTTP {}", status.as_u16()));
        }
        let too_large = || "JWKS response too large".to_string();
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A JWK set as served; each key is parsed on its own so one odd key cannot hide the rest.
#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// The usable keys of a JWKS.
struct KeySet {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    /// The one algorithm this key verifies, from its `kty` (and `crv`, `alg`).
    alg: Algorithm,
    key: DecodingKey,
}

enum Lookup {
    Found(DecodingKey),
    /// A key has that `kid`, but it is for another algorithm.
    Mismatch,
    Missing,
}

impl KeySet {
    fn from_raw(set: RawKeySet) -> KeySet {
        let keys = set
            .keys
            .into_iter()
            .filter_map(|value| {
                let jwk: RawJwk = serde_json::from_value(value).ok()?;
                let key = Key::from_jwk(&jwk);
                if key.is_none() {
                    tracing::debug!(kid = ?jwk.kid, kty = %jwk.kty, alg = ?jwk.alg, "JWKS key skipped");
                }
                key
            })
            .collect();
        KeySet { keys }
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let Some(kid) = kid else {
            // Without a `kid`, only an unambiguous key will do.
            let mut candidates = self.keys.iter().filter(|k| k.alg == alg);
            return match (candidates.next(), candidates.next()) {
                (Some(key), None) => Lookup::Found(key.key.clone()),
                _ => Lookup::Missing,
            };
        };
        let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
        match named.clone().find(|k| k.alg == alg) {
            Some(key) => Lookup::Found(key.key.clone()),
            None if named.next().is_some() => Lookup::Mismatch,
            None => Lookup::Missing,
        }
    }
}

impl Key {
    /// Only signature keys for RS256 or ES256 are kept: a key's type fixes the algorithm
    /// it verifies, whatever a token's header claims.
    fn from_jwk(jwk: &RawJwk) -> Option<Key> {
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let (alg, key) = match jwk.kty.as_str() {
            "RSA" if jwk.alg.as_deref().is_none_or(|a| a == "RS256") => (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?).ok()?,
            ),
            "EC" if jwk.crv.as_deref() == Some("P-256")
                && jwk.alg.as_deref().is_none_or(|a| a == "ES256") =>
            {
                let (x, y) = (jwk.x.as_deref()?, jwk.y.as_deref()?);
                // P-256 coordinates are 32 bytes; anything else could never verify.
                let coordinate = |c: &str| URL_SAFE_NO_PAD.decode(c).is_ok_and(|b| b.len() == 32);
                if !coordinate(x) || !coordinate(y) {
                    return None;
                }
                (
                    Algorithm::ES256,
                    DecodingKey::from_ec_components(x, y).ok()?,
                )
            }
            _ => return None,
        };
        Some(Key {
            kid: jwk.kid.clone(),
            alg,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    use std::time::{SystemTime, UNIX_EPOCH};

    use axum::extract::State;
    use axum::http::{header::CONTENT_TYPE, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use futures_util::future::join_all;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader};
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes";
    const ISSUER: &str = "https://issuer.test";
    const AUDIENCE: &str = "resonant";
    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Valid claims for the test issuer and audience, expiring in 5 minutes.
    fn claims() -> Value {
        json!({"sub": "user_1", "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 300})
    }

    /// `claims()` with `changes` merged in; a `null` removes the claim.
    fn claims_with(changes: Value) -> Value {
        let mut claims = claims();
        let map = claims.as_object_mut().unwrap();
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                map.remove(name);
            } else {
                map.insert(name.clone(), value.clone());
            }
        }
        claims
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let mut header = JwtHeader::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            None,
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
    }

    /// A token with a hand-made header and payload, HMAC-signed with `SECRET` (jsonwebtoken
    /// writes neither `alg: none` nor payloads that are not JSON objects).
    fn hand_made(header: &str, payload: &str) -> String {
        let message = format!("{}.{}", b64(header), b64(payload));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = ring::hmac::sign(&key, message.as_bytes());
        format!("{message}.{}", b64(tag.as_ref()))
    }

    fn hs_config() -> JwtConfig {
        JwtConfig {
            secret: Some(SECRET.into()),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            ..JwtConfig::default()
        }
    }

    fn hs_verifier() -> Verifier {
        Verifier::new(hs_config()).unwrap()
    }

    struct RsaKey {
        kid: String,
        encoding: EncodingKey,
        n: String,
        e: String,
        public_pem_spki: String,
        public_pem_pkcs1: String,
        public_der_spki: Vec<u8>,
        public_der_pkcs1: Vec<u8>,
    }

    impl RsaKey {
        fn jwk(&self) -> Value {
            json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": self.n, "e": self.e})
        }

        fn token(&self, claims: &Value) -> String {
            sign(Algorithm::RS256, Some(&self.kid), claims, &self.encoding)
        }
    }

    /// Two RSA keys, generated once per test run (2048-bit generation is slow).
    fn rsa_keys() -> &'static [RsaKey; 2] {
        static KEYS: OnceLock<[RsaKey; 2]> = OnceLock::new();
        KEYS.get_or_init(|| [rsa_key("rsa-1"), rsa_key("rsa-2")])
    }

    fn rsa_key(kid: &str) -> RsaKey {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let public = private.to_public_key();
        RsaKey {
            kid: kid.into(),
            encoding: EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes()),
            n: b64(public.n().to_bytes_be()),
            e: b64(public.e().to_bytes_be()),
            public_pem_spki: public.to_public_key_pem(LineEnding::LF).unwrap(),
            public_pem_pkcs1: public.to_pkcs1_pem(LineEnding::LF).unwrap(),
            public_der_spki: public.to_public_key_der().unwrap().as_bytes().to_vec(),
            public_der_pkcs1: public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        }
    }

    struct EcKey {
        kid: String,
        encoding: EncodingKey,
        x: String,
        y: String,
    }

    impl EcKey {
        fn jwk(&self) -> Value {
            json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256", "x": self.x, "y": self.y})
        }

        fn token(&self, claims: &Value) -> String {
            sign(Algorithm::ES256, Some(&self.kid), claims, &self.encoding)
        }
    }

    fn ec_key(kid: &str) -> EcKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // Uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        EcKey {
            kid: kid.into(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            x: b64(&point[1..33]),
            y: b64(&point[33..65]),
        }
    }

    /// What the test JWKS server answers, changeable while it runs, and how often it was asked.
    struct Served {
        status: Mutex<StatusCode>,
        body: Mutex<String>,
        fetches: AtomicUsize,
    }

    struct JwksServer {
        url: String,
        served: Arc<Served>,
    }

    async fn serve_jwks(State(served): State<Arc<Served>>) -> impl IntoResponse {
        served.fetches.fetch_add(1, Ordering::SeqCst);
        let status = *served.status.lock().unwrap();
        let body = served.body.lock().unwrap().clone();
        (status, [(CONTENT_TYPE, "application/json")], body)
    }

    impl JwksServer {
        async fn start(keys: Vec<Value>) -> JwksServer {
            let served = Arc::new(Served {
                status: Mutex::new(StatusCode::OK),
                body: Mutex::new(json!({ "keys": keys }).to_string()),
                fetches: AtomicUsize::new(0),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/jwks", listener.local_addr().unwrap());
            let app = Router::new()
                .route("/jwks", get(serve_jwks))
                .with_state(served.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            JwksServer { url, served }
        }

        fn set_keys(&self, keys: Vec<Value>) {
            self.set_body(&json!({ "keys": keys }).to_string());
        }

        fn set_body(&self, body: &str) {
            *self.served.body.lock().unwrap() = body.to_owned();
        }

        fn set_status(&self, status: StatusCode) {
            *self.served.status.lock().unwrap() = status;
        }

        fn fetches(&self) -> usize {
            self.served.fetches.load(Ordering::SeqCst)
        }

        fn config(&self, min_refetch_interval: Duration) -> JwtConfig {
            JwtConfig {
                jwks_url: Some(self.url.clone()),
                issuer: Some(ISSUER.into()),
                audience: Some(AUDIENCE.into()),
                min_refetch_interval,
                ..JwtConfig::default()
            }
        }

        fn verifier(&self, min_refetch_interval: Duration) -> Verifier {
            Verifier::new(self.config(min_refetch_interval)).unwrap()
        }
    }

    /// Makes the next JWKS fetch due at once, as if the refetch interval had passed.
    fn refetch_interval_elapses(verifier: &Verifier) {
        verifier.inner.jwks.as_ref().unwrap().state().last_attempt = None;
    }

    // ---- HS256 ----

    #[tokio::test]
    async fn hs256_valid_token_verifies() {
        let exp = now() + 300;
        let token = hs(&claims_with(json!({
            "exp": exp,
            "email": "ada@example.com",
            "name": "Ada",
            "picture": "https://img.test/ada.png",
        })));
        let verified = hs_verifier().verify(&token).await.unwrap();
        assert_eq!(
            verified,
            Claims {
                sub: "user_1".into(),
                exp,
                email: Some("ada@example.com".into()),
                name: Some("Ada".into()),
                image_url: Some("https://img.test/ada.png".into()),
            }
        );

        // Optional claims absent (as in a plain Clerk session token), or `image_url` preferred.
        let bare = hs_verifier().verify(&hs(&claims())).await.unwrap();
        assert_eq!((bare.email, bare.name, bare.image_url), (None, None, None));
        let token = hs(&claims_with(
            json!({"image_url": "https://a.test/1", "picture": "https://b.test/2"}),
        ));
        let verified = hs_verifier().verify(&token).await.unwrap();
        assert_eq!(verified.image_url.as_deref(), Some("https://a.test/1"));
    }

    #[tokio::test]
    async fn hs256_expired_token_is_refused_beyond_the_leeway() {
        let verifier = hs_verifier();
        let expired = hs(&claims_with(json!({"exp": now() - 60})));
        assert_eq!(verifier.verify(&expired).await, Err(AuthError::Expired));
        // Within the 10 s leeway: accepted, unless the leeway is zero.
        let just_expired = hs(&claims_with(json!({"exp": now() - 3})));
        assert!(verifier.verify(&just_expired).await.is_ok());
        let strict = Verifier::new(JwtConfig {
            leeway: Duration::ZERO,
            ..hs_config()
        })
        .unwrap();
        assert_eq!(strict.verify(&just_expired).await, Err(AuthError::Expired));
    }

    #[tokio::test]
    async fn hs256_token_not_yet_valid_is_refused() {
        let verifier = hs_verifier();
        let future = hs(&claims_with(json!({"nbf": now() + 120})));
        assert_eq!(verifier.verify(&future).await, Err(AuthError::NotYetValid));
        let skewed = hs(&claims_with(json!({"nbf": now() + 3})));
        assert!(verifier.verify(&skewed).await.is_ok());
    }

    #[tokio::test]
    async fn hs256_wrong_or_missing_issuer_is_refused() {
        let verifier = hs_verifier();
        let wrong = hs(&claims_with(json!({"iss": "https://evil.test"})));
        assert_eq!(verifier.verify(&wrong).await, Err(AuthError::WrongIssuer));
        let missing = hs(&claims_with(json!({"iss": null})));
        assert_eq!(
            verifier.verify(&missing).await,
            Err(AuthError::MissingClaim("iss"))
        );
    }

    #[tokio::test]
    async fn hs256_wrong_or_missing_audience_is_refused() {
        let verifier = hs_verifier();
        let wrong = hs(&claims_with(json!({"aud": "other-service"})));
        assert_eq!(verifier.verify(&wrong).await, Err(AuthError::WrongAudience));
        let missing = hs(&claims_with(json!({"aud": null})));
        assert_eq!(
            verifier.verify(&missing).await,
            Err(AuthError::MissingClaim("aud"))
        );
        let listed = hs(&claims_with(json!({"aud": ["other-service", AUDIENCE]})));
        assert!(verifier.verify(&listed).await.is_ok());

        // No audience configured: tokens without `aud` pass, tokens meant for someone do not.
        let any = Verifier::new(JwtConfig {
            audience: None,
            ..hs_config()
        })
        .unwrap();
        assert!(any.verify(&missing).await.is_ok());
        assert_eq!(any.verify(&wrong).await, Err(AuthError::WrongAudience));
    }

    #[tokio::test]
    async fn hs256_wrong_signature_is_refused() {
        let verifier = hs_verifier();
        let other = EncodingKey::from_secret(b"another-secret-of-at-least-thirty-two-bytes");
        let forged = sign(Algorithm::HS256, None, &claims(), &other);
        assert_eq!(verifier.verify(&forged).await, Err(AuthError::BadSignature));

        // A genuine signature over other claims.
        let genuine = hs(&claims());
        let (_, signature) = genuine.rsplit_once('.').unwrap();
        let header = genuine.split('.').next().unwrap();
        let payload = b64(claims_with(json!({"sub": "admin"})).to_string());
        let spliced = format!("{header}.{payload}.{signature}");
        assert_eq!(
            verifier.verify(&spliced).await,
            Err(AuthError::BadSignature)
        );
        let unsigned = format!("{header}.{payload}.");
        assert_eq!(
            verifier.verify(&unsigned).await,
            Err(AuthError::BadSignature)
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let verifier = hs_verifier();
        let payload = b64(claims().to_string());
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
            let token = format!("{header}.{payload}.");
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::UnsupportedAlgorithm),
                "{alg}"
            );
            // Even carrying a valid HMAC of the message.
            let token = hand_made(&json!({"alg": alg}).to_string(), &claims().to_string());
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
        // Control: the same hand-made token with HS256 is accepted.
        let token = hand_made(r#"{"alg":"HS256"}"#, &claims().to_string());
        assert!(verifier.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn other_hmac_algorithms_are_refused() {
        let verifier = hs_verifier();
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(alg, None, &claims(), &key);
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::UnsupportedAlgorithm)
            );
        }
    }

    #[tokio::test]
    async fn missing_or_invalid_sub_is_refused() {
        let verifier = hs_verifier();
        for sub in [Value::Null, json!(""), json!(42), json!(true)] {
            let token = hs(&claims_with(json!({ "sub": sub })));
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::MissingClaim("sub")),
                "{sub}"
            );
        }
        // jsonwebtoken's claim parser fails outright on an array or object where it expects
        // a string, before the presence check: still refused, as malformed.
        for sub in [json!(["user_1"]), json!({"id": "user_1"})] {
            let token = hs(&claims_with(json!({ "sub": sub })));
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::Malformed),
                "{sub}"
            );
        }
    }

    #[tokio::test]
    async fn missing_or_invalid_exp_is_refused() {
        let verifier = hs_verifier();
        for exp in [Value::Null, json!("tomorrow"), json!(-5), json!(true)] {
            let token = hs(&claims_with(json!({ "exp": exp })));
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::MissingClaim("exp")),
                "{exp}"
            );
        }
        // A fractional `exp` is a valid NumericDate.
        let base = now();
        let token = hs(&claims_with(json!({"exp": base as f64 + 300.4})));
        assert_eq!(verifier.verify(&token).await.unwrap().exp, base + 300);
    }

    #[tokio::test]
    async fn garbage_is_refused_as_malformed() {
        let verifier = hs_verifier();
        let valid = hs(&claims());
        let huge = format!("{valid}{}", "A".repeat(MAX_TOKEN_BYTES));
        let cases = [
            String::new(),
            "garbage".into(),
            "a.b".into(),
            "a.b.c".into(),
            "...".into(),
            "a.b.c.d".into(),
            "!!!.@@@.###".into(),
            format!("{valid}."),
            format!("Bearer {valid}"),
            format!("{}.{}.", b64("[]"), b64("{}")),
            format!("{}.{}.", b64(r#"{"alg":5}"#), b64("{}")),
            format!("{}.{}.", b64(r#"{"typ":"JWT"}"#), b64("{}")),
            format!("{}.{}.", b64(r#"{"alg":"HS256","kid":7}"#), b64("{}")),
            format!("{}.{}.", b64("\u{0}\u{1}"), b64("{}")),
            // Correctly signed, but the payload is not a JSON object.
            hand_made(r#"{"alg":"HS256"}"#, "not json"),
            hand_made(r#"{"alg":"HS256"}"#, "[1,2]"),
            // Correctly signed, but with a critical extension we do not understand.
            hand_made(
                r#"{"alg":"HS256","crit":["exp-ext"],"exp-ext":1}"#,
                &claims().to_string(),
            ),
            huge,
        ];
        for token in cases {
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::Malformed),
                "{token:.80}"
            );
        }
    }

    #[test]
    fn error_messages_are_short_enough_for_a_close_reason() {
        let errors = [
            AuthError::Malformed,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::BadSignature,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::UnsupportedAlgorithm,
            AuthError::KeyMismatch,
            AuthError::UnknownKey,
            AuthError::MissingClaim("unknown"),
            AuthError::KeysUnavailable("JWKS has no usable RS256/ES256 key".into()),
            AuthError::KeysUnavailable("JWKS server answered HTTP 503".into()),
        ];
        for error in errors {
            let message = error.to_string();
            // WebSocket close reasons are limited to 123 bytes.
            assert!(message.len() <= 123, "{message}");
            assert!(!message.is_empty());
        }
    }

    // ---- configuration ----

    #[test]
    fn configuration_is_checked() {
        let with = |config: JwtConfig| Verifier::new(config).map(|_| ());
        assert!(with(JwtConfig::default()).is_err());
        assert!(with(JwtConfig {
            secret: Some("short".into()),
            ..JwtConfig::default()
        })
        .is_err());
        for bad in [
            "not a url",
            "ftp://keys.test/jwks",
            "http://keys.test/jwks",
            "http://10.0.0.1/jwks",
        ] {
            let config = JwtConfig {
                jwks_url: Some(bad.into()),
                ..JwtConfig::default()
            };
            assert!(with(config).is_err(), "{bad}");
        }
        for good in [
            "https://clerk.example.com/.well-known/jwks.json",
            "http://127.0.0.1:9/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ] {
            let config = JwtConfig {
                jwks_url: Some(good.into()),
                ..JwtConfig::default()
            };
            assert!(with(config).is_ok(), "{good}");
        }
        assert!(with(JwtConfig {
            issuer: Some(String::new()),
            ..hs_config()
        })
        .is_err());
        assert!(with(JwtConfig {
            audience: Some(String::new()),
            ..hs_config()
        })
        .is_err());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let config = hs_config();
        assert!(!format!("{config:?}").contains(SECRET));
        let verifier = Verifier::new(config).unwrap();
        assert!(!format!("{verifier:?}").contains(SECRET));
    }

    // ---- algorithm confusion ----

    #[tokio::test]
    async fn hs256_signed_with_the_rsa_public_key_is_refused() {
        let key = &rsa_keys()[0];
        let server = JwksServer::start(vec![key.jwk()]).await;
        let jwks_only = server.verifier(HOUR);
        let both = Verifier::new(JwtConfig {
            secret: Some(SECRET.into()),
            ..server.config(HOUR)
        })
        .unwrap();
        // Control: the genuine RS256 token verifies with either, so the refusals below are
        // about the algorithm, not a broken setup.
        assert!(jwks_only.verify(&key.token(&claims())).await.is_ok());
        assert!(both.verify(&key.token(&claims())).await.is_ok());

        let n = URL_SAFE_NO_PAD.decode(&key.n).unwrap();
        let materials: [&[u8]; 5] = [
            key.public_pem_spki.as_bytes(),
            key.public_pem_pkcs1.as_bytes(),
            &key.public_der_spki,
            &key.public_der_pkcs1,
            &n,
        ];
        for material in materials {
            let forged = sign(
                Algorithm::HS256,
                Some(&key.kid),
                &claims(),
                &EncodingKey::from_secret(material),
            );
            // JWKS only: HS256 is not accepted at all.
            assert_eq!(
                jwks_only.verify(&forged).await,
                Err(AuthError::UnsupportedAlgorithm)
            );
            // Secret and JWKS: HS256 goes to the secret, which the forger does not have.
            assert_eq!(both.verify(&forged).await, Err(AuthError::BadSignature));
        }
    }

    #[tokio::test]
    async fn asymmetric_tokens_are_refused_when_only_a_secret_is_configured() {
        let verifier = hs_verifier();
        let rsa = &rsa_keys()[0];
        let ec = ec_key("ec-1");
        assert_eq!(
            verifier.verify(&rsa.token(&claims())).await,
            Err(AuthError::UnsupportedAlgorithm)
        );
        assert_eq!(
            verifier.verify(&ec.token(&claims())).await,
            Err(AuthError::UnsupportedAlgorithm)
        );
        // An "RS256" header over a valid HMAC with the secret is refused too.
        let token = hand_made(r#"{"alg":"RS256"}"#, &claims().to_string());
        assert_eq!(
            verifier.verify(&token).await,
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[tokio::test]
    async fn header_alg_must_match_the_jwk_type() {
        let rsa = &rsa_keys()[0];
        let ec = ec_key("ec-1");
        let server = JwksServer::start(vec![rsa.jwk(), ec.jwk()]).await;
        let verifier = server.verifier(HOUR);
        assert!(verifier.verify(&rsa.token(&claims())).await.is_ok());
        assert!(verifier.verify(&ec.token(&claims())).await.is_ok());
        // ES256 naming the RSA key, RS256 naming the EC key.
        let es_on_rsa = sign(Algorithm::ES256, Some(&rsa.kid), &claims(), &ec.encoding);
        assert_eq!(
            verifier.verify(&es_on_rsa).await,
            Err(AuthError::KeyMismatch)
        );
        let rs_on_ec = sign(Algorithm::RS256, Some(&ec.kid), &claims(), &rsa.encoding);
        assert_eq!(
            verifier.verify(&rs_on_ec).await,
            Err(AuthError::KeyMismatch)
        );
        // RS384 is not accepted even with a matching RSA key.
        let rs384 = sign(Algorithm::RS384, Some(&rsa.kid), &claims(), &rsa.encoding);
        assert_eq!(
            verifier.verify(&rs384).await,
            Err(AuthError::UnsupportedAlgorithm)
        );
        assert_eq!(server.fetches(), 1);
    }

    // ---- JWKS ----

    #[tokio::test]
    async fn rs256_and_es256_tokens_verify_against_the_jwks() {
        let rsa = &rsa_keys()[0];
        let ec = ec_key("ec-1");
        let server = JwksServer::start(vec![rsa.jwk(), ec.jwk()]).await;
        let verifier = server.verifier(HOUR);
        assert_eq!(
            server.fetches(),
            0,
            "nothing is fetched before a token needs it"
        );

        let claims_in = claims_with(json!({"email": "ada@example.com"}));
        let verified = verifier.verify(&rsa.token(&claims_in)).await.unwrap();
        assert_eq!(verified.sub, "user_1");
        assert_eq!(verified.email.as_deref(), Some("ada@example.com"));
        assert!(verifier.verify(&ec.token(&claims_in)).await.is_ok());
        // A clone shares the cache.
        assert!(verifier
            .clone()
            .verify(&rsa.token(&claims_in))
            .await
            .is_ok());
        assert_eq!(server.fetches(), 1, "the cache serves later tokens");

        // The claim checks apply to JWKS tokens too.
        let expired = rsa.token(&claims_with(json!({"exp": now() - 60})));
        assert_eq!(verifier.verify(&expired).await, Err(AuthError::Expired));
        let wrong_iss = ec.token(&claims_with(json!({"iss": "https://evil.test"})));
        assert_eq!(
            verifier.verify(&wrong_iss).await,
            Err(AuthError::WrongIssuer)
        );
        // Signed by another key under the same kid.
        let other = &rsa_keys()[1];
        let forged = sign(Algorithm::RS256, Some(&rsa.kid), &claims(), &other.encoding);
        assert_eq!(verifier.verify(&forged).await, Err(AuthError::BadSignature));
        let other_ec = ec_key("other");
        let forged = sign(
            Algorithm::ES256,
            Some(&ec.kid),
            &claims(),
            &other_ec.encoding,
        );
        assert_eq!(verifier.verify(&forged).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn a_token_without_kid_uses_the_only_matching_key() {
        let [first, second] = rsa_keys();
        let server = JwksServer::start(vec![first.jwk()]).await;
        let verifier = server.verifier(HOUR);
        let no_kid = sign(Algorithm::RS256, None, &claims(), &first.encoding);
        assert!(verifier.verify(&no_kid).await.is_ok());

        // With two RSA keys, a token without kid is ambiguous.
        server.set_keys(vec![first.jwk(), second.jwk()]);
        let verifier = server.verifier(HOUR);
        assert_eq!(verifier.verify(&no_kid).await, Err(AuthError::UnknownKey));
    }

    #[tokio::test]
    async fn rotation_to_a_new_kid_costs_exactly_one_refetch() {
        let [old, new] = rsa_keys();
        let server = JwksServer::start(vec![old.jwk()]).await;
        let verifier = server.verifier(HOUR);
        assert!(verifier.verify(&old.token(&claims())).await.is_ok());
        assert_eq!(server.fetches(), 1);

        server.set_keys(vec![new.jwk()]);
        refetch_interval_elapses(&verifier);
        assert!(verifier.verify(&new.token(&claims())).await.is_ok());
        assert_eq!(server.fetches(), 2, "one refetch for the new kid");
        assert!(verifier.verify(&new.token(&claims())).await.is_ok());
        assert_eq!(server.fetches(), 2);

        // The old key left the set: its tokens are refused, without another fetch inside
        // the interval.
        assert_eq!(
            verifier.verify(&old.token(&claims())).await,
            Err(AuthError::UnknownKey)
        );
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn concurrent_verifications_of_a_new_kid_share_one_fetch() {
        let [old, new] = rsa_keys();
        let server = JwksServer::start(vec![old.jwk()]).await;
        // No rate limit, so only the sharing keeps the count down.
        let verifier = server.verifier(Duration::ZERO);
        assert!(verifier.verify(&old.token(&claims())).await.is_ok());
        assert_eq!(server.fetches(), 1);

        server.set_keys(vec![old.jwk(), new.jwk()]);
        let token = new.token(&claims());
        let results = join_all((0..50).map(|_| verifier.verify(&token))).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let [known, signer] = rsa_keys();
        let server = JwksServer::start(vec![known.jwk()]).await;
        let verifier = server.verifier(HOUR);
        let forged = |i: usize| {
            let kid = format!("made-up-{i}");
            sign(Algorithm::RS256, Some(&kid), &claims(), &signer.encoding)
        };

        // The first fetch happens for the first token, whatever its kid.
        assert_eq!(
            verifier.verify(&forged(0)).await,
            Err(AuthError::UnknownKey)
        );
        assert_eq!(server.fetches(), 1);
        for i in 1..100 {
            assert_eq!(
                verifier.verify(&forged(i)).await,
                Err(AuthError::UnknownKey)
            );
        }
        let tokens: Vec<String> = (100..150).map(forged).collect();
        let results = join_all(tokens.iter().map(|t| verifier.verify(t))).await;
        assert!(results.iter().all(|r| r == &Err(AuthError::UnknownKey)));
        assert_eq!(server.fetches(), 1, "no refetch within the interval");
        assert!(verifier.verify(&known.token(&claims())).await.is_ok());

        // Once the interval has passed, one more refetch, then quiet again.
        refetch_interval_elapses(&verifier);
        for i in 150..200 {
            assert_eq!(
                verifier.verify(&forged(i)).await,
                Err(AuthError::UnknownKey)
            );
        }
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn unreachable_jwks_means_keys_unavailable() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let verifier = Verifier::new(JwtConfig {
            jwks_url: Some(format!("http://127.0.0.1:{port}/jwks")),
            ..JwtConfig::default()
        })
        .unwrap();
        let token = rsa_keys()[0].token(&claims());
        let error = verifier.verify(&token).await.unwrap_err();
        assert!(matches!(error, AuthError::KeysUnavailable(_)), "{error:?}");
        assert!(error.to_string().len() <= 123);
    }

    #[tokio::test]
    async fn failing_jwks_means_keys_unavailable_and_is_not_hammered() {
        let key = &rsa_keys()[0];
        let server = JwksServer::start(vec![key.jwk()]).await;
        server.set_status(StatusCode::INTERNAL_SERVER_ERROR);
        let verifier = server.verifier(HOUR);
        let token = key.token(&claims());
        for _ in 0..10 {
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::KeysUnavailable(
                    "JWKS server answered HTTP 500".into()
                ))
            );
        }
        assert_eq!(server.fetches(), 1);

        // Back up, and the interval passed: the next token fetches and verifies.
        server.set_status(StatusCode::OK);
        refetch_interval_elapses(&verifier);
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn cached_keys_keep_working_while_the_jwks_is_down() {
        let [cached, rotated] = rsa_keys();
        let server = JwksServer::start(vec![cached.jwk()]).await;
        let verifier = server.verifier(Duration::ZERO);
        assert!(verifier.verify(&cached.token(&claims())).await.is_ok());

        server.set_status(StatusCode::SERVICE_UNAVAILABLE);
        // A kid the cache lacks needs the JWKS: unavailable, not "unknown".
        let error = verifier
            .verify(&rotated.token(&claims()))
            .await
            .unwrap_err();
        assert!(matches!(error, AuthError::KeysUnavailable(_)), "{error:?}");
        assert_eq!(server.fetches(), 2);
        // The failed fetch did not throw the cached key away.
        assert!(verifier.verify(&cached.token(&claims())).await.is_ok());
    }

    #[tokio::test]
    async fn stale_cache_is_refreshed_and_survives_a_failed_refresh() {
        let [old, new] = rsa_keys();
        let server = JwksServer::start(vec![old.jwk()]).await;
        let verifier = Verifier::new(JwtConfig {
            cache_ttl: Duration::ZERO,
            ..server.config(Duration::ZERO)
        })
        .unwrap();
        let token = old.token(&claims());
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(server.fetches(), 1);
        // Past the TTL at once: every verification refreshes.
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(server.fetches(), 2);

        // A failed refresh keeps the stale keys.
        server.set_status(StatusCode::BAD_GATEWAY);
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(server.fetches(), 3);

        // A successful refresh drops a key the issuer withdrew.
        server.set_status(StatusCode::OK);
        server.set_keys(vec![new.jwk()]);
        assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
        assert_eq!(server.fetches(), 4);
        assert!(verifier.verify(&new.token(&claims())).await.is_ok());
    }

    #[tokio::test]
    async fn stale_cache_refresh_is_rate_limited_too() {
        let key = &rsa_keys()[0];
        let server = JwksServer::start(vec![key.jwk()]).await;
        let verifier = Verifier::new(JwtConfig {
            cache_ttl: Duration::ZERO,
            ..server.config(HOUR)
        })
        .unwrap();
        for _ in 0..5 {
            assert!(verifier.verify(&key.token(&claims())).await.is_ok());
        }
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn unusable_jwks_responses_mean_keys_unavailable() {
        let key = &rsa_keys()[0];
        let server = JwksServer::start(vec![]).await;
        let verifier = server.verifier(Duration::ZERO);
        let token = key.token(&claims());
        let too_large = json!({"keys": [], "padding": "x".repeat(MAX_JWKS_BYTES)}).to_string();
        let bodies = [
            "not json".to_string(),
            r#"{"keys": "none"}"#.into(),
            r#"{"keys": []}"#.into(),
            json!({"keys": [{"kty": "oct", "kid": key.kid, "k": b64(SECRET)}]}).to_string(),
            too_large,
        ];
        for body in bodies {
            server.set_body(&body);
            let error = verifier.verify(&token).await.unwrap_err();
            assert!(
                matches!(error, AuthError::KeysUnavailable(_)),
                "{error:?} for {body:.60}"
            );
        }
        server.set_keys(vec![key.jwk()]);
        assert!(verifier.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn unusable_keys_in_a_jwks_are_skipped() {
        let [good, other] = rsa_keys();
        let ec = ec_key("ec-1");
        let rsa_with = |kid: &str, extra: Value| {
            let mut jwk = json!({"kty": "RSA", "kid": kid, "n": other.n, "e": other.e});
            jwk.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            jwk
        };
        let server = JwksServer::start(vec![
            json!({"kty": "oct", "kid": "oct", "k": b64(SECRET)}),
            rsa_with("enc", json!({"use": "enc"})),
            rsa_with("rs512", json!({"alg": "RS512"})),
            json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": ec.x, "y": ec.y}),
            json!({"kty": "EC", "crv": "P-256", "kid": "short", "x": "AAAA", "y": ec.y}),
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": ec.x}),
            json!({"kty": "RSA", "kid": 5, "n": other.n, "e": other.e}),
            json!({"kty": "RSA", "kid": "no-n", "e": other.e}),
            json!("not an object"),
            good.jwk(),
            // Clerk omits nothing, but `alg` and `use` are optional in a JWK.
            json!({"kty": "RSA", "kid": "plain", "n": other.n, "e": other.e}),
        ])
        .await;
        let verifier = server.verifier(HOUR);
        assert!(verifier.verify(&good.token(&claims())).await.is_ok());
        let plain = sign(Algorithm::RS256, Some("plain"), &claims(), &other.encoding);
        assert!(verifier.verify(&plain).await.is_ok());
        for kid in ["enc", "rs512", "no-n"] {
            let token = sign(Algorithm::RS256, Some(kid), &claims(), &other.encoding);
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::UnknownKey),
                "{kid}"
            );
        }
        for kid in ["p384", "short"] {
            let token = sign(Algorithm::ES256, Some(kid), &claims(), &ec.encoding);
            assert_eq!(
                verifier.verify(&token).await,
                Err(AuthError::UnknownKey),
                "{kid}"
            );
        }
        let oct = sign(
            Algorithm::HS256,
            Some("oct"),
            &claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        assert_eq!(
            verifier.verify(&oct).await,
            Err(AuthError::UnsupportedAlgorithm)
        );
        assert_eq!(server.fetches(), 1);
    }
}
