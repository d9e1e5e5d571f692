//! Accounting for WebSocket messages that have started to arrive but not finished.
//!
//! tungstenite buffers a message until its last frame arrives, up to `--max-message-bytes`.
//! A client that sends most of a 16 MiB message and then only answers pings (pongs kept the
//! idle clock fresh) held that memory for ever: ten such sockets took 660 MB. This watcher
//! sees the bytes of a connection as tungstenite reads them, follows the client's frame
//! headers, and counts the payload of the message in progress against a budget shared by
//! every connection; a message must also finish within a deadline. Either failure ends the
//! connection with an I/O error before tungstenite buffers more.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

static HELD: AtomicU64 = AtomicU64::new(0);
static REFUSED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_unfinished_message_refusals_total"));

/// Limits on unfinished messages.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of unfinished messages all connections together may hold.
    pub budget: u64,
    /// Longest a message may take from its first byte to its last.
    pub deadline: Duration,
}

/// Bytes of unfinished messages held by every connection together.
#[cfg(test)]
fn held() -> u64 {
    HELD.load(Ordering::Relaxed)
}

/// One connection's frame follower.
pub struct Watcher {
    limits: Limits,
    /// Header bytes of the frame being read (at most 14).
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes still to come in the current frame.
    payload_left: u64,
    /// The current frame carries message data (not a control frame).
    data_frame: bool,
    /// The current frame ends its message.
    fin: bool,
    /// Bytes of the message in progress counted against the budget.
    held: u64,
    /// When the message in progress started.
    started: Option<Instant>,
}

impl Watcher {
    /// A watcher for a new connection.
    pub fn new(limits: Limits) -> Watcher {
        Watcher {
            limits,
            header: [0; 14],
            header_len: 0,
            payload_left: 0,
            data_frame: false,
            fin: false,
            held: 0,
            started: None,
        }
    }

    /// Follows `bytes`, the next bytes the connection delivered, in order.
    pub fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if let Some(started) = self.started {
            if started.elapsed() > self.limits.deadline {
                return Err(self.refuse(format!(
                    "a message took longer than {} s to arrive",
                    self.limits.deadline.as_secs()
                )));
            }
        }
        while !bytes.is_empty() {
            if self.payload_left == 0 && !self.header_complete() {
                let take = bytes.len().min(self.header_needed() - self.header_len);
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_complete() {
                    self.start_frame();
                }
                continue;
            }
            let take = (bytes.len() as u64).min(self.payload_left);
            self.payload_left -= take;
            bytes = &bytes[take as usize..];
            if self.data_frame {
                self.hold(take)?;
            }
            if self.payload_left == 0 {
                self.end_frame();
            }
        }
        Ok(())
    }

    /// Header bytes this frame needs, as far as known (2 until the length byte is in).
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn header_complete(&self) -> bool {
        self.header_len >= 2 && self.header_len == self.header_needed()
    }

    fn start_frame(&mut self) {
        let h = &self.header;
        let opcode = h[0] & 0x0f;
        self.fin = h[0] & 0x80 != 0;
        self.data_frame = opcode < 8;
        self.payload_left = match h[1] & 0x7f {
            126 => u16::from_be_bytes([h[2], h[3]]) as u64,
            127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
            n => n as u64,
        };
        if self.data_frame && self.started.is_none() {
            self.started = Some(Instant::now());
        }
        if self.payload_left == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        self.header_len = 0;
        if self.data_frame && self.fin {
            self.release();
        }
    }

    fn hold(&mut self, n: u64) -> io::Result<()> {
        let before = HELD.fetch_add(n, Ordering::Relaxed);
        self.held += n;
        if before + n > self.limits.budget {
            return Err(self.refuse("the server holds too many unfinished messages".into()));
        }
        Ok(())
    }

    fn release(&mut self) {
        HELD.fetch_sub(self.held, Ordering::Relaxed);
        self.held = 0;
        self.started = None;
    }

    fn refuse(&mut self, why: String) -> io::Error {
        REFUSED.increment(1);
        tracing::info!(held = self.held, "{why}; closing the connection");
        self.release();
        io::Error::new(io::ErrorKind::InvalidData, Refused(why))
    }
}

/// The error a refused message fails the connection's reads with, so the reader can tell
/// it from a broken socket and still say why (1009) before closing.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(fin as u8) << 7 | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    const LIMITS: Limits = Limits {
        budget: 1 << 40,
        deadline: Duration::from_secs(3600),
    };

    #[test]
    fn a_fragmented_message_is_held_until_its_last_frame() {
        let mut w = Watcher::new(LIMITS);
        w.observe(&frame(false, 2, 70_000)).unwrap();
        assert_eq!(w.held, 70_000);
        // A ping in between holds nothing more.
        w.observe(&frame(true, 9, 4)).unwrap();
        assert_eq!(w.held, 70_000);
        let last = frame(true, 0, 300);
        // Byte by byte, as a trickling client would send it.
        for b in &last {
            w.observe(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(w.held, 0);
        assert!(w.started.is_none());
    }

    #[test]
    fn past_the_budget_the_connection_fails_and_gives_its_bytes_back() {
        let mut w = Watcher::new(Limits {
            budget: held() + 1000,
            deadline: Duration::from_secs(3600),
        });
        let err = w.observe(&frame(false, 2, 5000)).unwrap_err();
        assert!(err.to_string().contains("unfinished"));
        assert_eq!(w.held, 0);
    }

    #[test]
    fn a_message_past_its_deadline_fails() {
        let mut w = Watcher::new(Limits {
            budget: 1 << 40,
            deadline: Duration::from_secs(1),
        });
        w.observe(&frame(false, 2, 10)).unwrap();
        w.started = Some(Instant::now() - Duration::from_secs(2));
        let err = w.observe(&frame(true, 10, 0)).unwrap_err();
        assert!(err.to_string().contains("longer than"));
    }
}
