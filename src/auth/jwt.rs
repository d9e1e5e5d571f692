//! TEMPORARY placeholder with the API of the real module (being written on branch `jwt`).
#![allow(missing_docs)]
use std::time::Duration;

pub struct JwtConfig {
    pub secret: Option<String>,
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub min_refetch_interval: Duration,
}
#[derive(Clone)]
pub struct Verifier {
    secret: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
}
#[derive(Debug, Clone)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub email: Option<String>,
    pub name: Option<String>,
    pub image_url: Option<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token invalid: {0}")]
    Invalid(String),
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}
impl Verifier {
    pub fn new(c: JwtConfig) -> Result<Verifier, String> {
        Ok(Verifier {
            secret: c.secret,
            issuer: c.issuer,
            audience: c.audience,
        })
    }
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        #[derive(serde::Deserialize)]
        struct C {
            sub: String,
            exp: i64,
            email: Option<String>,
            name: Option<String>,
        }
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
        }
        if let Some(a) = &self.audience {
            v.set_audience(&[a]);
        } else {
            v.validate_aud = false;
        }
        let key =
            jsonwebtoken::DecodingKey::from_secret(self.secret.as_deref().unwrap_or("").as_bytes());
        let d = jsonwebtoken::decode::<C>(token, &key, &v)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Claims {
            sub: d.claims.sub,
            exp: d.claims.exp,
            email: d.claims.email,
            name: d.claims.name,
            image_url: None,
        })
    }
}
