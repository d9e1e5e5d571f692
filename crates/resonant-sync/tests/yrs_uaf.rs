//! The heap use-after-free in yrs 0.28.1 (`ItemPtr::splice` ← `BlockSet::split_at` ←
//! `BlockSet::exclude` ← `TransactionMut::apply_update`; docs/upstream/yrs-uaf.md), fixed by
//! the `split_unintegrated` patch in vendor/yrs.
//!
//! The second one (`BlockStore::push` replacing an integrated item; vendor/yrs/PATCHES.md §2,
//! fuzz/findings/README.md §5) is fixed by the `held_clocks` patch: an update carrying the
//! same clocks twice (a second struct section for a client) or a clock of 2^31 or more no
//! longer frees live items. The validator also refuses the duplicate sections (1007).
//!
//! A write after free rarely crashes on its own, so this binary's allocator quarantines
//! freed blocks while the reproducer runs: it fills them with a pattern instead of freeing
//! them, and afterwards checks that nothing wrote into one. Against unpatched yrs the check
//! fails (8 bytes of the freed block, a `left` pointer, overwritten); ASan reports the same
//! through `fuzz/asan_regressions.sh`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use resonant_store::{Journal, JournalConfig, MemoryStore, Store};
use resonant_sync::protocol;
use resonant_sync::validate::validate_update_v1;
use resonant_sync::{close_code, Rooms, SyncConfig};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// A struct section of client 1 (v1): one string struct `ch` at `clock`, in root type "a",
/// without origins.
fn section(clock: u32, ch: u8) -> Vec<u8> {
    section_of(1, clock, ch)
}

/// Like [`section`], with the string `text`.
fn string_section(clock: u32, text: &str) -> Vec<u8> {
    let mut out = vec![1, 1];
    yrs::encoding::write::Write::write_var(&mut out, clock);
    out.extend_from_slice(&[4, 1, 1, b'a', text.len() as u8]);
    out.extend_from_slice(text.as_bytes());
    out
}

/// Like [`section`], for `client`.
fn section_of(client: u8, clock: u32, ch: u8) -> Vec<u8> {
    let mut out = vec![1, client];
    yrs::encoding::write::Write::write_var(&mut out, clock);
    out.extend_from_slice(&[4, 1, 1, b'a', 1, ch]);
    out
}

/// A v1 update of `sections` and an empty delete set.
fn update(sections: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![sections.len() as u8];
    out.extend(sections.concat());
    out.push(0);
    out
}

/// `1:1` = "z" with origin `1:0`.
const Z_AFTER_1_0: &[u8] = &[1, 1, 1, 1, 0x84, 1, 0, 1, b'z', 0];

fn finding(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/findings")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `yrs_updates` fuzz target's input format: updates behind little-endian u16 lengths.
fn frames(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = u16::from_le_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let (frame, rest) = rest.split_at(len.min(rest.len()));
        out.push(frame.to_vec());
        data = rest;
    }
    out
}

/// Applies the decodable `updates` to a fresh document (no validator), failing if yrs wrote
/// into freed memory or panicked.
fn apply_raw(updates: &[Vec<u8>]) -> Doc {
    let doc = Doc::with_client_id(99);
    let bad = writes_after_free(|| {
        for bytes in updates {
            if let Ok(update) = Update::decode_v1(bytes) {
                let _ = doc.transact_mut().apply_update(update);
            }
        }
    });
    assert_eq!(bad, 0, "yrs wrote into {bad} freed block(s)");
    doc
}

fn text_a(doc: &Doc) -> String {
    doc.get_or_insert_text("a").get_string(&doc.transact())
}

/// The document's full state as an update, decoded for a readable comparison.
fn state(doc: &Doc) -> String {
    let bytes = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    format!("{:?}", Update::decode_v1(&bytes).unwrap())
}

