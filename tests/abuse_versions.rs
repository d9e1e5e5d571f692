//! B16: saving versions of a large document, over real HTTP and WebSockets, on SQLite and (when
//! `TEST_DATABASE_URL` is set, and then it must be reachable) Postgres. Each save used to copy
//! the whole document twice (JSON and Yjs state): 10 saves of 8 MB grew the database by
//! ~168 MB. Now each distinct state is stored once, as a delta where cheaper, and quotas bound
//! what a workspace and a workflow may keep.

mod common;

use std::net::SocketAddr;

use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};
use tempfile::TempDir;
use yrs::{Map, ReadTxn, WriteTxn};

use common::api::{backends, fresh_schema, Backend};
use common::{room_url, Client};

/// A dev-mode server on one backend, with the handle to measure its storage.
struct Env {
    server: resonant::Server,
    dir: TempDir,
    /// The schema's admin pool and name on Postgres.
    schema: Option<(sqlx::PgPool, String)>,
    http: reqwest::Client,
}

impl Env {
    async fn start(backend: Backend, tweak: impl FnOnce(&mut resonant::ServeConfig)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut config = resonant::ServeConfig::for_tests(dir.path().to_path_buf());
        // No snapshot of the room during the test: the growth measured is the versions'.
        config.compact_after_bytes = 1 << 40;
        config.socket_bytes_per_sec = 256 << 20;
        config.max_message_bytes = 64 << 20;
        config.max_queued_bytes = 64 << 20;
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
            dir,
            schema,
            http: reqwest::Client::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn new_workflow(&self) -> String {
        let (_, spaces) = self
            .call(reqwest::Method::GET, "/api/v1/workspaces", None)
            .await;
        let ws = spaces["items"][0]["id"].as_str().unwrap().to_string();
        let (status, wf) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/workspaces/{ws}/workflows"),
                Some(json!({"name": "big"})),
            )
            .await;
        assert_eq!(status, 201, "{wf}");
        wf["id"].as_str().unwrap().to_string()
    }

    async fn save(&self, workflow: &str, name: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/workflows/{workflow}/versions"),
            Some(json!({ "name": name })),
        )
        .await
    }

    async fn content(&self, workflow: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/workflows/{workflow}/content"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Bytes the database holds in live pages (SQLite) or relations (Postgres).
    async fn stored_bytes(&self) -> i64 {
        match &self.schema {
            Some((pool, schema)) => {
                let (bytes,): (i64,) = sqlx::query_as(
                    "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind = 'r'",
                )
                .bind(schema)
                .fetch_one(pool)
                .await
                .unwrap();
                bytes
            }
            None => {
                let pool = self.sqlite().await;
                let pragma = |name: &'static str| {
                    let pool = pool.clone();
                    async move {
                        let (v,): (i64,) = sqlx::query_as(&format!("PRAGMA {name}"))
                            .fetch_one(&pool)
                            .await
                            .unwrap();
                        v
                    }
                };
                let live = pragma("page_count").await - pragma("freelist_count").await;
                let bytes = live * pragma("page_size").await;
                pool.close().await;
                bytes
            }
        }
    }

    async fn sqlite(&self) -> sqlx::SqlitePool {
        let path = self.dir.path().join("resonant.db");
        sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
            .await
            .unwrap()
    }

    /// The chain depth of a version's stored state (0: stored full).
    async fn depth_of(&self, workflow: &str, version: i64) -> i64 {
        let sql = "SELECT s.depth FROM workflow_versions v JOIN version_states s \
                   ON s.workflow_id = v.workflow_id AND s.key = v.state_key \
                   WHERE v.workflow_id = $1 AND v.version = $2";
        let (depth,): (i64,) = match &self.schema {
            Some((pool, schema)) => {
                let mut conn = pool.acquire().await.unwrap();
                sqlx::query(&format!("SET search_path TO {schema}"))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                sqlx::query_as(sql)
                    .bind(workflow)
                    .bind(version)
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap()
            }
            None => {
                let pool = self.sqlite().await;
                let row = sqlx::query_as(sql)
                    .bind(workflow)
                    .bind(version)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                row
            }
        };
        depth
    }
}

/// An editor of `workflow` whose document holds `bytes` of random text under `meta.big`.
async fn editor_with(env: &Env, workflow: &str, bytes: usize) -> Client {
    let room = room_url(env.addr(), &format!("workflow-{workflow}"));
    let mut editor = Client::connect_synced(&room).await;
    editor.opt_in().await;
    let big = Alphanumeric.sample_string(&mut rand::thread_rng(), bytes);
    set(&mut editor, move |txn| {
        let meta = txn.get_or_insert_map("meta");
        meta.insert(txn, "big", big);
    })
    .await;
    editor
}

/// Applies one edit and waits until the server has saved it.
async fn set(editor: &mut Client, f: impl FnOnce(&mut yrs::TransactionMut) + Send + 'static) {
    let acked = editor.acks;
    editor.edit(move |_, txn| f(txn)).await;
    editor.until("the edit is saved", |c| c.acks > acked).await;
}

async fn set_n(editor: &mut Client, n: i64) {
    set(editor, move |txn| {
        let meta = txn.get_or_insert_map("meta");
        meta.insert(txn, "n", n);
    })
    .await;
}

