//! Block templates, provider keys (BYOK), usage reports, and the Clerk and Stripe webhooks,
//! against a real server in process. Every scenario runs on SQLite and, when
//! `TEST_DATABASE_URL` is set, on Postgres (each server in a fresh schema of its own).
//!
//! The tests read the server's database directly (through a pool of their own) to check
//! what REST cannot show: that provider keys are stored sealed, and what webhooks changed
//! before anyone signs in.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use rand::distributions::{Alphanumeric, DistString};
use reqwest::{Method, StatusCode};
use resonant::auth::webhook_sig::{sign_stripe, sign_svix};
use resonant::config::PlanTokens;
use resonant::crypto::KeyCipher;
use resonant::db::providers::provider_keys;
use resonant::db::usage::{record_usage, NewUsage};
use resonant::db::Db;
use resonant_db::with_pool;
use serde_json::{json, Value};
use tempfile::TempDir;

use common::api::{
    backends, call, fresh_schema, invite_and_accept, now_secs, send, sign_in, token_with, Backend,
    User,
};

fn random_text(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

/// What a test configures on top of the defaults.
struct Setup {
    config: resonant::ServeConfig,
    jwt_secret: String,
    encryption_key: Option<String>,
    clerk_secret: String,
    stripe_secret: String,
    dir: TempDir,
    schema: Option<(String, sqlx::PgPool, String)>,
}

impl Setup {
    async fn new(backend: Backend) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut config = resonant::ServeConfig::for_tests(dir.path().into());
        let jwt_secret = random_text(48);
        let (_, encryption_key) = KeyCipher::generate();
        let clerk_secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 24]>())
        );
        let stripe_secret = format!("whsec_{}", random_text(32));
        config.jwt_secret = Some(jwt_secret.clone());
        config.encryption_key = Some(encryption_key.clone());
        config.clerk_webhook_secret = Some(clerk_secret.clone());
        config.stripe_webhook_secret = Some(stripe_secret.clone());
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let schema = fresh_schema().await;
                config.database_url = Some(schema.0.clone());
                Some(schema)
            }
        };
        Setup {
            config,
            jwt_secret,
            encryption_key: Some(encryption_key),
            clerk_secret,
            stripe_secret,
            dir,
            schema,
        }
    }

    async fn drop_schema(&self) {
        if let Some((_, pool, schema)) = &self.schema {
            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(pool)
                .await;
        }
    }

    async fn start(mut self) -> Env {
        // What the test passes to the server is what the test knows the server has.
        self.encryption_key = self.config.encryption_key.clone();
        let server = resonant::start(self.config.clone())
            .await
            .expect("server starts");
        // A pool of the test's own onto the server's database.
        let db = match &self.schema {
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.dir.path().join("resonant.db"))
                    .busy_timeout(Duration::from_secs(10));
                Db::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(2)
                        .connect_with(opts)
                        .await
                        .expect("open the server's SQLite database"),
                )
            }
            Some((url, _, _)) => Db::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await
                    .expect("connect to the server's schema"),
            ),
        };
        Env {
            server,
            db,
            http: reqwest::Client::new(),
            setup: self,
        }
    }
}

/// One running server, an HTTP client and a database handle.
struct Env {
    server: resonant::Server,
    db: Db,
    http: reqwest::Client,
    setup: Setup,
}

