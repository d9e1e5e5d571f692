//! `resonant-floor`: the kernel floor for fan-out, a yardstick for `loadtest/compare.sh`.
//!
//! It does the least work any y-websocket server can do per delivered message, so that the
//! real servers' CPU per delivered update can be read against it: every connection has one
//! plain blocking thread that reads its frames, and a frame a client sends (a document update,
//! an awareness change) is encoded once as an unmasked server frame and written with one
//! `write_all` per socket to every other connection of its room (the URL path), from that
//! same thread. No event loop, no queues, no decoding past the first two bytes, no document:
//! what is left is the kernel's loopback TCP path and a `write` per delivery.
//!
//! It keeps no document state, which makes it no server anyone could use:
//! - a client's sync step 1 is answered at once with an *empty* step 2, which is all a client
//!   needs to count as synced. So that a late joiner still gets the room's document (the load
//!   tester's readers join after the writer created the block they watch), its step 1 is also
//!   passed on to the room's oldest other connection, and that peer's step 2 is relayed back
//!   to the joiner alone: peers sync each other, as with y-webrtc. A room with nobody left in
//!   it has nothing, so `coldload` cannot run against the floor.
//! - awareness is relayed, never remembered: a joiner sees the others' presence only when
//!   they next change it.
//! - nothing bounds rooms, connections or memory; a reader that does not read stalls its
//!   room's senders until a write times out (10 s) and it is dropped.
//!
//! ```text
//! resonant-floor --listen 127.0.0.1:1234    # clients use ws://127.0.0.1:1234/{room}
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clap::Parser;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "resonant-floor",
    version,
    about = "Relays y-websocket frames to the other connections of a room and does nothing \
             else: the floor the load tests compare servers against"
)]
struct Cli {
    /// Address to listen on; any URL path is a room.
    #[arg(long, default_value = "127.0.0.1:1234")]
    listen: String,
}

/// Our greeting, a sync step 1 with an empty state vector: the client waits for a first frame
/// before it takes a step 2 as the end of its sync, and answers it with its own step 2.
const GREETING: [u8; 4] = [0, 0, 1, 0];
/// Sync step 2 with an empty update (no structs, empty delete set).
const EMPTY_STEP2: [u8; 5] = [0, 1, 2, 0, 0];
const CONTINUATION: u8 = 0;
const BINARY: u8 = 2;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;
/// Larger messages end the connection: a bound on what one client can make us allocate.
const MAX_MESSAGE: u64 = 64 << 20;
/// A socket that accepts nothing for this long is taken for dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One client connection, as the other connections' threads see it.
struct Conn {
    id: u64,
    /// The socket's write side. The lock keeps frames written by different threads whole.
    out: Mutex<TcpStream>,
    /// Joiners whose step 1 was passed to this connection, oldest first: the client answers
    /// every step 1 with one step 2, in order, so its step 2s are theirs in this order.
    asked: Mutex<VecDeque<u64>>,
}

impl Conn {
    /// Writes one whole frame. A failed or timed-out write may have left half a frame, so the
    /// socket is shut down; its reader thread then ends and takes it out of the room.
    fn send(&self, frame: &[u8]) {
        let mut out = lock(&self.out);
        if out.write_all(frame).is_err() {
            let _ = out.shutdown(Shutdown::Both);
        }
    }
}

/// A room's connections, oldest first.
type Room = Mutex<Vec<Arc<Conn>>>;
type Rooms = Mutex<HashMap<String, Arc<Room>>>;

/// A panicking thread leaves nothing half-updated behind these locks, so poison is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(&cli.listen)?;
    eprintln!("resonant-floor listening on {}", listener.local_addr()?);
    let rooms: Arc<Rooms> = Arc::default();
    for (id, stream) in (1..).zip(listener.incoming()) {
        let Ok(stream) = stream else {
            // Out of file descriptors, most likely: let some connections end first.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let rooms = rooms.clone();
        // Thousands of connections are thousands of threads: keep their stacks small.
        let spawned = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || serve(stream, id, &rooms));
        if let Err(e) = spawned {
            eprintln!("spawn: {e}");
        }
    }
    Ok(())
}

/// Runs one connection from its HTTP upgrade to its end. Errors only end the connection.
fn serve(stream: TcpStream, id: u64, rooms: &Rooms) -> io::Result<()> {
    // Every frame is a whole message: Nagle would only hold it back.
    stream.set_nodelay(true)?;
    let out = stream.try_clone()?;
    out.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut input = BufReader::new(stream);
    let name = handshake(&mut input, &out)?;
    let conn = Arc::new(Conn {
        id,
        out: Mutex::new(out),
        asked: Mutex::default(),
    });
    // Greeted before it joins, nobody else can have written to it yet: its first step 2
    // answers the greeting, any later ones the joiners in `asked`.
    conn.send(&frame(BINARY, &GREETING));
    let room = {
        let mut rooms = lock(rooms);
        let room = rooms.entry(name.clone()).or_default().clone();
        lock(&room).push(conn.clone());
        room
    };
    let result = relay(&mut input, &conn, &room);
    {
        // The map stays locked while the room is emptied, so that no one joins a room that
        // is no longer in it.
        let mut rooms = lock(rooms);
        let mut conns = lock(&room);
        conns.retain(|c| c.id != id);
        if conns.is_empty() {
            rooms.remove(&name);
        }
    }
    let _ = lock(&conn.out).shutdown(Shutdown::Both);
    result
}

