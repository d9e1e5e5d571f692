//! The y-websocket frames: message numbers, the client's encoders and the decoder for what a
//! server sends. The server's decoder, which validates before yrs decodes, lives in
//! `resonant_sync::protocol`.

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

/// y-websocket: document sync (step 1, step 2, update).
pub const MSG_SYNC: u32 = 0;
/// y-websocket: awareness update.
pub const MSG_AWARENESS: u32 = 1;
/// y-websocket: authentication result (server to client).
pub const MSG_AUTH: u32 = 2;
/// y-websocket: ask the other side for its full awareness state.
pub const MSG_QUERY_AWARENESS: u32 = 3;
/// Resonant extension: a JSON message (errors now, execution events later).
pub const MSG_STATELESS: u32 = 5;
/// Resonant extension: sync status (the client's opt-in; the server's save acknowledgement).
pub const MSG_SYNC_STATUS: u32 = 8;

/// Sync sub-type: the sender's state vector.
pub const SYNC_STEP1: u32 = 0;
/// Sync sub-type: the updates the receiver lacks.
pub const SYNC_STEP2: u32 = 1;
/// Sync sub-type: an incremental update.
pub const SYNC_UPDATE: u32 = 2;

/// Auth sub-type: the server refused this connection (a reason follows).
pub const AUTH_DENIED: u32 = 0;
/// Auth sub-type: the server accepted this connection.
pub const AUTH_GRANTED: u32 = 1;

/// A decoded server-to-client message. Updates and strings borrow from the frame, so the
/// receive path copies nothing it does not have to.
#[derive(Debug)]
pub enum ServerMessage<'a> {
    /// The server's state vector; a client answers with a step 2.
    SyncStep1(StateVector),
    /// Everything the client lacked when it sent its step 1.
    SyncStep2(&'a [u8]),
    /// Another client's edit.
    Update(&'a [u8]),
    /// Presence changes.
    Awareness(AwarenessUpdate),
    /// `[2, 0, reason]`: the server refused this connection.
    AuthDenied(&'a str),
    /// `[2, 1]`: the server accepted this connection.
    AuthGranted,
    /// The server wants this client's awareness state.
    QueryAwareness,
    /// `[5, json]`: a JSON extension message (errors; later, execution events).
    Stateless(&'a str),
    /// `[8, n]`: sync status; `1` means one more of this client's updates is durable.
    SyncStatus(u32),
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
    /// A string is not UTF-8.
    #[error("{0} message is not valid UTF-8")]
    Utf8(&'static str),
    /// The frame was empty.
    #[error("empty message")]
    Empty,
    /// A type number we do not know.
    #[error("unknown message type {0}")]
    UnknownType(u32),
    /// A sync sub-type we do not know.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u32),
    /// An auth sub-type we do not know.
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u32),
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

/// A decoded client-to-server message. Document updates stay as bytes here; they are
/// validated ([`crate::validate::validate_update_v1`]) and decoded by the room, where a
/// failure can be contained.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    /// The client's state vector; answered with step 2.
    SyncStep1(StateVector),
    /// What the client has that we lack.
    SyncStep2(&'a [u8]),
    /// An incremental edit.
    Update(&'a [u8]),
    /// A change to the client's presence.
    Awareness(AwarenessUpdate),
    /// An auth message; clients do not send these to servers, and a server ignores them.
    Auth,
    /// The client wants everyone's awareness state.
    QueryAwareness,
    /// The client asks for save acknowledgements (opts in to extension messages).
    SyncStatus,
    /// A JSON message for the server (opts in to extension messages).
    Stateless(&'a str),
}

impl ClientMessage<'_> {
    /// Decodes one client frame. State vectors and awareness updates are validated before
    /// yrs decodes them (its decoders reserve memory from counts read off the wire).
    pub fn decode(frame: &[u8]) -> Result<ClientMessage<'_>, DecodeError> {
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
                        crate::validate::validate_state_vector_v1(buf)?;
                        let sv = StateVector::decode_v1(buf).map_err(malformed("sync step 1"))?;
                        Ok(ClientMessage::SyncStep1(sv))
                    }
                    SYNC_STEP2 => Ok(ClientMessage::SyncStep2(read_buf(
                        frame,
                        &mut c,
                        "sync step 2",
                    )?)),
                    SYNC_UPDATE => Ok(ClientMessage::Update(read_buf(
                        frame,
                        &mut c,
                        "sync update",
                    )?)),
                    other => Err(DecodeError::UnknownSyncType(other)),
                }
            }
            MSG_AWARENESS => {
                let buf = c.read_buf().map_err(malformed("awareness"))?;
                crate::validate::validate_awareness_v1(buf)?;
                let update = AwarenessUpdate::decode_v1(buf).map_err(malformed("awareness"))?;
                Ok(ClientMessage::Awareness(update))
            }
            MSG_AUTH => Ok(ClientMessage::Auth),
            MSG_QUERY_AWARENESS => Ok(ClientMessage::QueryAwareness),
            MSG_SYNC_STATUS => Ok(ClientMessage::SyncStatus),
            MSG_STATELESS => Ok(ClientMessage::Stateless(read_str(
                frame,
                &mut c,
                "stateless",
            )?)),
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

impl ServerMessage<'_> {
    /// Decodes one server frame.
    pub fn decode(frame: &[u8]) -> Result<ServerMessage<'_>, DecodeError> {
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
                        let buf = read_buf(frame, &mut c, "sync step 1")?;
                        let sv = StateVector::decode_v1(buf).map_err(malformed("sync step 1"))?;
                        Ok(ServerMessage::SyncStep1(sv))
                    }
                    SYNC_STEP2 => Ok(ServerMessage::SyncStep2(read_buf(
                        frame,
                        &mut c,
                        "sync step 2",
                    )?)),
                    SYNC_UPDATE => Ok(ServerMessage::Update(read_buf(
                        frame,
                        &mut c,
                        "sync update",
                    )?)),
                    other => Err(DecodeError::UnknownSyncType(other)),
                }
            }
            MSG_AWARENESS => {
                let buf = read_buf(frame, &mut c, "awareness")?;
                let update = AwarenessUpdate::decode_v1(buf).map_err(malformed("awareness"))?;
                Ok(ServerMessage::Awareness(update))
            }
            MSG_AUTH => match c.read_var().map_err(malformed("auth"))? {
                AUTH_DENIED => Ok(ServerMessage::AuthDenied(read_str(frame, &mut c, "auth")?)),
                AUTH_GRANTED => Ok(ServerMessage::AuthGranted),
                other => Err(DecodeError::UnknownAuthType(other)),
            },
            MSG_QUERY_AWARENESS => Ok(ServerMessage::QueryAwareness),
            MSG_STATELESS => Ok(ServerMessage::Stateless(read_str(
                frame,
                &mut c,
                "stateless",
            )?)),
            MSG_SYNC_STATUS => Ok(ServerMessage::SyncStatus(
                c.read_var().map_err(malformed("sync status"))?,
            )),
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

