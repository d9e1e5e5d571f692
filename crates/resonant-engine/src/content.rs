//! A workflow document's content as JSON, and version restores.
//!
//! The document layout follows the seed: `blocks` and `connections` are arrays (of maps),
//! `viewport` and `meta` are maps. A restore rewrites those roots of the live document so
//! they equal the version's, as one ordinary change that every connected editor receives.
//!
//! Every walk here carries its depth and stops with [`ContentError::TooDeep`] past
//! [`MAX_DEPTH`]: the sync layer refuses updates nesting shared types deeper than its limit,
//! but documents stored before that limit existed may nest far deeper, and a recursive walk
//! over them (yrs's own `to_json` included) would overflow the stack and abort the process.

use serde_json::{Map as JsonMap, Value};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, GetString, In, Map, MapPrelim, Out, ReadTxn, TextPrelim,
    Transact, Update, WriteTxn,
};

/// The array roots of a workflow document.
const ARRAYS: [&str; 2] = ["blocks", "connections"];
/// The map roots of a workflow document.
const MAPS: [&str; 2] = ["viewport", "meta"];

/// Deepest nesting (shared types and JSON values together) any content walk follows: well
/// above what the sync layer lets documents reach (64 type levels, 128 value levels), well
/// below what a worker stack holds.
pub const MAX_DEPTH: usize = 512;

/// Errors reading a stored document.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The bytes are not a Yjs document.
    #[error("stored document does not decode: {0}")]
    Decode(String),
    /// The document nests deeper than [`MAX_DEPTH`] levels.
    #[error("the document nests deeper than {MAX_DEPTH} levels and cannot be read as JSON")]
    TooDeep,
    /// A list holds text items, which no workflow editor writes (see [`items`]).
    #[error("a list in the document holds text (written outside the workflow schema) and cannot be read as JSON")]
    TextInList,
}

/// The items of a list, refusing one that holds text: no workflow editor writes text into a
/// list, so such a document is not a workflow. (Unpatched yrs read text in a list in quadratic
/// time, or forever for non-ASCII text; `vendor/yrs` reads it linearly, see its PATCHES.md §3,
/// so this is a product rule, no longer a guard for the worker.)
fn items<'a, T: ReadTxn>(
    txn: &'a T,
    array: &'a yrs::ArrayRef,
) -> Result<impl Iterator<Item = Out> + 'a, ContentError> {
    if resonant_sync::list_holds_text(txn, array.as_ref()) {
        return Err(ContentError::TextInList);
    }
    Ok(array.iter(txn))
}

fn doc_from(state: &[u8]) -> Result<Doc, ContentError> {
    let doc = Doc::new();
    let update = Update::decode_v1(state).map_err(|e| ContentError::Decode(e.to_string()))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| ContentError::Decode(e.to_string()))?;
    Ok(doc)
}

/// The content of a document (a Yjs v1 state) as `{blocks, connections, viewport, meta}`.
pub fn to_json(state: &[u8]) -> Result<Value, ContentError> {
    doc_to_json(&doc_from(state)?)
}

/// The content of a decoded document, as [`to_json`] reads it.
pub fn doc_to_json(doc: &Doc) -> Result<Value, ContentError> {
    let mut txn = doc.transact_mut();
    let mut out = JsonMap::new();
    for name in ARRAYS {
        let array = txn.get_or_insert_array(name);
        out.insert(name.into(), out_to_json(&txn, Out::YArray(array), 1)?);
    }
    for name in MAPS {
        let map = txn.get_or_insert_map(name);
        out.insert(name.into(), out_to_json(&txn, Out::YMap(map), 1)?);
    }
    Ok(Value::Object(out))
}

/// The content as JSON and the document's state vector (v1-encoded), read from one decode:
/// what an execution pins when it starts.
pub fn snapshot(state: &[u8]) -> Result<(Value, Vec<u8>), ContentError> {
    use yrs::updates::encoder::Encode;
    let json = to_json(state)?;
    let doc = doc_from(state)?;
    let sv = doc.transact().state_vector().encode_v1();
    Ok((json, sv))
}

/// A document value as JSON, as yrs's `to_json` renders it (text as a string, XML as its
/// string form), with the depth checked at every level.
fn out_to_json<T: ReadTxn>(txn: &T, value: Out, depth: usize) -> Result<Value, ContentError> {
    if depth > MAX_DEPTH {
        return Err(ContentError::TooDeep);
    }
    Ok(match value {
        Out::Any(any) => any_to_json(&any, depth)?,
        Out::YText(text) => Value::String(text.get_string(txn)),
        Out::YArray(array) => Value::Array(
            items(txn, &array)?
                .map(|v| out_to_json(txn, v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Out::YMap(map) => Value::Object(
            map.iter(txn)
                .map(|(k, v)| Ok((k.to_string(), out_to_json(txn, v, depth + 1)?)))
                .collect::<Result<_, ContentError>>()?,
        ),
        Out::YXmlElement(x) => Value::String(x.get_string(txn)),
        Out::YXmlFragment(x) => Value::String(x.get_string(txn)),
        Out::YXmlText(x) => Value::String(x.get_string(txn)),
        // Subdocuments and weak links are not part of a workflow document.
        _ => Value::Null,
    })
}

fn any_to_json(any: &Any, depth: usize) -> Result<Value, ContentError> {
    if depth > MAX_DEPTH {
        return Err(ContentError::TooDeep);
    }
    Ok(match any {
        Any::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| any_to_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Any::Map(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), any_to_json(v, depth + 1)?)))
                .collect::<Result<_, ContentError>>()?,
        ),
        // Leaves: serde renders them as before (numbers as yrs serialises them).
        leaf => serde_json::to_value(leaf).unwrap_or(Value::Null),
    })
}

