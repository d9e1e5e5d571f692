//! The load tester's side of `resonant-client`: where to connect (a URL template resolved
//! once), socket settings for thousands of connections, and the events scenarios act on.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use futures_util::stream::SplitStream;
use resonant_client::ws::{self, ConnectOptions};
use resonant_client::{ClientState, ServerMessage};
use yrs::sync::AwarenessUpdate;
use yrs::Doc;

pub use resonant_client::Ended;

/// The socket type every client uses.
pub type Ws = ws::WsStream;

/// Where to connect: the URL template's host and port, resolved once.
#[derive(Clone, Debug)]
pub struct Target {
    /// Each server's URL template and resolved address; the first is the writers' node.
    servers: Arc<Vec<(String, SocketAddr)>>,
    /// Rooms that already have their first connection (it goes to the first server).
    seen: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Round-robin position over the other servers.
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Target {
    /// Parses URL templates like `ws://127.0.0.1:1234/sync/{room}` (query parameters
    /// allowed). Several are the servers of one cluster: each room's first connection (its writer, or the
    /// builder of its document) goes to the first, every other connection round-robin to
    /// the others — so with two servers every reader is on another node than its writer.
    pub async fn parse_all(templates: &[String], allow_remote: bool) -> anyhow::Result<Target> {
        let mut servers = Vec::new();
        for template in templates {
            servers.push((template.clone(), resolve(template, allow_remote).await?));
        }
        if servers.is_empty() {
            return Err(anyhow!("at least one --url is needed"));
        }
        Ok(Target {
            servers: Arc::new(servers),
            seen: Arc::default(),
            next: Arc::default(),
        })
    }

    /// The first server's address.
    pub fn addr(&self) -> SocketAddr {
        self.servers[0].1
    }

    /// The server the next connection to `room` goes to: its address and the room's URL.
    fn pick(&self, room: &str) -> (SocketAddr, String) {
        let first = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.to_string());
        let (template, addr) = if first || self.servers.len() == 1 {
            &self.servers[0]
        } else {
            let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            &self.servers[1 + n % (self.servers.len() - 1)]
        };
        (*addr, template.replace("{room}", room))
    }
}

/// Checks and resolves one URL template.
async fn resolve(template: &str, allow_remote: bool) -> anyhow::Result<SocketAddr> {
    if !template.contains("{room}") {
        return Err(anyhow!(
            "the URL template must contain {{room}}: {template}"
        ));
    }
    let rest = template
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("only ws:// URLs are supported: {template}"))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let addr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .ok_or_else(|| anyhow!("{hostport} does not resolve"))?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(anyhow!(
            "{hostport} is not a loopback address; pass --allow-remote to load a remote server"
        ));
    }
    Ok(addr)
}

/// Opens a WebSocket to `room`, from `local` if given (to spread connections over several
/// source addresses).
pub async fn connect(target: &Target, room: &str, local: Option<IpAddr>) -> anyhow::Result<Ws> {
    connect_with(target, room, local, 8 << 10).await
}

/// [`connect`] with a chosen read buffer size (large documents read faster with a larger one;
/// the default is small because connections number in the thousands).
pub async fn connect_with(
    target: &Target,
    room: &str,
    local: Option<IpAddr>,
    read_buffer: usize,
) -> anyhow::Result<Ws> {
    let options = ConnectOptions {
        max_message_size: 512 << 20,
        read_buffer_size: read_buffer,
        write_buffer_size: 0,
        local_addr: local,
        timeout: Duration::from_secs(10),
    };
    let (addr, url) = target.pick(room);
    Ok(ws::connect_to(addr, &url, &options).await?)
}

/// What a connection saw, for the scenario to act on.
pub enum Event<'a> {
    /// The server's step 2 has been applied (the doc now holds the stored state).
    Synced,
    /// An update was applied to the doc.
    Updated(&'a Doc),
    /// An awareness message arrived.
    Awareness(&'a AwarenessUpdate),
}

/// Reads until the stream ends or `stop` fires, applying updates to `client`'s doc and
/// answering the server's step 1 through `replies`; calls `on_event` for what it sees.
pub async fn read_loop(
    mut stream: SplitStream<Ws>,
    mut client: ClientState,
    replies: tokio::sync::mpsc::UnboundedSender<Bytes>,
    stop: Arc<tokio::sync::Notify>,
    mut on_event: impl FnMut(Event<'_>),
) -> Ended {
    ws::read_loop(
        &mut stream,
        &mut client,
        stop.notified(),
        |client, handled| {
            // Extension messages we did not opt in to, or garbage: not ours to judge here.
            let Ok(handled) = handled else { return };
            if let Some(reply) = handled.reply {
                let _ = replies.send(reply);
            }
            match handled.message {
                ServerMessage::SyncStep2(_) => on_event(Event::Synced),
                ServerMessage::Update(_) => on_event(Event::Updated(&client.doc)),
                ServerMessage::Awareness(update) => on_event(Event::Awareness(&update)),
                _ => {}
            }
        },
    )
    .await
}
