//! RESONANT PATCH (array_iter_linear): times one pass of `ArrayRef::iter` over a root holding
//! one string item (text written where a list is read, as any peer can do) of 50k, 200k and
//! 1M characters. Before the patch the pass was quadratic in the item's length (and never
//! ended for characters longer than one offset unit); run with
//! `cargo run --release --example array_iter_text [-- LENGTHS...]`.

use std::time::Instant;
use yrs::{Array, Doc, Text, Transact};

fn main() {
    let lengths: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("lengths are numbers of characters"))
        .collect();
    let lengths = if lengths.is_empty() {
        vec![50_000, 200_000, 1_000_000]
    } else {
        lengths
    };
    for n in lengths {
        let doc = Doc::new();
        // ASCII: the only text the unpatched iterator finishes on with the default
        // `OffsetKind::Bytes`.
        doc.get_or_insert_text("list")
            .insert(&mut doc.transact_mut(), 0, &"x".repeat(n));
        let array = doc.get_or_insert_array("list");
        let txn = doc.transact();
        let start = Instant::now();
        let count = array.iter(&txn).count();
        let elapsed = start.elapsed();
        assert_eq!(count, n);
        println!("{n} characters: {:.3} s", elapsed.as_secs_f64());
    }
}