/// Reads a length-prefixed buffer, borrowing from the frame rather than the cursor (whose
/// borrow ends with this call).
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

fn read_str<'a>(
    frame: &'a [u8],
    c: &mut Cursor<'_>,
    what: &'static str,
) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(read_buf(frame, c, what)?).map_err(|_| DecodeError::Utf8(what))
}

fn malformed(what: &'static str) -> impl Fn(yrs::encoding::read::Error) -> DecodeError {
    move |source| DecodeError::Malformed { what, source }
}

fn header(tag: u32, sub: Option<u32>, body_len: usize) -> Vec<u8> {
    // Room for the header varints and the body's length prefix, so one allocation suffices.
    let mut buf = Vec::with_capacity(body_len + 12);
    buf.write_var(tag);
    if let Some(sub) = sub {
        buf.write_var(sub);
    }
    buf
}

/// `[0, 0, sv]`: the client's state vector, which starts a sync.
pub fn encode_sync_step1(sv: &StateVector) -> Bytes {
    let sv = sv.encode_v1();
    let mut buf = header(MSG_SYNC, Some(SYNC_STEP1), sv.len());
    buf.write_buf(&sv);
    buf.into()
}

/// `[0, 1, update]`: the answer to the server's step 1.
pub fn encode_sync_step2(update: &[u8]) -> Bytes {
    let mut buf = header(MSG_SYNC, Some(SYNC_STEP2), update.len());
    buf.write_buf(update);
    buf.into()
}

/// `[0, 2, update]`: a local edit.
pub fn encode_sync_update(update: &[u8]) -> Bytes {
    let mut buf = header(MSG_SYNC, Some(SYNC_UPDATE), update.len());
    buf.write_buf(update);
    buf.into()
}

/// `[1, update]`: an awareness update.
pub fn encode_awareness(update: &AwarenessUpdate) -> Bytes {
    let body = update.encode_v1();
    let mut buf = header(MSG_AWARENESS, None, body.len());
    buf.write_buf(&body);
    buf.into()
}

/// `[3]`: asks the server for everyone's awareness state.
pub fn encode_query_awareness() -> Bytes {
    Bytes::from_static(&[MSG_QUERY_AWARENESS as u8])
}

/// `[5, json]`: a JSON extension message (sending one also opts in to extensions).
pub fn encode_stateless(json: &str) -> Bytes {
    let mut buf = header(MSG_STATELESS, None, json.len());
    buf.write_string(json);
    buf.into()
}

