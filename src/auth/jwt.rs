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
    /// `email`, if the token carries it (Clerk session tokens do not unless customised).
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
        claims_from(&data.claims)
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
        email: text("email"),
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

