//! Reproducer: yrs never frees a document that holds a subdocument. Every time Resonant
//! unloads a room whose document contains one (any client may insert a subdoc), the whole
//! document stays allocated. Run from `fuzz/`: `cargo run --example subdoc_leak`; it loads
//! and drops the same 10 kB document 100 times, with and without a subdocument, and prints
//! the bytes still allocated afterwards (a counting global allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact, Update};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn stored_doc(with_subdoc: bool) -> Vec<u8> {
    let doc = Doc::new();
    let map = doc.get_or_insert_map("m");
    map.insert(&mut doc.transact_mut(), "text", "x".repeat(10_000));
    if with_subdoc {
        map.insert(&mut doc.transact_mut(), "sub", Doc::new());
    }
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    state
}

fn main() {
    for with_subdoc in [false, true] {
        let update = stored_doc(with_subdoc);
        let before = LIVE.load(Ordering::Relaxed);
        for _ in 0..100 {
            // What Room::from_stored does on every load; the room drops it on unload.
            let doc = Doc::new();
            doc.transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
            drop(doc);
        }
        let leaked = LIVE.load(Ordering::Relaxed) - before;
        println!("subdocument: {with_subdoc}: {leaked} bytes still allocated after 100 loads");
    }
}