impl Env {
    async fn start(backend: Backend) -> Env {
        Setup::new(backend).await.start().await
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn token(&self, sub: &str) -> String {
        token_with(&self.setup.jwt_secret, sub, 3600)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        send(req).await
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

    async fn get(&self, user: &User, path: &str) -> (StatusCode, Value) {
        self.call(Some(&user.token), Method::GET, path, None).await
    }

    /// A user who has signed in once (so it has a row).
    async fn user(&self, name: &str) -> User {
        sign_in(&self.http, self.addr(), &self.setup.jwt_secret, name).await
    }

    async fn workspace(&self, owner: &User) -> String {
        let (s, ws) = self
            .call(
                Some(&owner.token),
                Method::POST,
                "/api/v1/workspaces",
                Some(json!({ "name": "Team" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{ws}");
        ws["id"].as_str().unwrap().to_string()
    }

    async fn add_member(&self, ws: &str, owner: &User, user: &User, role: &str) {
        invite_and_accept(&self.http, self.addr(), &owner.token, ws, user, role).await;
    }

    /// Posts a Clerk (Svix) delivery signed at `timestamp`; `sent` is the body actually
    /// sent (differs from `signed` to tamper).
    async fn clerk_raw(
        &self,
        svix_id: &str,
        timestamp: i64,
        signed: &str,
        sent: &str,
    ) -> (StatusCode, Value) {
        let sig = sign_svix(
            &self.setup.clerk_secret,
            svix_id,
            timestamp,
            signed.as_bytes(),
        );
        let req = self
            .http
            .post(format!("http://{}/webhooks/clerk", self.addr()))
            .header("content-type", "application/json")
            .header("svix-id", svix_id)
            .header("svix-timestamp", timestamp.to_string())
            .header("svix-signature", sig)
            .body(sent.to_string());
        self.send(req).await
    }

    async fn clerk(&self, svix_id: &str, event: &Value) -> (StatusCode, Value) {
        let body = event.to_string();
        self.clerk_raw(svix_id, now_secs(), &body, &body).await
    }

    async fn stripe_raw(&self, timestamp: i64, signed: &str, sent: &str) -> (StatusCode, Value) {
        let sig = sign_stripe(&self.setup.stripe_secret, timestamp, signed.as_bytes());
        let req = self
            .http
            .post(format!("http://{}/webhooks/stripe", self.addr()))
            .header("content-type", "application/json")
            .header("stripe-signature", sig)
            .body(sent.to_string());
        self.send(req).await
    }

    async fn stripe(&self, event: &Value) -> (StatusCode, Value) {
        let body = event.to_string();
        self.stripe_raw(now_secs(), &body, &body).await
    }

    /// The user row of `external_id`: (email, name, deleted).
    async fn user_row(&self, external_id: &str) -> Option<(Option<String>, Option<String>, bool)> {
        let row: Option<(Option<String>, Option<String>, Option<i64>)> = with_pool!(&self.db, p =>
            sqlx::query_as("SELECT email, name, deleted_at FROM users WHERE external_id = $1")
                .bind(external_id).fetch_optional(p).await.unwrap());
        row.map(|(e, n, d)| (e, n, d.is_some()))
    }

    async fn seen(&self, sender: &str, event_id: &str) -> bool {
        let row: Option<(String,)> = with_pool!(&self.db, p => sqlx::query_as(
            "SELECT event_id FROM webhook_events WHERE provider = $1 AND event_id = $2")
            .bind(sender).bind(event_id).fetch_optional(p).await.unwrap());
        row.is_some()
    }

    async fn stop(self) {
        with_pool!(&self.db, p => p.close().await);
        self.server.shutdown().await.unwrap();
        self.setup.drop_schema().await;
    }
}

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or("<none>")
}

// ---------------------------------------------------------------------------------------
// Templates

#[tokio::test]
async fn templates_publish_validate_visibility_pages_downloads() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let env = Env::start(backend).await;
        let alice = env.user("alice").await;
        let bob = env.user("bob").await;
        let publish = |user: &User, body: Value| {
            let token = user.token.clone();
            let env = &env;
            async move {
                env.call(Some(&token), Method::POST, "/api/v1/templates", Some(body))
                    .await
            }
        };
        let template = |name: &str, category: &str, public: bool| {
            json!({ "name": name, "description": "Summarises text", "category": category,
                    "type": "ai", "config": { "model": "claude", "prompt": "Summarise: {{input}}" },
                    "isPublic": public })
        };

        // Published as sent.
        let (s, first) = publish(&alice, template("Summariser", "writing", true)).await;
        assert_eq!(s, StatusCode::CREATED, "{first}");
        assert_eq!(first["name"], "Summariser");
        assert_eq!(first["type"], "ai");
        assert_eq!(first["category"], "writing");
        assert_eq!(first["config"]["model"], "claude");
        assert_eq!(first["isPublic"], true);
        assert_eq!(first["downloads"], 0);
        assert_eq!(first["createdBy"], alice.id.as_str());
        let first_id = first["id"].as_str().unwrap().to_string();

        // Every block type the engine runs can be a template (the API once knew only 5 of
        // them), and reads back as the same type.
        for kind in resonant::engine::block::BlockKind::ALL {
            let mut t = template("Of a kind", "kinds", false);
            t["type"] = json!(kind.as_str());
            let (s, made) = publish(&alice, t).await;
            assert_eq!(s, StatusCode::CREATED, "{kind:?}: {made}");
            let path = format!("/api/v1/templates/{}", made["id"].as_str().unwrap());
            assert_eq!(env.get(&alice, &path).await.1["type"], kind.as_str());
        }

        // Validation errors name the field.
        let mut cases = Vec::new();
        let mut t = template("", "writing", true);
        cases.push((t.clone(), "name"));
        t = template("x", "writing", true);
        t["type"] = json!("bogus");
        cases.push((t.clone(), "type"));
        t = template("x", "writing", true);
        t["config"] = json!([1, 2]);
        cases.push((t.clone(), "config"));
        t = template("x", "writing", true);
        t["config"] = json!({ "blob": "x".repeat(70 * 1024) });
        cases.push((t.clone(), "config"));
        t = template("x", "writing", true);
        t.as_object_mut().unwrap().remove("category");
        cases.push((t.clone(), "category"));
        t = template("x", "  ", true);
        cases.push((t.clone(), "category"));
        t = template("x", "writing", true);
        t["description"] = json!("d".repeat(2001));
        cases.push((t.clone(), "description"));
        for (body, expected) in cases {
            let (s, err) = publish(&alice, body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
            assert_eq!(field(&err), expected, "{err}");
        }

        // Private: the creator sees it, nobody else (404, as if it did not exist).
        let (s, private) = publish(&alice, template("Secret sauce", "writing", false)).await;
        assert_eq!(s, StatusCode::CREATED, "{private}");
        let private_id = private["id"].as_str().unwrap().to_string();
        let path = format!("/api/v1/templates/{private_id}");
        assert_eq!(env.get(&alice, &path).await.0, StatusCode::OK);
        assert_eq!(env.get(&bob, &path).await.0, StatusCode::NOT_FOUND);
        let (s, _) = env
            .call(
                Some(&bob.token),
                Method::POST,
                &format!("{path}/download"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(
            env.get(&bob, "/api/v1/templates/not-an-id").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            env.call(None, Method::GET, "/api/v1/templates", None)
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );

        // Listing by category, with pagination, newest first; private ones are not listed.
        let mut writing = vec![first_id.clone()];
        for i in 0..5 {
            let (s, t) = publish(&alice, template(&format!("Writer {i}"), "writing", true)).await;
            assert_eq!(s, StatusCode::CREATED, "{t}");
            writing.push(t["id"].as_str().unwrap().to_string());
        }
        for i in 0..2 {
            let (s, t) = publish(&bob, template(&format!("Coder {i}"), "coding", true)).await;
            assert_eq!(s, StatusCode::CREATED, "{t}");
        }
        writing.reverse();
        let (s, page1) = env
            .get(&bob, "/api/v1/templates?category=writing&limit=4")
            .await;
        assert_eq!(s, StatusCode::OK, "{page1}");
        let ids = |page: &Value| -> Vec<String> {
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&page1), writing[..4]);
        let cursor = page1["nextCursor"].as_str().expect("a second page");
        let (s, page2) = env
            .get(
                &bob,
                &format!("/api/v1/templates?category=writing&limit=4&cursor={cursor}"),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page2}");
        assert_eq!(ids(&page2), writing[4..]);
        assert!(page2["nextCursor"].is_null(), "{page2}");
        let (_, coding) = env.get(&alice, "/api/v1/templates?category=coding").await;
        assert_eq!(coding["items"].as_array().unwrap().len(), 2);
        assert!(coding["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["category"] == "coding" && t["createdBy"] == bob.id.as_str()));
        let (_, all) = env.get(&bob, "/api/v1/templates").await;
        assert_eq!(all["items"].as_array().unwrap().len(), 8);
        assert!(!ids(&all).contains(&private_id));
        // `mine=true`: one's own, private ones included.
        let (_, mine) = env.get(&alice, "/api/v1/templates?mine=true").await;
        // 7 here, and the private ones of each kind above.
        let kinds = resonant::engine::block::BlockKind::ALL.len();
        assert_eq!(mine["items"].as_array().unwrap().len(), 7 + kinds);
        assert!(ids(&mine).contains(&private_id));
        let (_, bobs) = env.get(&bob, "/api/v1/templates?mine=true").await;
        assert_eq!(bobs["items"].as_array().unwrap().len(), 2);
        let (s, err) = env.get(&bob, "/api/v1/templates?limit=0").await;
        assert_eq!((s, field(&err)), (StatusCode::BAD_REQUEST, "limit"));

        // Downloads count once per user (repeating does not inflate the count), concurrent
        // ones by different users included.
        let download = format!("/api/v1/templates/{first_id}/download");
        for _ in 1..=3 {
            let (s, t) = env
                .call(Some(&bob.token), Method::POST, &download, None)
                .await;
            assert_eq!(s, StatusCode::OK, "{t}");
            assert_eq!(t["downloads"], 1);
            assert_eq!(t["id"], first_id.as_str());
        }
        let mut fans = Vec::new();
        for _ in 0..10 {
            fans.push(env.user("fan").await);
        }
        let concurrent = fans
            .iter()
            .map(|fan| env.call(Some(&fan.token), Method::POST, &download, None));
        for (s, t) in futures_util::future::join_all(concurrent).await {
            assert_eq!(s, StatusCode::OK, "{t}");
        }
        let (_, t) = env
            .get(&bob, &format!("/api/v1/templates/{first_id}"))
            .await;
        assert_eq!(t["downloads"], 11);
        // The creator may download a private one.
        let (s, t) = env
            .call(
                Some(&alice.token),
                Method::POST,
                &format!("{path}/download"),
                None,
            )
            .await;
        assert_eq!((s, t["downloads"].as_i64()), (StatusCode::OK, Some(1)));

        env.stop().await;
    }
}

#[tokio::test]
async fn openapi_lists_the_new_endpoints_but_not_the_webhooks() {
    let env = Env::start(Backend::Sqlite).await;
    let (s, doc) = env
        .call(None, Method::GET, "/api/v1/openapi.json", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/templates",
        "/api/v1/templates/{id}",
        "/api/v1/templates/{id}/download",
        "/api/v1/workspaces/{id}/providers",
        "/api/v1/workspaces/{id}/providers/{provider}",
        "/api/v1/workspaces/{id}/usage",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert!(paths.keys().all(|p| !p.contains("webhooks")));
    // Every schema referred to is defined.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(
            schemas.contains_key(name),
            "{name} is referred to but not defined"
        );
    }
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// Provider keys

/// The stored rows of a workspace's providers: (id, provider, api_key, api_key_last4).
async fn stored_keys(env: &Env, ws: &str) -> Vec<(String, String, Option<String>, Option<String>)> {
    with_pool!(&env.db, p => sqlx::query_as(
        "SELECT id, provider, api_key, api_key_last4 FROM ai_provider_configs WHERE workspace_id = $1 ORDER BY provider")
        .bind(ws).fetch_all(p).await.unwrap())
}

#[tokio::test]
async fn provider_keys_are_sealed_never_shown_and_owner_managed() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let env = Env::start(backend).await;
        let cipher = KeyCipher::from_config(env.setup.encryption_key.as_deref().unwrap()).unwrap();
        let owner = env.user("owner").await;
        let admin = env.user("admin").await;
        let member = env.user("member").await;
        let viewer = env.user("viewer").await;
        let outsider = env.user("outsider").await;
        let ws = env.workspace(&owner).await;
        env.add_member(&ws, &owner, &admin, "admin").await;
        env.add_member(&ws, &owner, &member, "member").await;
        env.add_member(&ws, &owner, &viewer, "viewer").await;
        let base = format!("/api/v1/workspaces/{ws}/providers");
        let put = |user: &User, provider: &str, body: Value| {
            let (token, path) = (user.token.clone(), format!("{base}/{provider}"));
            let env = &env;
            async move { env.call(Some(&token), Method::PUT, &path, Some(body)).await }
        };
        let openai_key = format!("sk-proj-{}WXYZ", random_text(40));
        let claude_key = format!("sk-ant-{}ABCD", random_text(40));

        // Set: created, only the last four shown.
        let (s, cfg) = put(
            &owner,
            "openai",
            json!({ "apiKey": openai_key, "priority": 1 }),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{cfg}");
        assert_eq!(cfg["provider"], "openai");
        assert_eq!(cfg["apiKeyLast4"], "WXYZ");
        assert_eq!(cfg["priority"], 1);
        assert_eq!(cfg["isEnabled"], true);
        assert!(cfg.get("apiKey").is_none(), "{cfg}");
        assert!(!cfg.to_string().contains(&openai_key));
        let (s, cfg) = put(
            &admin,
            "claude",
            json!({ "apiKey": format!("  {claude_key}\n"), "priority": 0, "maxTokensPerRequest": 4096 }),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{cfg}");
        assert_eq!(cfg["apiKeyLast4"], "ABCD");
        assert_eq!(cfg["maxTokensPerRequest"], 4096);

        // Validation and roles.
        for (provider, body, expected) in [
            ("gemini", json!({ "priority": 2 }), "apiKey"),
            ("gemini", json!({ "apiKey": "short" }), "apiKey"),
            ("bogus", json!({ "apiKey": "sk-long-enough" }), "provider"),
            (
                "gemini",
                json!({ "apiKey": "sk-long-enough", "priority": -1 }),
                "priority",
            ),
            (
                "gemini",
                json!({ "apiKey": "sk-long-enough", "maxTokensPerRequest": 0 }),
                "maxTokensPerRequest",
            ),
            ("gemini", json!({ "apiKey": 5 }), "apiKey"),
        ] {
            let (s, err) = put(&owner, provider, body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
            assert_eq!(field(&err), expected, "{err}");
        }
        for user in [&member, &viewer] {
            let (s, err) = put(user, "gemini", json!({ "apiKey": "sk-long-enough" })).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{err}");
            let (s, _) = env
                .call(
                    Some(&user.token),
                    Method::DELETE,
                    &format!("{base}/openai"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::FORBIDDEN);
        }
        let (s, _) = put(&outsider, "gemini", json!({ "apiKey": "sk-long-enough" })).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(env.get(&outsider, &base).await.0, StatusCode::NOT_FOUND);

        // Any member lists them, in order of priority, with no key in sight.
        let (s, list) = env.get(&viewer, &base).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let items = list["items"].as_array().unwrap();
        let names: Vec<&str> = items
            .iter()
            .map(|c| c["provider"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["claude", "openai"]);
        assert!(items.iter().all(|c| c.get("apiKey").is_none()));
        let text = list.to_string();
        assert!(!text.contains(&openai_key) && !text.contains(&claude_key));

        // In the database: sealed, bound to the row.
        let rows = stored_keys(&env, &ws).await;
        assert_eq!(rows.len(), 2);
        for (id, provider, sealed, last4) in &rows {
            let sealed = sealed.as_deref().unwrap();
            let plain = if provider == "openai" {
                &openai_key
            } else {
                &claude_key
            };
            assert!(sealed.starts_with("v1:"), "{sealed}");
            assert!(!sealed.contains(plain.as_str()) && !sealed.contains(&plain[..12]));
            assert_eq!(&cipher.decrypt(id, sealed).unwrap(), plain);
            let other = &rows.iter().find(|r| &r.0 != id).unwrap().0;
            assert!(cipher.decrypt(other, sealed).is_err(), "bound to its row");
            assert_eq!(last4.as_deref(), Some(&plain[plain.len() - 4..]));
        }
        // The engine's view: enabled ones, by priority, in plaintext.
        let keys = provider_keys(&env.db, &cipher, &ws).await.unwrap();
        let keys: Vec<_> = keys
            .into_iter()
            .map(|k| (k.provider, k.priority, k.max_tokens_per_request, k.api_key))
            .collect();
        assert_eq!(
            keys,
            [
                ("claude".to_string(), 0, Some(4096), claude_key.clone()),
                ("openai".to_string(), 1, None, openai_key.clone()),
            ]
        );

        // Rotate: a new key, other settings kept.
        let rotated = format!("sk-proj-{}QRST", random_text(40));
        let (s, cfg) = put(&owner, "openai", json!({ "apiKey": rotated })).await;
        assert_eq!(s, StatusCode::OK, "{cfg}");
        assert_eq!(
            (cfg["apiKeyLast4"].as_str(), cfg["priority"].as_i64()),
            (Some("QRST"), Some(1))
        );
        let rows = stored_keys(&env, &ws).await;
        let (id, _, sealed, _) = rows.iter().find(|r| r.1 == "openai").unwrap();
        assert_eq!(
            cipher.decrypt(id, sealed.as_deref().unwrap()).unwrap(),
            rotated
        );
        // Settings without a key keep the key; null lifts the cap.
        let (s, cfg) = put(&owner, "openai", json!({ "isEnabled": false })).await;
        assert_eq!(
            (s, cfg["apiKeyLast4"].as_str(), cfg["isEnabled"].as_bool()),
            (StatusCode::OK, Some("QRST"), Some(false))
        );
        let (s, cfg) = put(&owner, "claude", json!({ "maxTokensPerRequest": null })).await;
        assert_eq!(s, StatusCode::OK, "{cfg}");
        assert!(cfg["maxTokensPerRequest"].is_null(), "{cfg}");
        let keys = provider_keys(&env.db, &cipher, &ws).await.unwrap();
        assert_eq!(
            (
                keys.len(),
                keys[0].provider.as_str(),
                keys[0].max_tokens_per_request
            ),
            (1, "claude", None)
        );
        assert_eq!(keys[0].api_key, claude_key);

        // Delete.
        let (s, _) = env
            .call(
                Some(&admin.token),
                Method::DELETE,
                &format!("{base}/openai"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = env
            .call(
                Some(&admin.token),
                Method::DELETE,
                &format!("{base}/openai"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, list) = env.get(&member, &base).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(stored_keys(&env, &ws).await.len(), 1);

        env.stop().await;
    }
}

#[tokio::test]
async fn provider_keys_refused_without_an_encryption_key() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let mut setup = Setup::new(backend).await;
        setup.config.encryption_key = None;
        let env = setup.start().await;
        let owner = env.user("owner").await;
        let ws = env.workspace(&owner).await;
        let (s, err) = env
            .call(
                Some(&owner.token),
                Method::PUT,
                &format!("/api/v1/workspaces/{ws}/providers/openai"),
                Some(json!({ "apiKey": "sk-proj-0123456789" })),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{err}");
        assert_eq!(err["error"]["code"], "conflict");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("encryption key"),
            "{err}"
        );
        assert!(stored_keys(&env, &ws).await.is_empty());
        let (s, list) = env
            .get(&owner, &format!("/api/v1/workspaces/{ws}/providers"))
            .await;
        assert_eq!(s, StatusCode::OK);
        assert!(list["items"].as_array().unwrap().is_empty());
        env.stop().await;
    }
}

#[tokio::test]
async fn malformed_encryption_key_fails_start() {
    for backend in backends() {
        let mut setup = Setup::new(backend).await;
        setup.config.encryption_key = Some("not-a-32-byte-key".into());
        let err = match resonant::start(setup.config.clone()).await {
            Ok(_) => panic!("started with a malformed encryption key"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("--encryption-key"), "{err}");
        assert!(err.contains("32 bytes"), "{err}");
        setup.drop_schema().await;
    }
}

// ---------------------------------------------------------------------------------------
// Usage

#[tokio::test]
async fn usage_totals_breakdowns_and_ranges() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let env = Env::start(backend).await;
        let alice = env.user("alice").await;
        let bob = env.user("bob").await;
        let viewer = env.user("viewer").await;
        let outsider = env.user("outsider").await;
        let ws = env.workspace(&alice).await;
        let other_ws = env.workspace(&alice).await;
        env.add_member(&ws, &alice, &bob, "member").await;
        env.add_member(&ws, &alice, &viewer, "viewer").await;

        let t0: i64 = 1_700_000_000_000;
        let record = |ws: &str, user: &User, provider: &str, model: &str, i, o, cost, at| {
            let (db, ws, user, provider, model) = (
                env.db.clone(),
                ws.to_string(),
                user.id.clone(),
                provider.to_string(),
                model.to_string(),
            );
            async move {
                record_usage(
                    &db,
                    &NewUsage {
                        workspace_id: &ws,
                        user_id: &user,
                        execution_id: None,
                        provider: &provider,
                        model: &model,
                        input_tokens: i,
                        output_tokens: o,
                        cost_usd: cost,
                        created_at: at,
                    },
                )
                .await
                .unwrap()
            }
        };
        record(&ws, &alice, "claude", "claude-sonnet", 100, 50, 0.01, t0).await;
        record(&ws, &alice, "openai", "gpt-4o", 200, 100, 0.02, t0 + 1000).await;
        record(
            &ws,
            &bob,
            "claude",
            "claude-sonnet",
            10,
            5,
            0.001,
            t0 + 2000,
        )
        .await;
        record(&ws, &bob, "openai", "gpt-4o", 1000, 500, 0.5, t0 + 10_000).await;
        record(&other_ws, &alice, "openai", "gpt-4o", 7, 7, 0.7, t0 + 500).await;
        let recent = resonant::db::now_ms() - 60_000;
        record(&ws, &bob, "gemini", "gemini-pro", 1, 2, 0.003, recent).await;

        let usage = |user: &User, query: String| {
            let (env, token, path) = (
                &env,
                user.token.clone(),
                format!("/api/v1/workspaces/{ws}/usage{query}"),
            );
            async move { env.call(Some(&token), Method::GET, &path, None).await }
        };
        let close = |v: &Value, expected: f64| {
            let got = v.as_f64().unwrap();
            assert!((got - expected).abs() < 1e-9, "{got} != {expected}");
        };

        // [t0, t0+10000): the first three; `to` is exclusive.
        let (s, r) = usage(&viewer, format!("?from={t0}&to={}", t0 + 10_000)).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(
            (r["from"].as_i64(), r["to"].as_i64()),
            (Some(t0), Some(t0 + 10_000))
        );
        let totals = &r["totals"];
        assert_eq!(
            (
                &totals["inputTokens"],
                &totals["outputTokens"],
                &totals["totalTokens"],
                &totals["requests"]
            ),
            (&json!(310), &json!(155), &json!(465), &json!(3))
        );
        close(&totals["costUsd"], 0.031);
        let by_user = r["byUser"].as_array().unwrap();
        assert_eq!(by_user.len(), 2);
        assert_eq!(by_user[0]["userId"], alice.id.as_str());
        assert_eq!(by_user[0]["email"], format!("{}@example.com", alice.sub));
        assert_eq!(by_user[0]["totals"]["totalTokens"], 450);
        assert_eq!(by_user[0]["totals"]["requests"], 2);
        close(&by_user[0]["totals"]["costUsd"], 0.03);
        assert_eq!(by_user[1]["userId"], bob.id.as_str());
        assert_eq!(by_user[1]["totals"]["totalTokens"], 15);
        let by_model = r["byModel"].as_array().unwrap();
        assert_eq!(by_model.len(), 2);
        assert_eq!(
            (
                by_model[0]["provider"].as_str(),
                by_model[0]["model"].as_str()
            ),
            (Some("openai"), Some("gpt-4o"))
        );
        assert_eq!(by_model[0]["totals"]["totalTokens"], 300);
        assert_eq!(
            (
                by_model[1]["provider"].as_str(),
                by_model[1]["model"].as_str()
            ),
            (Some("claude"), Some("claude-sonnet"))
        );
        assert_eq!(by_model[1]["totals"]["inputTokens"], 110);
        assert_eq!(by_model[1]["totals"]["requests"], 2);

        // One millisecond more takes in the fourth; `from` is inclusive.
        let (_, r) = usage(&bob, format!("?from={t0}&to={}", t0 + 10_001)).await;
        assert_eq!(r["totals"]["totalTokens"], 1965);
        assert_eq!(r["totals"]["requests"], 4);
        assert_eq!(r["byUser"][0]["userId"], bob.id.as_str());
        assert_eq!(r["byUser"][0]["totals"]["totalTokens"], 1515);
        let (_, r) = usage(&bob, format!("?from={}&to={}", t0 + 1000, t0 + 10_001)).await;
        assert_eq!(r["totals"]["requests"], 3);
        assert_eq!(r["totals"]["totalTokens"], 1815);
        let (_, r) = usage(&bob, format!("?from={}&to={}", t0 + 1, t0 + 1000)).await;
        assert_eq!(r["totals"]["requests"], 0);
        assert!(r["byUser"].as_array().unwrap().is_empty());
        close(&r["totals"]["costUsd"], 0.0);

        // Default: the last 30 days.
        let (s, r) = usage(&alice, String::new()).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["totals"]["requests"], 1);
        assert_eq!(r["byModel"][0]["model"], "gemini-pro");
        let span = r["to"].as_i64().unwrap() - r["from"].as_i64().unwrap();
        assert_eq!(span, 30 * 24 * 3600 * 1000);

        // Ranges are validated, naming the field.
        for query in [
            format!("?from={t0}&to={t0}"),
            format!("?from={}&to={t0}", t0 + 1),
            "?from=-5".to_string(),
            "?from=yesterday".to_string(),
        ] {
            let (s, err) = usage(&alice, query.clone()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {err}");
            assert_eq!(field(&err), "from", "{query}: {err}");
        }
        let (s, err) = usage(&alice, "?to=soon".into()).await;
        assert_eq!((s, field(&err)), (StatusCode::BAD_REQUEST, "to"));
        // Members only.
        assert_eq!(
            usage(&outsider, String::new()).await.0,
            StatusCode::NOT_FOUND
        );

        // The users' running totals.
        let used: Vec<(String, i64)> = with_pool!(&env.db, p => sqlx::query_as(
            "SELECT id, tokens_used FROM users WHERE id = $1 OR id = $2 ORDER BY id")
            .bind(&alice.id).bind(&bob.id).fetch_all(p).await.unwrap());
        for (id, tokens) in used {
            let expected = if id == alice.id {
                150 + 300 + 14
            } else {
                15 + 1500 + 3
            };
            assert_eq!(tokens, expected, "{id}");
        }

        env.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// Clerk

fn clerk_user(kind: &str, id: &str, primary: &str, first: &str) -> Value {
    json!({
        "type": kind,
        "object": "event",
        "data": {
            "id": id,
            "object": "user",
            "first_name": first,
            "last_name": "Lovelace",
            "image_url": "https://img.example.com/ada.png",
            "primary_email_address_id": primary,
            "email_addresses": [
                { "id": "idn_a", "email_address": "ada@example.com", "object": "email_address" },
                { "id": "idn_b", "email_address": "countess@example.com", "object": "email_address" },
                { "id": "idn_c", "email_address": "analytical@example.com", "object": "email_address" },
            ],
        },
    })
}

#[tokio::test]
async fn clerk_webhook_syncs_users_and_refuses_forgeries_and_replays() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let env = Env::start(backend).await;
        let sub = format!("user_{}", random_text(20));
        let token = env.token(&sub);
        let me = || env.call(Some(&token), Method::GET, "/api/v1/me", None);

        // user.created: the row exists before the user ever signs in.
        let created = clerk_user("user.created", &sub, "idn_b", "Ada");
        let (s, r) = env.clerk("msg_created", &created).await;
        assert_eq!((s, &r), (StatusCode::OK, &json!({ "status": "processed" })));
        assert_eq!(
            env.user_row(&sub).await,
            Some((
                Some("countess@example.com".into()),
                Some("Ada Lovelace".into()),
                false
            ))
        );
        let (s, user) = me().await;
        assert_eq!(s, StatusCode::OK, "{user}");
        assert_eq!(user["email"], "countess@example.com");
        assert_eq!(user["name"], "Ada Lovelace");
        assert_eq!(user["imageUrl"], "https://img.example.com/ada.png");

        // user.updated: seen at once, though the signed-in user is cached.
        let updated = clerk_user("user.updated", &sub, "idn_a", "Ada");
        let (s, r) = env.clerk("msg_updated_1", &updated).await;
        assert_eq!(
            (s, r["status"].as_str()),
            (StatusCode::OK, Some("processed"))
        );
        assert_eq!(me().await.1["email"], "ada@example.com");

        // Tampered body, stale or future timestamp, missing signature: 400, nothing changes.
        let forged = clerk_user("user.updated", &sub, "idn_c", "Eve").to_string();
        let (s, err) = env
            .clerk_raw("msg_forged", now_secs(), &updated.to_string(), &forged)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"]["code"], "bad_request");
        for ts in [now_secs() - 3600, now_secs() + 3600] {
            let (s, err) = env.clerk_raw("msg_stale", ts, &forged, &forged).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
            assert!(
                err["error"]["message"].as_str().unwrap().contains("window"),
                "{err}"
            );
        }
        let (s, _) = env
            .send(
                env.http
                    .post(format!("http://{}/webhooks/clerk", env.addr()))
                    .body(forged.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(me().await.1["email"], "ada@example.com");
        assert!(!env.seen("clerk", "msg_forged").await);
        assert!(!env.seen("clerk", "msg_stale").await);

        // A replayed delivery (same svix-id, freshly signed as Svix retries are) changes
        // nothing, even though a later event changed the user since.
        let third = clerk_user("user.updated", &sub, "idn_c", "Ada");
        let (s, _) = env.clerk("msg_updated_2", &third).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(me().await.1["email"], "analytical@example.com");
        let (s, r) = env.clerk("msg_updated_1", &updated).await;
        assert_eq!((s, &r), (StatusCode::OK, &json!({ "status": "duplicate" })));
        assert_eq!(me().await.1["email"], "analytical@example.com");

        // Unknown event types are acknowledged and recorded.
        let session = json!({ "type": "session.created", "data": { "id": "sess_1" } });
        let (s, r) = env.clerk("msg_session", &session).await;
        assert_eq!((s, r["status"].as_str()), (StatusCode::OK, Some("ignored")));
        assert!(env.seen("clerk", "msg_session").await);
        assert_eq!(
            env.clerk("msg_session", &session).await.1["status"],
            "duplicate"
        );

        // A signed event without a user id is a 400 and is not recorded.
        let (s, err) = env
            .clerk("msg_no_id", &json!({ "type": "user.deleted", "data": {} }))
            .await;
        assert_eq!((s, field(&err)), (StatusCode::BAD_REQUEST, "data.id"));
        assert!(!env.seen("clerk", "msg_no_id").await);

        // user.deleted: the user's token stops working over REST.
        let deleted = json!({ "type": "user.deleted", "data": { "id": sub, "object": "user", "deleted": true } });
        let (s, r) = env.clerk("msg_deleted", &deleted).await;
        assert_eq!(
            (s, r["status"].as_str()),
            (StatusCode::OK, Some("processed"))
        );
        let (s, err) = me().await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{err}");
        assert!(env.user_row(&sub).await.unwrap().2);
        // And a user.created for the same id brings it back.
        let (s, _) = env.clerk("msg_recreated", &created).await;
        assert_eq!(s, StatusCode::OK);
        let (s, user) = me().await;
        assert_eq!(s, StatusCode::OK, "{user}");
        assert_eq!(user["email"], "countess@example.com");

        env.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// Stripe

fn subscription(
    event: &str,
    kind: &str,
    sub: &str,
    customer: &str,
    status: &str,
    extra: Value,
) -> Value {
    let mut object =
        json!({ "id": sub, "object": "subscription", "customer": customer, "status": status });
    for (k, v) in extra.as_object().unwrap() {
        object[k] = v.clone();
    }
    json!({ "id": event, "object": "event", "type": kind, "data": { "object": object } })
}

fn price(lookup_key: Option<&str>, plan_meta: Option<&str>) -> Value {
    json!({ "items": { "object": "list", "data": [ { "id": "si_1", "price": {
        "id": "price_1", "lookup_key": lookup_key,
        "metadata": plan_meta.map(|p| json!({ "plan": p })).unwrap_or(json!({})) } } ] } })
}

#[tokio::test]
async fn stripe_webhook_sets_plans_and_limits_and_refuses_forgeries_and_replays() {
    for backend in backends() {
        eprintln!("backend: {backend:?}");
        let mut setup = Setup::new(backend).await;
        setup.config.plan_tokens = PlanTokens(vec![
            ("free".into(), 1_000),
            ("pro".into(), 777_000),
            ("team".into(), 3_000_000),
        ]);
        let env = setup.start().await;
        let alice = env.user("alice").await;
        let bob = env.user("bob").await;
        let me = |user: &User| {
            let token = user.token.clone();
            let env = &env;
            async move {
                env.call(Some(&token), Method::GET, "/api/v1/me", None)
                    .await
            }
        };
        let plan_of = |v: &Value| {
            (
                v["subscriptionPlan"].as_str().map(str::to_string),
                v["subscriptionStatus"].as_str().map(str::to_string),
                v["tokensLimit"].as_i64().unwrap(),
            )
        };
        let plan = |p: &str, s: &str, l: i64| (Some(p.to_string()), Some(s.to_string()), l);
        let cus = format!("cus_{}", random_text(12));

        // Created, found through the Clerk id in the metadata: plan and limit from the table.
        let mut created = subscription(
            "evt_1",
            "customer.subscription.created",
            "sub_1",
            &cus,
            "active",
            json!({ "metadata": { "clerkId": alice.sub } }),
        );
        created["data"]["object"]["items"] = price(Some("pro"), None)["items"].clone();
        let (s, r) = env.stripe(&created).await;
        assert_eq!((s, &r), (StatusCode::OK, &json!({ "status": "processed" })));
        assert_eq!(plan_of(&me(&alice).await.1), plan("pro", "active", 777_000));
        let stored: (Option<String>, Option<String>) = with_pool!(&env.db, p => sqlx::query_as(
            "SELECT stripe_customer_id, subscription_id FROM users WHERE id = $1")
            .bind(&alice.id).fetch_one(p).await.unwrap());
        assert_eq!(stored, (Some(cus.clone()), Some("sub_1".into())));

        // Updated, found through the stored customer id; plan from the price's metadata.
        let mut updated = subscription(
            "evt_2",
            "customer.subscription.updated",
            "sub_1",
            &cus,
            "past_due",
            json!({}),
        );
        updated["data"]["object"]["items"] = price(None, Some("team"))["items"].clone();
        assert_eq!(env.stripe(&updated).await.0, StatusCode::OK);
        assert_eq!(
            plan_of(&me(&alice).await.1),
            plan("team", "past_due", 3_000_000)
        );

        // A plan the table does not know is ignored (the status still applies).
        let mut unknown = subscription(
            "evt_3",
            "customer.subscription.updated",
            "sub_1",
            &cus,
            "active",
            json!({ "metadata": { "plan": "platinum" } }),
        );
        unknown["data"]["object"]["items"] = price(Some("platinum"), None)["items"].clone();
        assert_eq!(env.stripe(&unknown).await.0, StatusCode::OK);
        assert_eq!(
            plan_of(&me(&alice).await.1),
            plan("team", "active", 3_000_000)
        );

        // Tampered and stale deliveries: 400, nothing changes, nothing recorded.
        let mut forged = subscription(
            "evt_forged",
            "customer.subscription.updated",
            "sub_1",
            &cus,
            "active",
            json!({ "metadata": { "plan": "pro" } }),
        );
        let signed = forged.to_string();
        forged["data"]["object"]["metadata"]["plan"] = json!("team");
        let (s, err) = env
            .stripe_raw(now_secs(), &signed, &forged.to_string())
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
        let (s, err) = env.stripe_raw(now_secs() - 3600, &signed, &signed).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains("window"),
            "{err}"
        );
        let (s, _) = env
            .send(
                env.http
                    .post(format!("http://{}/webhooks/stripe", env.addr()))
                    .body(signed.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(!env.seen("stripe", "evt_forged").await);
        assert_eq!(
            plan_of(&me(&alice).await.1),
            plan("team", "active", 3_000_000)
        );

        // A replay of evt_1 (which set "pro") changes nothing.
        let (s, r) = env.stripe(&created).await;
        assert_eq!((s, &r), (StatusCode::OK, &json!({ "status": "duplicate" })));
        assert_eq!(
            plan_of(&me(&alice).await.1),
            plan("team", "active", 3_000_000)
        );

        // Deleted: canceled, and the free plan's allowance.
        let deleted = subscription(
            "evt_4",
            "customer.subscription.deleted",
            "sub_1",
            &cus,
            "canceled",
            json!({}),
        );
        assert_eq!(env.stripe(&deleted).await.1["status"], "processed");
        assert_eq!(
            plan_of(&me(&alice).await.1),
            plan("free", "canceled", 1_000)
        );

        // A late deletion of an old subscription does not cancel the current one.
        let mut newer = subscription(
            "evt_5",
            "customer.subscription.created",
            "sub_2",
            &cus,
            "active",
            json!({}),
        );
        newer["data"]["object"]["items"] = price(Some("pro"), None)["items"].clone();
        assert_eq!(env.stripe(&newer).await.1["status"], "processed");
        let late = subscription(
            "evt_6",
            "customer.subscription.deleted",
            "sub_0",
            &cus,
            "canceled",
            json!({}),
        );
        assert_eq!(env.stripe(&late).await.1["status"], "ignored");
        assert_eq!(plan_of(&me(&alice).await.1), plan("pro", "active", 777_000));

        // Found through our user id in the metadata.
        let bob_cus = format!("cus_{}", random_text(12));
        let by_id = subscription(
            "evt_7",
            "customer.subscription.created",
            "sub_b",
            &bob_cus,
            "trialing",
            json!({ "metadata": { "userId": bob.id, "plan": "team" } }),
        );
        assert_eq!(env.stripe(&by_id).await.1["status"], "processed");
        assert_eq!(
            plan_of(&me(&bob).await.1),
            plan("team", "trialing", 3_000_000)
        );
        assert_eq!(plan_of(&me(&alice).await.1), plan("pro", "active", 777_000));

        // Unknown customer: acknowledged, ignored, not recorded (a redelivery may apply it).
        let stranger = subscription(
            "evt_8",
            "customer.subscription.created",
            "sub_x",
            "cus_nobody",
            "active",
            json!({ "metadata": { "plan": "pro" } }),
        );
        assert_eq!(
            env.stripe(&stranger).await,
            (StatusCode::OK, json!({ "status": "ignored" }))
        );
        assert!(!env.seen("stripe", "evt_8").await);
        // Other event types: acknowledged, ignored, recorded.
        let invoice = json!({ "id": "evt_9", "type": "invoice.paid", "data": { "object": { "id": "in_1" } } });
        assert_eq!(
            env.stripe(&invoice).await,
            (StatusCode::OK, json!({ "status": "ignored" }))
        );
        assert!(env.seen("stripe", "evt_9").await);
        assert_eq!(env.stripe(&invoice).await.1["status"], "duplicate");
        // An event without an id cannot be deduplicated: refused.
        let (s, err) = env
            .stripe(&json!({ "type": "invoice.paid", "data": {} }))
            .await;
        assert_eq!((s, field(&err)), (StatusCode::BAD_REQUEST, "id"));

        env.stop().await;
    }
}

#[tokio::test]
async fn webhooks_do_not_exist_without_their_secrets() {
    for backend in backends() {
        let mut setup = Setup::new(backend).await;
        setup.config.clerk_webhook_secret = None;
        setup.config.stripe_webhook_secret = None;
        let env = setup.start().await;
        for path in ["/webhooks/clerk", "/webhooks/stripe"] {
            let (s, err) = env
                .send(
                    env.http
                        .post(format!("http://{}{path}", env.addr()))
                        .body("{}"),
                )
                .await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {err}");
        }
        env.stop().await;
    }
}

#[tokio::test]
async fn webhook_bodies_are_limited() {
    let env = Env::start(Backend::Sqlite).await;
    let big = format!(
        "{{\"type\":\"user.updated\",\"pad\":\"{}\"}}",
        "x".repeat(300 * 1024)
    );
    let (s, err) = env.clerk_raw("msg_big", now_secs(), &big, &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert!(!env.seen("clerk", "msg_big").await);
    env.stop().await;
}
