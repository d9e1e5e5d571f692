//! A workflow document's content as JSON, and version restores.
//!
//! The document layout follows the seed: `blocks` and `connections` are arrays (of maps),
//! `viewport` and `meta` are maps. A restore rewrites those roots of the live document so
//! they equal the version's, as one ordinary change that every connected editor receives.

use serde_json::{json, Value};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, GetString, In, Map, MapPrelim, Out, ReadTxn, TextPrelim,
    Transact, Update, WriteTxn,
};

/// The array roots of a workflow document.
const ARRAYS: [&str; 2] = ["blocks", "connections"];
/// The map roots of a workflow document.
const MAPS: [&str; 2] = ["viewport", "meta"];

/// Errors reading a stored document.
#[derive(Debug, thiserror::Error)]
#[error("stored document does not decode: {0}")]
pub struct ContentError(String);

fn doc_from(state: &[u8]) -> Result<Doc, ContentError> {
    let doc = Doc::new();
    let update = Update::decode_v1(state).map_err(|e| ContentError(e.to_string()))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| ContentError(e.to_string()))?;
    Ok(doc)
}

/// The content of a document (a Yjs v1 state) as `{blocks, connections, viewport, meta}`.
pub fn to_json(state: &[u8]) -> Result<Value, ContentError> {
    let doc = doc_from(state)?;
    let mut txn = doc.transact_mut();
    let mut out = serde_json::Map::new();
    for name in ARRAYS {
        let array = txn.get_or_insert_array(name);
        out.insert(name.into(), any_to_json(&array.to_json(&txn)));
    }
    for name in MAPS {
        let map = txn.get_or_insert_map(name);
        out.insert(name.into(), any_to_json(&map.to_json(&txn)));
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

fn any_to_json(any: &Any) -> Value {
    serde_json::to_value(any).unwrap_or(json!(null))
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
            let items: Vec<In> = from.iter(&vtxn).map(|v| copy(&vtxn, v)).collect();
            for (i, item) in items.into_iter().enumerate() {
                to.insert(&mut txn, i as u32, item);
            }
        }
        for name in MAPS {
            let from = vtxn.get_or_insert_map(name);
            let to = txn.get_or_insert_map(name);
            to.clear(&mut txn);
            let entries: Vec<(String, In)> = from
                .iter(&vtxn)
                .map(|(k, v)| (k.to_string(), copy(&vtxn, v)))
                .collect();
            for (k, v) in entries {
                to.insert(&mut txn, k, v);
            }
        }
    }
    let update = scratch.transact().encode_diff_v1(&before);
    Ok(update)
}

/// A deep copy of a value of one document, ready to insert into another.
fn copy<T: ReadTxn>(txn: &T, value: Out) -> In {
    match value {
        Out::Any(any) => In::Any(any),
        Out::YArray(array) => In::Array(ArrayPrelim::from_iter(
            array.iter(txn).map(|v| copy(txn, v)).collect::<Vec<_>>(),
        )),
        Out::YMap(map) => In::Map(MapPrelim::from_iter(
            map.iter(txn)
                .map(|(k, v)| (k.to_string(), copy(txn, v)))
                .collect::<Vec<_>>(),
        )),
        Out::YText(text) => In::Text(TextPrelim::new(text.get_string(txn)).into()),
        // XML and subdocuments are not part of a workflow document: keep their JSON form.
        other => In::Any(other.to_json(txn)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::StateVector;

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
}
