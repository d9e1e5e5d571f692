//! Stream ids, the entry format, and the parsing of `XREAD` / `XREVRANGE` replies.
//!
//! An entry is `n` (origin node id, decimal), `t` (sender wall-clock ms, decimal) and `m` (the
//! payload, binary-safe). Unknown fields are ignored so a rolling upgrade may add some.
//! Decoding is per entry and total: a bad entry is reported as malformed, never as an error of
//! the whole reply (which would fail the shared `XREAD` of every topic). Replies are parsed
//! from raw [`redis::Value`]s rather than redis-rs's typed stream replies because those decode
//! field names as UTF-8 strings and fail the whole reply on one bad entry.

use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use redis::Value;

use crate::{Message, NodeId};

/// A Redis stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry (the anchor of a topic whose stream does not exist).
    pub(crate) const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub(crate) fn parse(text: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Field names of an entry.
pub(crate) const FIELD_NODE: &str = "n";
pub(crate) const FIELD_TIME: &str = "t";
pub(crate) const FIELD_PAYLOAD: &str = "m";

/// A reply whose shape is not what the command returns: a protocol-level fault, handled like a
/// connection error (the reader reconnects) rather than per entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply shape: {0}")]
pub(crate) struct ShapeError(pub(crate) &'static str);

/// One stream's entries from an `XREAD` reply, fields still undecoded.
pub(crate) struct StreamRead {
    pub(crate) key: Vec<u8>,
    pub(crate) entries: Vec<(StreamId, Value)>,
}

fn unwrap_attribute(value: Value) -> Value {
    match value {
        Value::Attribute { data, .. } => *data,
        other => other,
    }
}

fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match unwrap_attribute(value) {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

fn into_pairs(value: Value) -> Option<Vec<(Value, Value)>> {
    match unwrap_attribute(value) {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return None;
            }
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            Some(pairs)
        }
        Value::Map(pairs) => Some(pairs),
        _ => None,
    }
}

/// A decoded entry: the message, or what makes the entry malformed.
pub(crate) type Decoded = Result<Message, &'static str>;

/// Decodes one entry's fields; `Err` names what makes it malformed.
pub(crate) fn decode_entry(fields: Value) -> Decoded {
    let pairs = into_pairs(fields).ok_or("fields are not a field/value list")?;
    let mut origin: Option<NodeId> = None;
    let mut sent_ms = 0i64;
    let mut payload: Option<Vec<u8>> = None;
    for (name, value) in pairs {
        let Some(name) = into_bytes(name) else {
            continue;
        };
        match name.as_slice() {
            b"n" => {
                let text = into_bytes(value).ok_or("n is not a string")?;
                let text = std::str::from_utf8(&text).map_err(|_| "n is not numeric")?;
                origin = Some(text.parse().map_err(|_| "n is not numeric")?);
            }
            // Only a latency metric rides on it, so a bad time is not worth a Resync.
            b"t" => {
                sent_ms = into_bytes(value)
                    .and_then(|t| std::str::from_utf8(&t).ok()?.parse().ok())
                    .unwrap_or(0);
            }
            b"m" => payload = Some(into_bytes(value).ok_or("m is not a string")?),
            _ => {}
        }
    }
    Ok(Message {
        origin: origin.ok_or("n is missing")?,
        sent_ms,
        payload: Bytes::from(payload.ok_or("m is missing")?),
    })
}

fn parse_entries(value: Value) -> Result<Vec<(StreamId, Value)>, ShapeError> {
    let Value::Array(items) = unwrap_attribute(value) else {
        return Err(ShapeError("entries are not an array"));
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(parts) = unwrap_attribute(item) else {
                return Err(ShapeError("an entry is not an array"));
            };
            let mut parts = parts.into_iter();
            let id = parts
                .next()
                .and_then(into_bytes)
                .and_then(|id| StreamId::parse(&id))
                .ok_or(ShapeError("an entry id is not an id"))?;
            Ok((id, parts.next().unwrap_or(Value::Nil)))
        })
        .collect()
}

/// Parses an `XREAD` reply (RESP2 array or RESP3 map; nil when `BLOCK` ran out).
pub(crate) fn parse_xread(value: Value) -> Result<Vec<StreamRead>, ShapeError> {
    let streams: Vec<(Value, Value)> = match unwrap_attribute(value) {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match unwrap_attribute(item) {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    Ok((
                        pair.next().unwrap_or_default(),
                        pair.next().unwrap_or_default(),
                    ))
                }
                _ => Err(ShapeError("a stream is not a [key, entries] pair")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ShapeError("XREAD reply is not an array or map")),
    };
    streams
        .into_iter()
        .map(|(key, entries)| {
            Ok(StreamRead {
                key: into_bytes(key).ok_or(ShapeError("a stream key is not a string"))?,
                entries: parse_entries(entries)?,
            })
        })
        .collect()
}

/// A stream's last entry as `XREVRANGE … COUNT 1` shows it: its id, and a fingerprint of its
/// content that tells it from another entry given the same id after the stream restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastEntry {
    pub(crate) id: StreamId,
    pub(crate) fingerprint: Option<u64>,
}

