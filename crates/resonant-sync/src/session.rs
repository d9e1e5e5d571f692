//! One connection's protocol state: decodes its frames and acts on its room.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use resonant_protocol::MAX_STATELESS_BYTES;
use resonant_store::Ticket;
use yrs::ClientID;

use crate::peer::{close_code, Close, Peer};
use crate::protocol::{ClientMessage, DecodeError};
use crate::room::{ApplyError, Room};
use crate::rooms::Rooms;

static READ_ONLY_REFUSALS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_read_only_updates_refused_total"));
static AWARENESS_REFUSALS: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("resonant_awareness_refusals_total"));

/// Why a session must end.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The frame did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The update was rejected.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A message is larger than its type allows.
    #[error("{what} message of {got} bytes is larger than the {max}-byte limit")]
    TooLarge {
        /// The message type.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The limit for that type.
        max: usize,
    },
}

impl SessionError {
    /// The close frame to answer with.
    pub fn close(&self) -> Close {
        let code = match self {
            SessionError::Decode(_) | SessionError::Apply(ApplyError::Invalid(_)) => {
                close_code::INVALID_PAYLOAD
            }
            SessionError::Apply(ApplyError::Internal) => close_code::INTERNAL_ERROR,
            SessionError::Apply(ApplyError::Closed) => close_code::SERVICE_RESTART,
            SessionError::Apply(ApplyError::Full(_)) => close_code::MESSAGE_TOO_BIG,
            SessionError::TooLarge { .. } => close_code::MESSAGE_TOO_BIG,
        };
        Close::new(code, self.to_string())
    }
}

/// A connection joined to a room. Dropping it leaves the room (removing the awareness states
/// this connection introduced).
pub struct Session {
    rooms: Rooms,
    room: Arc<Room>,
    peer: Arc<Peer>,
    /// Awareness client ids this connection introduced, removed when it leaves.
    awareness_ids: HashSet<ClientID>,
}

impl Session {
    pub(crate) fn new(rooms: Rooms, room: Arc<Room>, peer: Arc<Peer>) -> Session {
        Session {
            rooms,
            room,
            peer,
            awareness_ids: HashSet::new(),
        }
    }

    /// This connection's outbound handle.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// The room.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// Handles one binary frame. Returns a ticket when the client asked for save
    /// acknowledgements and this frame carried a document update: the transport sends
    /// `[8, 1]` once the journal has committed that ticket.
    pub fn handle(&mut self, frame: &[u8]) -> Result<Option<Ticket>, SessionError> {
        check_size(frame)?;
        match ClientMessage::decode(frame)? {
            ClientMessage::SyncStep1(sv) => {
                self.peer.reply(&self.room.step2_for(&sv)?);
                Ok(None)
            }
            ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
                if !self.peer.can_write() {
                    // Every client answers the greeting with a step 2; from a read-only client
                    // with nothing new it is the empty update, which is not an edit. It is
                    // acknowledged like any other (after what was committed before it), so a
                    // client counting sent minus acknowledged does not wait on it for good.
                    if update == [0, 0] {
                        return Ok(self
                            .peer
                            .extensions()
                            .then(|| self.rooms.journal().last_ticket()));
                    }
                    READ_ONLY_REFUSALS.increment(1);
                    self.send_error("read-only", "this connection may not edit the document");
                    return Ok(None);
                }
                self.room.apply_update(self.peer.id(), update)?;
                Ok(self
                    .peer
                    .extensions()
                    .then(|| self.rooms.journal().last_ticket()))
            }
            ClientMessage::Awareness(update) => {
                let refusal =
                    self.room
                        .apply_awareness(self.peer.id(), update, &mut self.awareness_ids);
                if let Some(refusal) = refusal {
                    AWARENESS_REFUSALS.increment(1);
                    tracing::debug!(error = %refusal, "awareness refused");
                    self.send_error("awareness-limit", &refusal.to_string());
                }
                Ok(None)
            }
            ClientMessage::QueryAwareness => {
                if let Some(msg) = self.room.awareness_message() {
                    self.peer.reply(&msg);
                }
                Ok(None)
            }
            ClientMessage::Auth => Ok(None),
            ClientMessage::SyncStatus | ClientMessage::Stateless(_) => {
                self.peer.enable_extensions();
                Ok(None)
            }
        }
    }

    /// Sends an error as a stateless JSON message, if the client opted in to extensions.
    pub fn send_error(&self, code: &str, message: &str) {
        if self.peer.extensions() {
            self.peer.reply(&error_message(code, message));
        }
    }

    /// Ends the session because of `error`: a client that opted in to extensions first gets
    /// a `bad-message` error saying why, then the close frame.
    pub fn fail(&self, error: &SessionError) {
        let close = error.close();
        let last = self
            .peer
            .extensions()
            .then(|| error_message("bad-message", &error.to_string()));
        self.peer.close_after(close, last);
    }
}

/// Per-type sanity limits, far above what real clients send: a state vector or a presence
/// message of megabytes is an attack, not a document.
const MAX_STEP1_BYTES: usize = 1 << 20;
const MAX_AWARENESS_BYTES: usize = 1 << 20;

/// Checked on the raw frame, before anything is decoded (and allocated) from it. Message
/// and sub-types below 128 are one-byte varints, which is all the types limited here.
fn check_size(frame: &[u8]) -> Result<(), SessionError> {
    let limit = match (frame.first(), frame.get(1)) {
        (Some(&0), Some(&0)) => Some(("sync step 1", MAX_STEP1_BYTES)),
        (Some(&1), _) => Some(("awareness", MAX_AWARENESS_BYTES)),
        (Some(&5), _) => Some(("stateless", MAX_STATELESS_BYTES)),
        _ => None,
    };
    match limit {
        Some((what, max)) if frame.len() > max => Err(SessionError::TooLarge {
            what,
            got: frame.len(),
            max,
        }),
        _ => Ok(()),
    }
}

/// `{"type":"error","code":…,"message":…}` as a stateless message.
pub fn error_message(code: &str, message: &str) -> Bytes {
    resonant_protocol::ServerMsg::error(code, message).encode()
}

impl Drop for Session {
    fn drop(&mut self) {
        let ids: Vec<ClientID> = self.awareness_ids.drain().collect();
        self.rooms.leave(&self.room, self.peer.id(), ids);
    }
}
