//! Issue 18, executions across nodes (docs/scale-out.md §7): two engines ("nodes") over one
//! Postgres schema, each with its own pool, rooms and lease task, run each execution once.
//! An execution runs on the node that started it for as long as that node renews its lease;
//! a node that dies (or is cut off) loses it and another node finishes the run from what is
//! stored; cancels and decisions reach the owner through the database.
//!
//! Against the real Postgres at `TEST_DATABASE_URL`, each test in a schema of its own (the
//! tests fail, not skip, when it is set and unreachable; they skip, saying so, when unset).
//! Workflows use webhook blocks against a local server that counts calls, delays and human
//! blocks: no network, no AI provider.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use resonant_db::executions::{self as store, ExecutionRow};
use resonant_db::{leases, Db};
use resonant_engine::http::{EgressPolicy, WebhookClient};
use resonant_engine::{ClusterConfig, Engine, EngineConfig, EngineError, Io, StartRequest};
use resonant_store::{Journal, JournalConfig, MemoryStore};
use resonant_sync::{Rooms, SyncConfig};
use serde_json::{json, Value};
use yrs::{Any, Array, In, MapPrelim, ReadTxn, Transact, WriteTxn};

const TTL: Duration = Duration::from_millis(1500);
const RENEW: Duration = Duration::from_millis(300);
const SWEEP: Duration = Duration::from_millis(300);

fn postgres_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("TEST_DATABASE_URL is not set: skipping");
            None
        }
    }
}

/// One Postgres schema shared by the nodes of a test, with a user, a workspace and a workflow.
struct Cluster {
    url: String,
    admin: sqlx::PgPool,
    schema: String,
    db: Db,
    user: resonant_db::User,
    workflow: resonant_db::Workflow,
    hooks: Hooks,
}

impl Cluster {
    async fn new(name: &str) -> Option<Cluster> {
        let url = postgres_url()?;
        let schema = format!("leases_{name}_{}", std::process::id());
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("TEST_DATABASE_URL is set, so Postgres must be reachable");
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!(
            "{url}{}options=-c%20search_path%3D{schema}",
            if url.contains('?') { '&' } else { '?' }
        );
        let db = Db::Postgres(sqlx::PgPool::connect(&url).await.unwrap());
        resonant_db::migrate(&db).await.unwrap();
        let profile = resonant_db::UserProfile {
            email: Some("owner@example.com".into()),
            name: None,
            image_url: None,
        };
        let user = resonant_db::upsert_user(&db, "ext-owner", &profile, 1_000_000, false)
            .await
            .unwrap();
        let ws = resonant_db::create_workspace(&db, &user.id, "w", &format!("w-{name}"))
            .await
            .unwrap();
        let workflow = resonant_db::create_workflow(&db, &ws.id, &user.id, "f", None)
            .await
            .unwrap();
        Some(Cluster {
            url,
            admin,
            schema,
            db,
            user,
            workflow,
            hooks: Hooks::start().await,
        })
    }

    /// A node: an engine with its own pool, rooms and lease task.
    async fn node(&self, name: &str) -> Node {
        self.node_with(name, |_| {}).await
    }

    /// A node with `tweak` applied to its cluster settings.
    async fn node_with(&self, name: &str, tweak: impl FnOnce(&mut ClusterConfig)) -> Node {
        let db = Db::Postgres(sqlx::PgPool::connect(&self.url).await.unwrap());
        let store: Arc<dyn resonant_store::Store> = Arc::new(MemoryStore::default());
        let (journal, _task) = Journal::start(store.clone(), JournalConfig::default());
        let rooms = Rooms::new(store, journal, SyncConfig::default());
        let mut cluster = ClusterConfig {
            node: name.to_owned(),
            lease_ttl: TTL,
            renew_every: RENEW,
            sweep_every: SWEEP,
        };
        tweak(&mut cluster);
        let config = EngineConfig {
            cluster: Some(cluster),
            ..EngineConfig::default()
        };
        let io = Io {
            webhooks: WebhookClient::new(EgressPolicy::parse(&["127.0.0.1".into()]).unwrap()),
            ..Io::default()
        };
        let engine = Engine::new(db, rooms.clone(), config, io);
        // As the server does at start: in a cluster, a sweep for lapsed leases.
        engine.recover().await.unwrap();
        Node { engine, rooms }
    }