impl LastEntry {
    /// The anchor of an absent or empty stream.
    pub(crate) const NONE: LastEntry = LastEntry {
        id: StreamId::ZERO,
        fingerprint: None,
    };
}

/// A hash of a decoded entry (only ever compared within this process).
pub(crate) fn fingerprint(entry: &Decoded) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    match entry {
        Ok(message) => {
            message.origin.hash(&mut hasher);
            message.sent_ms.hash(&mut hasher);
            message.payload.hash(&mut hasher);
        }
        Err(reason) => reason.hash(&mut hasher),
    }
    hasher.finish()
}

/// Parses an `XREVRANGE key + - COUNT 1` reply: the stream's last entry, `None` when the
/// stream is empty or absent.
pub(crate) fn parse_last_entry(value: Value) -> Result<Option<LastEntry>, ShapeError> {
    Ok(parse_entries(value)?
        .into_iter()
        .next()
        .map(|(id, fields)| LastEntry {
            id,
            fingerprint: Some(fingerprint(&decode_entry(fields))),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn entry(id: &str, fields: &[(&[u8], &[u8])]) -> Value {
        let flat = fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id.as_bytes()), Value::Array(flat)])
    }

    #[test]
    fn ids_parse_and_order() {
        let a = StreamId::parse(b"1700000000000-5").unwrap();
        let b = StreamId::parse(b"1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-5");
        assert_eq!(StreamId::parse(b"12"), None);
        assert_eq!(StreamId::parse(b"x-1"), None);
        assert!(StreamId::ZERO < a);
    }

    #[test]
    fn entries_decode_binary_payloads_and_ignore_unknown_fields() {
        let fields = Value::Array(vec![
            bulk(b"z"),
            bulk(b"future"),
            bulk(b"n"),
            bulk(b"42"),
            bulk(b"t"),
            bulk(b"1700"),
            bulk(b"m"),
            bulk(&[0, 255, 10, 13]),
            bulk(&[0xff]),
            bulk(b"non-utf8 field name"),
        ]);
        let message = decode_entry(fields).unwrap();
        assert_eq!(message.origin, 42);
        assert_eq!(message.sent_ms, 1700);
        assert_eq!(&message.payload[..], &[0, 255, 10, 13]);
    }

    #[test]
    fn malformed_entries_are_reported_per_entry() {
        let f = |fields: &[(&[u8], &[u8])]| {
            decode_entry(Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ))
        };
        assert_eq!(f(&[(b"n", b"oops")]), Err("n is not numeric"));
        assert_eq!(f(&[(b"m", b"x")]), Err("n is missing"));
        assert_eq!(f(&[(b"n", b"1")]), Err("m is missing"));
        assert_eq!(f(&[(b"n", b"-1"), (b"m", b"x")]), Err("n is not numeric"));
        // A bad time is tolerated: it only feeds a metric.
        assert_eq!(
            f(&[(b"n", b"1"), (b"t", b"soon"), (b"m", b"")])
                .unwrap()
                .sent_ms,
            0
        );
        assert!(decode_entry(Value::Array(vec![bulk(b"n")])).is_err());
        assert!(decode_entry(Value::Nil).is_err());
    }

    #[test]
    fn xread_replies_parse_in_both_protocols() {
        let entries = Value::Array(vec![
            entry("1-1", &[(b"n", b"1"), (b"m", b"a")]),
            entry("1-2", &[(b"n", b"oops")]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk(b"k"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk(b"k"), entries)]);
        for reply in [resp2, resp3] {
            let streams = parse_xread(reply).unwrap();
            assert_eq!(streams.len(), 1);
            assert_eq!(streams[0].key, b"k");
            let ids: Vec<_> = streams[0].entries.iter().map(|(id, _)| *id).collect();
            assert_eq!(
                ids,
                [StreamId { ms: 1, seq: 1 }, StreamId { ms: 1, seq: 2 }]
            );
        }
        assert!(parse_xread(Value::Nil).unwrap().is_empty());
        assert!(parse_xread(Value::Int(3)).is_err());
        assert!(parse_xread(Value::Array(vec![Value::Array(vec![
            bulk(b"k"),
            Value::Array(vec![entry("nope", &[])])
        ])]))
        .is_err());
    }

    #[test]
    fn last_entries_parse_with_a_fingerprint_of_their_content() {
        assert_eq!(parse_last_entry(Value::Array(vec![])).unwrap(), None);
        let last = |fields: &[(&[u8], &[u8])]| {
            parse_last_entry(Value::Array(vec![entry("5-0", fields)]))
                .unwrap()
                .unwrap()
        };
        let a = last(&[(b"n", b"1"), (b"t", b"9"), (b"m", b"x")]);
        assert_eq!(a.id, StreamId { ms: 5, seq: 0 });
        assert_eq!(a, last(&[(b"n", b"1"), (b"t", b"9"), (b"m", b"x")]));
        assert_ne!(a, last(&[(b"n", b"1"), (b"t", b"9"), (b"m", b"y")]));
        assert_ne!(a, last(&[(b"n", b"2"), (b"t", b"9"), (b"m", b"x")]));
        assert_ne!(a, last(&[(b"n", b"1"), (b"t", b"8"), (b"m", b"x")]));
        assert!(
            last(&[]).fingerprint.is_some(),
            "malformed entries have one too"
        );
    }
}
