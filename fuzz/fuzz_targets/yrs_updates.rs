//! Document updates straight into yrs, as a room integrates them: each update the validator
//! passes is applied to one document, then the document's state is encoded and loaded into a
//! fresh one, as a reload does. Panics are caught (rooms contain them); memory errors (under
//! ASan), aborts and huge allocations are findings. This is where yrs's own update handling
//! is exercised without the session machinery in between (docs/upstream/yrs-uaf.md).
//!
//! Input: updates, each a little-endian u16 length and that many bytes (the last one may be
//! short).
//!
//! `FUZZ_YRS_UNVALIDATED=1` skips the validator's rules on how structs refer to each other
//! (`validate_update_v1_for_decoding`: a second struct section for a client, references to
//! the own client's later clocks), which refuse shapes that reached yrs bugs, so that the
//! patches in vendor/yrs are tested on their own (vendor/yrs/PATCHES.md §2). The checks that
//! keep yrs's decoder within bounds stay: without them every input would end in a known
//! allocation bomb or subdocument leak (fuzz/findings/README.md §2).

#![no_main]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use libfuzzer_sys::fuzz_target;
use resonant_sync::validate::{validate_update_v1, validate_update_v1_for_decoding};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

fn updates(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = u16::from_le_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let (update, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some(update)
    })
}

fn apply(doc: &Doc, bytes: &[u8]) {
    if let Ok(update) = Update::decode_v1(bytes) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let _ = doc.transact_mut().apply_update(update);
        }));
    }
}

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // libfuzzer-sys aborts on every panic; yrs panics are contained by the room.
        let show = std::env::var_os("FUZZ_SHOW_CAUGHT_PANICS").is_some();
        std::panic::set_hook(Box::new(move |info| {
            if show {
                eprintln!("caught panic: {info}");
            }
        }));
    });
    static UNVALIDATED: OnceLock<bool> = OnceLock::new();
    let unvalidated = *UNVALIDATED
        .get_or_init(|| std::env::var_os("FUZZ_YRS_UNVALIDATED").is_some_and(|v| v == "1"));
    let doc = Doc::with_client_id(1 << 40);
    for update in updates(data) {
        let passes = if unvalidated {
            validate_update_v1_for_decoding(update).is_ok()
        } else {
            validate_update_v1(update).is_ok()
        };
        if passes {
            apply(&doc, update);
        }
    }
    let state = catch_unwind(AssertUnwindSafe(|| {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }));
    if let Ok(state) = state {
        apply(&Doc::with_client_id(1 << 41), &state);
    }
});