/// Loads `doc`'s encoded state into a fresh document, as a reload does, and checks that it
/// encodes the same again.
fn assert_reloads_as_served(doc: &Doc) {
    let bytes = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let copy = Doc::with_client_id(98);
    copy.transact_mut()
        .apply_update(Update::decode_v1(&bytes).unwrap())
        .unwrap();
    assert_eq!(state(&copy), state(doc));
    assert_eq!(text_a(&copy), text_a(doc));
}

/// The minimal reproducer: three v1 updates, all from client 1 (37 bytes).
/// 1. `1:2`, one Any value in root type "a", no origin: integrated at once, leaving
///    clocks 0..2 of client 1 as a hole ("skip") in the block store.
/// 2. `1:0..4`, the string "abcd" whose origin `1:10` does not exist: `exclude` cuts out the
///    known `1:2` (splitting "abcd" into "ab" | "c" | "d" and dropping "c"), and the rest
///    waits as a pending update; "ab" keeps a raw `right` pointer to the freed "c".
/// 3. `1:1`, like update 1: it fills clock 1, and since client 1 is what the pending update
///    waits for, yrs retries it; `exclude` now splits "ab" at clock 1 and writes through the
///    dangling pointer.
const REPRODUCER: [&[u8]; 3] = [
    &[1, 1, 1, 2, 8, 1, 1, b'a', 1, 0x7d, 1, 0],
    &[1, 1, 1, 0, 0x84, 1, 10, 4, b'a', b'b', b'c', b'd', 0],
    &[1, 1, 1, 1, 8, 1, 1, b'a', 1, 0x7d, 1, 0],
];

/// The same through the room's validator, which refuses update 2 above (its origin is its
/// own client's later clock): the origin is another client's missing struct `2:0` instead,
/// and update 3 also brings `2:5`, which advances client 2's clock and so makes yrs retry
/// the pending update.
const REPRODUCER_VALID: [&[u8]; 3] = [
    &[1, 1, 1, 2, 8, 1, 1, b'a', 1, 0x7d, 1, 0],
    &[1, 1, 1, 0, 0x84, 2, 0, 4, b'a', b'b', b'c', b'd', 0],
    &[
        2, 1, 1, 1, 8, 1, 1, b'a', 1, 0x7d, 1, // 1:1
        1, 2, 5, 8, 1, 1, b'a', 1, 0x7d, 2, // 2:5
        0,
    ],
];

struct Quarantine;

const SLOTS: usize = 1 << 16;
const POISON: u8 = 0xa5;
static ON: AtomicBool = AtomicBool::new(false);
static USED: AtomicUsize = AtomicUsize::new(0);
/// Freed blocks held back while [`ON`]: address and size.
static HELD: [(AtomicUsize, AtomicUsize); SLOTS] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; SLOTS];

