//! Abuse by signed-up users and by web pages (issue 15, part B: items 10, 13, 14, 15, 17,
//! 18), over real HTTP and WebSockets. Each test fails on the code before the fix; each
//! checks that the server is still up afterwards and, where sockets are involved, that a
//! client elsewhere keeps syncing. Storage-dependent scenarios run on SQLite and, when
//! `TEST_DATABASE_URL` is set, on Postgres.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::{Method, StatusCode};
use resonant::auth::webhook_sig::{sign_stripe, sign_svix};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use yrs::{Map, WriteTxn};

use common::api::{
    accept_secret, backends, call, fresh_schema, invite_and_accept, now_secs, random_hex, sign_in,
    token_with, Backend, User,
};
use common::{room_url, Client, WAIT};

// ---------------------------------------------------------------------------------------
// Harness

/// A server with JWT auth and both webhook secrets, on one backend.
struct Env {
    server: resonant::Server,
    secret: String,
    clerk_secret: String,
    stripe_secret: String,
    http: reqwest::Client,
    dir: TempDir,
    /// The schema's URL, pool and name on Postgres.
    schema: Option<(String, sqlx::PgPool, String)>,
}

impl Env {
    async fn start(backend: Backend, tweak: impl FnOnce(&mut resonant::ServeConfig)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut config = resonant::ServeConfig::for_tests(dir.path().to_path_buf());
        let secret = random_hex(32);
        let clerk_secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 24]>())
        );
        let stripe_secret = format!("whsec_{}", random_hex(16));
        config.jwt_secret = Some(secret.clone());
        config.clerk_webhook_secret = Some(clerk_secret.clone());
        config.stripe_webhook_secret = Some(stripe_secret.clone());
        config.access_recheck_secs = 0.5;
        let mut schema = None;
        if let Backend::Postgres = backend {
            let (url, pool, name) = fresh_schema().await;
            config.database_url = Some(url.clone());
            schema = Some((url, pool, name));
        }
        tweak(&mut config);
        let server = resonant::start(config).await.expect("server starts");
        Env {
            server,
            secret,
            clerk_secret,
            stripe_secret,
            http: reqwest::Client::new(),
            dir,
            schema,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(&self.http, self.addr(), token, method, path, body).await
    }

    async fn user(&self, name: &str) -> User {
        sign_in(&self.http, self.addr(), &self.secret, name).await
    }

    async fn workspace(&self, owner: &User, name: &str) -> String {
        let (s, ws) = self
            .call(
                Some(&owner.token),
                Method::POST,
                "/api/v1/workspaces",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{ws}");
        ws["id"].as_str().unwrap().to_string()
    }

    async fn workflow(&self, user: &User, ws: &str) -> String {
        let (s, wf) = self
            .call(
                Some(&user.token),
                Method::POST,
                &format!("/api/v1/workspaces/{ws}/workflows"),
                Some(json!({ "name": "Flow" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{wf}");
        wf["id"].as_str().unwrap().to_string()
    }

    fn sync_url(&self, workflow: &str, token: &str) -> String {
        format!(
            "{}?token={token}",
            room_url(self.addr(), &format!("workflow-{workflow}"))
        )
    }

    async fn clerk(&self, svix_id: &str, event: &Value) -> (StatusCode, Value) {
        let body = event.to_string();
        let ts = now_secs();
        let sig = sign_svix(&self.clerk_secret, svix_id, ts, body.as_bytes());
        let req = self
            .http
            .post(format!("http://{}/webhooks/clerk", self.addr()))
            .header("content-type", "application/json")
            .header("svix-id", svix_id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", sig)
            .body(body);
        common::api::send(req).await
    }

    async fn stripe(&self, event: &Value) -> (StatusCode, Value) {
        let body = event.to_string();
        let sig = sign_stripe(&self.stripe_secret, now_secs(), body.as_bytes());
        let req = self
            .http
            .post(format!("http://{}/webhooks/stripe", self.addr()))
            .header("content-type", "application/json")
            .header("stripe-signature", sig)
            .body(body);
        common::api::send(req).await
    }

    async fn healthy(&self) {
        let (s, _) = common::api::send(
            self.http
                .get(format!("http://{}/api/v1/openapi.json", self.addr())),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "server still answers");
    }

    /// Runs `sql` on the server's database behind its back (a change made outside the API).
    async fn execute_directly(&self, sql: &str, binds: &[&str]) {
        match &self.schema {
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.dir.path().join("resonant.db"))
                    .busy_timeout(Duration::from_secs(10));
                let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(&pool).await.unwrap();
                pool.close().await;
            }
            Some((url, _, _)) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(&pool).await.unwrap();
                pool.close().await;
            }
        }
    }

    /// The test process's peak RSS (the server runs in it) stays under `mib`.
    fn assert_peak_rss_under(&self, mib: u64) {
        let peak = common::peak_rss_kib(std::process::id()) / 1024;
        eprintln!("peak RSS of the test process (server included): {peak} MiB");
        assert!(peak < mib, "peak RSS {peak} MiB");
    }

    async fn stop(self) {
        self.server.shutdown().await.unwrap();
        if let Some((_, pool, schema)) = self.schema {
            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&pool)
                .await;
        }
    }
}

async fn set_meta(c: &mut Client, key: &str, value: &str) {
    let (key, value) = (key.to_string(), value.to_string());
    c.edit(move |_, txn| {
        txn.get_or_insert_map("meta").insert(txn, key, value);
    })
    .await;
}

fn has_meta(state: &common::ClientState, key: &str) -> bool {
    use yrs::{ReadTxn, Transact};
    let txn = state.doc.transact();
    txn.get_map("meta")
        .is_some_and(|m| m.get(&txn, key).is_some())
}

/// A writer and a reader in one room: an edit by the writer reaches the reader.
struct Canary {
    writer: Client,
    reader: Client,
    n: u32,
}

impl Canary {
    async fn new(url: &str) -> Canary {
        Canary {
            writer: Client::connect_synced(url).await,
            reader: Client::connect_synced(url).await,
            n: 0,
        }
    }

    /// One edit round trip; returns its latency.
    async fn round_trip(&mut self) -> Duration {
        self.n += 1;
        let key = format!("canary-{}", self.n);
        let started = Instant::now();
        set_meta(&mut self.writer, &key, "1").await;
        self.reader
            .until("canary edit", |s| has_meta(s, &key))
            .await;
        started.elapsed()
    }
}

/// A raw HTTP/1.1 request; returns the status code and the response head.
async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("a response");
    let head = String::from_utf8_lossy(&out).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head)
}

const UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

// ---------------------------------------------------------------------------------------
// B15: development mode only for loopback pages; --allowed-origins on the upgrade.

#[tokio::test]
async fn dev_mode_refuses_foreign_hosts_and_origins() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(dir.path(), |_| {}).await;
    let addr = server.addr();
    let port = addr.port();
    let room = common::unique_room("dev-origin");
    let mut canary = Canary::new(&room_url(addr, &room)).await;
    canary.round_trip().await;

    // DNS rebinding: the browser sends the attacker's name as Host. Refused on REST and on
    // the socket, before any handler runs.
    let evil_host = format!("Host: evil.example:{port}\r\n");
    let (code, head) = raw(addr, "GET", "/api/v1/me", &evil_host).await;
    assert_eq!(code, 421, "{head}");
    let (code, head) = raw(
        addr,
        "GET",
        &format!("/sync/{room}"),
        &format!("{evil_host}{UPGRADE}"),
    )
    .await;
    assert_eq!(code, 421, "{head}");

    // A page elsewhere calling http://127.0.0.1 itself: its Origin gives it away.
    let local = format!("Host: 127.0.0.1:{port}\r\n");
    let evil_origin = format!("{local}Origin: https://evil.example\r\n");
    let (code, head) = raw(
        addr,
        "GET",
        &format!("/sync/{room}"),
        &format!("{evil_origin}{UPGRADE}"),
    )
    .await;
    assert_eq!(code, 403, "{head}");
    let (code, head) = raw(addr, "GET", "/api/v1/workspaces", &evil_origin).await;
    assert_eq!(code, 403, "{head}");
    let (code, head) = raw(
        addr,
        "GET",
        "/api/v1/workspaces",
        &format!("{local}Origin: null\r\n"),
    )
    .await;
    assert_eq!(code, 403, "{head}");

    // Loopback names and pages, and clients that send no Origin, are served.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".into(),
    ] {
        let (code, head) = raw(addr, "GET", "/api/v1/me", &format!("Host: {host}\r\n")).await;
        assert_eq!(code, 200, "{host}: {head}");
    }
    let good_origin = format!("{local}Origin: http://localhost:3000\r\n");
    let (code, head) = raw(
        addr,
        "GET",
        &format!("/sync/{room}"),
        &format!("{good_origin}{UPGRADE}"),
    )
    .await;
    assert_eq!(code, 101, "{head}");

    // The canary kept working throughout.
    let rtt = canary.round_trip().await;
    eprintln!("canary round trip after the probes: {rtt:?}");
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    let peak = common::peak_rss_kib(std::process::id()) / 1024;
    assert!(peak < 512, "peak RSS {peak} MiB");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn allowed_origins_are_checked_before_the_upgrade() {
    let env = Env::start(Backend::Sqlite, |c| {
        c.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let owner = env.user("owner").await;
    let ws = env.workspace(&owner, "Team").await;
    let wf = env.workflow(&owner, &ws).await;
    let path = format!("/sync/workflow-{wf}?token={}", owner.token);
    let host = format!("Host: 127.0.0.1:{}\r\n", env.addr().port());

    let (code, head) = raw(
        env.addr(),
        "GET",
        &path,
        &format!("{host}Origin: https://evil.example\r\n{UPGRADE}"),
    )
    .await;
    assert_eq!(
        code, 403,
        "a foreign page is refused before the upgrade: {head}"
    );

    // The listed origin, and clients without an Origin (not browsers), connect and sync.
    let url = env.sync_url(&wf, &owner.token);
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    let (ws_stream, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("the listed origin connects");
    let mut writer = Client::from_stream(ws_stream);
    writer.sync().await;
    let mut reader = Client::connect_synced(&url).await;
    set_meta(&mut writer, "from-app", "1").await;
    reader.until("edit", |s| has_meta(s, "from-app")).await;
    env.healthy().await;
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// B13: a user deleted at Clerk is disconnected everywhere at once.

#[tokio::test]
async fn deleted_user_sockets_close_with_4401_at_once() {
    let env = Env::start(Backend::Sqlite, |_| {}).await;
    let victim = env.user("victim").await;
    let ws = env.workspace(&victim, "Doomed").await;
    let wf = env.workflow(&victim, &ws).await;
    let wf2 = env.workflow(&victim, &ws).await;
    // A bystander in another workspace keeps syncing.
    let bystander = env.user("bystander").await;
    let other_ws = env.workspace(&bystander, "Other").await;
    let other_wf = env.workflow(&bystander, &other_ws).await;
    let mut canary = Canary::new(&env.sync_url(&other_wf, &bystander.token)).await;

    let mut sockets = vec![
        Client::connect_synced(&env.sync_url(&wf, &victim.token)).await,
        Client::connect_synced(&env.sync_url(&wf, &victim.token)).await,
        Client::connect_synced(&env.sync_url(&wf2, &victim.token)).await,
    ];
    set_meta(&mut sockets[0], "before", "1").await;
    sockets[1].until("edit", |s| has_meta(s, "before")).await;

    let started = Instant::now();
    let deleted = json!({ "type": "user.deleted", "data": { "id": victim.sub, "object": "user", "deleted": true } });
    let (s, r) = env.clerk("msg_del", &deleted).await;
    assert_eq!(
        (s, r["status"].as_str()),
        (StatusCode::OK, Some("processed"))
    );
    let mut worst = Duration::ZERO;
    for socket in &mut sockets {
        let close = socket.until_closed().await;
        worst = worst.max(started.elapsed());
        assert_eq!(
            close.as_ref().map(|(c, _)| *c),
            Some(4401),
            "closed with 4401: {close:?}"
        );
    }
    eprintln!("3 sockets of a deleted user closed within {worst:?} of the webhook");
    assert!(worst < Duration::from_secs(1), "{worst:?}");

    // The token no longer opens a socket either.
    let mut again = Client::connect(&env.sync_url(&wf, &victim.token)).await;
    let close = again.until_closed().await;
    assert_eq!(close.map(|(c, _)| c), Some(4401));

    let rtt = canary.round_trip().await;
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    env.healthy().await;
    env.assert_peak_rss_under(512);
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// B10 + B17: membership by invitation only, bound to the invited address, revocable.

/// Adds someone by email: the status and the answer's keys.
async fn invite(env: &Env, by: &User, ws: &str, body: Value) -> (StatusCode, Value) {
    env.call(
        Some(&by.token),
        Method::POST,
        &format!("/api/v1/workspaces/{ws}/members"),
        Some(body),
    )
    .await
}

async fn accept(env: &Env, token: &str, secret: &str) -> (StatusCode, Value) {
    env.call(
        Some(token),
        Method::POST,
        "/api/v1/invitations/accept",
        Some(json!({ "token": secret })),
    )
    .await
}

async fn pending(env: &Env, by: &User, ws: &str) -> Vec<Value> {
    let (s, page) = env
        .call(
            Some(&by.token),
            Method::GET,
            &format!("/api/v1/workspaces/{ws}/invitations"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

async fn is_member(env: &Env, user: &User, ws: &str) -> bool {
    let (s, _) = env
        .call(
            Some(&user.token),
            Method::GET,
            &format!("/api/v1/workspaces/{ws}"),
            None,
        )
        .await;
    s == StatusCode::OK
}

#[tokio::test]
async fn invitations_are_bound_to_the_invited_address_and_revocable() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let env = Env::start(backend, |_| {}).await;
        let owner = env.user("owner").await;
        let ws = env.workspace(&owner, "Team").await;
        let admin = env.user("admin").await;
        invite_and_accept(&env.http, env.addr(), &owner.token, &ws, &admin, "admin").await;

        // No enumeration, no adding without consent: an address with an account and one
        // without get the same answer, and nobody is a member before accepting.
        let victim = env.user("victim").await;
        let (s1, known) = invite(
            &env,
            &owner,
            &ws,
            json!({ "email": format!("{}@example.com", victim.sub), "role": "viewer" }),
        )
        .await;
        let (s2, unknown) = invite(
            &env,
            &owner,
            &ws,
            json!({ "email": format!("nobody-{}@example.com", random_hex(4)), "role": "viewer" }),
        )
        .await;
        assert_eq!(
            (s1, s2),
            (StatusCode::ACCEPTED, StatusCode::ACCEPTED),
            "{known} {unknown}"
        );
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&known), keys(&unknown));
        assert_eq!(keys(&known["invitation"]), keys(&unknown["invitation"]));
        let (s, body) = invite(
            &env,
            &owner,
            &ws,
            json!({ "userId": victim.id, "role": "member" }),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        assert!(
            !is_member(&env, &victim, &ws).await,
            "added without consent"
        );
        let (s, body) = invite(
            &env,
            &owner,
            &ws,
            json!({ "email": "x@example.com", "role": "owner" }),
        )
        .await;
        assert_eq!(
            (s, body["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("role"))
        );

        // Bound to the address: a stranger holding the link cannot use it.
        let stranger = env.user("stranger").await;
        let secret = accept_secret(&known);
        let (s, body) = accept(&env, &stranger.token, &secret).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        assert!(!is_member(&env, &stranger, &ws).await);
        // A token whose email claim is marked unverified does not count either.
        let unverified = {
            let now = now_secs();
            let claims = json!({ "sub": stranger.sub, "exp": now + 600, "iat": now,
                "email": format!("{}@example.com", victim.sub), "email_verified": false });
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(env.secret.as_bytes()),
            )
            .unwrap()
        };
        let (s, body) = accept(&env, &unverified, &secret).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        // The invitee can.
        let (s, body) = accept(&env, &victim.token, &secret).await;
        assert_eq!(
            (s, body["role"].as_str()),
            (StatusCode::OK, Some("viewer")),
            "{body}"
        );

        // Listing and revoking (owners and admins only).
        let revocable = format!("late-{}", random_hex(4));
        let (_, inv) = invite(
            &env,
            &owner,
            &ws,
            json!({ "email": format!("{revocable}@example.com"), "role": "member" }),
        )
        .await;
        let id = inv["invitation"]["id"].as_str().unwrap().to_string();
        assert!(pending(&env, &admin, &ws)
            .await
            .iter()
            .any(|i| i["id"] == id.as_str()));
        let (s, _) = env
            .call(
                Some(&victim.token),
                Method::GET,
                &format!("/api/v1/workspaces/{ws}/invitations"),
                None,
            )
            .await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "a viewer does not see invitations"
        );
        let revoke = format!("/api/v1/workspaces/{ws}/invitations/{id}");
        let (s, _) = env
            .call(Some(&owner.token), Method::DELETE, &revoke, None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = env
            .call(Some(&owner.token), Method::DELETE, &revoke, None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let late = token_with(&env.secret, &revocable, 600);
        let (s, _) = accept(&env, &late, &accept_secret(&inv)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "a revoked link is dead");

        // A removed admin does not come back through an invitation they sent themselves.
        let alt = format!("alt-{}", random_hex(4));
        let (s, backdoor) = invite(
            &env,
            &admin,
            &ws,
            json!({ "email": format!("{alt}@example.com"), "role": "admin" }),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{backdoor}");
        assert_eq!(backdoor["invitation"]["invitedBy"], admin.id.as_str());
        let (s, _) = env
            .call(
                Some(&owner.token),
                Method::DELETE,
                &format!("/api/v1/workspaces/{ws}/members/{}", admin.id),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(!pending(&env, &owner, &ws)
            .await
            .iter()
            .any(|i| i["invitedBy"] == admin.id.as_str()));
        let alt_token = token_with(&env.secret, &alt, 600);
        let (s, body) = accept(&env, &alt_token, &accept_secret(&backdoor)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

        // Same for one demoted below admin.
        let admin2 = env.user("admin2").await;
        invite_and_accept(&env.http, env.addr(), &owner.token, &ws, &admin2, "admin").await;
        let alt2 = format!("alt2-{}", random_hex(4));
        let (_, backdoor2) = invite(
            &env,
            &admin2,
            &ws,
            json!({ "email": format!("{alt2}@example.com"), "role": "member" }),
        )
        .await;
        let (s, _) = env
            .call(
                Some(&owner.token),
                Method::PATCH,
                &format!("/api/v1/workspaces/{ws}/members/{}", admin2.id),
                Some(json!({ "role": "member" })),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let alt2_token = token_with(&env.secret, &alt2, 600);
        let (s, _) = accept(&env, &alt2_token, &accept_secret(&backdoor2)).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // Demoted behind the API's back (another process, a database edit): the inviter's
        // rights are checked again at acceptance, and the invitation dies.
        let admin3 = env.user("admin3").await;
        invite_and_accept(&env.http, env.addr(), &owner.token, &ws, &admin3, "admin").await;
        let alt3 = format!("alt3-{}", random_hex(4));
        let (_, backdoor3) = invite(
            &env,
            &admin3,
            &ws,
            json!({ "email": format!("{alt3}@example.com"), "role": "admin" }),
        )
        .await;
        env.execute_directly(
            "UPDATE workspace_members SET role = 'viewer' WHERE workspace_id = $1 AND user_id = $2",
            &[&ws, &admin3.id],
        )
        .await;
        let alt3_token = token_with(&env.secret, &alt3, 600);
        let (s, body) = accept(&env, &alt3_token, &accept_secret(&backdoor3)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        let (s, _) = accept(&env, &alt3_token, &accept_secret(&backdoor3)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "revoked for good");
        assert!(
            !is_member(
                &env,
                &User {
                    token: alt3_token,
                    sub: alt3,
                    id: String::new()
                },
                &ws
            )
            .await
        );

        env.healthy().await;
        env.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// B14: Stripe grants a plan only while paid, and applies events in Stripe's order.

fn stripe_event(id: &str, kind: &str, created: i64, status: &str, plan: &str, user: &str) -> Value {
    json!({ "id": id, "object": "event", "type": kind, "created": created, "data": { "object": {
        "id": "sub_1", "object": "subscription", "customer": "cus_abuse", "status": status,
        "metadata": { "userId": user, "plan": plan } } } })
}

#[tokio::test]
async fn stripe_honours_subscription_status_and_event_order() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let owned = Env::start(backend, |c| {
            c.plan_tokens = resonant::config::PlanTokens(vec![
                ("free".into(), 1_000),
                ("pro".into(), 500_000),
                ("enterprise".into(), 10_000_000),
            ]);
        })
        .await;
        stripe_scenario(&owned).await;
        owned.stop().await;
    }
}

async fn stripe_scenario(env: &Env) {
    {
        let user = env.user("payer").await;
        let user = &user;
        let limit = || async move {
            let (_, me) = env
                .call(Some(&user.token), Method::GET, "/api/v1/me", None)
                .await;
            (
                me["subscriptionStatus"].as_str().map(str::to_owned),
                me["tokensLimit"].as_i64().unwrap(),
            )
        };
        let t = now_secs() - 1000;
        let apply = |id: &'static str,
                     kind: &'static str,
                     created: i64,
                     status: &'static str,
                     plan: &'static str| {
            let event = stripe_event(id, kind, created, status, plan, &user.id);
            async move {
                let (s, r) = env.stripe(&event).await;
                assert_eq!(s, StatusCode::OK, "{r}");
                r["status"].as_str().unwrap().to_string()
            }
        };
        // Checkout left the subscription incomplete: no plan.
        apply(
            "evt_a1",
            "customer.subscription.created",
            t,
            "incomplete",
            "enterprise",
        )
        .await;
        assert_eq!(limit().await, (Some("incomplete".into()), 1_000));
        apply(
            "evt_a2",
            "customer.subscription.updated",
            t + 10,
            "active",
            "pro",
        )
        .await;
        assert_eq!(limit().await, (Some("active".into()), 500_000));
        // Payment fails for good: unpaid keeps nothing.
        apply(
            "evt_a3",
            "customer.subscription.updated",
            t + 20,
            "unpaid",
            "pro",
        )
        .await;
        assert_eq!(limit().await, (Some("unpaid".into()), 1_000));
        apply(
            "evt_a4",
            "customer.subscription.updated",
            t + 30,
            "past_due",
            "pro",
        )
        .await;
        assert_eq!(limit().await, (Some("past_due".into()), 500_000));
        // Out of order: an older event delivered late changes nothing.
        apply(
            "evt_a5",
            "customer.subscription.deleted",
            t + 50,
            "canceled",
            "pro",
        )
        .await;
        assert_eq!(limit().await, (Some("canceled".into()), 1_000));
        let late = apply(
            "evt_a6",
            "customer.subscription.updated",
            t + 40,
            "active",
            "enterprise",
        )
        .await;
        assert_eq!(late, "ignored");
        assert_eq!(limit().await, (Some("canceled".into()), 1_000));
        env.healthy().await;
    }
}

// ---------------------------------------------------------------------------------------
// B18: the smaller items.

#[tokio::test]
async fn long_lived_tokens_are_refused() {
    let env = Env::start(Backend::Sqlite, |c| c.max_token_lifetime_secs = 86_400).await;
    let now = now_secs();
    let token = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(env.secret.as_bytes()),
        )
        .unwrap()
    };
    let envr = &env;
    let me =
        |t: String| async move { envr.call(Some(&t), Method::GET, "/api/v1/me", None).await.0 };
    let year = 365 * 86_400;
    assert_eq!(
        me(token(json!({ "sub": "u1", "iat": now, "exp": now + year }))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        me(token(json!({ "sub": "u1", "exp": now + year }))).await,
        StatusCode::UNAUTHORIZED
    );
    // An `iat` in the future does not stretch the allowance.
    assert_eq!(
        me(token(
            json!({ "sub": "u1", "iat": now + year - 60, "exp": now + year })
        ))
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        me(token(json!({ "sub": "u1", "iat": now, "exp": now + 3600 }))).await,
        StatusCode::OK
    );
    // And on the socket.
    let owner = env.user("owner").await;
    let ws = env.workspace(&owner, "T").await;
    let wf = env.workflow(&owner, &ws).await;
    let long = token(json!({ "sub": owner.sub, "iat": now, "exp": now + year }));
    let mut c = Client::connect(&env.sync_url(&wf, &long)).await;
    assert_eq!(c.until_closed().await.map(|(c, _)| c), Some(4401));
    env.stop().await;
}

/// Opens an upgrade to `room` with `X-Forwarded-For: xff`; returns the close code sent.
async fn close_code_with_xff(addr: SocketAddr, room: &str, xff: &str) -> Option<u16> {
    let mut request = room_url(addr, room).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.ok()?;
    use futures_util::StreamExt;
    let next = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame");
    match next {
        Some(Ok(Message::Close(Some(frame)))) => Some(frame.code.into()),
        _ => None,
    }
}

#[tokio::test]
async fn per_ip_limits_follow_x_forwarded_for_from_trusted_proxies_only() {
    for trusted in [true, false] {
        let env = Env::start(Backend::Sqlite, |c| {
            c.rate_connect_per_sec = 0.01;
            c.rate_connect_burst = 2;
            if trusted {
                c.trusted_proxies = vec!["127.0.0.0/8".into()];
            }
        })
        .await;
        let room = "workflow-00000000-0000-0000-0000-000000000000";
        // Two attempts from one client (tokenless: 4401), the third is over its budget.
        for _ in 0..2 {
            assert_eq!(
                close_code_with_xff(env.addr(), room, "203.0.113.1").await,
                Some(4401)
            );
        }
        assert_eq!(
            close_code_with_xff(env.addr(), room, "203.0.113.1").await,
            Some(4429)
        );
        // Another client behind the same proxy: its own budget only if the proxy is trusted;
        // a forged leftmost hop changes nothing.
        let other = close_code_with_xff(env.addr(), room, "198.51.100.9, 203.0.113.2").await;
        let want = if trusted { 4401 } else { 4429 };
        assert_eq!(other, Some(want), "trusted proxies: {trusted}");
        env.healthy().await;
        env.stop().await;
    }
}

#[tokio::test]
async fn template_downloads_count_once_per_user() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let author = env.user("author").await;
        let (s, t) = env
            .call(
                Some(&author.token),
                Method::POST,
                "/api/v1/templates",
                Some(
                    json!({ "name": "T", "description": "d", "category": "c", "type": "transform",
                    "config": { "template": "x" }, "isPublic": true }),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        let id = t["id"].as_str().unwrap();
        let fan = env.user("fan").await;
        let download = |u: &User| {
            let token = u.token.clone();
            let path = format!("/api/v1/templates/{id}/download");
            let env = &env;
            async move {
                let (s, t) = env.call(Some(&token), Method::POST, &path, None).await;
                assert_eq!(s, StatusCode::OK, "{t}");
                t["downloads"].as_i64().unwrap()
            }
        };
        for _ in 0..20 {
            assert_eq!(download(&fan).await, 1);
        }
        assert_eq!(download(&author).await, 2);
        env.stop().await;
    }
}

#[tokio::test]
async fn billing_follows_the_remaining_owner() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let creator = env.user("creator").await;
        let heir = env.user("heir").await;
        let ws = env.workspace(&creator, "Inherited").await;
        invite_and_accept(&env.http, env.addr(), &creator.token, &ws, &heir, "admin").await;
        let (s, _) = env
            .call(
                Some(&creator.token),
                Method::PATCH,
                &format!("/api/v1/workspaces/{ws}/members/{}", heir.id),
                Some(json!({ "role": "owner" })),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        // The creator pays.
        let event = json!({ "id": "evt_b1", "type": "customer.subscription.created", "created": now_secs(),
            "data": { "object": { "id": "sub_c", "customer": "cus_c", "status": "active",
                "metadata": { "userId": creator.id, "plan": "pro" } } } });
        assert_eq!(env.stripe(&event).await.0, StatusCode::OK);
        let billing = format!("/api/v1/workspaces/{ws}/billing");
        let (_, b) = env
            .call(Some(&heir.token), Method::GET, &billing, None)
            .await;
        assert_eq!(b["subscriptionStatus"], "active", "{b}");
        // The creator leaves: billing shows the remaining owner's (none), not the departed one's.
        let (s, _) = env
            .call(
                Some(&creator.token),
                Method::DELETE,
                &format!("/api/v1/workspaces/{ws}/members/{}", creator.id),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (_, b) = env
            .call(Some(&heir.token), Method::GET, &billing, None)
            .await;
        assert_eq!(b["subscriptionStatus"], Value::Null, "{b}");
        let (_, w) = env
            .call(
                Some(&heir.token),
                Method::GET,
                &format!("/api/v1/workspaces/{ws}"),
                None,
            )
            .await;
        assert_eq!(w["ownerId"], heir.id.as_str());
        env.stop().await;
    }
}
