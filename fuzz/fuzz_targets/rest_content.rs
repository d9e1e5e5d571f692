//! The REST content paths over documents a room could hold: `GET /workflows/{id}/content`
//! (`content::to_json`), an execution's pinned snapshot (`content::snapshot`) and a version
//! restore (`content::restore_update`). Two documents are built from updates the validator
//! passes, as a room integrates them; then the current one is read and restored to the
//! other. Besides crashes, memory errors and huge allocations, a finding is a restore whose
//! result does not read back as the version it restored.
//!
//! Input: a length-prefixed list of updates (little-endian u16 length, then the bytes); even
//! entries build the current document, odd ones the version.

#![no_main]

#[path = "common.rs"]
mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use resonant_engine::content::{restore_update, snapshot, to_json};
use resonant_sync::validate::validate_update_v1;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

/// Applies what the validator passes; yrs panics are contained (a room catches them).
fn apply(doc: &Doc, bytes: &[u8]) {
    if validate_update_v1(bytes).is_err() {
        return;
    }
    if let Ok(update) = Update::decode_v1(bytes) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let _ = doc.transact_mut().apply_update(update);
        }));
    }
}

fn state(doc: &Doc) -> Option<Vec<u8>> {
    catch_unwind(AssertUnwindSafe(|| {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }))
    .ok()
}

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // libfuzzer-sys aborts on every panic; the server turns a panic in a blocking read
        // into a 500 for that request.
        let show = std::env::var_os("FUZZ_SHOW_CAUGHT_PANICS").is_some();
        std::panic::set_hook(Box::new(move |info| {
            if show {
                eprintln!("caught panic: {info}");
            }
        }));
    });
    let current = Doc::with_client_id(1 << 40);
    let version = Doc::with_client_id(1 << 41);
    for (i, update) in common::pieces(data).enumerate() {
        apply(if i % 2 == 0 { &current } else { &version }, update);
    }
    let (Some(current), Some(version)) = (state(&current), state(&version)) else {
        return;
    };
    let _ = catch_unwind(|| snapshot(&current));
    let Ok(Ok(want)) = catch_unwind(|| to_json(&version)) else {
        return;
    };
    let Ok(Ok(restore)) = catch_unwind(|| restore_update(&current, &version)) else {
        return;
    };
    // The restore goes through the room like any edit: it must pass the validator and, once
    // applied, the document must read as the version.
    let restored = Doc::with_client_id(1 << 42);
    for bytes in [&current, &restore] {
        let update = Update::decode_v1(bytes).expect("our own encodings decode");
        restored
            .transact_mut()
            .apply_update(update)
            .expect("our own encodings apply");
    }
    let restored = state(&restored).expect("the restored document encodes");
    let got = to_json(&restored).expect("the restored document reads");
    assert_eq!(got, want, "a restore did not read back as its version");
});
