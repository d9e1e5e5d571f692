//! Server-side executions (issue 8): a run pins the workflow as it stands in the shared
//! document, validates it, and runs its blocks as their inputs become ready, streaming
//! events to the workflow's editors over their sockets. Executions, block states and events
//! are stored as they advance, so a restart resumes them where they were.
//!
//! A crate of its own so that the engine cannot reach into the server: it is given a
//! database (`resonant-db`), the rooms (`resonant-sync`) and its outside world ([`Io`]), and
//! the REST handlers and the socket call its API ([`Engine`]).

#![warn(missing_docs)]

// The server's names for its layers, so paths read the same on both sides.
pub(crate) use resonant_db as db;
pub(crate) use resonant_db::crypto;

pub mod ai;
pub mod block;
pub mod content;
pub mod email;
pub mod events;
pub mod graph;
pub mod http;
mod io;
pub use io::Io;
mod lease;
pub use lease::{ClusterConfig, LeaseStats};
mod plan;
mod retention;
pub mod retry;
mod run;
mod scheduler;
pub mod template;
pub mod triggers;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use resonant_sync::Rooms;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use crate::db::executions::{self as store, BlockRow, ExecutionRow, NewExecution, Write};
use crate::db::leases::{self as lease_store, NewLease};
use crate::db::{new_id, now_ms, Db, DbError};
use events::Events;
use graph::{Problem, Workflow};
pub use run::Decision;
use run::{Control, Run};

/// How executions run on this server.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Blocks doing work at once across all executions.
    pub max_concurrent_blocks: usize,
    /// Blocks doing work at once in one execution, unless it asks for fewer.
    pub max_concurrency_per_execution: usize,
    /// The public base URL (links in approval emails).
    pub public_url: String,
    /// Bytes all template renders of one execution may output together.
    pub template_execution_bytes: usize,
    /// Bytes the template renders of all running executions may hold together: the
    /// per-execution allowance times the running caps would still be gigabytes.
    pub template_server_bytes: usize,
    /// Loop iterations one execution may run, over all loops and nesting levels.
    pub max_iterations_per_execution: usize,
    /// Executions one user may have running at once (0: unlimited).
    pub max_running_per_user: usize,
    /// Executions one workspace may have running at once (0: unlimited).
    pub max_running_per_workspace: usize,
    /// Approval emails one human block may send.
    pub max_notify_per_block: usize,
    /// Approval emails one workspace may send per day.
    pub max_approval_emails_per_day: usize,
    /// How long finished executions keep their events, block rows and large values
    /// (`None`: for ever).
    pub retention: Option<std::time::Duration>,
    /// How often retention looks for executions to prune.
    pub retention_every: std::time::Duration,
    /// Cluster mode (several nodes over one Postgres): executions run under leases, and a
    /// dead node's executions are taken over. `None`: this process runs every execution of
    /// its database (single node, today's `recover`). Ignored on SQLite.
    pub cluster: Option<ClusterConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_concurrent_blocks: 64,
            max_concurrency_per_execution: 8,
            public_url: "http://127.0.0.1:1234".into(),
            template_execution_bytes: 64 << 20,
            template_server_bytes: 256 << 20,
            max_iterations_per_execution: 10_000,
            max_running_per_user: 10,
            max_running_per_workspace: 25,
            max_notify_per_block: 10,
            max_approval_emails_per_day: 100,
            retention: Some(std::time::Duration::from_secs(30 * 86_400)),
            retention_every: std::time::Duration::from_secs(3600),
            cluster: None,
        }
    }
}

/// An execution's start options, stored with it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    /// The router's ranking: `speed`, `quality` (default) or `cost`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Blocks doing work at once in this execution.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// The execution this one re-runs, reusing its results.
    #[serde(default)]
    pub rerun_of: Option<String>,
    /// The trigger that started it: blocks' pinned sample outputs are for runs from the
    /// editor, not for these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// A request to start an execution.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    /// The input object, given to `input` blocks and templates as `input`.
    #[serde(default)]
    pub input: Option<Value>,
    /// `speed`, `quality` or `cost`.
    #[serde(default)]
    pub priority: Option<String>,
    /// A retried request with the same key starts nothing and returns the first execution.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Blocks doing work at once in this execution (1–64).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
}

