//! Shared helpers for the integration tests: the shared y-websocket client (`resonant-client`)
//! set up for tests, and ways to run the server in-process or as the real binary.
#![allow(dead_code)]

pub mod api;
pub mod exec;
pub mod mock_ai;
pub mod resend;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use resonant::ServeConfig;
use resonant_client::ws::{ConnectOptions, WsClient};
pub use resonant_client::ClientState;
use tokio_tungstenite::tungstenite::Message;
use yrs::{Doc, ReadTxn, Transact, TransactionMut};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Starts an in-process server with its SQLite store in `dir`.
pub async fn start_server(dir: &Path, tweak: impl FnOnce(&mut ServeConfig)) -> resonant::Server {
    let mut config = ServeConfig::for_tests(dir.to_path_buf());
    tweak(&mut config);
    resonant::start(config).await.expect("server starts")
}

/// The sync URL of a room on a server.
pub fn room_url(addr: SocketAddr, room: &str) -> String {
    format!("ws://{addr}/sync/{room}")
}

/// A unique room name, so tests sharing a Postgres database do not meet.
pub fn unique_room(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>())
}

/// The shared y-websocket client ([`resonant_client::ws::WsClient`]) with the tests' habits:
/// 256 MiB messages, [`WAIT`] for every wait, and a panic instead of an error. Dereferences to
/// the client's [`ClientState`] (`doc`, `peers`, `acks`, …).
pub struct Client(WsClient);

impl Deref for Client {
    type Target = WsClient;
    fn deref(&self) -> &WsClient {
        &self.0
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut WsClient {
        &mut self.0
    }
}

impl Client {
    /// Connects without waiting for anything.
    pub async fn connect(url: &str) -> Client {
        let options = ConnectOptions {
            max_message_size: 256 << 20,
            timeout: WAIT,
            ..ConnectOptions::default()
        };
        Client(WsClient::connect(url, &options).await.expect("connect"))
    }

    /// Wraps a connection made by hand (custom handshake headers).
    pub fn from_stream(ws: resonant_client::ws::WsStream) -> Client {
        Client(WsClient::new(ws, ClientState::default(), WAIT))
    }

    /// Connects to `url` (say, another node) with this client's document, and syncs: the
    /// server's step 1 draws whatever this document holds that the server lacks.
    pub async fn reconnect(self, url: &str) -> Client {
        let options = ConnectOptions {
            max_message_size: 256 << 20,
            timeout: WAIT,
            ..ConnectOptions::default()
        };
        let ws = resonant_client::ws::connect(url, &options)
            .await
            .expect("connect");
        let mut c = Client(WsClient::new(ws, self.0.into_state(), WAIT));
        c.sync().await;
        c
    }

    /// Connects, sends our step 1 and waits for the server's step 2.
    pub async fn connect_synced(url: &str) -> Client {
        let mut c = Client::connect(url).await;
        c.sync().await;
        c
    }

