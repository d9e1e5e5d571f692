//! A minimal y-websocket client: connects (optionally from a chosen local address), syncs,
//! applies every update to its own yrs doc and reports what it sees.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use yrs::sync::{AwarenessUpdate, Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Transact, Update};

/// The socket type every client uses.
pub type Ws = WebSocketStream<TcpStream>;

/// Where to connect: the URL template's host and port, resolved once.
#[derive(Clone, Debug)]
pub struct Target {
    template: String,
    addr: SocketAddr,
}

impl Target {
    /// Parses a template like `ws://127.0.0.1:1234/sync/{room}` (query parameters allowed).
    pub async fn parse(template: &str, allow_remote: bool) -> anyhow::Result<Target> {
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
        Ok(Target {
            template: template.to_string(),
            addr,
        })
    }

    /// The resolved server address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of one room.
    pub fn url(&self, room: &str) -> String {
        self.template.replace("{room}", room)
    }
}

/// Opens a WebSocket to `room`, from `local` if given (to spread connections over several
/// source addresses: one destination has only ~28k ephemeral ports per source).
pub async fn connect(target: &Target, room: &str, local: Option<IpAddr>) -> anyhow::Result<Ws> {
    connect_with(target, room, local, 8 << 10).await
}

/// [`connect`] with a chosen read buffer size (large documents read faster with a larger one).
pub async fn connect_with(
    target: &Target,
    room: &str,
    local: Option<IpAddr>,
    read_buffer: usize,
) -> anyhow::Result<Ws> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(target.addr))
        .await
        .context("TCP connect timed out")??;
    stream.set_nodelay(true)?;
    let request = target.url(room).into_client_request()?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(512 << 20))
        .max_frame_size(Some(512 << 20))
        .read_buffer_size(read_buffer)
        .write_buffer_size(0);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    .context("WebSocket handshake timed out")??;
    Ok(ws)
}

/// Encodes a y-websocket message.
pub fn encode(msg: &YMessage) -> Bytes {
    Bytes::from(msg.encode_v1())
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

/// Why a connection ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// The server sent a close frame with this code.
    Closed(u16),
    /// The socket failed or ended without a close frame.
    Error(String),
    /// We stopped reading.
    Stopped,
}

/// Sends our step 1 (so the server answers with step 2).
pub async fn send_step1(sink: &mut SplitSink<Ws, Message>, doc: &Doc) -> anyhow::Result<()> {
    let sv = doc.transact().state_vector();
    let msg = encode(&YMessage::Sync(SyncMessage::SyncStep1(sv)));
    sink.send(Message::Binary(msg)).await?;
    Ok(())
}

/// Reads until the stream ends or `stop` fires, applying updates to `doc` and answering the
/// server's step 1 through `replies`; calls `on_event` for what it sees.
pub async fn read_loop(
    mut stream: SplitStream<Ws>,
    doc: &Doc,
    replies: tokio::sync::mpsc::UnboundedSender<Bytes>,
    stop: Arc<tokio::sync::Notify>,
    mut on_event: impl FnMut(Event<'_>),
) -> Ended {
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = stop.notified() => return Ended::Stopped,
        };
        let msg = match next {
            None => return Ended::Error("stream ended".into()),
            Some(Err(e)) => return Ended::Error(e.to_string()),
            Some(Ok(m)) => m,
        };
        let data = match msg {
            Message::Binary(b) => b,
            Message::Close(frame) => {
                return match frame {
                    Some(f) => Ended::Closed(f.code.into()),
                    None => Ended::Closed(1005),
                }
            }
            _ => continue,
        };
        let Ok(msg) = YMessage::decode_v1(&data) else {
            // Extension messages we did not opt in to, or garbage: not ours to judge here.
            continue;
        };
        match msg {
            YMessage::Sync(SyncMessage::SyncStep1(sv)) => {
                let update = doc.transact().encode_diff_v1(&sv);
                let _ = replies.send(encode(&YMessage::Sync(SyncMessage::SyncStep2(update))));
            }
            YMessage::Sync(SyncMessage::SyncStep2(u)) => {
                apply(doc, &u);
                on_event(Event::Synced);
            }
            YMessage::Sync(SyncMessage::Update(u)) => {
                apply(doc, &u);
                on_event(Event::Updated(doc));
            }
            YMessage::Awareness(update) => on_event(Event::Awareness(&update)),
            _ => {}
        }
    }
}

fn apply(doc: &Doc, update: &[u8]) {
    if let Ok(u) = Update::decode_v1(update) {
        let _ = doc.transact_mut().apply_update(u);
    }
}