/// Why an execution could not start (or be controlled).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The workflow did not validate; every problem names its block.
    #[error("the workflow is not valid")]
    Invalid(Vec<Problem>),
    /// A request field is wrong.
    #[error("{field}: {message}")]
    BadRequest {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The user has used their tokens.
    #[error("token limit reached: {used} of {limit} tokens used this period")]
    TokenLimit {
        /// Used.
        used: i64,
        /// Allowed.
        limit: i64,
    },
    /// The user or the workspace has as many executions running as it may.
    #[error("{0}")]
    TooMany(String),
    /// Not in a state that allows it (not running, not waiting, already decided).
    #[error("{0}")]
    Conflict(String),
    /// This user may not do it.
    #[error("{0}")]
    Forbidden(String),
    /// The document could not be read.
    #[error("reading the workflow's document: {0}")]
    Document(String),
    /// The idempotency key was used before with another input.
    #[error("this idempotency key was used before with a different input; use a new key")]
    KeyReused,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How a re-run starts ([`Engine::rerun_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rerun<'a> {
    /// The block to run again (default: the one that failed).
    pub from: Option<&'a str>,
    /// Run the workflow's live document rather than the old execution's pinned graph.
    pub live: bool,
    /// A retried request with the same key starts nothing and returns the first re-run.
    pub idempotency_key: Option<&'a str>,
}

/// Where a new execution's graph comes from.
enum Source {
    /// The workflow's document as it stands now.
    Live,
    /// A published version's pinned graph.
    Version {
        /// The version's id.
        id: String,
        /// Its blocks and connections.
        graph: Value,
    },
}

/// A place among the running executions of a user and of a workspace, given back when the
/// execution's task ends (or when a start fails before it).
pub(crate) struct Admission {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    keys: [String; 2],
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        for k in &self.keys {
            if let Some(n) = counts.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }
}

/// Runs executions; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: Db,
    rooms: Rooms,
    pub(crate) events: Events,
    pub(crate) global: Arc<Semaphore>,
    running: Mutex<HashMap<String, (Arc<Control>, tokio::task::AbortHandle)>>,
    /// Set by `shutdown` under the `running` lock: nothing is launched after it, and no
    /// block starts work after it.
    pub(crate) closing: AtomicBool,
    /// The leases this node holds, in cluster mode.
    lease: Option<Arc<lease::Leases>>,
    /// In cluster mode: wakes an execution's owner when a cancel or decision for it is
    /// stored here (without it the owner sees it at its next renewal).
    bus: std::sync::OnceLock<Arc<dyn resonant_bus::Bus>>,
    /// Executions running (or being started) per user and per workspace, for the caps.
    admitted: Arc<Mutex<HashMap<String, usize>>>,
    /// Tokens reserved by AI calls in progress, per user (see `block/ai.rs`).
    pub(crate) ledger: Arc<Mutex<block::Ledger>>,
    /// Approval emails sent today per workspace: (day number, count).
    pub(crate) emails_today: Mutex<HashMap<String, (i64, usize)>>,
    /// Template output bytes running executions may still render, server-wide
    /// (`--template-server-bytes`); each execution gives back what it took when it ends.
    template_pool: Arc<std::sync::atomic::AtomicUsize>,
    /// Executions, the event writer and replays: shutdown waits for them.
    tasks: TaskTracker,
    /// Stops the schedule ticker.
    ticker: CancellationToken,
    pub(crate) config: EngineConfig,
    pub(crate) io: io::Io,
}

impl Engine {
    /// Starts the engine (its event writer) over `db`.
    pub fn new(db: Db, rooms: Rooms, config: EngineConfig, io: io::Io) -> Engine {
        let tasks = TaskTracker::new();
        let leases = match (&config.cluster, &db) {
            (Some(c), Db::Postgres(_)) => Some(lease::Leases::new(c.clone())),
            (Some(_), Db::Sqlite(_)) => {
                tracing::error!("execution leases need Postgres: cluster mode ignored");
                None
            }
            (None, _) => None,
        };
        let events = Events::start_with(db.clone(), &tasks, leases.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                tasks,
                db,
                rooms,
                events,
                global: Arc::new(Semaphore::new(config.max_concurrent_blocks.max(1))),
                running: Mutex::new(HashMap::new()),
                closing: AtomicBool::new(false),
                lease: leases.clone(),
                bus: std::sync::OnceLock::new(),
                admitted: Arc::new(Mutex::new(HashMap::new())),
                ledger: Arc::new(Mutex::new(block::Ledger::default())),
                emails_today: Mutex::new(HashMap::new()),
                template_pool: Arc::new(config.template_server_bytes.into()),
                ticker: CancellationToken::new(),
                config,
                io,
            }),
        };
        engine.inner.tasks.spawn(triggers::run(
            Arc::downgrade(&engine.inner),
            engine.inner.ticker.clone(),
        ));
        if let Some(keep) = engine.inner.config.retention {
            engine.inner.tasks.spawn(retention::run(
                Arc::downgrade(&engine.inner),
                keep,
                engine.inner.config.retention_every,
                engine.inner.ticker.clone(),
            ));
        }
        if let Some(l) = leases {
            let weak = Arc::downgrade(&engine.inner);
            engine.inner.tasks.spawn(lease::run(weak, l));
        }
        engine
    }

    /// The lease to insert with a new execution, and when its insert is sent.
    fn new_lease(&self) -> (Option<NewLease<'_>>, tokio::time::Instant) {
        let lease = self.inner.lease.as_ref().map(|l| NewLease {
            owner: &l.config.node,
            ttl: l.config.lease_ttl,
        });
        (lease, tokio::time::Instant::now())
    }

    /// The event log (socket subscriptions and replays).
    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// Starts an execution of `workflow` for `user` from the document as it stands now.
    /// Returns its id, and false when an earlier request with the same idempotency key
    /// already started it.
    pub async fn start(
        &self,
        workflow: &crate::db::Workflow,
        user: &str,
        req: StartRequest,
    ) -> Result<(String, bool), EngineError> {
        self.start_from(workflow, user, req, Source::Live, None)
            .await
    }

    /// Starts an execution for a trigger: of the workflow's published version (or, for a
    /// trigger set to `draft`, of the live document), as the trigger's user, recording the
    /// trigger on it. Returns its id, and false when the idempotency key (a schedule's tick,
    /// a webhook caller's key) already started one.
    pub async fn start_triggered(
        &self,
        workflow: &crate::db::Workflow,
        trigger: &crate::db::triggers::TriggerRow,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<(String, bool), EngineError> {
        // The trigger's user must still be allowed to run the workflow: a member who left
        // takes their triggers' right to spend with them.
        let allowed = crate::db::workflow_with_role(&self.inner.db, &workflow.id, &trigger.run_as)
            .await?
            .and_then(|(_, role)| role)
            .is_some_and(|r| r.allows(crate::db::Action::Execute));
        if !allowed {
            return Err(EngineError::Forbidden(
                "the trigger's user may no longer run this workflow: recreate the trigger".into(),
            ));
        }
        let source = if trigger.target == "draft" {
            Source::Live
        } else {
            let (version, graph) = crate::db::triggers::published(&self.inner.db, &workflow.id)
                .await?
                .ok_or_else(|| {
                    EngineError::Conflict(
                        "the workflow has no published version: publish one, or set the \
                         trigger's target to draft"
                            .into(),
                    )
                })?;
            let graph = serde_json::from_str(&graph)
                .map_err(|e| EngineError::Document(format!("the published version: {e}")))?;
            Source::Version { id: version, graph }
        };
        let req = StartRequest {
            input: Some(input),
            idempotency_key,
            ..Default::default()
        };
        self.start_from(workflow, &trigger.run_as, req, source, Some(&trigger.id))
            .await
    }

    /// Waits until `execution` has finished (or `timeout` passed) and returns its row as it
    /// then stands. Its end is seen at once when it runs on this node, and by reading the
    /// database every 200 ms when it runs elsewhere.
    pub async fn wait_finished(
        &self,
        execution: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<ExecutionRow>, EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self
                .inner
                .running
                .lock()
                .get(execution)
                .map(|(c, _)| c.ended.clone());
            if let Some(ended) = ended {
                let _ = tokio::time::timeout_at(deadline, ended.cancelled()).await;
                // The event writer records the final state after the run has ended.
                self.inner.events.flush().await;
            }
            let row = store::execution(&self.inner.db, execution).await?;
            let done = row
                .as_ref()
                .is_none_or(|r| !matches!(r.status.as_str(), "pending" | "running"));
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(row);
            }
            let nap = tokio::time::Instant::now() + std::time::Duration::from_millis(200);
            tokio::time::sleep_until(nap.min(deadline)).await;
        }
    }

    async fn start_from(
        &self,
        workflow: &crate::db::Workflow,
        user: &str,
        req: StartRequest,
        source: Source,
        trigger: Option<&str>,
    ) -> Result<(String, bool), EngineError> {
        let input = match req.input {
            None | Some(Value::Null) => json!({}),
            Some(v @ Value::Object(_)) => v,
            Some(_) => {
                return Err(EngineError::BadRequest {
                    field: "input",
                    message: "must be an object".into(),
                })
            }
        };
        if let Some(p) = &req.priority {
            if !matches!(p.as_str(), "speed" | "quality" | "cost") {
                return Err(EngineError::BadRequest {
                    field: "priority",
                    message: "must be speed, quality or cost".into(),
                });
            }
        }
        if let Some(c) = req.max_concurrency {
            if !(1..=64).contains(&c) {
                return Err(EngineError::BadRequest {
                    field: "maxConcurrency",
                    message: "must be between 1 and 64".into(),
                });
            }
        }
        if let Some(k) = &req.idempotency_key {
            if k.is_empty() || k.len() > 200 {
                return Err(EngineError::BadRequest {
                    field: "idempotencyKey",
                    message: "must be 1 to 200 characters".into(),
                });
            }
        }
        self.check_tokens(user).await?;
        let admission = self.admit(user, &workflow.workspace_id, false)?;
        let (graph, sv, version) = match source {
            Source::Live => {
                let (graph, sv) = self.live_graph(&workflow.id).await?;
                (graph, sv, None)
            }
            Source::Version { id, graph } => (graph, Vec::new(), Some(id)),
        };
        let parsed = prepare(&graph).map_err(EngineError::Invalid)?;
        let options = Options {
            priority: req.priority,
            max_concurrency: req.max_concurrency,
            rerun_of: None,
            trigger: trigger.map(str::to_owned),
        };
        let id = new_id();
        let (lease, sent) = self.new_lease();
        let inserted = store::insert(
            &self.inner.db,
            &NewExecution {
                id: &id,
                workflow_id: &workflow.id,
                workspace_id: &workflow.workspace_id,
                user_id: user,
                input: &input.to_string(),
                options: &serde_json::to_string(&options).unwrap_or_default(),
                graph: &graph.to_string(),
                state_vector: &sv,
                idempotency_key: req.idempotency_key.as_deref(),
                rerun_of: None,
                trigger_id: trigger,
                version_id: version.as_deref(),
                lease,
                caps: self.cluster_caps(),
            },
        )
        .await?;
        match inserted {
            Ok(()) => {}
            Err(store::NotInserted::Existing(existing)) => {
                // A key names one request: the same key with another input is a mistake
                // (two callers sharing a key, or a key reused), not a retry.
                let row = store::execution(&self.inner.db, &existing).await?;
                let same = row.is_some_and(|r| {
                    serde_json::from_str::<Value>(&r.input).ok().as_ref() == Some(&input)
                });
                if !same {
                    return Err(EngineError::KeyReused);
                }
                return Ok((existing, false));
            }
            Err(store::NotInserted::OverCap { workspace, cap }) => {
                return Err(too_many(workspace, cap))
            }
        }
        if let Some(l) = &self.inner.lease {
            l.hold(&id, 1, sent);
        }
        self.launch(
            admission,
            id.clone(),
            workflow.id.clone(),
            workflow.workspace_id.clone(),
            user.to_owned(),
            parsed,
            input,
            options,
            HashMap::new(),
            0,
            now_ms(),
            (0, 0.0),
        )
        .await;
        Ok((id, true))
    }

    /// The workflow's blocks and connections as its live document holds them now, and the
    /// document's state vector.
    async fn live_graph(&self, workflow: &str) -> Result<(Value, Vec<u8>), EngineError> {
        let room = crate::db::room_of(workflow);
        let state = self
            .inner
            .rooms
            .document_state(&room)
            .await
            .map_err(|e| EngineError::Document(e.to_string()))?;
        let (content, sv) = crate::content::snapshot(&state).map_err(|e| match e {
            // The caller's content, not a server fault.
            crate::content::ContentError::TooDeep | crate::content::ContentError::TextInList => {
                EngineError::Conflict(e.to_string())
            }
            crate::content::ContentError::Decode(_) => EngineError::Document(e.to_string()),
        })?;
        let graph = json!({"blocks": content["blocks"], "connections": content["connections"]});
        Ok((graph, sv))
    }

    /// Takes a place for a new execution of `user` in `workspace`, checking and counting
    /// under one lock so parallel starts cannot all pass. `force` (resuming after a restart)
    /// counts without checking.
    fn admit(&self, user: &str, workspace: &str, force: bool) -> Result<Admission, EngineError> {
        let keys = [format!("u:{user}"), format!("w:{workspace}")];
        let caps = [
            self.inner.config.max_running_per_user,
            self.inner.config.max_running_per_workspace,
        ];
        let mut counts = self.inner.admitted.lock();
        if !force {
            for (i, (k, cap)) in keys.iter().zip(caps).enumerate() {
                if cap > 0 && counts.get(k).copied().unwrap_or(0) >= cap {
                    return Err(too_many(i == 1, cap));
                }
            }
        }
        for k in &keys {
            *counts.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(Admission {
            counts: self.inner.admitted.clone(),
            keys,
        })
    }

    /// The caps the database counts: in a cluster, where this node's own count (`admit`)
    /// cannot see the executions other nodes started.
    fn cluster_caps(&self) -> Option<store::RunningCaps> {
        self.inner.lease.as_ref().map(|_| store::RunningCaps {
            per_user: self.inner.config.max_running_per_user,
            per_workspace: self.inner.config.max_running_per_workspace,
        })
    }

    async fn check_tokens(&self, user: &str) -> Result<(), EngineError> {
        let (used, limit) = store::user_tokens(&self.inner.db, user).await?;
        if used >= limit {
            return Err(EngineError::TokenLimit { used, limit });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn launch(
        &self,
        admission: Admission,
        id: String,
        workflow: String,
        workspace: String,
        user: String,
        plan: plan::Plan,
        input: Value,
        options: Options,
        prior: HashMap<String, BlockRow>,
        seq: i64,
        started_at: i64,
        totals: (i64, f64),
    ) {
        let keys = self.inner.io.keys(&self.inner.db, &workspace).await;
        let concurrency = options
            .max_concurrency
            .unwrap_or(self.inner.config.max_concurrency_per_execution)
            .clamp(1, 64);
        let control = Arc::new(Control {
            cancel: CancellationToken::new(),
            waiting: Mutex::new(HashMap::new()),
            workflow: workflow.clone(),
            ended: CancellationToken::new(),
        });
        let run = Arc::new(Run {
            engine: self.inner.clone(),
            id: id.clone(),
            workflow: workflow.as_str().into(),
            workspace,
            user,
            plan,
            input_value: minijinja::Value::from_serialize(&input),
            input,
            options,
            control: control.clone(),
            prior,
            seq: Mutex::new(seq),
            outputs: Mutex::new(HashMap::new()),
            totals: Mutex::new(totals),
            slots: Arc::new(Semaphore::new(concurrency)),
            started_at,
            started: Instant::now(),
            abort: Mutex::new(None),
            keys,
            resumed: seq > 0,
            template_left: self.inner.config.template_execution_bytes.into(),
            template_pool: run::TemplatePool::new(self.inner.template_pool.clone()),
            iterations_left: self.inner.config.max_iterations_per_execution.into(),
            notified: Mutex::new(HashSet::new()),
            failure: Mutex::new(None),
        });
        // Registered before the task starts, so a cancel right after the start finds it.
        let mut running = self.inner.running.lock();
        if self.inner.closing.load(Ordering::SeqCst) {
            // Shutting down: the execution is stored and resumes at the next start (or, in a
            // cluster, on the node that takes its lease over).
            drop(running);
            if let Some(l) = &self.inner.lease {
                l.forget(&id);
            }
            return;
        }
        let inner = self.inner.clone();
        let exec_id = id.clone();
        let mine = control.clone();
        let task = self.inner.tasks.spawn(async move {
            let _admission = admission;
            scheduler::execute(run).await;
            mine.ended.cancel();
            let mut running = inner.running.lock();
            // Only this run's entry: a run stopped by a takeover has left already.
            if running
                .get(&exec_id)
                .is_some_and(|(c, _)| Arc::ptr_eq(c, &mine))
            {
                running.remove(&exec_id);
                if let Some(l) = &inner.lease {
                    l.forget(&exec_id);
                }
            }
        });
        running.insert(id, (control, task.abort_handle()));
    }

    /// Stops a run of this node without recording anything (its lease is gone or going);
    /// false when it was not running here.
    fn stop_run(&self, execution: &str) -> bool {
        let task = self.inner.running.lock().remove(execution);
        match task {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Stops a run whose execution another node took over: its lease is no longer ours.
    fn drop_run(&self, execution: &str, why: &str) {
        if let Some(l) = &self.inner.lease {
            l.forget(execution);
            if self.stop_run(execution) {
                l.count_lost();
                tracing::warn!(execution, why, "execution lease lost: run stopped here");
            }
        }
    }

    /// Whether `execution` runs on this node now.
    pub fn runs_here(&self, execution: &str) -> bool {
        self.inner.running.lock().contains_key(execution)
    }

    /// Renews this node's leases now instead of at the next tick, so a cancel or a decision
    /// another node stored reaches its run at once: for the cluster's wake-up message to the
    /// owner (without it, the renewal finds them within `renew_every`). Nothing on a single
    /// node.
    pub fn poke_leases(&self) {
        if let Some(l) = &self.inner.lease {
            l.poke.notify_one();
        }
    }

    /// What the lease task did so far; `None` outside cluster mode.
    pub fn lease_stats(&self) -> Option<LeaseStats> {
        self.inner.lease.as_ref().map(|l| l.stats())
    }

    /// Test hook: stops (or resumes) sending lease renewals and takeover sweeps, as a node cut
    /// off from its database would; its runs go on until it fences itself.
    #[doc(hidden)]
    pub fn pause_leases(&self, paused: bool) {
        if let Some(l) = &self.inner.lease {
            l.pause(paused);
        }
    }

    /// Test hook: stops this engine as a crash of its process would: the lease task ends and
    /// every run is aborted, and nothing is released, flushed or recorded.
    #[doc(hidden)]
    pub fn crash(&self) {
        self.inner.ticker.cancel();
        if let Some(l) = &self.inner.lease {
            l.stop.cancel();
        }
        self.inner.closing.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = self
            .inner
            .running
            .lock()
            .drain()
            .map(|(_, (_, task))| task)
            .collect();
        for t in tasks {
            t.abort();
        }
    }

    /// Cancels a running execution; false when it is not running here.
    pub fn cancel(&self, execution: &str) -> bool {
        match self.inner.running.lock().get(execution) {
            Some((control, _)) => {
                control.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels an execution wherever it runs; false when it is not pending or running. On a
    /// single node this is [`Engine::cancel`]. In a cluster the request is stored first (so it
    /// survives its owner dying, and reaches it through its next lease renewal when the
    /// owner is another node), then applied here if the execution runs here.
    pub async fn cancel_anywhere(&self, execution: &str) -> Result<bool, EngineError> {
        if self.inner.lease.is_none() {
            return Ok(self.cancel(execution));
        }
        let requested = lease_store::request_cancel(&self.inner.db, execution).await?;
        let here = self.cancel(execution);
        if requested && !here {
            self.wake_owner(execution).await;
        }
        Ok(here || requested)
    }

    /// Records `user`'s decision on a waiting human block (its key: the block id, prefixed
    /// inside a loop) and wakes it. The decision is stored before the block learns of it, so
    /// a crash in between still applies it on resume. In a cluster, a block that does not
    /// wait on this node is checked against the database instead, and its owner hands the
    /// stored decision to the block at its next lease renewal.
    pub async fn decide(
        &self,
        execution: &ExecutionRow,
        block: &str,
        user: &crate::db::User,
        approved: bool,
        comment: Option<String>,
    ) -> Result<(), EngineError> {
        let max = resonant_protocol::MAX_DECISION_COMMENT_CHARS;
        if comment.as_ref().is_some_and(|c| c.chars().count() > max) {
            return Err(EngineError::BadRequest {
                field: "comment",
                message: format!("at most {max} characters"),
            });
        }
        let control = self
            .inner
            .running
            .lock()
            .get(&execution.id)
            .map(|(c, _)| c.clone());
        let here = control
            .as_ref()
            .is_some_and(|c| c.waiting.lock().contains_key(block));
        if !here {
            if self.inner.lease.is_none() {
                return Err(match control {
                    None => EngineError::Conflict("the execution is not running".into()),
                    Some(_) => EngineError::Conflict(format!(
                        "block {block} is not waiting for a decision"
                    )),
                });
            }
            // Another node runs it (or this one resumes it): the database says what waits.
            self.decidable(execution, block).await?;
        }
        let graph: Value = serde_json::from_str(&execution.graph).unwrap_or(Value::Null);
        let top = block.rsplit('/').next().unwrap_or(block);
        let approvers = graph["blocks"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["id"] == top))
            .and_then(|b| b["config"]["approvers"].as_array().cloned());
        if let Some(list) = approvers {
            let allowed = list.iter().filter_map(|v| v.as_str()).any(|a| {
                a == user.id
                    || user
                        .email
                        .as_deref()
                        .is_some_and(|e| e.eq_ignore_ascii_case(a))
            });
            if !allowed {
                return Err(EngineError::Forbidden(
                    "you are not one of this block's approvers".into(),
                ));
            }
        }
        let decision = Decision {
            approved,
            by: Some(user.id.clone()),
            comment,
            timed_out: false,
            at: now_ms(),
        };
        if here {
            self.inner.events.flush().await;
        }
        let stored = store::set_decision(
            &self.inner.db,
            &execution.id,
            block,
            &serde_json::to_string(&decision).unwrap_or_default(),
        )
        .await?;
        if !stored {
            if !here {
                // Decided, ended or no longer waiting since the check: say which.
                self.decidable(execution, block).await?;
            }
            return Err(EngineError::Conflict(
                "the block was already decided".into(),
            ));
        }
        if let Some(tx) = control.and_then(|c| c.waiting.lock().remove(block)) {
            let _ = tx.send(decision);
        }
        if !here {
            self.wake_owner(&execution.id).await;
        }
        Ok(())
    }

    /// Whether the database has `block` of `execution` waiting for a decision it does not
    /// have yet, in an execution still running; the conflict says what is wrong otherwise.
    async fn decidable(&self, execution: &ExecutionRow, block: &str) -> Result<(), EngineError> {
        let current = store::execution(&self.inner.db, &execution.id).await?;
        if !current.is_some_and(|x| matches!(x.status.as_str(), "pending" | "running")) {
            return Err(EngineError::Conflict("the execution is not running".into()));
        }
        match store::block(&self.inner.db, &execution.id, block).await? {
            Some(b) if b.status == "waiting" && b.decision.is_some() => Err(EngineError::Conflict(
                "the block was already decided".into(),
            )),
            Some(b) if b.status == "waiting" => Ok(()),
            _ => Err(EngineError::Conflict(format!(
                "block {block} is not waiting for a decision"
            ))),
        }
    }

    /// Starts a new execution that re-runs `old` from `from` (default: the block that
    /// failed), reusing the stored results of every block that does not depend on it.
    pub async fn rerun(
        &self,
        old: &ExecutionRow,
        from: Option<&str>,
        user: &str,
    ) -> Result<String, EngineError> {
        self.rerun_with(
            old,
            &Rerun {
                from,
                ..Rerun::default()
            },
            user,
        )
        .await
        .map(|(id, _)| id)
    }

    /// [`Engine::rerun`] with its options: from the live document instead of `old`'s pinned
    /// graph ("run from here": the chosen block and what depends on it run as the editors
    /// have them now, everything upstream reuses `old`'s results where the block is still
    /// there), and an idempotency key. Returns the new execution's id, and false when the
    /// key started it before.
    pub async fn rerun_with(
        &self,
        old: &ExecutionRow,
        opts: &Rerun<'_>,
        user: &str,
    ) -> Result<(String, bool), EngineError> {
        let from = opts.from;
        if matches!(old.status.as_str(), "pending" | "running") {
            return Err(EngineError::Conflict(
                "the execution is still running".into(),
            ));
        }
        if old.pruned_at.is_some() {
            return Err(EngineError::Conflict(
                "this execution's details were pruned (--execution-retention-days): it cannot \
                 be re-run; start a new one"
                    .into(),
            ));
        }
        self.check_tokens(user).await?;
        if let Some(k) = opts.idempotency_key {
            if k.is_empty() || k.len() > 200 {
                return Err(EngineError::BadRequest {
                    field: "idempotencyKey",
                    message: "must be 1 to 200 characters".into(),
                });
            }
        }
        let admission = self.admit(user, &old.workspace_id, false)?;
        let (graph, state_vector) = if opts.live {
            self.live_graph(&old.workflow_id).await?
        } else {
            (
                serde_json::from_str(&old.graph).unwrap_or(Value::Null),
                old.state_vector.clone(),
            )
        };
        let graph_text = graph.to_string();
        let parsed = prepare(&graph).map_err(EngineError::Invalid)?;
        let blocks = store::blocks(&self.inner.db, &old.id).await?;
        let wf = &parsed.workflow;
        // Re-running from a failure keeps every iteration that finished; re-running from a
        // chosen block runs it (and what follows) again in every iteration.
        let explicit = from.is_some();
        let from = match from {
            Some(f) => {
                if !parsed.index.contains_key(f) {
                    let whose = if opts.live {
                        "the workflow"
                    } else {
                        "that execution"
                    };
                    return Err(EngineError::BadRequest {
                        field: "fromBlock",
                        message: format!("no block {f} in {whose}"),
                    });
                }
                f.to_owned()
            }
            // The innermost block that failed (inside a loop, the body block, not the loop).
            None => blocks
                .iter()
                .filter(|b| b.status == "failed")
                .max_by_key(|b| b.block_id.matches('/').count())
                .or_else(|| {
                    blocks
                        .iter()
                        .find(|b| b.status != "completed" && b.status != "skipped")
                })
                .map(|b| last_block(&b.block_id).to_owned())
                .ok_or_else(|| {
                    EngineError::Conflict("nothing failed: give fromBlock to re-run from".into())
                })?,
        };
        // Runs again: `from`, every loop around it (their finished iterations are reused
        // where they do not depend on `from`), and everything downstream of those.
        let mut rerun: HashSet<String> = HashSet::from([from.clone()]);
        let mut queue = vec![(from.clone(), true)];
        let mut scope = parsed.scope_of[parsed.index[&from]];
        while let Some(l) = parsed.scopes[scope].owner {
            rerun.insert(wf.blocks[l].id.clone());
            queue.push((wf.blocks[l].id.clone(), false));
            scope = parsed.scope_of[l];
        }
        while let Some((b, into_body)) = queue.pop() {
            for c in &wf.connections {
                let body = c.source_handle.as_deref() == Some("body");
                if c.source == b
                    && !wf.is_back_edge(c)
                    && (into_body || !body)
                    && rerun.insert(c.target.clone())
                {
                    queue.push((c.target.clone(), true));
                }
            }
        }
        let input: Value = serde_json::from_str(&old.input).unwrap_or_else(|_| json!({}));
        let mut options: Options = serde_json::from_str(&old.options).unwrap_or_default();
        options.rerun_of = Some(old.id.clone());
        let id = new_id();
        let mut prior = HashMap::new();
        for b in blocks {
            let nested = b.block_id.contains('/');
            let again = rerun.contains(last_block(&b.block_id)) && (explicit || !nested);
            if again || !matches!(b.status.as_str(), "completed" | "skipped") {
                continue;
            }
            // From the live document, a result is reused only where its block (and every
            // loop around it) is still there.
            let present = b.block_id.split('/').all(|part| {
                let id = part.split_once('[').map_or(part, |(id, _)| id);
                parsed.index.contains_key(id)
            });
            if !present {
                continue;
            }
            let row = BlockRow {
                execution_id: id.clone(),
                tokens_used: 0,
                cost_usd: 0.0,
                ..b
            };
            prior.insert(row.block_id.clone(), row);
        }
        let (lease, sent) = self.new_lease();
        let inserted = store::insert(
            &self.inner.db,
            &NewExecution {
                id: &id,
                workflow_id: &old.workflow_id,
                workspace_id: &old.workspace_id,
                user_id: user,
                input: &old.input,
                options: &serde_json::to_string(&options).unwrap_or_default(),
                graph: &graph_text,
                state_vector: &state_vector,
                idempotency_key: opts.idempotency_key,
                rerun_of: Some(&old.id),
                trigger_id: None,
                version_id: None,
                lease,
                caps: self.cluster_caps(),
            },
        )
        .await?;
        match inserted {
            Ok(()) => {}
            Err(store::NotInserted::OverCap { workspace, cap }) => {
                return Err(too_many(workspace, cap))
            }
            Err(store::NotInserted::Existing(existing)) => {
                // The key names one request: a re-run of this execution.
                let row = store::execution(&self.inner.db, &existing).await?;
                if row.is_some_and(|r| r.rerun_of.as_deref() == Some(old.id.as_str())) {
                    return Ok((existing, false));
                }
                return Err(EngineError::KeyReused);
            }
        }
        if let Some(l) = &self.inner.lease {
            // Before the reused rows are queued: the event writer keeps only held executions.
            l.hold(&id, 1, sent);
        }
        for row in prior.values() {
            self.inner.events.write(Write::Block(row.clone()));
        }
        self.launch(
            admission,
            id.clone(),
            old.workflow_id.clone(),
            old.workspace_id.clone(),
            user.to_owned(),
            parsed,
            input,
            options,
            prior,
            0,
            now_ms(),
            (0, 0.0),
        )
        .await;
        Ok((id, true))
    }

    /// Resumes the executions that were running when the server stopped: finished blocks
    /// are not run again, waiting ones keep their deadlines, seqs continue. In a cluster it
    /// resumes only executions whose lease lapsed or that never had one (a node that is
    /// alive keeps renewing its own), taking their leases first: one takeover sweep, run now
    /// instead of at the lease task's first turn.
    pub async fn recover(&self) -> Result<usize, DbError> {
        if self.inner.lease.is_some() {
            return self.sweep().await;
        }
        let rows = store::unfinished(&self.inner.db).await?;
        let n = rows.len();
        for row in rows {
            self.resume_one(row, None).await?;
        }
        Ok(n)
    }

    /// Takes over up to a quarter of `max_concurrent_blocks` executions whose lease lapsed
    /// (or that never had one) and resumes them; returns how many it took.
    pub(crate) async fn sweep(&self) -> Result<usize, DbError> {
        let Some(leases) = &self.inner.lease else {
            return Ok(0);
        };
        let _turn = leases.sweep_turn().await;
        if leases.is_paused() || self.inner.closing.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let config = &leases.config;
        let except: Vec<String> = self.inner.running.lock().keys().cloned().collect();
        let limit = (self.inner.config.max_concurrent_blocks / 4).max(1) as i64;
        let sent = tokio::time::Instant::now();
        let claimed = lease_store::claim_expired(
            &self.inner.db,
            &config.node,
            &except,
            limit,
            config.lease_ttl,
        )
        .await?;
        leases.count_sweep(claimed.len());
        let n = claimed.len();
        for (id, epoch) in claimed {
            leases.hold(&id, epoch, sent);
            tracing::info!(execution = id, epoch, "taking over execution");
            let resumed = match store::execution(&self.inner.db, &id).await {
                Ok(Some(row)) if matches!(row.status.as_str(), "pending" | "running") => {
                    self.resume_one(row, Some(epoch)).await
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            };
            match resumed {
                Ok(true) => {}
                // Its lease lapses again and a later sweep (here or elsewhere) retries.
                Ok(false) => {
                    leases.forget(&id);
                }
                Err(e) => {
                    leases.forget(&id);
                    return Err(e);
                }
            }
        }
        Ok(n)
    }

    /// Resumes one execution from what is stored (read now, after its lease is held); false
    /// when it did not launch (it had ended, or no longer validates).
    async fn resume_one(&self, row: ExecutionRow, epoch: Option<i64>) -> Result<bool, DbError> {
        let graph: Value = serde_json::from_str(&row.graph).unwrap_or(Value::Null);
        let parsed = match prepare(&graph) {
            Ok(p) => p,
            Err(problems) => {
                tracing::error!(
                    execution = row.id,
                    ?problems,
                    "stored graph no longer parses"
                );
                store::finish(
                    &self.inner.db,
                    &row.id,
                    "failed",
                    Some("the stored workflow no longer validates"),
                )
                .await?;
                return Ok(false);
            }
        };
        let seq = store::last_seq(&self.inner.db, &row.id).await?;
        // The end was sent but its status not stored before the crash: store it, and
        // do not run again what already ended.
        let last = store::events(&self.inner.db, &row.workflow_id, &row.id, seq - 1, 1).await?;
        if let Some((_, event)) = last.first() {
            let event: Value = serde_json::from_str(event).unwrap_or(Value::Null);
            let end = match event["type"].as_str() {
                Some("execution.completed") => Some("completed"),
                Some("execution.failed") => Some("failed"),
                Some("execution.cancelled") => Some("cancelled"),
                _ => None,
            };
            if let Some(status) = end {
                store::finish(&self.inner.db, &row.id, status, event["error"].as_str()).await?;
                return Ok(false);
            }
        }
        let prior: HashMap<String, BlockRow> = store::blocks(&self.inner.db, &row.id)
            .await?
            .into_iter()
            .map(|b| (b.block_id.clone(), b))
            .collect();
        let totals = store::execution_usage(&self.inner.db, &row.id).await?;
        let input: Value = serde_json::from_str(&row.input).unwrap_or_else(|_| json!({}));
        let options: Options = serde_json::from_str(&row.options).unwrap_or_default();
        tracing::info!(
            execution = row.id,
            seq,
            epoch,
            blocks = prior.len(),
            "resuming execution"
        );
        let admission = self
            .admit(&row.user_id, &row.workspace_id, true)
            .expect("forced admission is not refused");
        self.launch(
            admission,
            row.id.clone(),
            row.workflow_id.clone(),
            row.workspace_id.clone(),
            row.user_id.clone(),
            parsed,
            input,
            options,
            prior,
            seq,
            row.started_at,
            totals,
        )
        .await;
        Ok(true)
    }

    /// Stops every execution without recording an end (they resume at the next start),
    /// then waits until `deadline` for the log to be written and the engine's tasks to end.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        self.inner.ticker.cancel();
        self.inner.closing.store(true, Ordering::SeqCst);
        // Drain: blocks doing work (an AI call, a webhook request) get until two seconds
        // before the deadline to finish, so a deploy does not cut a paid call or a delivered
        // request short and repeat it after the restart. Holding every slot of the server's
        // block semaphore means none is in flight, and no new block starts meanwhile.
        let slots =
            u32::try_from(self.inner.config.max_concurrent_blocks.max(1)).unwrap_or(u32::MAX);
        let drain_until = deadline
            .checked_sub(std::time::Duration::from_secs(2))
            .unwrap_or(deadline);
        let drained =
            tokio::time::timeout_at(drain_until, self.inner.global.acquire_many(slots)).await;
        if drained.is_err() {
            tracing::warn!(
                "blocks still in flight at the end of the drain; they run again after the restart"
            );
        }
        if let Some(l) = &self.inner.lease {
            l.stop.cancel();
        }
        let (ids, tasks): (Vec<_>, Vec<_>) = {
            let mut running = self.inner.running.lock();
            self.inner.closing.store(true, Ordering::SeqCst);
            running.drain().map(|(id, (_, task))| (id, task)).unzip()
        };
        for t in tasks {
            t.abort();
        }
        let events = &self.inner.events;
        if tokio::time::timeout_at(deadline, events.flush())
            .await
            .is_err()
        {
            tracing::error!(
                "execution log not flushed at shutdown; the restart replays from what is stored"
            );
        }
        if let Some(l) = &self.inner.lease {
            // After the flush: what this node wrote is stored before another node may take
            // over (the epoch fence refuses anything later anyway).
            let released = tokio::time::timeout_at(
                deadline,
                lease_store::release(&self.inner.db, &l.config.node, &ids),
            )
            .await;
            match released {
                Ok(Ok(n)) => tracing::info!(released = n, "execution leases released"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "releasing execution leases failed; they expire")
                }
                Err(_) => tracing::warn!("releasing execution leases timed out; they expire"),
            }
        }
        events.close();
        self.inner.tasks.close();
        if tokio::time::timeout_at(deadline, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("engine tasks still running at the end of the shutdown budget");
        }
    }

    /// Joins a cluster: execution events reach editors on every node (`docs/scale-out.md`
    /// §7.5); a lost one is a gap the editor's client fills by replay from the database, and
    /// an execution quiet for `probe` has its later events read from the database.
    pub fn set_bus(&self, bus: Arc<dyn resonant_bus::Bus>, probe: std::time::Duration) {
        self.inner.events.set_bus(bus.clone(), probe);
        let Some(lease) = &self.inner.lease else {
            return;
        };
        if self.inner.bus.set(bus.clone()).is_err() {
            return;
        }
        // Wake-ups for this node's runs: renew (and so see stored cancels and decisions) now.
        let topic = wake_topic(&lease.config.node);
        let weak = Arc::downgrade(&self.inner);
        self.inner.tasks.spawn(async move {
            let mut sub = bus.subscribe(&topic).await;
            while let Some(delivery) = sub.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                if inner.closing.load(Ordering::Relaxed) {
                    return;
                }
                if matches!(delivery, resonant_bus::Delivery::Message(_)) {
                    (Engine { inner }).poke_leases();
                }
            }
        });
    }

    /// Tells the node that owns `execution` (if another) to renew now: a cancel or decision
    /// for it was just stored here. Lost wake-ups cost up to one renewal interval.
    async fn wake_owner(&self, execution: &str) {
        let (Some(bus), Some(lease)) = (self.inner.bus.get(), &self.inner.lease) else {
            return;
        };
        match lease_store::owner_of(&self.inner.db, execution).await {
            Ok(Some(owner)) if owner.owner != lease.config.node => bus.publish(
                &wake_topic(&owner.owner),
                bytes::Bytes::from_static(b"wake"),
                resonant_bus::PublishOptions {
                    max_len: 100,
                    ttl: Some(std::time::Duration::from_secs(60)),
                },
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "no owner to wake"),
        }
    }

    /// Cancels every running execution of `workflow` (it is being deleted).
    pub fn cancel_workflow(&self, workflow: &str) {
        for (control, _) in self.inner.running.lock().values() {
            if control.workflow == workflow {
                control.cancel.cancel();
            }
        }
    }
}

/// The bus topic that wakes node `node`'s lease task.
fn wake_topic(node: &str) -> String {
    format!("node:{node}:wake")
}

/// Validates a workflow's content (`{blocks, connections}`) exactly as an execution start
/// does, returning every problem.
pub fn validate(graph: &Value) -> Result<(), Vec<Problem>> {
    prepare(graph).map(|_| ())
}

/// Validates a graph and plans its run.
fn prepare(graph: &Value) -> Result<plan::Plan, Vec<Problem>> {
    plan::Plan::new(Workflow::parse(graph, &block::Rules)?)
}

/// The block id of a block key (`loop[2]/inner[0]/x` → `x`).
fn last_block(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The refusal of a start over a running cap (`workspace`: the workspace's, else the user's).
fn too_many(workspace: bool, cap: usize) -> EngineError {
    let (who, flag) = if workspace {
        ("this workspace has", "--max-running-per-workspace")
    } else {
        ("you have", "--max-running-per-user")
    };
    EngineError::TooMany(format!(
        "{who} {cap} executions running (waiting ones included), as many as allowed ({flag}); \
         start this one when one of them ends or is cancelled"
    ))
}
