//! Identity and access over real sockets and HTTP: the seed's authorization matrix on the
//! REST API and on the socket, tokens, live role changes, deletions, invitations against a
//! mock Resend, and rate limits. Every scenario runs on SQLite and, when `TEST_DATABASE_URL`
//! is set, on Postgres (each server in a schema of its own).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::api::{
    backends, call, fresh_schema, invite_and_accept, random_hex, sign_in, token_with, Backend, User,
};
use common::{room_url, Client, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use yrs::{Map, Transact, WriteTxn};

/// One server with JWT auth, and an HTTP client for it.
struct Env {
    server: resonant::Server,
    secret: String,
    http: reqwest::Client,
    _dir: TempDir,
    schema: Option<(sqlx::PgPool, String)>,
}

impl Env {
    async fn start(backend: Backend, tweak: impl FnOnce(&mut resonant::ServeConfig)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut config = resonant::ServeConfig::for_tests(dir.path().to_path_buf());
        let secret = random_hex(32);
        config.jwt_secret = Some(secret.clone());
        // Fast enough that tests of cross-process changes do not wait long.
        config.access_recheck_secs = 0.5;
        let mut schema = None;
        if let Backend::Postgres = backend {
            let (url, pool, name) = fresh_schema().await;
            config.database_url = Some(url);
            schema = Some((pool, name));
        }
        tweak(&mut config);
        let server = resonant::start(config).await.expect("server starts");
        Env {
            server,
            secret,
            http: reqwest::Client::new(),
            _dir: dir,
            schema,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A token for `sub`, valid for `ttl_secs` (negative: already expired).
    fn token(&self, sub: &str, ttl_secs: i64) -> String {
        token_with(&self.secret, sub, ttl_secs)
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

    /// A user who has signed in once (so it has a row), with its token and id.
    async fn user(&self, name: &str) -> User {
        sign_in(&self.http, self.addr(), &self.secret, name).await
    }

    async fn stop(self) {
        self.server.shutdown().await.unwrap();
        if let Some((pool, schema)) = self.schema {
            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&pool)
                .await;
        }
    }
}

/// A workspace with one user per role, and a workflow in it.
struct Team {
    workspace: String,
    workflow: String,
    owner: User,
    admin: User,
    member: User,
    viewer: User,
    outsider: User,
}

async fn team(env: &Env) -> Team {
    let owner = env.user("owner").await;
    let (s, ws) = env
        .call(
            Some(&owner.token),
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "name": "Team" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ws}");
    let workspace = ws["id"].as_str().unwrap().to_string();
    let admin = env.user("admin").await;
    let member = env.user("member").await;
    let viewer = env.user("viewer").await;
    let outsider = env.user("outsider").await;
    for (user, role) in [(&admin, "admin"), (&member, "member"), (&viewer, "viewer")] {
        invite_and_accept(&env.http, env.addr(), &owner.token, &workspace, user, role).await;
    }
    let workflow = new_workflow(env, &owner, &workspace).await;
    Team {
        workspace,
        workflow,
        owner,
        admin,
        member,
        viewer,
        outsider,
    }
}

async fn new_workflow(env: &Env, user: &User, workspace: &str) -> String {
    let (s, wf) = env
        .call(
            Some(&user.token),
            Method::POST,
            &format!("/api/v1/workspaces/{workspace}/workflows"),
            Some(json!({ "name": "Flow" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{wf}");
    wf["id"].as_str().unwrap().to_string()
}

fn sync_url(env: &Env, workflow: &str, token: &str) -> String {
    format!(
        "{}?token={token}",
        room_url(env.addr(), &format!("workflow-{workflow}"))
    )
}

/// Connects and expects the server to close at once with `code`.
async fn refused(url: &str) -> (u16, String) {
    let mut c = Client::connect(url).await;
    c.until_closed().await.expect("a close frame")
}

/// Sets `key` in the `meta` map.
async fn set_meta(c: &mut Client, key: &str, value: &str) {
    let (key, value) = (key.to_string(), value.to_string());
    c.edit(move |_, txn| {
        txn.get_or_insert_map("meta").insert(txn, key, value);
    })
    .await;
}

fn has_meta(state: &common::ClientState, key: &str) -> bool {
    let meta = state.doc.get_or_insert_map("meta");
    let txn = state.doc.transact();
    meta.get(&txn, key).is_some()
}

async fn content(env: &Env, user: &User, workflow: &str) -> Value {
    let (s, body) = env
        .call(
            Some(&user.token),
            Method::GET,
            &format!("/api/v1/workflows/{workflow}/content"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

/// The content once `pred` holds (the server applies a socket edit after the client sent it).
async fn content_when(
    env: &Env,
    user: &User,
    workflow: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let c = content(env, user, workflow).await;
            if pred(&c) {
                return c;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("content within the wait")
}

// ---------------------------------------------------------------------------------------
// The matrix over REST.

#[tokio::test]
async fn rest_matrix_view_edit_delete_members_billing() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let t = team(&env).await;
        let wf = format!("/api/v1/workflows/{}", t.workflow);
        let roles = [
            ("owner", &t.owner),
            ("admin", &t.admin),
            ("member", &t.member),
            ("viewer", &t.viewer),
        ];

        // View: every role; an outsider sees nothing (404, as if it did not exist).
        for (role, user) in roles {
            let (s, _) = env.call(Some(&user.token), Method::GET, &wf, None).await;
            assert_eq!(s, StatusCode::OK, "{backend:?}: {role} views");
            let (s, _) = env
                .call(
                    Some(&user.token),
                    Method::GET,
                    &format!("{wf}/content"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{backend:?}: {role} reads content");
        }
        let (s, body) = env
            .call(Some(&t.outsider.token), Method::GET, &wf, None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        let missing = format!("/api/v1/workflows/{}", uuid_like());
        let (s2, body2) = env
            .call(Some(&t.outsider.token), Method::GET, &missing, None)
            .await;
        assert_eq!(
            (s2, &body2),
            (s, &body),
            "a hidden workflow and a missing one look the same"
        );

        // Edit: owner, admin, member; never a viewer.
        for (role, user) in roles {
            let (s, body) = env
                .call(
                    Some(&user.token),
                    Method::PATCH,
                    &wf,
                    Some(json!({ "name": format!("by {role}") })),
                )
                .await;
            let want = if role == "viewer" {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::OK
            };
            assert_eq!(s, want, "{backend:?}: {role} edits: {body}");
        }
        let (s, _) = env
            .call(
                Some(&t.viewer.token),
                Method::POST,
                &format!("{wf}/versions"),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a viewer cannot save versions");

        // Delete: owner and admin only.
        for (role, user) in roles {
            let victim = new_workflow(&env, &t.owner, &t.workspace).await;
            let (s, body) = env
                .call(
                    Some(&user.token),
                    Method::DELETE,
                    &format!("/api/v1/workflows/{victim}"),
                    None,
                )
                .await;
            let want = if matches!(role, "owner" | "admin") {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(s, want, "{backend:?}: {role} deletes: {body}");
        }

        // Manage members: owner and admin only.
        for (role, user) in roles {
            let newcomer = env.user("newcomer").await;
            let (s, body) = env
                .call(
                    Some(&user.token),
                    Method::POST,
                    &format!("/api/v1/workspaces/{}/members", t.workspace),
                    Some(json!({ "userId": newcomer.id, "role": "member" })),
                )
                .await;
            let want = if matches!(role, "owner" | "admin") {
                StatusCode::ACCEPTED
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(s, want, "{backend:?}: {role} invites a member: {body}");
        }

        // Billing: the owner only.
        for (role, user) in roles {
            let (s, body) = env
                .call(
                    Some(&user.token),
                    Method::GET,
                    &format!("/api/v1/workspaces/{}/billing", t.workspace),
                    None,
                )
                .await;
            let want = if role == "owner" {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(s, want, "{backend:?}: {role} billing: {body}");
        }
        env.stop().await;
    }
}

/// Execute has no endpoint until executions land; the rule the engine will call is checked
/// here, cell by cell, with the rest of the matrix for completeness.
#[test]
fn role_allows_matches_the_seed_matrix() {
    use resonant::db::{Action, Role};
    let matrix = [
        (Action::View, [true, true, true, true]),
        (Action::Edit, [true, true, true, false]),
        (Action::Delete, [true, true, false, false]),
        (Action::Execute, [true, true, true, false]),
        (Action::ManageMembers, [true, true, false, false]),
        (Action::Billing, [true, false, false, false]),
    ];
    for (action, cells) in matrix {
        for (role, want) in [Role::Owner, Role::Admin, Role::Member, Role::Viewer]
            .into_iter()
            .zip(cells)
        {
            assert_eq!(role.allows(action), want, "{role:?} {action:?}");
        }
    }
}

fn uuid_like() -> String {
    // A well-formed id nobody issued.
    "01900000-0000-7000-8000-000000000000".to_string()
}

#[tokio::test]
async fn members_last_owner_and_owner_only_rules() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let t = team(&env).await;
        let members = format!("/api/v1/workspaces/{}/members", t.workspace);
        // The last owner can be neither demoted nor removed.
        let (s, body) = env
            .call(
                Some(&t.owner.token),
                Method::PATCH,
                &format!("{members}/{}", t.owner.id),
                Some(json!({ "role": "admin" })),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{body}");
        let (s, _) = env
            .call(
                Some(&t.owner.token),
                Method::DELETE,
                &format!("{members}/{}", t.owner.id),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT);
        // An admin cannot touch owners or make one.
        let (s, _) = env
            .call(
                Some(&t.admin.token),
                Method::PATCH,
                &format!("{members}/{}", t.member.id),
                Some(json!({ "role": "owner" })),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = env
            .call(
                Some(&t.admin.token),
                Method::DELETE,
                &format!("{members}/{}", t.owner.id),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // With a second owner, the first may step down.
        let (s, _) = env
            .call(
                Some(&t.owner.token),
                Method::PATCH,
                &format!("{members}/{}", t.admin.id),
                Some(json!({ "role": "owner" })),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, body) = env
            .call(
                Some(&t.owner.token),
                Method::PATCH,
                &format!("{members}/{}", t.owner.id),
                Some(json!({ "role": "member" })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["role"], "member");
        // Bad input names the field.
        let (s, body) = env
            .call(
                Some(&t.admin.token),
                Method::PATCH,
                &format!("{members}/{}", t.member.id),
                Some(json!({ "role": "king" })),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["field"], "role", "{body}");
        env.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// The matrix over the socket.

#[tokio::test]
async fn socket_matrix_viewers_read_members_write_outsiders_refused() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let t = team(&env).await;
        let mut owner = Client::connect_synced(&sync_url(&env, &t.workflow, &t.owner.token)).await;
        // Every role syncs and sees the others' edits.
        let mut clients = Vec::new();
        for user in [&t.admin, &t.member, &t.viewer] {
            let mut c = Client::connect_synced(&sync_url(&env, &t.workflow, &user.token)).await;
            c.opt_in().await;
            clients.push(c);
        }
        set_meta(&mut owner, "from-owner", "1").await;
        for c in &mut clients {
            c.until("owner's edit", |s| has_meta(s, "from-owner")).await;
        }
        let mut viewer = clients.pop().unwrap();
        let mut member = clients.pop().unwrap();
        let mut admin = clients.pop().unwrap();
        // The viewer was told it is read-only when it opted in, before it tried to edit; the
        // others were told nothing (they may write, as a client assumes).
        viewer
            .until("the access notice", |s| {
                s.stateless
                    .iter()
                    .any(|m| m.contains("\"access\"") && m.contains("\"readOnly\":true"))
            })
            .await;
        for c in [&admin, &member] {
            assert!(
                !c.stateless.iter().any(|m| m.contains("\"access\"")),
                "{:?}",
                c.stateless
            );
        }
        // Admin and member edits reach the owner and the store.
        set_meta(&mut admin, "from-admin", "1").await;
        set_meta(&mut member, "from-member", "1").await;
        owner
            .until("admin and member edits", |s| {
                has_meta(s, "from-admin") && has_meta(s, "from-member")
            })
            .await;
        // A viewer's edit is refused with `read-only`: it reaches nobody and is not stored.
        set_meta(&mut viewer, "from-viewer", "1").await;
        viewer
            .until("read-only error", |s| {
                s.stateless.iter().any(|m| m.contains("\"read-only\""))
            })
            .await;
        // Ordering: the owner receives a later edit but never the viewer's.
        set_meta(&mut member, "after-viewer", "1").await;
        owner
            .until("the later edit", |s| has_meta(s, "after-viewer"))
            .await;
        assert!(
            !has_meta(&owner, "from-viewer"),
            "a viewer's edit reached another client"
        );
        let stored = content(&env, &t.owner, &t.workflow).await;
        assert!(
            stored["meta"].get("from-viewer").is_none(),
            "a viewer's edit was stored: {stored}"
        );
        assert_eq!(stored["meta"]["from-member"], "1");
        // Presence from a viewer is allowed.
        let seen = owner.awareness_msgs;
        viewer.set_awareness(r#"{"user":{"name":"viewer"}}"#).await;
        owner
            .until("the viewer's presence", |s| s.awareness_msgs > seen)
            .await;
        // An outsider, a missing workflow and a non-workflow room are refused alike.
        let (code, reason) = refused(&sync_url(&env, &t.workflow, &t.outsider.token)).await;
        assert_eq!(code, 4403, "{reason}");
        let (code2, reason2) = refused(&sync_url(&env, &uuid_like(), &t.outsider.token)).await;
        assert_eq!((code2, reason2.as_str()), (code, reason.as_str()));
        let (code3, _) = refused(&format!(
            "{}?token={}",
            room_url(env.addr(), "scratch"),
            t.owner.token
        ))
        .await;
        assert_eq!(code3, 4403);
        env.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// Tokens.

#[tokio::test]
async fn bad_tokens_are_refused_on_rest_and_socket() {
    let env = Env::start(Backend::Sqlite, |_| {}).await;
    let t = team(&env).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sign = |claims: Value, secret: &str, alg: jsonwebtoken::Algorithm| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("expired", Some(env.token(&t.member.sub, -300))),
        (
            "not yet valid",
            Some(sign(
                json!({ "sub": t.member.sub, "exp": now + 3600, "nbf": now + 600 }),
                &env.secret,
                jsonwebtoken::Algorithm::HS256,
            )),
        ),
        (
            "wrong signature",
            Some(token_with(&random_hex(32), &t.member.sub, 3600)),
        ),
        (
            "HS512 instead of HS256",
            Some(sign(
                json!({ "sub": t.member.sub, "exp": now + 3600 }),
                &env.secret,
                jsonwebtoken::Algorithm::HS512,
            )),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(&json!({ "alg": "none", "typ": "JWT" })),
                b64(&json!({ "sub": t.member.sub, "exp": now + 3600 }))
            )),
        ),
        ("garbage", Some("not-a-token".into())),
    ];
    let wf = format!("/api/v1/workflows/{}", t.workflow);
    for (what, token) in &cases {
        let (s, body) = env.call(token.as_deref(), Method::GET, &wf, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        let url = match token {
            Some(tok) => sync_url(&env, &t.workflow, tok),
            None => room_url(env.addr(), &format!("workflow-{}", t.workflow)),
        };
        let (code, reason) = refused(&url).await;
        assert_eq!(code, 4401, "{what}: {reason}");
        assert!(!reason.is_empty());
    }
    env.stop().await;
}

#[tokio::test]
async fn wrong_issuer_or_audience_is_refused() {
    let env = Env::start(Backend::Sqlite, |c| {
        c.jwt_issuer = Some("https://issuer.example".into());
        c.jwt_audience = Some("resonant".into());
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(env.secret.as_bytes()),
        )
        .unwrap()
    };
    let good = sign(
        json!({ "sub": "iss-ok", "exp": now + 600, "iss": "https://issuer.example", "aud": "resonant" }),
    );
    let (s, body) = env.call(Some(&good), Method::GET, "/api/v1/me", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for (what, claims) in [
        (
            "wrong issuer",
            json!({ "sub": "x", "exp": now + 600, "iss": "https://evil.example", "aud": "resonant" }),
        ),
        (
            "wrong audience",
            json!({ "sub": "x", "exp": now + 600, "iss": "https://issuer.example", "aud": "other" }),
        ),
        (
            "no issuer",
            json!({ "sub": "x", "exp": now + 600, "aud": "resonant" }),
        ),
    ] {
        let (s, body) = env
            .call(Some(&sign(claims)), Method::GET, "/api/v1/me", None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {body}");
    }
    env.stop().await;
}

#[tokio::test]
async fn token_as_subprotocol_is_accepted_and_the_protocol_echoed() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let env = Env::start(Backend::Sqlite, |_| {}).await;
    let t = team(&env).await;
    let url = room_url(env.addr(), &format!("workflow-{}", t.workflow));
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("resonant.v1, {}", t.member.token).parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("handshake");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "resonant.v1",
        "the token is never echoed"
    );
    let mut client = Client::from_stream(ws);
    client.sync().await;
    set_meta(&mut client, "via-subprotocol", "1").await;
    let mut owner = Client::connect_synced(&sync_url(&env, &t.workflow, &t.owner.token)).await;
    owner
        .until("edit", |s| has_meta(s, "via-subprotocol"))
        .await;
    env.stop().await;
}

#[tokio::test]
async fn expiring_token_closes_with_4401_unless_refreshed() {
    let env = Env::start(Backend::Sqlite, |_| {}).await;
    let t = team(&env).await;
    // Expires in 2 s, and is never refreshed: closed with 4401.
    let short = env.token(&t.member.sub, 2);
    let mut lapsing = Client::connect_synced(&sync_url(&env, &t.workflow, &short)).await;
    // Refreshed before it expires: stays connected past the first token's expiry.
    let mut refreshed =
        Client::connect_synced(&sync_url(&env, &t.workflow, &env.token(&t.member.sub, 2))).await;
    refreshed.opt_in().await;
    let fresh = env.token(&t.member.sub, 3600);
    let msg = json!({ "type": "auth", "token": fresh }).to_string();
    refreshed
        .send(resonant_client::protocol::encode_stateless(&msg))
        .await;
    refreshed
        .until("auth ok", |s| {
            s.stateless
                .iter()
                .any(|m| m.contains("\"auth\"") && m.contains("\"ok\""))
        })
        .await;
    // A token for someone else is refused, and changes nothing.
    let other = json!({ "type": "auth", "token": env.token(&t.viewer.sub, 3600) }).to_string();
    refreshed
        .send(resonant_client::protocol::encode_stateless(&other))
        .await;
    refreshed
        .until("bad-token error", |s| {
            s.stateless.iter().any(|m| m.contains("bad-token"))
        })
        .await;
    let (code, reason) = lapsing.until_closed().await.expect("close frame");
    assert_eq!(code, 4401, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
    // The refreshed connection is past its first token's expiry and still edits.
    set_meta(&mut refreshed, "still-here", "1").await;
    let mut owner = Client::connect_synced(&sync_url(&env, &t.workflow, &t.owner.token)).await;
    owner
        .until("edit after the old expiry", |s| has_meta(s, "still-here"))
        .await;
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// Live changes: roles, removal, deletion.

#[tokio::test]
async fn demotion_turns_a_socket_read_only_and_removal_closes_it() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let t = team(&env).await;
        let members = format!("/api/v1/workspaces/{}/members", t.workspace);
        let mut owner = Client::connect_synced(&sync_url(&env, &t.workflow, &t.owner.token)).await;
        let mut member =
            Client::connect_synced(&sync_url(&env, &t.workflow, &t.member.token)).await;
        member.opt_in().await;
        set_meta(&mut member, "before", "1").await;
        owner.until("member edit", |s| has_meta(s, "before")).await;

        let (s, _) = env
            .call(
                Some(&t.owner.token),
                Method::PATCH,
                &format!("{members}/{}", t.member.id),
                Some(json!({ "role": "viewer" })),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        member
            .until("access notice", |s| {
                s.stateless
                    .iter()
                    .any(|m| m.contains("\"access\"") && m.contains("viewer"))
            })
            .await;
        set_meta(&mut member, "after-demotion", "1").await;
        member
            .until("read-only error", |s| {
                s.stateless.iter().any(|m| m.contains("\"read-only\""))
            })
            .await;
        set_meta(&mut owner, "marker", "1").await;
        member.until("marker", |s| has_meta(s, "marker")).await;
        let stored = content(&env, &t.owner, &t.workflow).await;
        assert!(stored["meta"].get("after-demotion").is_none(), "{stored}");

        // Promoted back: writes again.
        let (s, _) = env
            .call(
                Some(&t.owner.token),
                Method::PATCH,
                &format!("{members}/{}", t.member.id),
                Some(json!({ "role": "member" })),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        member
            .until("access notice", |s| {
                s.stateless.iter().any(|m| m.contains("\"readOnly\":false"))
            })
            .await;
        set_meta(&mut member, "promoted", "1").await;
        owner
            // The server asks a promoted client to resync, so the edit refused while it was
            // a viewer arrives too (as it would on reconnect), and nothing waits on it.
            .until("edits after promotion", |s| {
                has_meta(s, "promoted") && has_meta(s, "after-demotion")
            })
            .await;

        // Removed: closed with 4403, and cannot come back.
        let (s, _) = env
            .call(
                Some(&t.owner.token),
                Method::DELETE,
                &format!("{members}/{}", t.member.id),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (code, reason) = member.until_closed().await.expect("close");
        assert_eq!(code, 4403, "{reason}");
        let (code, _) = refused(&sync_url(&env, &t.workflow, &t.member.token)).await;
        assert_eq!(code, 4403);
        env.stop().await;
    }
}

#[tokio::test]
async fn role_changes_made_outside_the_api_reach_sockets_within_seconds() {
    // Another node (or an operator) changes the database directly: the periodic re-read
    // picks it up.
    let env = Env::start(Backend::Sqlite, |_| {}).await;
    let t = team(&env).await;
    let mut member = Client::connect_synced(&sync_url(&env, &t.workflow, &t.member.token)).await;
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}",
        env._dir.path().join("resonant.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("DELETE FROM workspace_members WHERE user_id = $1")
        .bind(&t.member.id)
        .execute(&db)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (code, _) = member.until_closed().await.expect("close");
    assert_eq!(code, 4403);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    env.stop().await;
}

#[tokio::test]
async fn deleting_a_workflow_closes_its_sockets_and_removes_its_document() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let t = team(&env).await;
        let mut member =
            Client::connect_synced(&sync_url(&env, &t.workflow, &t.member.token)).await;
        set_meta(&mut member, "doomed", "1").await;
        let mut owner = Client::connect_synced(&sync_url(&env, &t.workflow, &t.owner.token)).await;
        owner.until("edit", |s| has_meta(s, "doomed")).await;
        let (s, _) = env
            .call(
                Some(&t.admin.token),
                Method::DELETE,
                &format!("/api/v1/workflows/{}", t.workflow),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        for c in [&mut member, &mut owner] {
            let (code, reason) = c.until_closed().await.expect("close");
            assert_eq!(code, 4410, "{reason}");
        }
        let (s, _) = env
            .call(
                Some(&t.owner.token),
                Method::GET,
                &format!("/api/v1/workflows/{}", t.workflow),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (code, _) = refused(&sync_url(&env, &t.workflow, &t.owner.token)).await;
        assert_eq!(code, 4403);
        // The room's rows are gone from the store.
        let room = format!("workflow-{}", t.workflow);
        let stored = env.server.rooms().store().load(&room).await.unwrap();
        assert!(
            stored.snapshot.is_none() && stored.updates.is_empty(),
            "{stored:?}"
        );
        env.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// Versions.

#[tokio::test]
async fn restoring_a_version_reaches_live_editors_and_keeps_the_state_before() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let t = team(&env).await;
        let versions = format!("/api/v1/workflows/{}/versions", t.workflow);
        let mut editor =
            Client::connect_synced(&sync_url(&env, &t.workflow, &t.member.token)).await;
        set_meta(&mut editor, "title", "first").await;
        editor.opt_in().await;
        let v1_content = content_when(&env, &t.member, &t.workflow, |c| {
            c["meta"]["title"] == "first"
        })
        .await;
        let (s, v1) = env
            .call(
                Some(&t.member.token),
                Method::POST,
                &versions,
                Some(json!({ "name": "v1", "message": "first draft" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v1}");
        assert_eq!(v1["version"], 1);
        set_meta(&mut editor, "title", "second").await;
        set_meta(&mut editor, "extra", "x").await;
        let before_restore =
            content_when(&env, &t.member, &t.workflow, |c| c["meta"]["extra"] == "x").await;
        // Restore version 1: the live editor receives it as an ordinary update.
        let (s, backup) = env
            .call(
                Some(&t.member.token),
                Method::POST,
                &format!("{versions}/1/restore"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{backup}");
        editor
            .until("the restore", |st| {
                let meta = st.doc.get_or_insert_map("meta");
                let txn = st.doc.transact();
                meta.get(&txn, "extra").is_none()
                    && meta.get(&txn, "title").map(|v| v.to_string(&txn)) == Some("first".into())
            })
            .await;
        assert_eq!(content(&env, &t.member, &t.workflow).await, v1_content);
        // The state before the restore is a version of its own.
        let (s, saved) = env
            .call(
                Some(&t.member.token),
                Method::GET,
                &format!("{versions}/{}", backup["version"]),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(saved["content"], before_restore);
        let (s, list) = env
            .call(Some(&t.viewer.token), Method::GET, &versions, None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
        // Editing continues on top of the restored document.
        set_meta(&mut editor, "after", "1").await;
        let mut owner = Client::connect_synced(&sync_url(&env, &t.workflow, &t.owner.token)).await;
        owner
            .until("edit after restore", |s| has_meta(s, "after"))
            .await;
        env.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// Invitations through a mock Resend.

use common::resend::mock_resend;

#[tokio::test]
async fn invitations_are_emailed_through_resend_and_accepted_by_link() {
    for backend in backends() {
        let (mock_addr, mock) = mock_resend().await;
        let env = Env::start(backend, |c| {
            c.resend_api_key = Some("re_test_key".into());
            c.resend_api_url = format!("http://{mock_addr}");
            c.public_url = "https://app.example".into();
        })
        .await;
        let t = team(&env).await;
        let members = format!("/api/v1/workspaces/{}/members", t.workspace);
        let newcomer_sub = format!("new-{}", random_hex(4));
        let email = format!("{newcomer_sub}@example.com");
        let (s, body) = env
            .call(
                Some(&t.admin.token),
                Method::POST,
                &members,
                Some(json!({ "email": email, "role": "viewer" })),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["invitation"]["email"], email.as_str());
        let (auth, sent) = mock
            .requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("an email was sent");
        assert_eq!(auth.as_deref(), Some("Bearer re_test_key"));
        assert_eq!(sent["to"], json!([email]));
        assert!(sent["subject"].as_str().unwrap().contains("Team"), "{sent}");
        let text = sent["text"].as_str().unwrap();
        let link = text
            .split_whitespace()
            .find(|w| w.starts_with("https://app.example/invite?token="))
            .expect("accept link");
        let token = link.split("token=").nth(1).unwrap();

        assert_eq!(body["emailed"], true);
        assert_eq!(body["acceptUrl"], link);

        // Someone new signs in with the invited address and accepts: a viewer.
        let newcomer_token = env.token(&newcomer_sub, 3600);
        let (s, ws) = env
            .call(
                Some(&newcomer_token),
                Method::POST,
                "/api/v1/invitations/accept",
                Some(json!({ "token": token })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{ws}");
        assert_eq!(ws["role"], "viewer");
        let (s, _) = env
            .call(
                Some(&newcomer_token),
                Method::GET,
                &format!("/api/v1/workflows/{}", t.workflow),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        // A link works once.
        let other = env.user("other").await;
        let (s, _) = env
            .call(
                Some(&other.token),
                Method::POST,
                "/api/v1/invitations/accept",
                Some(json!({ "token": token })),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // An address that already has a user is invited the same way (nothing tells the
        // inviter whether it has an account), and joins only by accepting.
        let sent_before = mock.requests.lock().unwrap().len();
        let (s, body) = env
            .call(
                Some(&t.admin.token),
                Method::POST,
                &members,
                Some(json!({ "email": format!("{}@example.com", other.sub), "role": "member" })),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        assert_eq!(mock.requests.lock().unwrap().len(), sent_before + 1);
        let (s, _) = env
            .call(
                Some(&other.token),
                Method::GET,
                &format!("/api/v1/workflows/{}", t.workflow),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "not a member before accepting");

        // Resend refuses: 502 with its reason, and no invitation is left behind.
        *mock.fail.lock().unwrap() = Some(422);
        let (s, body) = env
            .call(
                Some(&t.admin.token),
                Method::POST,
                &members,
                Some(json!({ "email": "x@example.com", "role": "member" })),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("domain not verified"),
            "{body}"
        );
        // Bad input names the field.
        let (s, body) = env
            .call(
                Some(&t.admin.token),
                Method::POST,
                &members,
                Some(json!({ "email": "not-an-email", "role": "member" })),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["field"], "email");
        env.stop().await;
    }
}

#[tokio::test]
async fn inviting_without_email_configured_answers_the_link() {
    let env = Env::start(Backend::Sqlite, |c| {
        c.resend_api_url = "http://127.0.0.1:9".into()
    })
    .await;
    let t = team(&env).await;
    let (s, body) = env
        .call(
            Some(&t.owner.token),
            Method::POST,
            &format!("/api/v1/workspaces/{}/members", t.workspace),
            Some(json!({ "email": "someone@example.com", "role": "member" })),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["emailed"], false);
    assert!(body["acceptUrl"]
        .as_str()
        .unwrap()
        .starts_with("http://localhost:3000/invite?token="));
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// Rate limits.

#[tokio::test]
async fn rate_limits_answer_429_over_rest_and_4429_on_the_socket() {
    let env = Env::start(Backend::Sqlite, |c| {
        c.rate_api_per_sec = 0.01;
        c.rate_api_burst = 20;
        c.rate_connect_per_sec = 0.01;
        c.rate_connect_burst = 30;
        c.rate_socket_per_sec = 0.01;
        c.rate_socket_burst = 10;
    })
    .await;
    let t = team(&env).await;
    // The team setup spent part of the owner's budget; spend the rest.
    let mut last = None;
    for _ in 0..40 {
        let res = env
            .http
            .get(format!("http://{}/api/v1/me", env.addr()))
            .bearer_auth(&t.outsider.token)
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            last = Some(res);
            break;
        }
    }
    let res = last.expect("the budget runs out");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user's budget is untouched.
    let (s, _) = env
        .call(Some(&t.viewer.token), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(s, StatusCode::OK);

    // Socket messages: the 11th message of the burst closes the socket with 4429.
    let mut c = Client::connect(&sync_url(&env, &t.workflow, &t.member.token)).await;
    for i in 0..20 {
        set_meta(&mut c, "k", &i.to_string()).await;
    }
    let (code, reason) = c.until_closed().await.expect("close");
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("retry in"), "{reason}");
    env.stop().await;
}

#[tokio::test]
async fn two_servers_share_one_budget_through_redis() {
    let Some(redis) = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("TEST_REDIS_URL is not set: skipping the shared rate-limit test");
        return;
    };
    let secret = random_hex(32);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let servers: Vec<common::ServerProcess> = dirs
        .iter()
        .map(|d| {
            common::ServerProcess::start(&[
                "--data-dir",
                d.path().to_str().unwrap(),
                "--jwt-secret",
                &secret,
                "--redis-url",
                &redis,
                "--rate-api-per-sec",
                "0.01",
                "--rate-api-burst",
                "10",
            ])
        })
        .collect();
    let http = reqwest::Client::new();
    let token = token_with(&secret, &format!("shared-{}", random_hex(6)), 600);
    // Ten calls alternate between the two processes; the eleventh, on either, is refused.
    for i in 0..10 {
        let (s, body) = call(
            &http,
            servers[i % 2].addr,
            Some(&token),
            Method::GET,
            "/api/v1/me",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "call {i}: {body}");
    }
    for server in &servers {
        let (s, body) = call(
            &http,
            server.addr,
            Some(&token),
            Method::GET,
            "/api/v1/me",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    }
}

#[tokio::test]
async fn connection_attempts_are_limited_per_ip() {
    let env = Env::start(Backend::Sqlite, |c| {
        c.rate_connect_per_sec = 0.01;
        c.rate_connect_burst = 3;
    })
    .await;
    let t = team(&env).await;
    let url = sync_url(&env, &t.workflow, &t.member.token);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect_synced(&url).await);
    }
    let (code, reason) = refused(&url).await;
    assert_eq!(code, 4429, "{reason}");
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// The API's error shape and request ids.

#[tokio::test]
async fn every_error_has_one_shape_and_every_response_a_request_id() {
    let env = Env::start(Backend::Sqlite, |_| {}).await;
    let t = team(&env).await;
    let base = format!("http://{}", env.addr());
    let checks: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            env.http
                .get(format!("{base}/api/v1/nowhere"))
                .bearer_auth(&t.owner.token),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            env.http
                .put(format!("{base}/api/v1/workspaces"))
                .bearer_auth(&t.owner.token),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            env.http
                .post(format!("{base}/api/v1/workspaces"))
                .bearer_auth(&t.owner.token)
                .body("{\"name\":\"x\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            env.http
                .post(format!("{base}/api/v1/workspaces"))
                .bearer_auth(&t.owner.token)
                .header("content-type", "application/json")
                .body("{\"name\": 7}"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            env.http
                .get(format!("{base}/api/v1/workspaces?limit=0"))
                .bearer_auth(&t.owner.token),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            env.http
                .post(format!("{base}/api/v1/workspaces"))
                .bearer_auth(&t.owner.token)
                .header("content-type", "application/json")
                .body(vec![b'x'; 2 << 20]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (req, status, code) in checks {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), status, "{code}");
        assert!(
            res.headers().contains_key("x-request-id"),
            "{code}: no request id"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // A caller's request id is kept, so its logs and ours line up.
    let res = env
        .http
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(&t.owner.token)
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "client-chosen-42");
    // A field error names the field.
    let (s, body) = env
        .call(
            Some(&t.owner.token),
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({ "name": "  " })),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "name");
    env.stop().await;
}
