//! The y-websocket wire format (lib0 encoding), plus our extension messages.
//!
//! One message per WebSocket binary frame: `varuint type` then a type-specific body.
//! Types 0–3 are y-websocket's; 5 (stateless) and 8 (sync status) are ours, numbered as
//! Hocuspocus numbers the same meanings. `docs/protocol.md` is the prose version of this file.

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::awareness::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::StateVector;

use crate::validate;

// The message numbers and the encoders are the protocol crate's: one definition of the bytes
// for both ends of the wire.
pub use resonant_protocol::{
    encode_awareness, encode_stateless, encode_sync_step1, encode_sync_step2, encode_sync_update,
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_STATELESS, MSG_SYNC, MSG_SYNC_STATUS,
    SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE,
};

/// A decoded client-to-server message. Document updates stay as bytes here; they are
/// validated ([`validate::validate_update_v1`]) and decoded by the room, where a failure can be
/// contained.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// The client's state vector; answered with step 2.
    SyncStep1(StateVector),
    /// What the client has that we lack.
    SyncStep2(&'a [u8]),
    /// An incremental edit.
    Update(&'a [u8]),
    /// A change to the client's presence.
    Awareness(AwarenessUpdate),
    /// An auth message; clients do not send these to servers, and we ignore them.
    Auth,
    /// The client wants everyone's awareness state.
    QueryAwareness,
    /// The client asks for save acknowledgements (opts in to extension messages).
    SyncStatus,
    /// A JSON message for the server (opts in to extension messages).
    Stateless(&'a str),
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame ended early or held an invalid varint/string.
    #[error("malformed {what} message: {source}")]
    Malformed {
        /// Which message type was being read.
        what: &'static str,
        /// The decoder's complaint.
        source: yrs::encoding::read::Error,
    },
    /// A length prefix points past the end of the frame.
    #[error("truncated {0} message")]
    Truncated(&'static str),
    /// A stateless message is not UTF-8.
    #[error("stateless message is not valid UTF-8")]
    Utf8,
    /// The frame was empty.
    #[error("empty message")]
    Empty,
    /// A type number we do not know.
    #[error("unknown message type {0}")]
    UnknownType(u32),
    /// A sync sub-type we do not know.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u32),
    /// The payload failed [`crate::validate`]'s checks, made before any yrs decoder runs: a
    /// count the remaining bytes cannot hold, a truncated structure, or nesting too deep.
    #[error("{what} {reason}")]
    Invalid {
        /// Which payload was being checked.
        what: &'static str,
        /// What is wrong with it, e.g. "claims 268435456 entries in 5 bytes".
        reason: String,
    },
}

/// Decodes one client frame.
pub fn decode(frame: &[u8]) -> Result<Incoming<'_>, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut c = Cursor::new(frame);
    let tag: u32 = c.read_var().map_err(malformed("message type"))?;
    match tag {
        MSG_SYNC => {
            let sub: u32 = c.read_var().map_err(malformed("sync"))?;
            match sub {
                SYNC_STEP1 => {
                    let buf = c.read_buf().map_err(malformed("sync step 1"))?;
                    validate::validate_state_vector_v1(buf)?;
                    let sv = StateVector::decode_v1(buf).map_err(malformed("sync step 1"))?;
                    Ok(Incoming::SyncStep1(sv))
                }
                SYNC_STEP2 => Ok(Incoming::SyncStep2(read_buf(frame, &mut c, "sync step 2")?)),
                SYNC_UPDATE => Ok(Incoming::Update(read_buf(frame, &mut c, "sync update")?)),
                other => Err(DecodeError::UnknownSyncType(other)),
            }
        }
        MSG_AWARENESS => {
            let buf = c.read_buf().map_err(malformed("awareness"))?;
            validate::validate_awareness_v1(buf)?;
            let update = AwarenessUpdate::decode_v1(buf).map_err(malformed("awareness"))?;
            Ok(Incoming::Awareness(update))
        }
        MSG_AUTH => Ok(Incoming::Auth),
        MSG_QUERY_AWARENESS => Ok(Incoming::QueryAwareness),
        MSG_SYNC_STATUS => Ok(Incoming::SyncStatus),
        MSG_STATELESS => {
            let buf = read_buf(frame, &mut c, "stateless")?;
            let text = std::str::from_utf8(buf).map_err(|_| DecodeError::Utf8)?;
            Ok(Incoming::Stateless(text))
        }
        other => Err(DecodeError::UnknownType(other)),
    }
}

/// Reads a length-prefixed buffer, borrowing from the frame rather than the cursor.
fn read_buf<'a>(
    frame: &'a [u8],
    c: &mut Cursor<'_>,
    what: &'static str,
) -> Result<&'a [u8], DecodeError> {
    let len: usize = c.read_var().map_err(malformed(what))?;
    let start = c.next;
    let end = start
        .checked_add(len)
        .filter(|end| *end <= frame.len())
        .ok_or(DecodeError::Truncated(what))?;
    c.next = end;
    Ok(&frame[start..end])
}

fn malformed(what: &'static str) -> impl Fn(yrs::encoding::read::Error) -> DecodeError {
    move |source| DecodeError::Malformed { what, source }
}

/// `[8, 1]`: one more update from this client is committed to the store.
pub fn encode_saved() -> Bytes {
    Bytes::from_static(&[MSG_SYNC_STATUS as u8, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    #[test]
    fn round_trips_sync_messages() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "hello");
        let sv = doc.transact().state_vector();
        let msg = encode_sync_step1(&sv);
        match decode(&msg).unwrap() {
            Incoming::SyncStep1(got) => assert_eq!(got, sv),
            other => panic!("unexpected {other:?}"),
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let msg = encode_sync_update(&update);
        match decode(&msg).unwrap() {
            Incoming::Update(got) => {
                let other = Doc::new();
                other
                    .transact_mut()
                    .apply_update(yrs::Update::decode_v1(got).unwrap())
                    .unwrap();
                let t = other.get_or_insert_text("t");
                assert_eq!(t.get_string(&other.transact()), "hello");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_truncated_and_unknown_frames() {
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(&[0, 2, 10, 1]),
            Err(DecodeError::Truncated(_))
        ));
        assert!(matches!(
            decode(&[0, 9]),
            Err(DecodeError::UnknownSyncType(9))
        ));
        assert!(matches!(decode(&[42]), Err(DecodeError::UnknownType(42))));
        assert!(matches!(
            decode(&[0xff]),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn extension_messages_decode() {
        assert!(matches!(decode(&[8, 1]).unwrap(), Incoming::SyncStatus));
        let msg = encode_stateless("{\"type\":\"hello\"}");
        match decode(&msg).unwrap() {
            Incoming::Stateless(s) => assert_eq!(s, "{\"type\":\"hello\"}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
