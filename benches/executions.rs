//! The execution engine under load, against the release binary run as a separate process
//! (`resonant serve --port 0`, development mode, SQLite in a temporary directory):
//!
//! 1. Scheduler overhead per block: chains input → N blocks → output of `ai` blocks (demo
//!    provider, no delay between tokens) and of `transform` blocks, run one at a time. µs per
//!    block = wall time from the start request to the `execution.completed` event / N, and
//!    the same from the event's own `durationMs`; medians over several runs.
//! 2. Event fan-out: E opted-in editors (1 and 50) receive every event of a chain of
//!    transforms; the server's CPU time (utime + stime from `/proc/<pid>/stat`) over the runs
//!    divided by the deliveries (events × editors), and the cost of one extra delivery.
//! 3. 100 executions started at once (input → ai, 15 ms demo delay → transform → output):
//!    wall time until all have completed, and p50/p99 of their durations.
//! 4. Document-sync latency between two editors of a room, idle and while executions of
//!    that workflow stream events into the room.
//!
//! Build the server first, then run:
//! `cargo build --release --bin resonant && cargo bench --bench executions`.
//! `BENCH_QUICK=1` shrinks every size for a smoke run; `BENCH_PARTS=1,3` runs only those
//! parts; `BENCH_SERVER_ARGS="--sqlite-sync normal"` adds flags to every server;
//! `RESONANT_BIN` overrides the binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resonant_client::protocol::encode_stateless;
use resonant_client::ws::{ConnectOptions, WsClient};
use serde_json::{json, Value};
use yrs::{Any, Array, In, Map, MapPrelim, Out, ReadTxn, Transact, WriteTxn};

/// Bound on any single wait.
const WAIT: Duration = Duration::from_secs(180);

/// The sizes of a run; `BENCH_QUICK=1` picks the small ones.
struct Sizes {
    chain: usize,
    runs: usize,
    fanout_runs: usize,
    editors: usize,
    concurrent: usize,
    sync_samples: usize,
}

impl Sizes {
    fn from_env() -> Sizes {
        if std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0") {
            Sizes {
                chain: 20,
                runs: 3,
                fanout_runs: 3,
                editors: 5,
                concurrent: 10,
                sync_samples: 50,
            }
        } else {
            Sizes {
                chain: 200,
                runs: 10,
                fanout_runs: 20,
                editors: 50,
                concurrent: 100,
                sync_samples: 500,
            }
        }
    }
}

/// The server binary as a child process; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RESONANT_BIN") {
        return p.into();
    }
    // target/release/deps/executions-<hash> → target/release/resonant
    let exe = std::env::current_exe().expect("current executable");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("resonant"))
        .expect("the bench runs from target/<profile>/deps");
    if !bin.exists() {
        eprintln!(
            "server binary {} not found: build it first with `cargo build --release --bin resonant` \
             (or set RESONANT_BIN)",
            bin.display()
        );
        std::process::exit(2);
    }
    bin
}