/// The update that turns `current` (the live document's state) into a document whose roots
/// equal `target`'s, made as new operations on top of `current` so that it merges with
/// concurrent edits like any other change.
pub fn restore_update(current: &[u8], target: &[u8]) -> Result<Vec<u8>, ContentError> {
    let scratch = doc_from(current)?;
    let version = doc_from(target)?;
    let before = scratch.transact().state_vector();
    {
        let mut vtxn = version.transact_mut();
        let mut txn = scratch.transact_mut();
        for name in ARRAYS {
            let from = vtxn.get_or_insert_array(name);
            let to = txn.get_or_insert_array(name);
            let len = to.len(&txn);
            if len > 0 {
                to.remove_range(&mut txn, 0, len);
            }
            let values: Vec<In> = items(&vtxn, &from)?
                .map(|v| copy(&vtxn, v, 1))
                .collect::<Result<_, _>>()?;
            for (i, item) in values.into_iter().enumerate() {
                to.insert(&mut txn, i as u32, item);
            }
        }
        for name in MAPS {
            let from = vtxn.get_or_insert_map(name);
            let to = txn.get_or_insert_map(name);
            to.clear(&mut txn);
            let entries: Vec<(String, In)> = from
                .iter(&vtxn)
                .map(|(k, v)| Ok((k.to_string(), copy(&vtxn, v, 1)?)))
                .collect::<Result<_, ContentError>>()?;
            for (k, v) in entries {
                to.insert(&mut txn, k, v);
            }
        }
    }
    let update = scratch.transact().encode_diff_v1(&before);
    Ok(update)
}

/// A deep copy of a value of one document, ready to insert into another.
fn copy<T: ReadTxn>(txn: &T, value: Out, depth: usize) -> Result<In, ContentError> {
    if depth > MAX_DEPTH {
        return Err(ContentError::TooDeep);
    }
    Ok(match value {
        Out::Any(any) => In::Any(any),
        Out::YArray(array) => In::Array(ArrayPrelim::from_iter(
            items(txn, &array)?
                .map(|v| copy(txn, v, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Out::YMap(map) => In::Map(MapPrelim::from_iter(
            map.iter(txn)
                .map(|(k, v)| Ok((k.to_string(), copy(txn, v, depth + 1)?)))
                .collect::<Result<Vec<_>, ContentError>>()?,
        )),
        Out::YText(text) => In::Text(TextPrelim::new(text.get_string(txn)).into()),
        // XML and subdocuments are not part of a workflow document: keep their JSON form
        // (checked for depth like everything else).
        other => match out_to_json(txn, other, depth)? {
            Value::String(s) => In::Any(Any::from(s)),
            _ => In::Any(Any::Null),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{StateVector, Text};

    fn state_of(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn restore_makes_the_live_document_equal_the_version() {
        let live = Doc::new();
        let blocks = live.get_or_insert_array("blocks");
        let meta = live.get_or_insert_map("meta");
        {
            let mut txn = live.transact_mut();
            blocks.push_back(
                &mut txn,
                MapPrelim::from_iter([("id", In::Any("a".into())), ("type", "input".into())]),
            );
            meta.insert(&mut txn, "title", "v1");
        }
        let v1 = state_of(&live);
        let v1_json = to_json(&v1).unwrap();
        {
            let mut txn = live.transact_mut();
            blocks.push_back(
                &mut txn,
                MapPrelim::from_iter([("id", In::Any("b".into()))]),
            );
            meta.insert(&mut txn, "title", "v2");
        }
        assert_ne!(to_json(&state_of(&live)).unwrap(), v1_json);
        let update = restore_update(&state_of(&live), &v1).unwrap();
        live.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        assert_eq!(to_json(&state_of(&live)).unwrap(), v1_json);
        // Nested blocks stay shared types, so editors can keep editing them field by field.
        let txn = live.transact();
        assert!(matches!(blocks.get(&txn, 0), Some(Out::YMap(_))));
    }

    #[test]
    fn text_written_where_a_list_belongs_is_refused_not_read_char_by_char() {
        // 200k characters took 4.3 s to read before (quadratic: 20k took 47 ms); a 64 MiB
        // room would have held a worker for days.
        let doc = Doc::new();
        let text = doc.get_or_insert_text("blocks");
        text.insert(&mut doc.transact_mut(), 0, &"x".repeat(200_000));
        let state = state_of(&doc);
        assert!(matches!(to_json(&state), Err(ContentError::TextInList)));
        let empty = state_of(&Doc::new());
        assert!(matches!(
            restore_update(&empty, &state),
            Err(ContentError::TextInList)
        ));
    }
}
