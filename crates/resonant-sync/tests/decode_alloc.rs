//! Peak heap use while decoding hostile frames, measured with a counting global allocator:
//! a few bytes claiming huge counts must be refused before yrs reserves anything for them.
//! One test function, so no other test allocates concurrently in this binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use resonant_sync::protocol::{ClientMessage, DecodeError};
use resonant_sync::validate::validate_update_v1;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact, Update};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Only the thread running `peak_during` counts: the test harness's own thread allocates
    // now and then (900 bytes in about 1 run of 150), which is not the decoder's doing.
    static MEASURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn measured() -> bool {
    MEASURED.try_with(|m| m.get()).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if measured() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if measured() {
            // Memory allocated before the measurement may be freed inside it.
            let _ = CURRENT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(layout.size()))
            });
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was live when it started.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    CURRENT.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    MEASURED.with(|m| m.set(true));
    let r = f();
    MEASURED.with(|m| m.set(false));
    // What `f` returns is freed later, outside the count: the peak is what matters.
    (r, PEAK.load(Ordering::Relaxed))
}

/// lib0 varuint (yrs's own encoder).
fn var(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    yrs::encoding::write::Write::write_var(&mut out, n);
    out
}

/// What the room does with a client's update: validate, then decode only if that passed.
fn room_decode(update: &[u8]) -> Result<Update, String> {
    validate_update_v1(update).map_err(|e| e.to_string())?;
    Update::decode_v1(update).map_err(|e| e.to_string())
}

const SMALL: usize = 16 << 10;

#[test]
fn hostile_counts_are_refused_without_allocating() {
    // Without the validator: yrs reserves for a 3-byte state vector claiming 2^20 entries.
    let (_, yrs_peak) = peak_during(|| StateVector::decode_v1(&[0x80, 0x80, 0x40]));
    assert!(
        yrs_peak > 8 << 20,
        "yrs alone reserved only {yrs_peak} bytes"
    );

    // Sync step 1 claiming 2^28 entries (8 bytes in all).
    let frame = [0, 0, 5, 0x80, 0x80, 0x80, 0x80, 0x01];
    let (r, peak) = peak_during(|| ClientMessage::decode(&frame).map(|_| ()));
    assert!(matches!(r, Err(DecodeError::Invalid { .. })), "{r:?}");
    assert!(peak < SMALL, "step 1: {peak} bytes");

    // Awareness claiming 2^30 clients.
    let frame = [1, 5, 0x80, 0x80, 0x80, 0x80, 0x04];
    let (r, peak) = peak_during(|| ClientMessage::decode(&frame).map(|_| ()));
    assert!(matches!(r, Err(DecodeError::Invalid { .. })), "{r:?}");
    assert!(peak < SMALL, "awareness: {peak} bytes");

    let hostile_updates: Vec<(&str, Vec<u8>)> = vec![
        ("clients", [var(u32::MAX as u64), vec![0]].concat()),
        ("structs", [vec![1], var(1 << 30), vec![1, 0, 0]].concat()),
        (
            "any content",
            [
                vec![1, 1, 1, 0, 8, 1, 1, b'a'],
                var(u32::MAX as u64),
                vec![0],
            ]
            .concat(),
        ),
        (
            "any array",
            [
                vec![1, 1, 1, 0, 8, 1, 1, b'a', 1, 117],
                var(1 << 40),
                vec![0],
            ]
            .concat(),
        ),
        (
            "any map",
            [
                vec![1, 1, 1, 0, 8, 1, 1, b'a', 1, 118],
                var(1 << 40),
                vec![0],
            ]
            .concat(),
        ),
        (
            "delete set clients",
            [vec![0], var(u32::MAX as u64)].concat(),
        ),
        (
            "delete set ranges",
            [vec![0, 1, 1], var(u32::MAX as u64)].concat(),
        ),
        (
            "nesting",
            [
                vec![1, 1, 1, 0, 8, 1, 1, b'a', 1],
                [117u8, 1].repeat(100_000),
                vec![126, 0],
            ]
            .concat(),
        ),
    ];
    for (what, update) in &hostile_updates {
        let (r, peak) = peak_during(|| room_decode(update).map(|_| ()));
        assert!(r.is_err(), "{what}: accepted");
        assert!(peak < SMALL, "{what}: {peak} bytes");
    }

    // A real document passes, and checking it allocates nothing.
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    for i in 0..500u32 {
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, (i * 17) % (len + 1), "some text ");
    }
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let (r, peak) = peak_during(|| validate_update_v1(&state));
    r.unwrap();
    assert_eq!(peak, 0, "validating a real update allocated");
    room_decode(&state).unwrap();
}