/// Reads the HTTP upgrade request and accepts it; returns the path (without the query).
fn handshake(input: &mut BufReader<TcpStream>, mut out: &TcpStream) -> io::Result<String> {
    let mut head = input.take(16 << 10);
    let mut line = String::new();
    head.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or_default();
    let room = path.split('?').next().unwrap_or_default().to_string();
    let mut key = None;
    loop {
        line.clear();
        if head.read_line(&mut line)? == 0 {
            return Err(invalid("request head ended early or too long"));
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break; // the empty line that ends the head
        };
        if name.trim().eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.trim().to_string());
        }
    }
    let Some(key) = key else {
        out.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Err(invalid("not a WebSocket upgrade"));
    };
    let accept = derive_accept_key(key.as_bytes());
    out.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    )?;
    Ok(room)
}

/// Reads frames until the client closes or the socket fails.
fn relay(input: &mut impl Read, conn: &Conn, room: &Room) -> io::Result<()> {
    let mut greeting_answered = false;
    // A message sent in pieces (continuation frames): its opcode and the bytes so far.
    let (mut kind, mut pieces) = (0, Vec::new());
    loop {
        let (fin, opcode, payload) = read_frame(input)?;
        match opcode {
            PING => conn.send(&frame(PONG, &payload)),
            CLOSE => {
                // Echo the status code, as the closing handshake asks; then we are done.
                conn.send(&frame(CLOSE, &payload[..payload.len().min(2)]));
                return Ok(());
            }
            // The usual case, a whole message in one frame, is not copied again.
            BINARY if fin => on_message(&payload, conn, room, &mut greeting_answered),
            CONTINUATION..CLOSE => {
                if opcode != CONTINUATION {
                    (kind, pieces) = (opcode, Vec::new());
                }
                pieces.extend_from_slice(&payload);
                if pieces.len() as u64 > MAX_MESSAGE {
                    return Err(invalid("message too large"));
                }
                // Text messages mean nothing in y-websocket: dropped.
                if fin && kind == BINARY {
                    on_message(&pieces, conn, room, &mut greeting_answered);
                }
            }
            _ => {} // pongs
        }
    }
}

/// Acts on one whole binary message from `conn`.
fn on_message(msg: &[u8], conn: &Conn, room: &Room, greeting_answered: &mut bool) {
    match msg {
        // Sync step 1: the empty answer syncs the client; the room's oldest other connection
        // is asked for the document (under the room lock, so that the order of step 1s sent
        // to it is the order of joiners in its `asked`).
        [0, 0, ..] => {
            conn.send(&frame(BINARY, &EMPTY_STEP2));
            let conns = lock(room);
            if let Some(peer) = conns.iter().find(|c| c.id != conn.id) {
                lock(&peer.asked).push_back(conn.id);
                peer.send(&frame(BINARY, msg));
            }
        }
        // Sync step 2: the answer to our greeting carries the client's own changes, which
        // the others need (if any); any other step 2 is for the joiner that asked.
        [0, 1, ..] if !*greeting_answered => {
            *greeting_answered = true;
            if msg != EMPTY_STEP2 {
                broadcast(msg, conn, room);
            }
        }
        [0, 1, ..] => {
            let Some(joiner) = lock(&conn.asked).pop_front() else {
                return;
            };
            if let Some(joiner) = lock(room).iter().find(|c| c.id == joiner) {
                joiner.send(&frame(BINARY, msg));
            }
        }
        // Updates, awareness and anything else: the same bytes to everyone else.
        _ => broadcast(msg, conn, room),
    }
}

/// The fan-out: one frame, encoded once, one `write_all` to each other socket of the room.
fn broadcast(msg: &[u8], from: &Conn, room: &Room) {
    let frame = frame(BINARY, msg);
    for c in lock(room).iter().filter(|c| c.id != from.id) {
        c.send(&frame);
    }
}

/// Reads one client frame (clients must mask theirs) and unmasks it: (fin, opcode, payload).
fn read_frame(input: &mut impl Read) -> io::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    input.read_exact(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0; 2];
            input.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0; 8];
            input.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if head[1] & 0x80 == 0 || len > MAX_MESSAGE {
        return Err(invalid("unmasked or too large frame"));
    }
    let mut mask = [0; 4];
    input.read_exact(&mut mask)?;
    let mut payload = vec![0; len as usize];
    input.read_exact(&mut payload)?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok((head[0] & 0x80 != 0, head[0] & 0x0f, payload))
}

/// A whole, unmasked server frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}
