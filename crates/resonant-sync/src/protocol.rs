//! The y-websocket wire format (lib0 encoding), plus our extension messages.
//!
//! One message per WebSocket binary frame: `varuint type` then a type-specific body.
//! Types 0–3 are y-websocket's; 5 (stateless) and 8 (sync status) are ours, numbered as
//! Hocuspocus numbers the same meanings. `docs/protocol.md` is the prose version of this file.

use bytes::Bytes;

// The message numbers, the encoders and the decoder are the protocol crate's: one definition
// of the bytes for both ends of the wire.
pub use resonant_protocol::{
    encode_awareness, encode_stateless, encode_sync_step1, encode_sync_step2, encode_sync_update,
    ClientMessage, DecodeError, MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_STATELESS,
    MSG_SYNC, MSG_SYNC_STATUS, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE,
};

/// `[8, 1]`: one more update from this client is committed to the store.
pub fn encode_saved() -> Bytes {
    Bytes::from_static(&[MSG_SYNC_STATUS as u8, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

    #[test]
    fn round_trips_sync_messages() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "hello");
        let sv = doc.transact().state_vector();
        let msg = encode_sync_step1(&sv);
        match ClientMessage::decode(&msg).unwrap() {
            ClientMessage::SyncStep1(got) => assert_eq!(got, sv),
            other => panic!("unexpected {other:?}"),
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let msg = encode_sync_update(&update);
        match ClientMessage::decode(&msg).unwrap() {
            ClientMessage::Update(got) => {
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
        assert!(matches!(
            ClientMessage::decode(&[]),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            ClientMessage::decode(&[0, 2, 10, 1]),
            Err(DecodeError::Truncated(_))
        ));
        assert!(matches!(
            ClientMessage::decode(&[0, 9]),
            Err(DecodeError::UnknownSyncType(9))
        ));
        assert!(matches!(
            ClientMessage::decode(&[42]),
            Err(DecodeError::UnknownType(42))
        ));
        assert!(matches!(
            ClientMessage::decode(&[0xff]),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn extension_messages_decode() {
        assert!(matches!(
            ClientMessage::decode(&[8, 1]).unwrap(),
            ClientMessage::SyncStatus
        ));
        let msg = encode_stateless("{\"type\":\"hello\"}");
        match ClientMessage::decode(&msg).unwrap() {
            ClientMessage::Stateless(s) => assert_eq!(s, "{\"type\":\"hello\"}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