    /// Writes `graph` into the workflow's document on `node` and starts an execution there.
    async fn start(&self, node: &Node, graph: Value) -> String {
        let doc = yrs::Doc::new();
        {
            let mut txn = doc.transact_mut();
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
                    array.push_back(&mut txn, MapPrelim::from_iter(fields));
                }
            }
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let room = resonant_db::room_of(&self.workflow.id);
        node.rooms
            .apply_server_update(&room, &update)
            .await
            .unwrap();
        let (id, fresh) = node
            .engine
            .start(&self.workflow, &self.user.id, StartRequest::default())
            .await
            .unwrap();
        assert!(fresh);
        id
    }

    async fn row(&self, id: &str) -> ExecutionRow {
        store::execution(&self.db, id).await.unwrap().unwrap()
    }

    /// Waits (up to `within`) until the execution's status is `status`; returns how long.
    async fn until_status(&self, id: &str, status: &str, within: Duration) -> Duration {
        let begun = Instant::now();
        loop {
            let row = self.row(id).await;
            if row.status == status {
                return begun.elapsed();
            }
            let ended = matches!(row.status.as_str(), "completed" | "failed" | "cancelled");
            assert!(
                !ended && begun.elapsed() < within,
                "execution {id} is {} after {within:?}, not {status}; events: {:#?}",
                row.status,
                self.events(id).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until block `block` of `id` is stored as `status`.
    async fn until_block(&self, id: &str, block: &str, status: &str) {
        let begun = Instant::now();
        loop {
            let b = store::block(&self.db, id, block).await.unwrap();
            if b.as_ref().is_some_and(|b| b.status == status) {
                return;
            }
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "block {block} of {id} never became {status}: {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The execution's stored events, in seq order.
    async fn events(&self, id: &str) -> Vec<Value> {
        store::events(&self.db, &self.workflow.id, id, 0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| serde_json::from_str(&e).unwrap())
            .collect()
    }

    /// Asserts the stored seqs are exactly 1..=n and returns the events.
    async fn gapless(&self, id: &str) -> Vec<Value> {
        let events = self.events(id).await;
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        let want: Vec<i64> = (1..=events.len() as i64).collect();
        assert_eq!(seqs, want, "seqs have a gap or a repeat: {events:#?}");
        events
    }

    async fn drop_schema(self) {
        if let Db::Postgres(p) = &self.db {
            p.close().await;
        }
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&self.admin)
            .await;
    }
}

struct Node {
    engine: Engine,
    rooms: Rooms,
}

impl Node {
    async fn stop(&self) {
        self.engine
            .shutdown(tokio::time::Instant::now() + Duration::from_secs(3))
            .await;
    }
}

/// A local HTTP server counting webhook calls by path.
struct Hooks {
    port: u16,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Hooks {
    async fn start() -> Hooks {
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = hits.clone();
        let app = axum::Router::new().route(
            "/hit/{name}",
            axum::routing::post(
                move |axum::extract::Path(name): axum::extract::Path<String>| {
                    let counted = counted.clone();
                    async move {
                        *counted.lock().entry(name).or_insert(0) += 1;
                        axum::Json(json!({"ok": true}))
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hooks { port, hits }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/hit/{name}", self.port)
    }

    fn count(&self, name: &str) -> usize {
        self.hits.lock().get(name).copied().unwrap_or(0)
    }
}

fn block(id: &str, kind: &str, config: Value) -> Value {
    json!({"id": id, "type": kind, "position": {"x": 0, "y": 0}, "data": {"label": id}, "config": config})
}

fn edge(source: &str, target: &str) -> Value {
    json!({"id": format!("{source}-{target}"), "source": source, "target": target})
}

/// input → webhook `first` → delay `nap` → webhook `second` → output.
fn hook_nap_hook(c: &Cluster, nap_secs: f64) -> Value {
    json!({
        "blocks": [
            block("in", "input", json!({})),
            block("first", "webhook", json!({"url": c.hooks.url("first")})),
            block("nap", "delay", json!({"seconds": nap_secs})),
            block("second", "webhook", json!({"url": c.hooks.url("second")})),
            block("out", "output", json!({})),
        ],
        "connections": [edge("in", "first"), edge("first", "nap"), edge("nap", "second"), edge("second", "out")],
    })
}

fn count(events: &[Value], kind: &str, block: Option<&str>) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && block.is_none_or(|b| e["blockId"] == b))
        .count()
}

/// (a) The bug this fixes: a second node starting (its `recover`) and sweeping many times
/// never runs an execution whose owner is alive and renewing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_owner_keeps_its_execution_while_another_node_sweeps() {
    let Some(c) = Cluster::new("live").await else {
        return;
    };
    let a = c.node("node-a").await;
    let id = c.start(&a, hook_nap_hook(&c, 3.0)).await;
    c.until_block(&id, "nap", "waiting").await;
    // B starts while A's execution is running: its recover() and its sweeps leave it alone.
    let b = c.node("node-b").await;
    let begun = Instant::now();
    while c.row(&id).await.status == "running" {
        assert!(!b.engine.runs_here(&id), "B runs A's execution");
        assert!(begun.elapsed() < Duration::from_secs(15), "never completed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.until_status(&id, "completed", Duration::ZERO).await;
    let stats = b.engine.lease_stats().unwrap();
    assert!(stats.sweeps >= 5, "B swept only {} times", stats.sweeps);
    assert_eq!(stats.taken_over, 0, "B took over a live node's execution");
    assert_eq!(
        stats.lost, 0,
        "B ran A's execution until its renewal failed"
    );
    assert_eq!(a.engine.lease_stats().unwrap().lost, 0);
    assert_eq!((c.hooks.count("first"), c.hooks.count("second")), (1, 1));
    let events = c.gapless(&id).await;
    assert_eq!(count(&events, "execution.started", None), 1);
    assert_eq!(count(&events, "block.started", Some("first")), 1);
    assert_eq!(count(&events, "execution.completed", None), 1);
    let owner = leases::owner_of(&c.db, &id).await.unwrap().unwrap();
    assert_eq!((owner.owner.as_str(), owner.epoch), ("node-a", 1));
    a.stop().await;
    b.stop().await;
    c.drop_schema().await;
}

/// (b) The owner dies mid-run (no release, nothing recorded): another node takes the
/// execution over once the lease lapses and finishes it; the block that finished is not run
/// again, the delay keeps its deadline, and the event seqs continue without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_execution_is_taken_over_and_finished_once() {
    let Some(c) = Cluster::new("dead").await else {
        return;
    };
    let a = c.node("node-a").await;
    let b = c.node("node-b").await;
    let id = c.start(&a, hook_nap_hook(&c, 2.0)).await;
    c.until_block(&id, "nap", "waiting").await;
    let until = store::block(&c.db, &id, "nap")
        .await
        .unwrap()
        .unwrap()
        .wake_at
        .unwrap();
    assert_eq!(c.hooks.count("first"), 1);
    a.engine.crash();
    let crashed = Instant::now();
    while !b.engine.runs_here(&id) {
        assert!(
            crashed.elapsed() < TTL + SWEEP * 2 + Duration::from_secs(2),
            "B did not take the execution over within the lease and a sweep"
        );
        if c.row(&id).await.status != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let taken = crashed.elapsed();
    c.until_status(&id, "completed", Duration::from_secs(15))
        .await;
    eprintln!("taken over {taken:?} after the crash");
    assert_eq!(b.engine.lease_stats().unwrap().taken_over, 1);
    assert_eq!((c.hooks.count("first"), c.hooks.count("second")), (1, 1));
    let events = c.gapless(&id).await;
    assert_eq!(count(&events, "execution.started", None), 1);
    assert_eq!(count(&events, "block.started", Some("first")), 1);
    assert_eq!(count(&events, "block.started", Some("second")), 1);
    assert_eq!(count(&events, "execution.completed", None), 1);
    let nap = store::block(&c.db, &id, "nap").await.unwrap().unwrap();
    assert!(
        nap.completed_at.unwrap() >= until,
        "the delay ended before its deadline"
    );
    let owner = leases::owner_of(&c.db, &id).await.unwrap().unwrap();
    assert_eq!((owner.owner.as_str(), owner.epoch), ("node-b", 2));
    b.stop().await;
    c.drop_schema().await;
}

/// (c) A cancel received by a node that does not run the execution reaches its owner through
/// the database within a renewal period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_node_reaches_the_owner() {
    let Some(c) = Cluster::new("cancel").await else {
        return;
    };
    let a = c.node("node-a").await;
    let b = c.node("node-b").await;
    let graph = json!({
        "blocks": [block("in", "input", json!({})), block("nap", "delay", json!({"seconds": 60})), block("out", "output", json!({}))],
        "connections": [edge("in", "nap"), edge("nap", "out")],
    });
    let id = c.start(&a, graph).await;
    c.until_block(&id, "nap", "waiting").await;
    assert!(
        !b.engine.cancel(&id),
        "B's local cancel knows nothing of it"
    );
    assert!(b.engine.cancel_anywhere(&id).await.unwrap());
    let took = c
        .until_status(&id, "cancelled", RENEW * 2 + Duration::from_secs(3))
        .await;
    eprintln!("cancelled {took:?} after the request on the other node");
    assert!(!a.engine.runs_here(&id));
    let events = c.gapless(&id).await;
    assert_eq!(events.last().unwrap()["type"], "execution.cancelled");
    // An execution that ended cannot be cancelled, from either node.
    assert!(!b.engine.cancel_anywhere(&id).await.unwrap());
    assert!(!a.engine.cancel_anywhere(&id).await.unwrap());
    assert_eq!(b.engine.lease_stats().unwrap().taken_over, 0);
    a.stop().await;
    b.stop().await;
    c.drop_schema().await;
}

/// (d) A decision made through a node that does not run the execution is validated against
/// the database, stored, and handed to the waiting block by its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_on_another_node_wakes_the_owners_block() {
    let Some(c) = Cluster::new("decide").await else {
        return;
    };
    let a = c.node("node-a").await;
    let b = c.node("node-b").await;
    let graph = json!({
        "blocks": [block("in", "input", json!({})), block("gate", "human", json!({"timeoutSeconds": 600})), block("out", "output", json!({}))],
        "connections": [edge("in", "gate"), edge("gate", "out")],
    });
    let id = c.start(&a, graph).await;
    c.until_block(&id, "gate", "waiting").await;
    let row = c.row(&id).await;
    // Not a waiting block: refused by what the database says, not by B's memory.
    let wrong = b.engine.decide(&row, "out", &c.user, true, None).await;
    assert!(matches!(wrong, Err(EngineError::Conflict(_))), "{wrong:?}");
    b.engine
        .decide(&row, "gate", &c.user, true, Some("fine".into()))
        .await
        .unwrap();
    let decided = Instant::now();
    let again = b.engine.decide(&row, "gate", &c.user, false, None).await;
    assert!(
        matches!(&again, Err(EngineError::Conflict(m)) if m.contains("already decided")),
        "{again:?}"
    );
    c.until_status(&id, "completed", RENEW * 2 + Duration::from_secs(3))
        .await;
    eprintln!(
        "the owner's block completed {:?} after the decision on the other node",
        decided.elapsed()
    );
    let gate = store::block(&c.db, &id, "gate").await.unwrap().unwrap();
    let output: Value = serde_json::from_str(gate.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["approved"], true);
    assert_eq!(output["comment"], "fine");
    assert_eq!(output["by"], c.user.id.as_str());
    let events = c.gapless(&id).await;
    assert_eq!(count(&events, "execution.completed", None), 1);
    // Decided on a finished execution: refused.
    let late = b.engine.decide(&row, "gate", &c.user, true, None).await;
    assert!(matches!(late, Err(EngineError::Conflict(_))), "{late:?}");
    a.stop().await;
    b.stop().await;
    c.drop_schema().await;
}

/// A node cut off from the database stops its runs before its leases can expire (self-fence),
/// so the node that takes over never runs an execution at the same time as it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_renew_stops_before_anyone_takes_over() {
    let Some(c) = Cluster::new("fence").await else {
        return;
    };
    let a = c.node("node-a").await;
    let b = c.node("node-b").await;
    let id = c.start(&a, hook_nap_hook(&c, 2.0)).await;
    c.until_block(&id, "nap", "waiting").await;
    a.engine.pause_leases(true);
    let paused = Instant::now();
    let mut a_stopped = None;
    loop {
        let on_a = a.engine.runs_here(&id);
        let on_b = b.engine.runs_here(&id);
        assert!(!(on_a && on_b), "both nodes run the execution");
        if !on_a && a_stopped.is_none() {
            a_stopped = Some(paused.elapsed());
        }
        if on_b {
            assert!(a_stopped.is_some(), "B runs it while A still does");
            break;
        }
        assert!(
            paused.elapsed() < TTL + SWEEP * 2 + Duration::from_secs(2),
            "B never took over (A stopped after {a_stopped:?})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a_stopped = a_stopped.unwrap();
    eprintln!(
        "A fenced itself {a_stopped:?} after its last renewal could be sent; B took over {:?} after",
        paused.elapsed()
    );
    assert!(
        a_stopped < TTL,
        "A ran past its lease: stopped {a_stopped:?} after pausing"
    );
    c.until_status(&id, "completed", Duration::from_secs(15))
        .await;
    assert_eq!(a.engine.lease_stats().unwrap().self_fenced, 1);
    assert_eq!((c.hooks.count("first"), c.hooks.count("second")), (1, 1));
    let events = c.gapless(&id).await;
    assert_eq!(count(&events, "execution.completed", None), 1);
    a.engine.pause_leases(false);
    a.stop().await;
    b.stop().await;
    c.drop_schema().await;
}

/// A graceful shutdown releases the node's leases, so another node resumes its executions at
/// its next sweep instead of a lease period later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_hands_executions_over_at_once() {
    let Some(c) = Cluster::new("release").await else {
        return;
    };
    // A lease long enough that only its release can explain a quick takeover.
    let a = c
        .node_with("node-a", |c| c.lease_ttl = Duration::from_secs(60))
        .await;
    let graph = json!({
        "blocks": [block("in", "input", json!({})), block("nap", "delay", json!({"seconds": 1})), block("out", "output", json!({}))],
        "connections": [edge("in", "nap"), edge("nap", "out")],
    });
    let id = c.start(&a, graph).await;
    c.until_block(&id, "nap", "waiting").await;
    a.stop().await;
    let stopped = Instant::now();
    let owner = leases::owner_of(&c.db, &id).await.unwrap().unwrap();
    assert!(!owner.live, "the lease was not released: {owner:?}");
    let b = c.node("node-b").await;
    let took = c
        .until_status(&id, "completed", Duration::from_secs(10))
        .await;
    eprintln!(
        "resumed and finished {took:?} after B started ({:?} after A stopped)",
        stopped.elapsed()
    );
    assert_eq!(b.engine.lease_stats().unwrap().taken_over, 1);
    c.gapless(&id).await;
    b.stop().await;
    c.drop_schema().await;
}

/// A decision stored through another node shortly before a human block's deadline wins over
/// the timeout, even though the owner's renewal has not handed it to the block yet: the
/// database arbitrates between the two, as the in-memory map does on a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_stored_elsewhere_before_the_deadline_beats_the_timeout() {
    let Some(c) = Cluster::new("deadline").await else {
        return;
    };
    // Renewals far apart: the decision can only reach the block through the arbitration.
    let a = c
        .node_with("node-a", |c| {
            c.lease_ttl = Duration::from_secs(60);
            c.renew_every = Duration::from_secs(30);
        })
        .await;
    let b = c.node("node-b").await;
    let graph = json!({
        "blocks": [block("in", "input", json!({})), block("gate", "human", json!({"timeoutSeconds": 1.5, "onTimeout": "reject"})), block("out", "output", json!({}))],
        "connections": [edge("in", "gate"), edge("gate", "out")],
    });
    let id = c.start(&a, graph).await;
    c.until_block(&id, "gate", "waiting").await;
    let row = c.row(&id).await;
    b.engine
        .decide(&row, "gate", &c.user, true, None)
        .await
        .unwrap();
    c.until_status(&id, "completed", Duration::from_secs(10))
        .await;
    let gate = store::block(&c.db, &id, "gate").await.unwrap().unwrap();
    let output: Value = serde_json::from_str(gate.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["approved"], true);
    assert_eq!(output["timedOut"], false);
    c.gapless(&id).await;
    a.stop().await;
    b.stop().await;
    c.drop_schema().await;
}

/// A wake-up to the owner (what the cluster's control message will call) makes it see a
/// cancel stored by another node at once, not at its next renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poked_owner_sees_a_cancel_at_once() {
    let Some(c) = Cluster::new("poke").await else {
        return;
    };
    let a = c
        .node_with("node-a", |c| {
            c.lease_ttl = Duration::from_secs(60);
            c.renew_every = Duration::from_secs(30);
        })
        .await;
    let b = c.node("node-b").await;
    let graph = json!({
        "blocks": [block("in", "input", json!({})), block("nap", "delay", json!({"seconds": 60})), block("out", "output", json!({}))],
        "connections": [edge("in", "nap"), edge("nap", "out")],
    });
    let id = c.start(&a, graph).await;
    c.until_block(&id, "nap", "waiting").await;
    assert!(b.engine.cancel_anywhere(&id).await.unwrap());
    a.engine.poke_leases();
    let took = c
        .until_status(&id, "cancelled", Duration::from_secs(5))
        .await;
    eprintln!("cancelled {took:?} after the poke");
    a.stop().await;
    b.stop().await;
    c.drop_schema().await;
}
