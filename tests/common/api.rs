//! Helpers for tests of the REST API and access rules: backends, tokens, JSON calls.

use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Where a test server keeps its data.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// The embedded SQLite store.
    Sqlite,
    /// Postgres at `TEST_DATABASE_URL`, in a fresh schema.
    Postgres,
}

/// SQLite always; Postgres too when `TEST_DATABASE_URL` is set (and then it must work).
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    if super::postgres_url().is_some() {
        all.push(Backend::Postgres);
    }
    all
}

/// `bytes` random bytes as hex.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Now, in Unix seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A Postgres URL whose connections use a fresh schema (each server locks its schema), the
/// admin pool and the schema's name.
pub async fn fresh_schema() -> (String, sqlx::PgPool, String) {
    let base = super::postgres_url().expect("TEST_DATABASE_URL");
    let schema = format!("s_{}", random_hex(8));
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("TEST_DATABASE_URL is set, so Postgres must be reachable");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    (url, pool, schema)
}

/// An HS256 token for `sub`, valid for `ttl_secs` (negative: already expired), with an
/// email and a name.
pub fn token_with(secret: &str, sub: &str, ttl_secs: i64) -> String {
    let now = now_secs();
    let claims = json!({ "sub": sub, "exp": now + ttl_secs, "iat": now,
        "email": format!("{sub}@example.com"), "name": sub });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Sends a request and reads its JSON body (`Null` when empty).
pub async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let res = req.send().await.expect("request");
    let status = res.status();
    let text = res.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, value)
}

/// Calls `method path` on the server at `addr`, with a bearer token and a JSON body.
pub async fn call(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

/// A user who has signed in once.
pub struct User {
    /// A valid token.
    pub token: String,
    /// The token's subject (the identity provider's id).
    pub sub: String,
    /// Our id.
    pub id: String,
}

/// Signs a new user named `name…` in (GET /api/v1/me creates its row).
pub async fn sign_in(http: &reqwest::Client, addr: SocketAddr, secret: &str, name: &str) -> User {
    let sub = format!("{name}-{}", random_hex(4));
    let token = token_with(secret, &sub, 3600);
    let (status, me) = call(http, addr, Some(&token), Method::GET, "/api/v1/me", None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    User {
        token,
        sub,
        id: me["id"].as_str().unwrap().to_string(),
    }
}

/// Makes `user` a member of `workspace` with `role` the only way there is: `inviter` invites
/// (202, the accept link in the answer when no email is configured) and `user` accepts.
pub async fn invite_and_accept(
    http: &reqwest::Client,
    addr: SocketAddr,
    inviter: &str,
    workspace: &str,
    user: &User,
    role: &str,
) {
    let (s, body) = call(
        http,
        addr,
        Some(inviter),
        Method::POST,
        &format!("/api/v1/workspaces/{workspace}/members"),
        Some(json!({ "userId": user.id, "role": role })),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let secret = accept_secret(&body);
    let (s, body) = call(
        http,
        addr,
        Some(&user.token),
        Method::POST,
        "/api/v1/invitations/accept",
        Some(json!({ "token": secret })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

/// The secret of the accept link in an add-member answer.
pub fn accept_secret(answer: &Value) -> String {
    let url = answer["acceptUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("no acceptUrl in {answer}"));
    url.split_once("token=")
        .expect("token in the link")
        .1
        .to_string()
}