const MB: f64 = 1_000_000.0;

/// 10 saves of an 8 MB document (a small edit between each) grow the database by about one
/// copy of it, not 20; a version stored as a delta reads back and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_saves_of_an_8_mb_document_store_it_about_once() {
    for backend in backends() {
        let env = Env::start(backend, |_| {}).await;
        let workflow = env.new_workflow().await;
        let size = 8 << 20;
        let mut editor = editor_with(&env, &workflow, size).await;
        set_n(&mut editor, 0).await;
        let before = env.stored_bytes().await;
        let mut contents = Vec::new();
        for i in 1..=10 {
            set_n(&mut editor, i).await;
            contents.push(env.content(&workflow).await);
            let (status, body) = env.save(&workflow, &format!("save {i}")).await;
            assert_eq!(status, 201, "{backend:?}: {body}");
            assert_eq!(body["version"], i);
        }
        // Saving the unchanged document again stores nothing new.
        let (status, body) = env.save(&workflow, "unchanged").await;
        assert_eq!(status, 201, "{body}");
        let after = env.stored_bytes().await;
        let grown = after - before;
        eprintln!(
            "{backend:?}: 11 saves of a {:.1} MB document grew the database by {:.1} MB \
             ({:.1} MB -> {:.1} MB)",
            size as f64 / MB,
            grown as f64 / MB,
            before as f64 / MB,
            after as f64 / MB
        );
        assert!(
            (grown as f64) < 1.5 * size as f64,
            "{backend:?}: grew by {grown} bytes for a {size}-byte document"
        );

        // Version 5 is stored as a delta; it reads back and restores exactly.
        assert!(env.depth_of(&workflow, 5).await > 0, "{backend:?}");
        let (status, v5) = env
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/workflows/{workflow}/versions/5"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v5}");
        assert!(
            v5["content"] == contents[4],
            "{backend:?}: version 5 reads back"
        );
        let (status, body) = env
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/workflows/{workflow}/versions/5/restore"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            env.content(&workflow).await == contents[4],
            "{backend:?}: the restored document is version 5"
        );
        editor
            .until("the restore reaches the editor", |c| {
                let txn = yrs::Transact::transact(&c.doc);
                txn.get_map("meta")
                    .and_then(|m| m.get(&txn, "n"))
                    .is_some_and(|n| n.to_string(&txn) == "5")
            })
            .await;
        editor.close().await;
        env.server.shutdown().await.unwrap();
    }
}

/// Past `--max-versions-per-workflow` a save answers 409 `quota_exceeded`, stores nothing,
/// and the versions already saved stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_past_its_version_count_is_refused() {
    for backend in backends() {
        let env = Env::start(backend, |c| c.max_versions_per_workflow = 3).await;
        let workflow = env.new_workflow().await;
        let mut editor = editor_with(&env, &workflow, 1000).await;
        for i in 1..=3 {
            set_n(&mut editor, i).await;
            let (status, body) = env.save(&workflow, "v").await;
            assert_eq!(status, 201, "{backend:?}: {body}");
        }
        set_n(&mut editor, 4).await;
        let (status, body) = env.save(&workflow, "one too many").await;
        assert_eq!(status, 409, "{backend:?}: {body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--max-versions-per-workflow"), "{message}");
        let (status, list) = env
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/workflows/{workflow}/versions"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");
        // A restore saves a backup version first: refused the same way, nothing restored.
        let (status, body) = env
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/workflows/{workflow}/versions/1/restore"),
                None,
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
        assert_eq!(env.content(&workflow).await["meta"]["n"], 4);
        editor.close().await;
        env.server.shutdown().await.unwrap();
    }
}

/// Past `--max-workspace-stored-bytes` (counted over all the workspace's workflows) a save
/// that would store a new state answers 409 `quota_exceeded`; saving an unchanged document
/// and small changes (deltas) still fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_past_its_stored_bytes_is_refused() {
    for backend in backends() {
        let env = Env::start(backend, |c| c.max_workspace_stored_bytes = 1_500_000).await;
        let first = env.new_workflow().await;
        let mut editor = editor_with(&env, &first, 1_000_000).await;
        let (status, body) = env.save(&first, "full").await;
        assert_eq!(status, 201, "{backend:?}: {body}");
        let (status, body) = env.save(&first, "unchanged").await;
        assert_eq!(
            status, 201,
            "{backend:?}: an unchanged document is free: {body}"
        );
        set_n(&mut editor, 1).await;
        let (status, body) = env.save(&first, "small change").await;
        assert_eq!(status, 201, "{backend:?}: a delta fits: {body}");

        // Another workflow of the same workspace with its own megabyte does not fit.
        let second = env.new_workflow().await;
        let other = editor_with(&env, &second, 1_000_000).await;
        let (status, body) = env.save(&second, "too much").await;
        assert_eq!(status, 409, "{backend:?}: {body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("--max-workspace-stored-bytes"),
            "{message}"
        );
        let (status, list) = env
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/workflows/{second}/versions"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
        editor.close().await;
        other.close().await;
        env.server.shutdown().await.unwrap();
    }
}
