//! How a version's document is stored: once per distinct state of a workflow, full or as a
//! delta against an earlier state (B16: every save used to copy the whole document twice).
//!
//! A state's key is a SHA-256 of its state vector and delete set, so saving an unchanged
//! document stores nothing new. A delta is the part of the state its base lacks (the base's
//! state vector says what that is) plus the state's delete set; applying the chain of deltas
//! on the full state at its root rebuilds the state.

use sha2::{Digest, Sha256};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, IdSet, ReadTxn, StateVector, Transact, Update};

use crate::content::ContentError;

pub use resonant_db::versions::{Base, Prepared, MAX_CHAIN};

/// The key, the bytes to store and the document itself (so the caller can read its content
/// without decoding the state again).
pub fn prepare(state: &[u8], base: Option<&Base>) -> Result<(Prepared, Doc), ContentError> {
    let update = Update::decode_v1(state).map_err(|e| ContentError::Decode(e.to_string()))?;
    let key = key_of(&update.state_vector(), update.delete_set());
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| ContentError::Decode(e.to_string()))?;
    let (sv, delta) = {
        let txn = doc.transact();
        let sv = txn.state_vector();
        let delta = base
            .filter(|b| b.depth < MAX_CHAIN)
            .and_then(|b| {
                let base_sv = StateVector::decode_v1(b.state_vector.as_deref()?).ok()?;
                // A base that is not contained in this state (another history) cannot be
                // completed by a delta.
                let contained = base_sv.iter().all(|(c, clock)| sv.get(c) >= *clock);
                contained.then(|| (b, txn.encode_state_as_update_v1(&base_sv)))
            })
            // A delta is worth its chain only when it saves at least half the bytes.
            .filter(|(_, d)| d.len() <= state.len() / 2);
        (sv.encode_v1(), delta)
    };
    let prepared = match delta {
        Some((b, data)) => Prepared {
            key,
            data,
            base: Some(b.key.clone()),
            depth: b.depth + 1,
            state_vector: sv,
        },
        None => Prepared {
            key,
            data: state.to_vec(),
            base: None,
            depth: 0,
            state_vector: sv,
        },
    };
    Ok((prepared, doc))
}

/// The state rebuilt from its chain, given root (full state) first; checked against its key
/// when the chain holds deltas (`None` for keys that are not hashes).
pub fn rebuild(chain: &[Vec<u8>], key: Option<&str>) -> Result<Vec<u8>, ContentError> {
    if let [full] = chain {
        return Ok(full.clone());
    }
    let doc = Doc::new();
    for part in chain {
        let update = Update::decode_v1(part).map_err(|e| ContentError::Decode(e.to_string()))?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| ContentError::Decode(e.to_string()))?;
    }
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    if let Some(key) = key {
        let update = Update::decode_v1(&state).map_err(|e| ContentError::Decode(e.to_string()))?;
        if key_of(&update.state_vector(), update.delete_set()) != key {
            return Err(ContentError::Decode(
                "the rebuilt version does not match its key".into(),
            ));
        }
    }
    Ok(state)
}

/// SHA-256 (hex) of a canonical form of a state vector and delete set: clients in order,
/// adjacent deleted ranges merged, so two encodings of one document get one key.
pub fn key_of(sv: &StateVector, ds: &IdSet) -> String {
    let mut hasher = Sha256::new();
    let mut clients: Vec<(u64, u32)> = sv.iter().map(|(c, k)| (c.get(), *k)).collect();
    clients.sort_unstable();
    hasher.update(b"sv");
    hasher.update((clients.len() as u64).to_le_bytes());
    for (client, clock) in clients {
        hasher.update(client.to_le_bytes());
        hasher.update(clock.to_le_bytes());
    }
    hasher.update(b"ds");
    let mut deleted: Vec<(u64, Vec<(u32, u32)>)> = Vec::new();
    for (client, ranges) in ds.iter() {
        let mut rs: Vec<(u32, u32)> = ranges.iter().map(|r| (r.start, r.end)).collect();
        rs.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(rs.len());
        for (start, end) in rs {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ if start < end => merged.push((start, end)),
                _ => {}
            }
        }
        if !merged.is_empty() {
            deleted.push((client.get(), merged));
        }
    }
    deleted.sort_unstable();
    for (client, ranges) in deleted {
        hasher.update(client.to_le_bytes());
        hasher.update((ranges.len() as u64).to_le_bytes());
        for (start, end) in ranges {
            hasher.update(start.to_le_bytes());
            hasher.update(end.to_le_bytes());
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Map, WriteTxn};

    fn state_of(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn a_delta_rebuilds_the_state_and_identical_documents_share_a_key() {
        let doc = Doc::with_client_id(1);
        let big = "x".repeat(10_000);
        {
            let mut txn = doc.transact_mut();
            let meta = txn.get_or_insert_map("meta");
            meta.insert(&mut txn, "big", big.as_str());
            meta.insert(&mut txn, "n", 1);
        }
        let first = state_of(&doc);
        let (p1, _) = prepare(&first, None).unwrap();
        assert_eq!(p1.depth, 0);
        let (again, _) = prepare(&state_of(&doc), None).unwrap();
        assert_eq!(again.key, p1.key);
        {
            let mut txn = doc.transact_mut();
            let meta = txn.get_or_insert_map("meta");
            meta.insert(&mut txn, "n", 2);
        }
        let second = state_of(&doc);
        let base = Base {
            key: p1.key.clone(),
            depth: 0,
            state_vector: Some(p1.state_vector.clone()),
        };
        let (p2, _) = prepare(&second, Some(&base)).unwrap();
        assert_eq!(p2.depth, 1);
        assert!(p2.data.len() < 200, "{}", p2.data.len());
        assert_ne!(p2.key, p1.key);
        let rebuilt = rebuild(&[p1.data, p2.data], Some(&p2.key)).unwrap();
        assert_eq!(
            crate::content::to_json(&rebuilt).unwrap(),
            crate::content::to_json(&second).unwrap()
        );
    }
}