    /// Sends step 1 and waits until the server's answer is applied.
    pub async fn sync(&mut self) {
        self.0.sync().await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sends one raw binary frame.
    pub async fn send(&mut self, frame: Bytes) {
        self.0.send(frame).await.expect("send");
    }

    /// Sends any message (text frames, oversized frames, …); the server may already be gone.
    pub async fn send_message(&mut self, msg: Message) {
        let _ = self.0.send_message(msg).await;
    }

    /// Opts in to save acknowledgements.
    pub async fn opt_in(&mut self) {
        self.0.opt_in().await.expect("send");
    }

    /// Edits the local doc and sends the resulting update.
    pub async fn edit(&mut self, f: impl FnOnce(&Doc, &mut TransactionMut)) {
        self.0.edit(f).await.expect("send");
    }

    /// Sets this client's awareness state and sends it.
    pub async fn set_awareness(&mut self, json: &str) {
        self.0.set_awareness(json).await.expect("send");
    }

    /// Processes incoming messages until `pred` holds; panics after [`WAIT`].
    pub async fn until(&mut self, what: &str, pred: impl FnMut(&ClientState) -> bool) {
        self.0
            .until(what, pred)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Processes incoming messages until the connection ends; returns the server's close.
    pub async fn until_closed(&mut self) -> Option<(u16, String)> {
        self.0
            .until_closed()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = self.0.close().await;
    }
}

/// The JSON of a doc's root types, with object keys sorted (for comparing content).
pub fn doc_json(doc: &Doc) -> String {
    use yrs::types::ToJson;
    let txn = doc.transact();
    let mut out = serde_json::Map::new();
    for name in ["blocks", "connections"] {
        if let Some(arr) = txn.get_array(name) {
            out.insert(name.into(), canonical(&arr.to_json(&txn)));
        }
    }
    for name in ["meta", "viewport"] {
        if let Some(map) = txn.get_map(name) {
            out.insert(name.into(), canonical(&map.to_json(&txn)));
        }
    }
    if let Some(t) = txn.get_text("text") {
        use yrs::GetString;
        out.insert("text".into(), t.get_string(&txn).into());
    }
    serde_json::Value::Object(out).to_string()
}

fn canonical(any: &yrs::Any) -> serde_json::Value {
    let mut s = String::new();
    any.to_json(&mut s);
    // serde_json's map is ordered by key, so equal content prints equally.
    serde_json::from_str(&s).expect("yrs prints valid JSON")
}

/// The server binary, run as a child process (for kill -9 and signal tests).
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `resonant serve --port 0` with extra arguments and waits for its address.
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_with_env(args, &[])
    }

    /// Starts it with extra environment variables (`RESONANT_FAILPOINTS`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        Self::start_wrapped(&[], args, env)
    }

    /// Starts it through `wrapper` (`ip netns exec <ns>`), which must exec the server in its
    /// own process so that killing the child kills the server.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_resonant"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_resonant")),
        };
        let mut child = command
            .arg("serve")
            .args(["--port", "0", "--log", "warn"])
            .args(args)
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn resonant");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Logs (the development-mode warning) may come before the address line.
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.starts_with("resonant listening on ") {
                    let _ = tx.send(line);
                    break;
                }
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(WAIT).expect("server prints its address");
        let addr = line
            .strip_prefix("resonant listening on ")
            .expect("address line")
            .parse()
            .expect("socket address");
        ServerProcess { child, addr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then waits for exit; returns how long it took and the exit status.
    pub fn terminate(mut self) -> (Duration, std::process::ExitStatus) {
        let started = std::time::Instant::now();
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait");
        (started.elapsed(), status)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `TEST_DATABASE_URL` if set. Tests that need Postgres skip (saying so) when it is unset,
/// and fail when it is set but the server is unreachable.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("TEST_DATABASE_URL is not set: skipping the Postgres variant");
            None
        }
    }
}

/// Polls `cond` every 20 ms until it holds; fails after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Prometheus sample's value in `/metrics` text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The process's resident memory now.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// The process's peak RSS so far: catches an allocation that was freed again.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// A `/proc/<pid>/status` field in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// How many sockets the process holds open.
pub fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .count()
}

/// A pair of clients in their own room: one writes, the other must see it. A task of its own
/// keeps both sockets read (so they answer the server's pings while the test is busy attacking)
/// and beats every [`Canary::PERIOD`], so its delivery times cover the attack itself; hostile
/// tests also beat it by hand between attacks.
pub struct Canary {
    beats: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<Duration, String>>>,
    times: std::sync::Arc<std::sync::Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
    /// The slowest delivery so far (background beats included), as of the last [`Canary::beat`].
    pub worst: Duration,
}

impl Canary {
    /// How often the canary beats on its own.
    pub const PERIOD: Duration = Duration::from_millis(100);