/// `BENCH_SERVER_ARGS`: more flags for every server (e.g. `--sqlite-sync normal`).
fn extra_server_args() -> Vec<String> {
    std::env::var("BENCH_SERVER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

impl Server {
    /// Starts `resonant serve --port 0` in development mode with `args` added.
    fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut child = Command::new(server_binary())
            .arg("serve")
            .args(["--port", "0", "--log", "warn", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .args(extra_server_args())
            .env_remove("DATABASE_URL")
            .env_remove("RESONANT_JWT_SECRET")
            .env_remove("RESONANT_JWKS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn resonant");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("resonant listening on ") {
                    let _ = tx.send(addr.to_string());
                    break;
                }
            }
            for _ in lines {}
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server prints its address")
            .parse()
            .expect("socket address");
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The server's CPU time so far (user + system, all threads), in µs.
    fn cpu_us(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/<pid>/stat");
        // Fields after the command name (which may hold spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        ticks * 1_000_000 / hz
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// REST access to a server: the default workspace of development mode.
struct Api {
    http: reqwest::Client,
    addr: SocketAddr,
    ws: String,
}

/// Sends a request and reads its JSON body, failing the bench on an unexpected status.
async fn json_of(req: reqwest::RequestBuilder, expected: u16) -> Value {
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("JSON body");
    assert_eq!(status, expected, "{body}");
    body
}

impl Api {
    async fn new(addr: SocketAddr) -> Api {
        let http = reqwest::Client::new();
        let list = json_of(http.get(format!("http://{addr}/api/v1/workspaces")), 200).await;
        let ws = match list["items"][0]["id"].as_str() {
            Some(id) => id.to_string(),
            None => {
                let created = json_of(
                    http.post(format!("http://{addr}/api/v1/workspaces"))
                        .json(&json!({"name": "bench"})),
                    201,
                )
                .await;
                created["id"].as_str().expect("workspace id").to_string()
            }
        };
        Api { http, addr, ws }
    }

    /// A new workflow whose document holds `graph`; returns its id.
    async fn workflow(&self, graph: &Value) -> String {
        let url = format!(
            "http://{}/api/v1/workspaces/{}/workflows",
            self.addr, self.ws
        );
        let wf = json_of(self.http.post(url).json(&json!({"name": "bench"})), 201).await;
        let id = wf["id"].as_str().expect("workflow id").to_string();
        let mut c = editor(self.addr, &id, true).await;
        put_graph(&mut c, graph).await;
        let _ = c.close().await;
        id
    }

    /// Starts an execution through REST; returns its id.
    async fn start(&self, workflow: &str) -> String {
        let url = format!(
            "http://{}/api/v1/workflows/{workflow}/executions",
            self.addr
        );
        let body = json_of(self.http.post(url).json(&json!({"input": {}})), 201).await;
        body["id"].as_str().unwrap().to_string()
    }
}

/// A synced editor of a workflow's room; `opt_in` for execution events and save acks.
async fn editor(addr: SocketAddr, workflow: &str, opt_in: bool) -> WsClient {
    let options = ConnectOptions {
        timeout: WAIT,
        ..ConnectOptions::default()
    };
    let url = format!("ws://{addr}/sync/workflow-{workflow}");
    let mut c = WsClient::connect(&url, &options).await.expect("connect");
    c.sync().await.expect("sync");
    if opt_in {
        c.opt_in().await.expect("opt in");
    }
    c
}

/// Writes `graph` into the document (as `tests/common/exec.rs` does) and waits for the save.
async fn put_graph(c: &mut WsClient, graph: &Value) {
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
    .await
    .expect("send the graph");
    c.until("the graph is stored", |s| s.acks >= 1)
        .await
        .expect("graph saved");
}

fn block(id: &str, kind: &str, config: Value) -> Value {
    json!({"id": id, "type": kind, "position": {"x": 0, "y": 0}, "data": {"label": id}, "config": config})
}

fn edge(source: &str, target: &str) -> Value {
    json!({"id": format!("{source}-{target}"), "source": source, "target": target})
}

fn ai_config() -> Value {
    json!({"userPromptTemplate": "x", "provider": "demo"})
}

fn transform_config() -> Value {
    json!({"template": "{{ upstream }}"})
}

/// input → the given blocks in a chain → output.
fn chain(middle: &[(&str, Value)]) -> Value {
    let mut blocks = vec![block("in", "input", json!({}))];
    let mut ids = vec!["in".to_string()];
    for (i, (kind, config)) in middle.iter().enumerate() {
        let id = format!("b{i}");
        blocks.push(block(&id, kind, config.clone()));
        ids.push(id);
    }
    blocks.push(block("out", "output", json!({})));
    ids.push("out".into());
    let connections: Vec<Value> = ids.windows(2).map(|w| edge(&w[0], &w[1])).collect();
    json!({"blocks": blocks, "connections": connections})
}

fn uniform_chain(kind: &str, config: Value, n: usize) -> Value {
    chain(&vec![(kind, config); n])
}

/// How an execution ended, as an editor saw it.
struct Ended {
    id: String,
    /// Execution events (those with a `seq`) received up to and including the last one.
    events: usize,
    duration_ms: i64,
    at: Instant,
}

/// Reads until an execution (`id`, or any if `None`) ends; counts the events on the way and
/// drops the messages read, leaving those after the end for the next call. Panics if the
/// run did not complete.
async fn until_ended(c: &mut WsClient, id: Option<&str>) -> Ended {
    let mut events = 0;
    loop {
        c.until("an execution event", |s| !s.stateless.is_empty())
            .await
            .expect("execution events");
        let at = Instant::now();
        let mut ended = None;
        let mut read = 0;
        for m in &c.stateless {
            read += 1;
            let v: Value = serde_json::from_str(m).expect("JSON message");
            if v.get("seq").is_none() {
                continue;
            }
            events += 1;
            let kind = v["type"].as_str().unwrap_or_default();
            let this = v["executionId"].as_str().unwrap_or_default();
            if kind.starts_with("execution.")
                && kind != "execution.started"
                && id.is_none_or(|id| id == this)
            {
                assert_eq!(kind, "execution.completed", "the run did not complete: {v}");
                ended = Some(Ended {
                    id: this.to_string(),
                    events,
                    duration_ms: v["durationMs"].as_i64().unwrap_or(-1),
                    at,
                });
                break;
            }
        }
        c.stateless.drain(..read);
        if let Some(e) = ended {
            return e;
        }
    }
}

/// Starts an execution on an opted-in socket; returns its id.
async fn start_on_socket(c: &mut WsClient, request: u64) -> String {
    let msg = json!({"type": "execution.start", "input": {}, "requestId": request});
    c.send(encode_stateless(&msg.to_string()))
        .await
        .expect("send start");
    let answer = |m: &String| {
        serde_json::from_str::<Value>(m)
            .ok()
            .filter(|v| v["type"] == "execution.accepted" || v["type"] == "error")
    };
    c.until("execution.accepted", |s| {
        s.stateless.iter().any(|m| answer(m).is_some())
    })
    .await
    .expect("an answer to the start");
    let v = c.stateless.iter().find_map(answer).unwrap();
    c.stateless.retain(|m| answer(m).is_none());
    v["executionId"]
        .as_str()
        .unwrap_or_else(|| panic!("start refused: {v}"))
        .to_string()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Part 1: µs of scheduling per block in a chain.
async fn scheduler(sizes: &Sizes) {
    let server = Server::start(&["--demo-delay-ms", "0"]);
    let api = Api::new(server.addr).await;
    let n = sizes.chain;
    println!("\n1. Scheduler overhead per block (chain of N = {n}, demo provider at 0 ms, median of {} runs after 1 warm-up)", sizes.runs);
    println!(
        "{:<10} {:>10} {:>14} {:>14} {:>16} {:>12}",
        "blocks", "wall ms", "µs/block wall", "durationMs", "µs/block durMs", "events/run"
    );
    for (kind, config) in [("ai", ai_config()), ("transform", transform_config())] {
        let wf = api.workflow(&uniform_chain(kind, config, n)).await;
        let mut c = editor(server.addr, &wf, true).await;
        let (mut walls, mut durs) = (Vec::new(), Vec::new());
        let mut events = 0;
        for r in 0..=sizes.runs {
            let started = Instant::now();
            let id = start_on_socket(&mut c, r as u64).await;
            let end = until_ended(&mut c, Some(&id)).await;
            let wall = end.at.duration_since(started);
            if r > 0 {
                walls.push(wall.as_secs_f64() * 1e6);
                durs.push(end.duration_ms as f64 * 1e3);
                events = end.events;
            }
        }
        let (wall, dur) = (median(&mut walls), median(&mut durs));
        println!(
            "{:<10} {:>10.1} {:>14.1} {:>14.0} {:>16.1} {:>12}",
            kind,
            wall / 1e3,
            wall / n as f64,
            dur / 1e3,
            dur / n as f64,
            events
        );
        let _ = c.close().await;
    }
}

/// Part 2: server CPU per delivered event, 1 editor against many.
async fn fanout(sizes: &Sizes) {
    let server = Server::start(&["--demo-delay-ms", "0"]);
    let api = Api::new(server.addr).await;
    let n = sizes.chain;
    let wf = api
        .workflow(&uniform_chain("transform", transform_config(), n))
        .await;
    // Warm-up: the first run reads the workflow and opens what it needs.
    {
        let mut c = editor(server.addr, &wf, true).await;
        let id = api.start(&wf).await;
        until_ended(&mut c, Some(&id)).await;
        let _ = c.close().await;
    }
    println!(
        "\n2. Event fan-out (chain of {n} transforms, {} runs per row, server CPU = utime + stime)",
        sizes.fanout_runs
    );
    println!(
        "{:<8} {:>11} {:>12} {:>12} {:>14} {:>16}",
        "editors", "events/run", "deliveries", "CPU ms", "CPU ms/run", "CPU µs/delivery"
    );
    let mut rows = Vec::new();
    for e in [1, sizes.editors] {
        let mut editors = Vec::new();
        for _ in 0..e {
            editors.push(editor(server.addr, &wf, true).await);
        }
        // Let the joins settle before the window opens.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu0 = server.cpu_us();
        let mut deliveries = 0;
        let mut events = 0;
        for _ in 0..sizes.fanout_runs {
            let waiting: Vec<_> = editors
                .drain(..)
                .map(|mut c| {
                    tokio::spawn(async move {
                        let end = until_ended(&mut c, None).await;
                        (c, end.events)
                    })
                })
                .collect();
            api.start(&wf).await;
            for w in waiting {
                let (c, got) = w.await.unwrap();
                deliveries += got;
                events = got;
                editors.push(c);
            }
        }
        let cpu = server.cpu_us() - cpu0;
        let per = cpu as f64 / deliveries as f64;
        println!(
            "{:<8} {:>11} {:>12} {:>12.0} {:>14.1} {:>16.2}",
            e,
            events,
            deliveries,
            cpu as f64 / 1e3,
            cpu as f64 / 1e3 / sizes.fanout_runs as f64,
            per
        );
        rows.push((e, cpu, deliveries));
        for c in editors {
            let _ = c.close().await;
        }
    }
    let ((e1, cpu1, d1), (e2, cpu2, d2)) = (rows[0], rows[1]);
    let extra = (cpu2 as f64 - cpu1 as f64) / (d2 as f64 - d1 as f64);
    println!(
        "per extra delivery ({e2} vs {e1} editors): {extra:.2} µs of server CPU (tick = {} ms)",
        // SAFETY: sysconf has no preconditions.
        1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
    );
}

/// Part 3: many executions at once.
async fn concurrent(sizes: &Sizes) {
    // One user from one address starts them all: the per-IP connection cap (64) and the
    // running caps per user and workspace (10, 50) would refuse most, and this part measures
    // the engine, not those limits (tests/abuse_engine.rs covers them).
    let server = Server::start(&[
        "--demo-delay-ms",
        "15",
        "--max-http-connections-per-ip",
        "0",
        "--max-running-per-user",
        "0",
        "--max-running-per-workspace",
        "0",
    ]);
    let api = Arc::new(Api::new(server.addr).await);
    let graph = chain(&[("ai", ai_config()), ("transform", transform_config())]);
    let wf = api.workflow(&graph).await;
    let mut watcher = editor(server.addr, &wf, true).await;
    // Warm-up run, alone.
    let id = api.start(&wf).await;
    let alone = until_ended(&mut watcher, Some(&id)).await;
    let k = sizes.concurrent;
    let collect = tokio::spawn(async move {
        let mut ends = Vec::new();
        while ends.len() < k {
            ends.push(until_ended(&mut watcher, None).await);
        }
        ends
    });
    let started = Instant::now();
    let starts: Vec<_> = (0..k)
        .map(|_| {
            let (api, wf) = (api.clone(), wf.clone());
            tokio::spawn(async move {
                let id = api.start(&wf).await;
                (id, Instant::now())
            })
        })
        .collect();
    let mut accepted = HashMap::new();
    for s in starts {
        let (id, at) = s.await.unwrap();
        accepted.insert(id, at);
    }
    let last_accept = accepted.values().max().unwrap().duration_since(started);
    let ends = collect.await.unwrap();
    let total = ends
        .iter()
        .map(|e| e.at)
        .max()
        .unwrap()
        .duration_since(started);
    let mut server_h = Histogram::<u64>::new(3).unwrap();
    let mut client_h = Histogram::<u64>::new(3).unwrap();
    for e in &ends {
        assert!(accepted.contains_key(&e.id), "an execution we started");
        server_h.record(e.duration_ms.max(0) as u64).unwrap();
        client_h
            .record(e.at.duration_since(started).as_millis() as u64)
            .unwrap();
    }
    println!(
        "\n3. {k} executions at once (input → ai, demo 15 ms/token → transform → output; one alone: {} ms)",
        alone.duration_ms
    );
    println!(
        "all {k} completed after {:.0} ms (last start request answered after {:.0} ms)",
        total.as_secs_f64() * 1e3,
        last_accept.as_secs_f64() * 1e3
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8}",
        "per execution", "p50 ms", "p99 ms", "max ms"
    );
    for (name, h) in [
        ("durationMs (server, from its start)", &server_h),
        ("start request → completed event", &client_h),
    ] {
        println!(
            "{:<34} {:>8} {:>8} {:>8}",
            name,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
}

/// The `meta.counter` value of a client's document.
fn counter(c: &resonant_client::ClientState) -> Option<i64> {
    let txn = c.doc.transact();
    match txn.get_map("meta")?.get(&txn, "counter")? {
        Out::Any(Any::Number(n)) => n.as_i64(),
        _ => None,
    }
}

/// A/B latency samples: A sets `meta.counter`, B waits until it has applied it.
async fn sync_samples(
    a: &mut WsClient,
    b: &mut WsClient,
    next: &mut u64,
    samples: usize,
) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    let warm = samples / 10;
    for i in 0..samples + warm {
        *next += 1;
        let value = *next as i64;
        let started = Instant::now();
        a.edit(|_doc, txn| {
            txn.get_or_insert_map("meta").insert(txn, "counter", value);
        })
        .await
        .expect("send edit");
        b.until("the edit", |s| counter(s) == Some(value))
            .await
            .expect("B applies the edit");
        let took = started.elapsed();
        b.stateless.clear();
        if i >= warm {
            h.record(took.as_micros() as u64).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    h
}

/// Part 4: document-sync latency in a room whose workflow is running.
async fn sync_latency(sizes: &Sizes) {
    let server = Server::start(&["--demo-delay-ms", "1"]);
    let api = Api::new(server.addr).await;
    let ais = if sizes.chain >= 200 { 20 } else { 5 };
    let wf = api.workflow(&uniform_chain("ai", ai_config(), ais)).await;
    // A only writes; B is an editor that opted in, so it also receives the execution events.
    let mut a = editor(server.addr, &wf, false).await;
    let mut b = editor(server.addr, &wf, true).await;
    let mut next = 0;
    let idle = sync_samples(&mut a, &mut b, &mut next, sizes.sync_samples).await;

    // A driver runs executions of the workflow back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut driver = editor(server.addr, &wf, true).await;
    let stopping = stop.clone();
    let drive = tokio::spawn(async move {
        let began = Instant::now();
        let (mut runs, mut events) = (0, 0);
        while !stopping.load(Ordering::Relaxed) {
            let id = start_on_socket(&mut driver, runs).await;
            events += until_ended(&mut driver, Some(&id)).await.events;
            runs += 1;
        }
        (runs, events, began.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy_started = Instant::now();
    let busy = sync_samples(&mut a, &mut b, &mut next, sizes.sync_samples).await;
    let busy_for = busy_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (runs, events, drove_for) = drive.await.unwrap();
    println!(
        "\n4. Document-sync latency, A's edit until B applied it ({} samples; busy: executions of input → {ais} ai (demo 1 ms/token) → output back to back)",
        sizes.sync_samples
    );
    println!("{:<44} {:>8} {:>8} {:>8}", "", "p50 µs", "p99 µs", "max µs");
    for (name, h) in [
        ("idle room".to_string(), &idle),
        (
            format!(
                "execution streaming (~{:.0} events/s)",
                events as f64 / drove_for.as_secs_f64()
            ),
            &busy,
        ),
    ] {
        println!(
            "{:<44} {:>8} {:>8} {:>8}",
            name,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    println!(
        "(busy phase {:.1} s; the driver ran {runs} executions, {events} events, in {:.1} s)",
        busy_for.as_secs_f64(),
        drove_for.as_secs_f64()
    );
    let _ = a.close().await;
    let _ = b.close().await;
}

fn main() {
    // Fail early, before any server starts, if the binary is missing.
    server_binary();
    let sizes = Sizes::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `BENCH_PARTS=1,3` runs only those parts.
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "1,2,3,4".into());
    let part = |n: &str| parts.split(',').any(|p| p.trim() == n);
    if !extra_server_args().is_empty() {
        println!("extra server flags: {}", extra_server_args().join(" "));
    }
    rt.block_on(async {
        if part("1") {
            scheduler(&sizes).await;
        }
        if part("2") {
            fanout(&sizes).await;
        }
        if part("3") {
            concurrent(&sizes).await;
        }
        if part("4") {
            sync_latency(&sizes).await;
        }
    });
}