unsafe impl GlobalAlloc for Quarantine {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ON.load(Ordering::Relaxed) {
            let slot = USED.fetch_add(1, Ordering::Relaxed);
            if slot < SLOTS {
                std::ptr::write_bytes(ptr, POISON, layout.size());
                HELD[slot].0.store(ptr as usize, Ordering::Relaxed);
                HELD[slot].1.store(layout.size(), Ordering::Relaxed);
                return; // never freed: this test binary is short-lived
            }
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Quarantine = Quarantine;

/// Runs `f` with freed memory quarantined; returns how many freed blocks were written to.
fn writes_after_free(f: impl FnOnce()) -> usize {
    // Tests in this binary share the allocator; only one quarantines at a time.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    USED.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    f();
    ON.store(false, Ordering::Relaxed);
    let used = USED.load(Ordering::Relaxed).min(SLOTS);
    (0..used)
        .filter(|&i| {
            let ptr = HELD[i].0.load(Ordering::Relaxed) as *const u8;
            let len = HELD[i].1.load(Ordering::Relaxed);
            // SAFETY: the block was never returned to the system allocator.
            unsafe { std::slice::from_raw_parts(ptr, len) }
                .iter()
                .any(|&b| b != POISON)
        })
        .count()
}

/// Applies `updates` to a fresh document; panics if yrs wrote into freed memory.
fn apply_quarantined(updates: &[&[u8]]) -> Doc {
    let doc = Doc::with_client_id(99);
    let mut results = Vec::new();
    let bad = writes_after_free(|| {
        for bytes in updates {
            let update = Update::decode_v1(bytes).expect("decodes");
            results.push(doc.transact_mut().apply_update(update));
        }
    });
    assert_eq!(bad, 0, "yrs wrote into {bad} freed block(s)");
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    doc
}

#[test]
fn yrs_applies_the_reproducers_without_touching_freed_memory() {
    apply_quarantined(&REPRODUCER_VALID);
    let doc = apply_quarantined(&REPRODUCER);
    // The document is sane: client 1's clocks 1 and 2 are integrated behind the hole at 0;
    // "a" (1:0) and "d" (1:3) wait for the origin 1:10 that never came.
    let txn = doc.transact();
    let pending = txn.store().pending_update().expect("structs still pending");
    let ids = pending.update.insertions(true);
    let ranges: Vec<_> = ids
        .iter()
        .flat_map(|(c, r)| {
            r.iter()
                .map(move |r| (c.get(), r.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ranges, vec![(1, 0..1), (1, 3..4)], "pending: {pending:?}");
    assert_eq!(pending.missing.get(&ClientID::new(1)), 3);
    // Its state encodes and loads into another document with the same state vector.
    let state = txn.encode_state_as_update_v1(&StateVector::default());
    let copy = Doc::new();
    copy.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    let again = copy
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    assert_eq!(
        format!("{:?}", Update::decode_v1(&again).unwrap()),
        format!("{:?}", Update::decode_v1(&state).unwrap()),
    );
    drop(txn);
    // And it still takes ordinary edits.
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, "still editable");
    assert_eq!(text.get_string(&doc.transact()), "still editable");
}

#[test]
fn the_validator_passes_all_but_the_forward_self_reference() {
    // Update 2 of the first reproducer names its own client's later clock as origin (1:0
    // after 1:10), which the validator refuses (it also makes reloads diverge, see
    // reload_divergence.rs); the second reproducer is well-formed throughout, so the yrs
    // patch is what protects the server, not the validator.
    let err = validate_update_v1(REPRODUCER[1]).unwrap_err();
    assert!(
        err.to_string().contains("own client's later clock 10"),
        "{err}"
    );
    for bytes in REPRODUCER_VALID {
        validate_update_v1(bytes).expect("well-formed");
    }
}

#[tokio::test]
async fn a_session_sending_the_reproducer_leaves_a_sane_room() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (journal, writer) = Journal::start(store.clone(), JournalConfig::default());
    let rooms = Rooms::new(store, journal.clone(), SyncConfig::default());
    let (mut attacker, _out) = rooms.join("uaf", true).await.unwrap();
    let bad = writes_after_free(|| {
        for bytes in REPRODUCER_VALID {
            attacker
                .handle(&protocol::encode_sync_update(bytes))
                .expect("accepted");
        }
    });
    assert_eq!(bad, 0, "yrs wrote into {bad} freed block(s)");
    // The first reproducer's forward self-reference is refused with 1007.
    let (mut second, _out2) = rooms.join("uaf", true).await.unwrap();
    let err = second
        .handle(&protocol::encode_sync_update(REPRODUCER[1]))
        .unwrap_err();
    assert_eq!(err.close().code, close_code::INVALID_PAYLOAD, "{err}");
    drop((attacker, second));

    // A well-behaved client in the same room still edits.
    let client = Doc::with_client_id(5);
    let text = client.get_or_insert_text("t");
    text.insert(&mut client.transact_mut(), 0, "fine");
    let update = client
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let (mut session, _out) = rooms.join("uaf", true).await.unwrap();
    session
        .handle(&protocol::encode_sync_update(&update))
        .unwrap();
    let server_text = session
        .room()
        .with_doc(|doc| doc.get_or_insert_text("t").get_string(&doc.transact()));
    assert_eq!(server_text, "fine");
    drop(session);
    rooms.shutdown().await;
    journal.close();
    writer.await.unwrap();
}

#[test]
fn duplicate_struct_sections_integrate_each_clock_once() {
    // The minimal reproducer: one update with the same section (1:0 = "x") twice, then 1:1 =
    // "z" after 1:0. Upstream pushed the second copy over the integrated first one, freeing
    // it while the second copy's `right` still pointed to it; "z", inserted between the
    // second copy and its `right`, then read and wrote the freed item (ASan: READ in
    // `integrate_item`, freed by `BlockStore::push`).
    let minimal = finding("yrs_uaf_replaced_skip_minimal.updates");
    let dup = update(&[section(0, b'x'), section(0, b'x')]);
    assert_eq!(frames(&minimal), vec![dup.clone(), Z_AFTER_1_0.to_vec()]);
    let doc = apply_raw(&frames(&minimal));
    // What a Yjs-shaped update (each client once) gives.
    let reference = apply_raw(&[update(&[section(0, b'x')]), Z_AFTER_1_0.to_vec()]);
    assert_eq!(text_a(&doc), "xz");
    assert_eq!(state(&doc), state(&reference));
    assert_reloads_as_served(&doc);
    assert!(doc.transact().store().pending_update().is_none());

    // Three copies in one update: the same as one.
    let doc = apply_raw(&[update(&[
        section(0, b'x'),
        section(0, b'x'),
        section(0, b'x'),
    ])]);
    assert_eq!(
        state(&doc),
        state(&apply_raw(&[update(&[section(0, b'x')])]))
    );

    // Partly overlapping sections: 1:0 = "ab", then 1:1 = "bcd". Only 1:2..4 of the second
    // is integrated (after 1:1, as Yjs trims it); also with a hole behind them, and a second
    // section whose first half fills the hole the first left and whose second half is held.
    // (The last shape is not causal, "cd" has no origin though 1:0..2 precede it, so its
    // reload integrates it first and differs; the validator cannot see that.)
    for (first, second, causal) in [
        (string_section(0, "ab"), string_section(1, "bcd"), true),
        (string_section(2, "ab"), string_section(3, "bcd"), true),
        (string_section(2, "cd"), string_section(0, "abcd"), false),
    ] {
        let doc = apply_raw(&[update(&[first, second])]);
        assert_eq!(text_a(&doc), "abcd");
        if causal {
            assert_reloads_as_served(&doc);
        }
    }

    // Identical sections behind a hole (the fuzzer's shape: 1:1 twice, so 1:0 becomes a
    // skip first): the same as one.
    let doc = apply_raw(&[update(&[section(1, b'x'), section(1, b'x')])]);
    let reference = apply_raw(&[update(&[section(1, b'x')])]);
    assert_eq!(state(&doc), state(&reference));
    assert_eq!(text_a(&doc), "x");
}

#[test]
fn the_fuzzers_reproducer_applies_cleanly_and_reloads_as_served() {
    let doc = apply_raw(&frames(&finding("yrs_uaf_replaced_skip.updates")));
    assert_reloads_as_served(&doc);
    // The five copies of 1:1 (deleted content) are integrated once, behind a skip at 1:0.
    let served = state(&doc);
    assert_eq!(served.matches("<1#1>").count(), 1, "{served}");
}

#[test]
fn a_clock_past_2_pow_31_gets_a_skip_before_it() {
    // 1:0 = "x", then 1:(2^31 + 5) = "y", then 2:0 = "z", both without origin. Upstream
    // computed the gap as i32: positive for 2^31 + 5 - 1, so no skip; `push` then found no
    // entry and panicked with "y" already at the start of "a", and the unwind freed it; "z"
    // resolved its conflict from that freed start (ASan: READ in `integrate_item`).
    let updates = frames(&finding("yrs_uaf_clock_2_31_past_end.updates"));
    assert_eq!(updates, clock_2_31_updates((1 << 31) + 5));
    let doc = apply_raw(&updates);
    // The same with a small clock for "y".
    let reference = apply_raw(&clock_2_31_updates(5));
    assert_eq!(text_a(&reference).len(), 3);
    assert_eq!(text_a(&doc), text_a(&reference));
    assert_reloads_as_served(&doc);
}

fn clock_2_31_updates(y_clock: u32) -> Vec<Vec<u8>> {
    vec![
        update(&[section(0, b'x')]),
        update(&[section(y_clock, b'y')]),
        update(&[section_of(2, 0, b'z')]),
    ]
}

/// Sends `updates` through a room's session; returns the close code of the first refused
/// one, the served text of "a", and the text after the room is unloaded and loaded again.
async fn through_a_room(updates: &[Vec<u8>]) -> (Option<u16>, String, String) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (journal, writer) = Journal::start(store.clone(), JournalConfig::default());
    let rooms = Rooms::new(store.clone(), journal.clone(), SyncConfig::default());
    let (mut session, _out) = rooms.join("uaf2", true).await.unwrap();
    let mut refused = None;
    let bad = writes_after_free(|| {
        for bytes in updates {
            if let Err(e) = session.handle(&protocol::encode_sync_update(bytes)) {
                refused = Some(e.close().code);
                break;
            }
        }
    });
    assert_eq!(bad, 0, "yrs wrote into {bad} freed block(s)");
    let served = session.room().with_doc(text_a);
    drop(session);
    rooms.shutdown().await;
    journal.close();
    writer.await.unwrap();

    let (journal, writer) = Journal::start(store.clone(), JournalConfig::default());
    let rooms = Rooms::new(store, journal.clone(), SyncConfig::default());
    let (session, _out) = rooms.join("uaf2", false).await.unwrap();
    let reloaded = session.room().with_doc(text_a);
    drop(session);
    rooms.shutdown().await;
    journal.close();
    writer.await.unwrap();
    (refused, served, reloaded)
}

#[tokio::test]
async fn a_room_refuses_duplicate_sections_and_serves_what_it_reloads() {
    let minimal = frames(&finding("yrs_uaf_replaced_skip_minimal.updates"));
    let (refused, served, reloaded) = through_a_room(&minimal).await;
    assert_eq!(refused, Some(close_code::INVALID_PAYLOAD));
    assert_eq!((served.as_str(), reloaded.as_str()), ("", ""));

    // The fuzzer's input: its undecodable updates are refused first, so send only the ones
    // the validator passes; the duplicate sections are among the refused.
    let fuzz = frames(&finding("yrs_uaf_replaced_skip.updates"));
    let dup = fuzz
        .iter()
        .find(|u| matches!(Update::decode_v1(u), Ok(d) if format!("{d:?}").matches("<1#1>").count() == 5))
        .expect("the update with five copies of 1:1");
    let err = validate_update_v1(dup).unwrap_err();
    assert!(
        err.to_string()
            .contains("second struct section for client 1"),
        "{err}"
    );
    let passing: Vec<_> = fuzz
        .iter()
        .filter(|u| validate_update_v1(u).is_ok())
        .cloned()
        .collect();
    let (refused, served, reloaded) = through_a_room(&passing).await;
    assert_eq!(refused, None);
    assert_eq!(served, reloaded);

    // Clocks past 2^31 are well-formed and pass the validator (only the yrs patch protects
    // the room here): served as with a small clock, and reloaded the same.
    let big = frames(&finding("yrs_uaf_clock_2_31_past_end.updates"));
    let (refused, served, reloaded) = through_a_room(&big).await;
    assert_eq!(refused, None);
    assert_eq!(served, text_a(&apply_raw(&clock_2_31_updates(5))));
    assert_eq!(reloaded, served);
}