    /// Connects the pair to a fresh room of the server at `addr` and starts beating.
    pub async fn start(addr: SocketAddr) -> Canary {
        let room = room_url(addr, &unique_room("canary"));
        let mut pair = CanaryPair {
            writer: Client::connect_synced(&room).await,
            reader: Client::connect_synced(&room).await,
            n: 0,
        };
        let (beats, mut asked) =
            tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<Result<Duration, String>>>(1);
        let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = times.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Canary::PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failed: Option<String> = None;
            loop {
                let reply = tokio::select! {
                    asked = asked.recv() => match asked {
                        Some(reply) => Some(reply),
                        None => return,
                    },
                    _ = tick.tick(), if failed.is_none() => None,
                    // Reading keeps pongs flowing; an error here is a closed socket.
                    r = pair.writer.0.until("nothing", |_| false), if failed.is_none() => {
                        if let Err(resonant_client::ws::WaitError::Ended { how, .. }) = r {
                            failed = Some(format!("the canary's writer ended: {how:?}"));
                        }
                        continue;
                    }
                    r = pair.reader.0.until("nothing", |_| false), if failed.is_none() => {
                        if let Err(resonant_client::ws::WaitError::Ended { how, .. }) = r {
                            failed = Some(format!("the canary's reader ended: {how:?}"));
                        }
                        continue;
                    }
                };
                let outcome = match &failed {
                    Some(why) => Err(why.clone()),
                    None => pair.beat().await,
                };
                match &outcome {
                    Ok(took) => recorded.lock().unwrap().push(*took),
                    Err(why) => failed = Some(why.clone()),
                }
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
        });
        Canary {
            beats,
            times,
            task,
            worst: Duration::ZERO,
        }
    }

    /// One edit, delivered to the reader now; panics if the canary's sockets were closed at
    /// any time since it started.
    pub async fn beat(&mut self) {
        let (reply, took) = tokio::sync::oneshot::channel();
        self.beats.send(reply).await.expect("the canary task runs");
        if let Err(why) = took.await.expect("the canary task answers") {
            panic!("{why}");
        }
        self.worst = self
            .times
            .lock()
            .unwrap()
            .iter()
            .copied()
            .max()
            .unwrap_or_default();
    }

    /// The 99th percentile of every delivery so far, and how many there were.
    pub fn p99(&self) -> (Duration, usize) {
        let mut times = self.times.lock().unwrap().clone();
        times.sort();
        let p99 = times
            .get((times.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default();
        (p99, times.len())
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The canary's two clients, owned by its task.
struct CanaryPair {
    writer: Client,
    reader: Client,
    n: usize,
}

impl CanaryPair {
    /// One edit, delivered to the reader; how long the delivery took.
    async fn beat(&mut self) -> Result<Duration, String> {
        use yrs::{GetString, Text, Transact, WriteTxn};
        self.n += 1;
        let n = self.n;
        let started = std::time::Instant::now();
        self.writer
            .0
            .edit(move |_, txn| {
                // Through the open transaction: `Doc::get_or_insert_*` would wait for it.
                txn.get_or_insert_text("t").push(txn, &format!("{n},"));
            })
            .await
            .map_err(|e| format!("the canary's edit was not sent: {e}"))?;
        let want = format!("{n},");
        self.reader
            .0
            .until("the canary's edit", |c| {
                let text = c.doc.get_or_insert_text("t");
                let s = text.get_string(&c.doc.transact());
                s.ends_with(&want)
            })
            .await
            .map_err(|e| format!("the canary's edit was not delivered: {e}"))?;
        Ok(started.elapsed())
    }
}

/// The debug server on SQLite in `dir` (sync `normal`: these tests measure memory and
/// latency, not durability), with `extra` flags and jemalloc returning freed pages at once.
pub fn sqlite_server(dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
    jemalloc_returns_freed_pages();
    let mut args = vec![
        "--data-dir",
        dir.to_str().unwrap(),
        "--sqlite-sync",
        "normal",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// Makes servers started from now on return freed pages at once, so their RSS tells what
/// they still hold.
pub fn jemalloc_returns_freed_pages() {
    // SAFETY: called before the child is spawned; no other thread reads this variable.
    unsafe { std::env::set_var("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0") };
}
