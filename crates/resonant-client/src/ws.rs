//! The WebSocket transport (tokio-tungstenite): connecting, and two ways to read — a
//! [`WsClient`] that owns the socket and waits for conditions (tests, tools), and
//! [`read_loop`] for a stream split from its sink (the load tester reads in one task and
//! writes from another).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use yrs::{Doc, TransactionMut};

use crate::protocol;
use crate::state::{ClientError, ClientState, Ended, Handled};

/// A client WebSocket over plain TCP (`ws://` only: the servers under test are local).
pub type WsStream = WebSocketStream<TcpStream>;

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Largest message (and frame) accepted, in bytes: a whole document arrives as one step 2.
    pub max_message_size: usize,
    /// Read buffer per connection; larger reads large documents faster, smaller saves memory
    /// across thousands of connections.
    pub read_buffer_size: usize,
    /// Bytes buffered before a write reaches the socket; every send also flushes, so this
    /// only bounds memory.
    pub write_buffer_size: usize,
    /// Local address to connect from: one destination has only ~28k ephemeral ports per
    /// source address, so the load tester spreads connections over several.
    pub local_addr: Option<IpAddr>,
    /// Bound on the TCP connect, on the handshake, and on each [`WsClient::until`].
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        let ws = WebSocketConfig::default();
        ConnectOptions {
            max_message_size: 64 << 20,
            read_buffer_size: ws.read_buffer_size,
            write_buffer_size: ws.write_buffer_size,
            local_addr: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse, or is not `ws://`.
    #[error("invalid URL {url}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host did not resolve.
    #[error("resolving {host}: {source}")]
    Resolve {
        /// The host and port.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// Creating, binding or connecting the TCP socket failed.
    #[error("TCP connection to {addr}: {source}")]
    Tcp {
        /// The server address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The server is too busy to take this connection now (HTTP 503, before the upgrade):
    /// come back after `retry_after`, plus some jitter so refused clients do not return
    /// together.
    #[error("server busy: retry after {retry_after:?}")]
    Busy {
        /// The server's `Retry-After` (whole seconds), if it sent one.
        retry_after: Option<Duration>,
    },
    /// The WebSocket handshake failed (an HTTP error status, a non-WebSocket server, …).
    #[error("WebSocket handshake: {0}")]
    Handshake(#[source] WsError),
    /// The TCP connect or the handshake took longer than [`ConnectOptions::timeout`].
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// Why a wait ended without its condition holding.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// [`ConnectOptions::timeout`] passed.
    #[error("timed out waiting for {0}")]
    TimedOut(String),
    /// The connection ended first.
    #[error("connection ended while waiting for {what} ({how:?})")]
    Ended {
        /// What was awaited.
        what: String,
        /// How the connection ended.
        how: Ended,
    },
    /// The server sent a frame the client refuses.
    #[error("bad message from the server while waiting for {what}: {source}")]
    Protocol {
        /// What was awaited.
        what: String,
        /// The refusal.
        source: ClientError,
    },
    /// Sending a reply failed.
    #[error("sending while waiting for {what}: {source}")]
    Send {
        /// What was awaited.
        what: String,
        /// The socket error.
        source: WsError,
    },
}

/// Resolves a `ws://` URL's host and connects to it; see [`connect_to`].
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<WsStream, ConnectError> {
    let bad = |reason: &str| ConnectError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let request = url.into_client_request().map_err(|e| bad(&e.to_string()))?;
    let uri = request.uri();
    if uri.scheme_str() != Some("ws") {
        return Err(bad("only ws:// URLs are supported"));
    }
    // `host()` keeps an IPv6 literal's brackets, which the resolver does not accept.
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let resolve_error = |source| ConnectError::Resolve {
        host: format!("{host}:{port}"),
        source,
    };
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| resolve_error(std::io::ErrorKind::NotFound.into()))?;
    connect_to(addr, url, options).await
}

/// Connects to `addr` (resolved once by the caller, so thousands of connections do not each
/// resolve) and performs the handshake for `url`, with Nagle off: every frame is latency.
pub async fn connect_to(
    addr: SocketAddr,
    url: &str,
    options: &ConnectOptions,
) -> Result<WsStream, ConnectError> {
    let request = url.into_client_request().map_err(|e| ConnectError::Url {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let tcp = |source| ConnectError::Tcp { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(tcp)?;
    if let Some(ip) = options.local_addr {
        socket.bind(SocketAddr::new(ip, 0)).map_err(tcp)?;
    }
    let stream = tokio::time::timeout(options.timeout, socket.connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout("TCP connect"))?
        .map_err(tcp)?;
    stream.set_nodelay(true).map_err(tcp)?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(options.max_message_size))
        .max_frame_size(Some(options.max_message_size))
        .read_buffer_size(options.read_buffer_size)
        .write_buffer_size(options.write_buffer_size);
    let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
    let (ws, _response) = tokio::time::timeout(options.timeout, handshake)
        .await
        .map_err(|_| ConnectError::Timeout("WebSocket handshake"))?
        .map_err(handshake_error)?;
    Ok(ws)
}

/// A 503 is the server asking us to come back later, not a failure of the handshake.
fn handshake_error(e: WsError) -> ConnectError {
    match &e {
        WsError::Http(response) if response.status() == 503 => ConnectError::Busy {
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        },
        _ => ConnectError::Handshake(e),
    }
}

/// Sorts what a WebSocket stream yielded: a binary frame, nothing a y-websocket client reads
/// (text, ping, pong: tungstenite answers pings itself), or the end of the connection.
pub fn binary_frame(next: Option<Result<Message, WsError>>) -> Result<Option<Bytes>, Ended> {
    match next {
        Some(Ok(Message::Binary(frame))) => Ok(Some(frame)),
        Some(Ok(Message::Close(frame))) => Err(Ended::Closed(
            frame.map(|f| (u16::from(f.code), f.reason.to_string())),
        )),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(Ended::Error(e.to_string())),
        None => Err(Ended::Error(
            "the stream ended without a close frame".into(),
        )),
    }
}

/// Reads `stream` into `state` until the connection ends or `stop` completes, calling
/// `on_frame` with the state and the outcome of every binary frame (sending replies is the
/// caller's job: its sink lives elsewhere). Returns how the connection ended, also recorded
/// in the state.
pub async fn read_loop<S>(
    stream: &mut S,
    state: &mut ClientState,
    stop: impl Future<Output = ()>,
    mut on_frame: impl FnMut(&ClientState, Result<Handled<'_>, ClientError>),
) -> Ended
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    // One stop future for the whole loop rather than one per frame.
    let mut stop = std::pin::pin!(stop);
    let ended = loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = &mut stop => break Ended::Stopped,
        };
        match binary_frame(next) {
            Ok(Some(frame)) => {
                let handled = state.handle(&frame);
                on_frame(state, handled);
            }
            Ok(None) => {}
            Err(ended) => break ended,
        }
    };
    state.set_ended(ended.clone());
    ended
}

/// A client that owns its socket: sends frames, and applies what arrives while waiting for a
/// condition. Dereferences to its [`ClientState`].
pub struct WsClient {
    ws: WsStream,
    state: ClientState,
    timeout: Duration,
}

impl Deref for WsClient {
    type Target = ClientState;
    fn deref(&self) -> &ClientState {
        &self.state
    }
}

impl DerefMut for WsClient {
    fn deref_mut(&mut self) -> &mut ClientState {
        &mut self.state
    }
}

impl WsClient {
    /// Connects with a fresh document, without waiting for anything.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<WsClient, ConnectError> {
        let ws = connect(url, options).await?;
        Ok(WsClient::new(ws, ClientState::new(), options.timeout))
    }

    /// Wraps an open socket; `timeout` bounds each wait.
    pub fn new(ws: WsStream, state: ClientState, timeout: Duration) -> WsClient {
        WsClient { ws, state, timeout }
    }

    /// Gives up the socket and keeps the document and counters, to reconnect with them (how
    /// this connection ended, and whether it synced, stay behind with it).
    pub fn into_state(mut self) -> ClientState {
        self.state.end = None;
        self.state.synced = false;
        self.state
    }

    /// Sends our step 1 and waits until the server's step 2 is applied.
    pub async fn sync(&mut self) -> Result<(), WaitError> {
        let step1 = self.state.start_sync();
        self.send(step1).await.map_err(|source| WaitError::Send {
            what: "sync".into(),
            source,
        })?;
        self.until("sync", |c| c.synced).await
    }

    /// Sends one binary frame.
    pub async fn send(&mut self, frame: Bytes) -> Result<(), WsError> {
        self.ws.send(Message::Binary(frame)).await
    }

    /// Sends any WebSocket message (text, oversized or malformed frames in tests).
    pub async fn send_message(&mut self, message: Message) -> Result<(), WsError> {
        self.ws.send(message).await
    }

    /// Opts in to save acknowledgements and JSON messages.
    pub async fn opt_in(&mut self) -> Result<(), WsError> {
        self.send(protocol::encode_opt_in()).await
    }

    /// Edits the document and sends the update (if the edit changed anything).
    pub async fn edit(&mut self, f: impl FnOnce(&Doc, &mut TransactionMut)) -> Result<(), WsError> {
        match self.state.edit(f) {
            Some(frame) => self.send(frame).await,
            None => Ok(()),
        }
    }

    /// Sets this client's presence and sends it.
    pub async fn set_awareness(&mut self, json: &str) -> Result<(), WsError> {
        let frame = self.state.set_awareness(json);
        self.send(frame).await
    }

    /// Applies incoming frames (answering the server's step 1) until `pred` holds.
    pub async fn until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ClientState) -> bool,
    ) -> Result<(), WaitError> {
        let deadline = Instant::now() + self.timeout;
        while !pred(&self.state) {
            if let Some(how) = &self.state.end {
                return Err(WaitError::Ended {
                    what: what.into(),
                    how: how.clone(),
                });
            }
            self.receive(deadline, what).await?;
        }
        Ok(())
    }

    /// Applies incoming frames until the connection ends; returns the server's close frame,
    /// if it sent one.
    pub async fn until_closed(&mut self) -> Result<Option<(u16, String)>, WaitError> {
        let deadline = Instant::now() + self.timeout;
        while !self.state.ended() {
            self.receive(deadline, "the connection to close").await?;
        }
        Ok(self.state.close_frame().cloned())
    }

    /// Receives and applies one WebSocket message, sending any reply.
    async fn receive(&mut self, deadline: Instant, what: &str) -> Result<(), WaitError> {
        let next = tokio::time::timeout_at(deadline, self.ws.next())
            .await
            .map_err(|_| WaitError::TimedOut(what.into()))?;
        let frame = match binary_frame(next) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(ended) => {
                self.state.set_ended(ended);
                return Ok(());
            }
        };
        let handled = self
            .state
            .handle(&frame)
            .map_err(|source| WaitError::Protocol {
                what: what.into(),
                source,
            })?;
        if let Some(reply) = handled.reply {
            self.send(reply).await.map_err(|source| WaitError::Send {
                what: what.into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Sends a close frame and drops the connection without waiting for the server's answer.
    pub async fn close(mut self) -> Result<(), WsError> {
        self.ws.close(None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use yrs::{GetString, ReadTxn, StateVector, Text, Transact, WriteTxn};

    use crate::ServerMessage;

    /// A one-connection server that greets with its step 1, answers the client's step 1 with a
    /// document holding "hi", acknowledges one update, then closes with 4000.
    async fn server() -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let doc = Doc::new();
            doc.get_or_insert_text("text")
                .insert(&mut doc.transact_mut(), 0, "hi");
            let greeting = protocol::encode_sync_step1(&doc.transact().state_vector());
            ws.send(Message::Binary(greeting)).await.unwrap();
            let mut received = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Binary(frame) = msg else {
                    continue;
                };
                // Client frames share the layout of server frames for these types.
                match ServerMessage::decode(&frame).unwrap() {
                    ServerMessage::SyncStep1(sv) => {
                        let update = doc.transact().encode_diff_v1(&sv);
                        let step2 = protocol::encode_sync_step2(&update);
                        ws.send(Message::Binary(step2)).await.unwrap();
                    }
                    ServerMessage::SyncStep2(_) => received.push(1),
                    ServerMessage::Update(_) => {
                        received.push(2);
                        ws.send(Message::Binary(Bytes::from_static(&[8, 1])))
                            .await
                            .unwrap();
                        let close = CloseFrame {
                            code: CloseCode::from(4000),
                            reason: "bye".into(),
                        };
                        ws.close(Some(close)).await.unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            received
        });
        (addr, task)
    }

    #[tokio::test]
    async fn syncs_edits_and_reports_the_close_frame() {
        let (addr, server) = server().await;
        let options = ConnectOptions {
            timeout: Duration::from_secs(10),
            ..ConnectOptions::default()
        };
        let mut c = WsClient::connect(&format!("ws://{addr}/sync/room"), &options)
            .await
            .unwrap();
        c.sync().await.unwrap();
        let txn = c.doc.transact();
        assert_eq!(txn.get_text("text").unwrap().get_string(&txn), "hi");
        drop(txn);
        c.edit(|_, txn| txn.get_or_insert_text("text").push(txn, "!"))
            .await
            .unwrap();
        c.until("the ack", |c| c.acks == 1).await.unwrap();
        assert_eq!(
            c.until_closed().await.unwrap(),
            Some((4000, "bye".to_string()))
        );
        // Waiting on a closed connection fails at once, saying why.
        let err = c.until("anything", |_| false).await.unwrap_err();
        assert!(matches!(err, WaitError::Ended { .. }), "{err}");
        // Closing flushes tungstenite's answer to the server's close, which ends its loop.
        let _ = c.close().await;
        // The server got the answer to its greeting, then the edit.
        assert_eq!(server.await.unwrap(), vec![1, 2]);
    }

    #[tokio::test]
    async fn read_loop_applies_frames_until_stopped() {
        let (addr, _server) = server().await;
        let url = format!("ws://{addr}/sync/room");
        let ws = connect(&url, &ConnectOptions::default()).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let mut state = ClientState::new();
        sink.send(Message::Binary(state.start_sync()))
            .await
            .unwrap();
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut replies = Vec::new();
        let stopper = stop.clone();
        let ended = read_loop(
            &mut stream,
            &mut state,
            stop.notified(),
            |state, handled| {
                replies.extend(handled.unwrap().reply);
                if state.synced {
                    stopper.notify_one();
                }
            },
        )
        .await;
        assert_eq!(ended, Ended::Stopped);
        assert_eq!(state.end, Some(Ended::Stopped));
        assert_eq!(replies.len(), 1, "the step 2 answering the greeting");
        assert_ne!(state.doc.transact().state_vector(), StateVector::default());
    }

    #[tokio::test]
    async fn refuses_other_schemes_and_reports_refused_connections() {
        let options = ConnectOptions::default();
        let err = connect("http://127.0.0.1:1/x", &options).await.unwrap_err();
        assert!(matches!(err, ConnectError::Url { .. }), "{err}");
        // Nothing listens on a port we just released.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = connect(&format!("ws://{addr}/x"), &options)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Tcp { .. }), "{err}");
    }
}
