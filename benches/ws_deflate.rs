//! What `permessage-deflate` (RFC 7692) would cost the server per outgoing WebSocket message,
//! and what it would save, measured on messages shaped like an editing session's: a block
//! dragged (one `position` map set per update, as the demo editor sends), cursor presence
//! (awareness), and a first sync's step 2 of a 1400-block workflow (220 KB). Compression is
//! flate2 raw deflate at level 6 with a sync flush per message, as the extension frames it, in
//! its two modes: with context takeover (one compressor per connection, so a fan-out
//! compresses each message once per receiver) and without (a fresh window per message, so one
//! compressed frame could be shared by every receiver, as the uncompressed one is today).
//! Run with `cargo bench --bench ws_deflate`; a measurement, not an enabled feature.

use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use yrs::{Doc, Map, MapPrelim, ReadTxn, Transact};

/// A y-websocket sync message (type 0, sub-type 2 = update) around `update`.
fn sync_update(update: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8, 2];
    let mut n = update.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            m.push(b);
            break;
        }
        m.push(b | 0x80);
    }
    m.extend_from_slice(update);
    m
}

/// Deflates `msg` into `out` with a sync flush, as one permessage-deflate message.
fn deflate(c: &mut Compress, msg: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    out.reserve(msg.len() + 64);
    let before = c.total_out();
    c.compress_vec(msg, out, FlushCompress::Sync).unwrap();
    while out.len() == out.capacity() {
        out.reserve(out.len());
        c.compress_vec(&[], out, FlushCompress::Sync).unwrap();
    }
    (c.total_out() - before) as usize
}

fn measure(name: &str, msgs: &[Vec<u8>], takeover: bool) {
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = Vec::new();
    let raw: usize = msgs.iter().map(Vec::len).sum();
    let mut packed = 0;
    let start = Instant::now();
    for m in msgs {
        if !takeover {
            c.reset();
        }
        packed += deflate(&mut c, m, &mut out);
    }
    let ns = start.elapsed().as_nanos() as f64 / msgs.len() as f64;
    println!(
        "{name:<34} {:>7} msgs  raw {:>7.1} B/msg  deflated {:>7.1} B/msg ({:>3.0}%)  {:>9.0} ns/msg",
        msgs.len(),
        raw as f64 / msgs.len() as f64,
        packed as f64 / msgs.len() as f64,
        100.0 * packed as f64 / raw as f64,
        ns
    );
}

fn main() {
    // A workflow of 1400 blocks, then a drag of one of them: 20 000 position updates.
    let doc = Doc::with_client_id(7);
    let blocks = doc.get_or_insert_array("blocks");
    {
        let mut txn = doc.transact_mut();
        for i in 0..1400 {
            let id = format!("block-{i:05}");
            let b = yrs::Array::push_back(
                &blocks,
                &mut txn,
                MapPrelim::from_iter([
                    ("id", yrs::In::Any(id.as_str().into())),
                    ("type", yrs::In::Any("ai".into())),
                ]),
            );
            b.insert(
                &mut txn,
                "position",
                MapPrelim::from_iter([("x", i as f64), ("y", 40.0)]),
            );
            b.insert(
                &mut txn,
                "data",
                MapPrelim::from_iter([(
                    "label",
                    yrs::In::Any(
                        format!("Summarise the input, step {i}, in three sentences").into(),
                    ),
                )]),
            );
        }
    }
    let step2 = sync_update(
        &doc.transact()
            .encode_state_as_update_v1(&Default::default()),
    );
    let block = match yrs::Array::get(&blocks, &doc.transact(), 700) {
        Some(yrs::Out::YMap(m)) => m,
        _ => unreachable!(),
    };
    let mut drags = Vec::new();
    for i in 0..20_000 {
        let sv = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            block.insert(
                &mut txn,
                "position",
                MapPrelim::from_iter([
                    ("x", 100.0 + i as f64 * 0.5),
                    ("y", 200.0 + (i % 37) as f64),
                ]),
            );
        }
        drags.push(sync_update(&doc.transact().encode_state_as_update_v1(&sv)));
    }
    // Awareness (type 1): one client's state, a cursor moving.
    let awareness: Vec<Vec<u8>> = (0..20_000)
        .map(|i| {
            let state = format!(
                r##"{{"user":{{"name":"Ada Lovelace","color":"#f59e0b","id":"u-{}"}},"cursor":{{"x":{:.1},"y":{:.1}}},"selection":["block-00700"]}}"##,
                42,
                300.0 + i as f64 * 0.7,
                180.0 + (i % 50) as f64
            );
            let mut m = vec![1u8];
            let body = [&[1u8, 0xd2, 0x09][..], &[(i % 120) as u8 + 1], &[state.len() as u8], state.as_bytes()].concat();
            m.push(body.len() as u8);
            m.extend_from_slice(&body);
            m
        })
        .collect();
    println!("step 2 of the workflow: {} bytes", step2.len());
    for takeover in [true, false] {
        let mode = if takeover {
            "context takeover"
        } else {
            "no context takeover"
        };
        measure(&format!("drag updates, {mode}"), &drags, takeover);
        measure(&format!("awareness, {mode}"), &awareness, takeover);
        measure(
            &format!("first sync step 2, {mode}"),
            std::slice::from_ref(&step2),
            takeover,
        );
    }
}
