//! Helpers for execution tests: a server with a signed-in owner and a workspace, workflows
//! written into the document by a real sync client, and event inspection.

use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use yrs::{Any, Array, In, MapPrelim, WriteTxn};

use super::api::{call, fresh_schema, sign_in, Backend, User};
use super::{room_url, Client};

/// The JWT secret of execution test servers.
pub const SECRET: &str = "executions-test-secret-executions-test-secret";

/// A test server with an owner and a workspace.
pub struct Env {
    /// The server.
    pub server: resonant::Server,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// The workspace owner.
    pub owner: User,
    /// The workspace id.
    pub ws: String,
    _dir: TempDir,
    schema: Option<(String, sqlx::PgPool, String)>,
}

impl Env {
    /// A server with default settings (demo provider at full speed, no rate limits).
    pub async fn new(backend: Backend) -> Env {
        Env::with(backend, |_| {}).await
    }

    /// A server with `tweak` applied to its configuration.
    pub async fn with(backend: Backend, tweak: impl FnOnce(&mut resonant::ServeConfig)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut config = resonant::ServeConfig::for_tests(dir.path().into());
        config.jwt_secret = Some(SECRET.into());
        config.rate_api_per_sec = 0.0;
        config.rate_socket_per_sec = 0.0;
        config.rate_connect_per_sec = 0.0;
        config.demo_delay_ms = 0;
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let s = fresh_schema().await;
                config.database_url = Some(s.0.clone());
                Some(s)
            }
        };
        tweak(&mut config);
        let server = resonant::start(config).await.expect("server starts");
        let http = reqwest::Client::new();
        let owner = sign_in(&http, server.addr(), SECRET, "owner").await;
        let (s, ws) = call(
            &http,
            server.addr(),
            Some(&owner.token),
            Method::POST,
            "/api/v1/workspaces",
            Some(json!({"name": "Runs"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{ws}");
        let ws = ws["id"].as_str().unwrap().to_string();
        Env {
            server,
            http,
            owner,
            ws,
            _dir: dir,
            schema,
        }
    }

    /// The Postgres URL of its schema (`None` on SQLite), for a second node on it.
    pub fn database_url(&self) -> Option<String> {
        self.schema.as_ref().map(|(url, _, _)| url.clone())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A JSON call as `user`.
    pub async fn call(
        &self,
        user: &User,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(
            &self.http,
            self.addr(),
            Some(&user.token),
            method,
            path,
            body,
        )
        .await
    }

    /// `GET path` as the owner.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(&self.owner, Method::GET, path, None).await
    }

    /// `POST path` with an optional JSON body, as the owner.
    pub async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(&self.owner, Method::POST, path, body).await
    }

    /// `DELETE path` as the owner.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(&self.owner, Method::DELETE, path, None).await
    }

    /// A new workflow whose document holds `graph` (blocks and connections).
    pub async fn workflow(&self, graph: Value) -> String {
        let (s, wf) = self
            .call(
                &self.owner,
                Method::POST,
                &format!("/api/v1/workspaces/{}/workflows", self.ws),
                Some(json!({"name": "flow"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{wf}");
        let id = wf["id"].as_str().unwrap().to_string();
        let mut c = self.editor(&id, &self.owner).await;
        c.opt_in().await;
        put_graph(&mut c, &graph).await;
        c.close().await;
        id
    }

    /// A synced editor of a workflow's room that has not opted in to extensions.
    pub async fn editor(&self, workflow: &str, user: &User) -> Client {
        let url = format!(
            "{}?token={}",
            room_url(self.addr(), &format!("workflow-{workflow}")),
            user.token
        );
        Client::connect_synced(&url).await
    }

    /// An editor that opted in (gets execution events).
    pub async fn watcher(&self, workflow: &str) -> Client {
        let mut c = self.editor(workflow, &self.owner).await;
        c.opt_in().await;
        c
    }

    /// `POST /workflows/{id}/executions` as the owner.
    pub async fn start(&self, workflow: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            &self.owner,
            Method::POST,
            &format!("/api/v1/workflows/{workflow}/executions"),
            Some(body),
        )
        .await
    }

    /// Starts an execution with `input`; returns its id.
    pub async fn run(&self, workflow: &str, input: Value) -> String {
        let (s, e) = self.start(workflow, json!({"input": input})).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        e["id"].as_str().unwrap().to_string()
    }

    /// `GET /executions/{id}`.
    pub async fn execution(&self, id: &str) -> Value {
        let (s, e) = self
            .call(
                &self.owner,
                Method::GET,
                &format!("/api/v1/executions/{id}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{e}");
        e
    }

    /// Drops the Postgres schema, if any.
    pub async fn cleanup(self) {
        if let Some((_, pool, schema)) = &self.schema {
            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(pool)
                .await;
        }
    }
}

/// The execution events a client received for `execution`, parsed, in arrival order.
pub fn events_of(c: &Client, execution: &str) -> Vec<Value> {
    c.stateless
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(m).ok())
        .filter(|v| v["executionId"] == execution && v.get("seq").is_some())
        .collect()
}

/// Whether the client has received the end of `execution`.
pub fn finished(c: &super::ClientState, execution: &str) -> bool {
    c.stateless.iter().any(|m| {
        m.contains(execution)
            && (m.contains("\"execution.completed\"")
                || m.contains("\"execution.failed\"")
                || m.contains("\"execution.cancelled\""))
    })
}

/// Waits for the end of `execution`; returns its events as received.
pub async fn until_finished(c: &mut Client, execution: &str) -> Vec<Value> {
    let id = execution.to_string();
    c.until("the execution ends", move |s| finished(s, &id))
        .await;
    events_of(c, execution)
}

/// The stored result of `block` in an execution as `GET /executions/{id}` shows it (panics
/// if it has none).
pub fn block_result(execution: &Value, block: &str) -> Value {
    execution["blockResults"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["blockId"] == block)
        .cloned()
        .unwrap_or_else(|| panic!("no result for {block}: {execution}"))
}

/// The `block.completed` event of `block` (panics, listing the events, if there is none).
pub fn completed(events: &[Value], block: &str) -> Value {
    events
        .iter()
        .find(|e| e["type"] == "block.completed" && e["blockId"] == block)
        .cloned()
        .unwrap_or_else(|| panic!("{block} did not complete: {:?}", kinds(events)))
}

/// Each event as `type` or `type:block`, for compact assertions.
pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["blockId"].as_str() {
            Some(b) => format!("{}:{b}", e["type"].as_str().unwrap()),
            None => e["type"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Asserts the seqs are exactly 1..=n, in order.
pub fn assert_gapless(events: &[Value]) {
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "seqs must be 1..n with no gap or duplicate");
}

/// A block as an editor stores it.
pub fn block(id: &str, kind: &str, config: Value) -> Value {
    json!({"id": id, "type": kind, "position": {"x": 0, "y": 0}, "data": {"label": id}, "config": config})
}

/// A connection.
pub fn edge(source: &str, target: &str) -> Value {
    json!({"id": format!("{source}-{target}"), "source": source, "target": target})
}

/// A connection leaving through a source handle.
pub fn edge_h(source: &str, handle: &str, target: &str) -> Value {
    json!({"id": format!("{source}-{handle}-{target}"), "source": source, "sourceHandle": handle, "target": target})
}

/// Writes `graph` (blocks and connections) into the document through `c` and waits until the
/// server has stored it (`c` must have opted in).
pub async fn put_graph(c: &mut Client, graph: &Value) {
    c.edit(|_doc, txn| {
        for name in ["blocks", "connections"] {
            let array = txn.get_or_insert_array(name);
            for item in graph[name].as_array().cloned().unwrap_or_default() {
                let fields: Vec<(String, In)> = item
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            In::Any(serde_json::from_value::<Any>(v.clone()).unwrap()),
                        )
                    })
                    .collect();
                array.push_back(txn, MapPrelim::from_iter(fields));
            }
        }
    })
    .await;
    c.until("the graph is stored", |s| s.acks >= 1).await;
}