/// `[8, 1]`: opts in to extension messages (save acknowledgements, JSON messages).
pub fn encode_opt_in() -> Bytes {
    Bytes::from_static(&[MSG_SYNC_STATUS as u8, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use yrs::sync::awareness::AwarenessUpdateEntry;
    use yrs::{ClientID, Doc, ReadTxn, Text, Transact};

    #[test]
    fn decodes_sync_messages_borrowing_the_update() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "hello");
        let sv = doc.transact().state_vector();
        match ServerMessage::decode(&encode_sync_step1(&sv)).unwrap() {
            ServerMessage::SyncStep1(got) => assert_eq!(got, sv),
            other => panic!("unexpected {other:?}"),
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let frame = encode_sync_step2(&update);
        match ServerMessage::decode(&frame).unwrap() {
            ServerMessage::SyncStep2(got) => {
                assert_eq!(got, &update[..]);
                // A sub-slice of the frame, not a copy.
                assert!(std::ptr::eq(
                    got.as_ptr(),
                    frame[frame.len() - got.len()..].as_ptr()
                ));
            }
            other => panic!("unexpected {other:?}"),
        }
        match ServerMessage::decode(&encode_sync_update(&update)).unwrap() {
            ServerMessage::Update(got) => assert_eq!(got, &update[..]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_awareness_auth_and_extensions() {
        let mut clients = HashMap::new();
        clients.insert(
            ClientID::new(7),
            AwarenessUpdateEntry {
                clock: 3,
                json: r#"{"user":"ada"}"#.into(),
            },
        );
        let frame = encode_awareness(&AwarenessUpdate { clients });
        match ServerMessage::decode(&frame).unwrap() {
            ServerMessage::Awareness(u) => {
                let e = &u.clients[&ClientID::new(7)];
                assert_eq!((e.clock, &*e.json), (3, r#"{"user":"ada"}"#));
            }
            other => panic!("unexpected {other:?}"),
        }
        // [2, 0, "no"] and [2, 1], as docs/protocol.md writes them.
        assert!(matches!(
            ServerMessage::decode(&[2, 0, 2, b'n', b'o']).unwrap(),
            ServerMessage::AuthDenied("no")
        ));
        assert!(matches!(
            ServerMessage::decode(&[2, 1]).unwrap(),
            ServerMessage::AuthGranted
        ));
        assert!(matches!(
            ServerMessage::decode(&[3]).unwrap(),
            ServerMessage::QueryAwareness
        ));
        assert!(matches!(
            ServerMessage::decode(&[8, 1]).unwrap(),
            ServerMessage::SyncStatus(1)
        ));
        let json = r#"{"type":"error","code":"read-only","message":"no"}"#;
        match ServerMessage::decode(&encode_stateless(json)).unwrap() {
            ServerMessage::Stateless(s) => assert_eq!(s, json),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(matches!(
            ServerMessage::decode(&[]),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            ServerMessage::decode(&[0, 2, 10, 1]),
            Err(DecodeError::Truncated("sync update"))
        ));
        assert!(matches!(
            ServerMessage::decode(&[0, 0, 10, 1]),
            Err(DecodeError::Truncated("sync step 1"))
        ));
        assert!(matches!(
            ServerMessage::decode(&[0, 9]),
            Err(DecodeError::UnknownSyncType(9))
        ));
        assert!(matches!(
            ServerMessage::decode(&[2, 5]),
            Err(DecodeError::UnknownAuthType(5))
        ));
        assert!(matches!(
            ServerMessage::decode(&[5, 2, 0xff, 0xfe]),
            Err(DecodeError::Utf8("stateless"))
        ));
        assert!(matches!(
            ServerMessage::decode(&[8]),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            ServerMessage::decode(&[42]),
            Err(DecodeError::UnknownType(42))
        ));
        assert!(matches!(
            ServerMessage::decode(&[0xff]),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            ServerMessage::decode(&[1, 2, 1, 7]),
            Err(DecodeError::Malformed {
                what: "awareness",
                ..
            })
        ));
    }

    #[test]
    fn client_frames_have_the_documented_bytes() {
        assert_eq!(&encode_opt_in()[..], &[8, 1]);
        assert_eq!(&encode_query_awareness()[..], &[3]);
        // An empty state vector is one varuint 0, length-prefixed.
        assert_eq!(
            &encode_sync_step1(&StateVector::default())[..],
            &[0, 0, 1, 0]
        );
        assert_eq!(&encode_sync_update(&[0, 0])[..], &[0, 2, 2, 0, 0]);
        assert_eq!(&encode_stateless("{}")[..], &[5, 2, b'{', b'}']);
    }
}
