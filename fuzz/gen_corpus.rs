//! Writes the seed corpus: real client traffic made with yrs and the server's own encoders.
//! `fuzz/corpus/frame_decode/` gets single frames; `fuzz/corpus/session/` gets whole
//! connections in the session target's format (each frame behind a little-endian u16
//! length). Run from `fuzz/`: `cargo run --example gen_corpus` (files with Any maps differ
//! between runs: yrs encodes map keys in hash order).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use resonant_sync::protocol;
use yrs::sync::Awareness;
use yrs::{
    Any, Array, ArrayPrelim, ClientID, Doc, Map, MapPrelim, Options, ReadTxn, StateVector, Text,
    TextPrelim, Transact, Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim,
};

/// A document whose every transaction's update is recorded, as a client would send it.
struct Client {
    doc: Doc,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Client {
    fn new(id: u64) -> Client {
        let doc = Doc::with_client_id(id);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let sink = sent.clone();
        doc.observe_update_v1("gen", move |_, e| {
            sink.lock().unwrap().push(e.update.clone())
        })
        .unwrap();
        Client { doc, sent }
    }

    /// Update frames for everything done since the last call.
    fn take(&self) -> Vec<Vec<u8>> {
        let updates = std::mem::take(&mut *self.sent.lock().unwrap());
        updates
            .iter()
            .map(|u| protocol::encode_sync_update(u).to_vec())
            .collect()
    }

    fn step1(&self) -> Vec<u8> {
        protocol::encode_sync_step1(&self.doc.transact().state_vector()).to_vec()
    }

    fn step2(&self) -> Vec<u8> {
        let state = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        protocol::encode_sync_step2(&state).to_vec()
    }
}

fn text_edits(c: &Client) -> Vec<Vec<u8>> {
    let text = c.doc.get_or_insert_text("content");
    text.insert(&mut c.doc.transact_mut(), 0, "Hello world");
    text.insert(&mut c.doc.transact_mut(), 5, ", dear");
    text.insert(&mut c.doc.transact_mut(), 0, "🎉 ");
    text.remove_range(&mut c.doc.transact_mut(), 5, 2); // offsets are UTF-8 bytes
    let bold: yrs::types::Attrs = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
    text.format(&mut c.doc.transact_mut(), 0, 4, bold.clone());
    text.insert_with_attributes(&mut c.doc.transact_mut(), 5, "ü", bold);
    let image = HashMap::from([("image".to_string(), Any::from("a.png"))]);
    text.insert_embed(&mut c.doc.transact_mut(), 0, Any::from(image));
    c.take()
}

fn map_edits(c: &Client) -> Vec<Vec<u8>> {
    let map = c.doc.get_or_insert_map("workflow");
    {
        let mut txn = c.doc.transact_mut();
        map.insert(&mut txn, "name", "deploy");
        map.insert(&mut txn, "retries", 3);
        map.insert(&mut txn, "ratio", 0.25);
        map.insert(&mut txn, "big", 1_i64 << 40);
        map.insert(&mut txn, "enabled", true);
        map.insert(&mut txn, "nothing", Any::Null);
        map.insert(
            &mut txn,
            "blob",
            Any::Buffer(Arc::from(&b"\x00\x01\x02"[..])),
        );
    }
    {
        let mut txn = c.doc.transact_mut();
        let steps = map.insert(&mut txn, "steps", ArrayPrelim::default());
        let step = steps.insert(&mut txn, 0, MapPrelim::default());
        step.insert(&mut txn, "run", "cargo test");
        step.insert(
            &mut txn,
            "env",
            Any::from(HashMap::from([(
                "RUST_LOG".to_string(),
                Any::from(vec![Any::from("debug"), Any::from(1)]),
            )])),
        );
        step.insert(&mut txn, "notes", TextPrelim::new("first step"));
    }
    map.insert(&mut c.doc.transact_mut(), "retries", 5);
    map.remove(&mut c.doc.transact_mut(), "nothing");
    let sub = Options::with_guid_and_client_id("sub-doc".into(), ClientID::new(909));
    map.insert(&mut c.doc.transact_mut(), "sub", Doc::with_options(sub));
    c.take()
}

fn array_edits(c: &Client) -> Vec<Vec<u8>> {
    let array = c.doc.get_or_insert_array("items");
    array.insert_range(&mut c.doc.transact_mut(), 0, [1, 2, 3, 4, 5]);
    array.push_back(&mut c.doc.transact_mut(), "six");
    array.remove_range(&mut c.doc.transact_mut(), 1, 2);
    array.insert(&mut c.doc.transact_mut(), 0, MapPrelim::from([("k", "v")]));
    let xml = c.doc.get_or_insert_xml_fragment("xml");
    {
        let mut txn = c.doc.transact_mut();
        let p = xml.insert(&mut txn, 0, XmlElementPrelim::empty("p"));
        p.insert_attribute(&mut txn, "class", "intro");
        p.insert(&mut txn, 0, XmlTextPrelim::new("para"));
    }
    c.take()
}

fn awareness_frames(client: u64) -> Vec<Vec<u8>> {
    let mut a = Awareness::new(Doc::with_client_id(client));
    let mut out = Vec::new();
    a.set_local_state(serde_json::json!({
        "user": {"name": "Ann", "color": "#30bced"},
        "cursor": {"anchor": 3, "head": 7}
    }))
    .unwrap();
    out.push(protocol::encode_awareness(&a.update().unwrap()).to_vec());
    a.set_local_state(serde_json::json!({"user": {"name": "Ann"}, "cursor": null}))
        .unwrap();
    out.push(protocol::encode_awareness(&a.update().unwrap()).to_vec());
    a.clean_local_state();
    out.push(protocol::encode_awareness(&a.update().unwrap()).to_vec());
    out
}

fn session_file(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let len = u16::try_from(f.len()).expect("seed frame under 64 KiB");
        out.extend(len.to_le_bytes());
        out.extend(f);
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let frames_dir = root.join("frame_decode");
    let session_dir = root.join("session");
    for d in [&frames_dir, &session_dir] {
        std::fs::create_dir_all(d).unwrap();
    }

    let stateless = protocol::encode_stateless(r#"{"type":"hello","version":1}"#).to_vec();
    let fixed: Vec<(&str, Vec<u8>)> = vec![
        ("query_awareness", vec![3]),
        ("sync_status_opt_in", vec![8, 1]),
        ("auth", vec![2, 0]),
        ("stateless", stateless.clone()),
        (
            "step1_empty",
            protocol::encode_sync_step1(&StateVector::default()).to_vec(),
        ),
        // Hostile frames the validator must refuse cheaply.
        (
            "step1_2pow28_entries",
            vec![0, 0, 5, 0x80, 0x80, 0x80, 0x80, 0x01],
        ),
        (
            "awareness_2pow30_clients",
            vec![1, 5, 0x80, 0x80, 0x80, 0x80, 0x04],
        ),
        (
            "update_any_array_2pow40",
            protocol::encode_sync_update(&[
                1, 1, 1, 0, 8, 1, 1, b'a', 1, 117, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0,
            ])
            .to_vec(),
        ),
        ("update_nested_any", {
            let body = [
                vec![1, 1, 1, 0, 8, 1, 1, b'a', 1],
                [117, 1].repeat(200),
                vec![126, 0],
            ]
            .concat();
            protocol::encode_sync_update(&body).to_vec()
        }),
    ];
    for (name, frame) in &fixed {
        write(&frames_dir, name, frame);
    }

    let text = Client::new(101);
    let text_updates = text_edits(&text);
    let map = Client::new(202);
    let map_updates = map_edits(&map);
    let array = Client::new(303);
    let array_updates = array_edits(&array);
    for (kind, updates) in [
        ("text", &text_updates),
        ("map", &map_updates),
        ("array", &array_updates),
    ] {
        for (i, u) in updates.iter().enumerate() {
            write(&frames_dir, &format!("update_{kind}_{i}"), u);
        }
    }
    write(&frames_dir, "step1_text", &text.step1());
    write(&frames_dir, "step2_text", &text.step2());
    write(&frames_dir, "step2_map", &map.step2());
    write(&frames_dir, "step2_array", &array.step2());
    for (i, f) in awareness_frames(101).iter().enumerate() {
        write(&frames_dir, &format!("awareness_{i}"), f);
    }

    // Whole connections: opt in, sync, presence, edits, queries.
    let fresh = protocol::encode_sync_step1(&StateVector::default()).to_vec();
    let mut s = vec![vec![8, 1], fresh.clone()];
    s.extend(awareness_frames(101).into_iter().take(1));
    s.extend(text_updates.iter().cloned());
    s.extend([vec![3], stateless.clone()]);
    s.extend(awareness_frames(101).into_iter().skip(1));
    write(&session_dir, "text_editor", &session_file(&s));

    let s = [vec![fresh.clone(), map.step2()], map_updates.clone()].concat();
    write(&session_dir, "map_resync", &session_file(&s));

    let s = [
        vec![fresh.clone()],
        array_updates.clone(),
        vec![array.step1(), vec![3]],
    ]
    .concat();
    write(&session_dir, "array_edits", &session_file(&s));

    // Updates out of order: the later ones wait as pending until the first arrives.
    let mut s = vec![vec![8, 1]];
    s.extend(text_updates.iter().skip(1).cloned());
    s.push(text_updates[0].clone());
    write(&session_dir, "out_of_order", &session_file(&s));

    // Two clients' edits merged through one connection, then a bad frame ends it.
    let s = [
        vec![text.step2()],
        map_updates.clone(),
        awareness_frames(202),
        vec![vec![0, 2, 10, 1]],
    ]
    .concat();
    write(&session_dir, "mixed_then_truncated", &session_file(&s));
    eprintln!("corpus written under {}", root.display());
}
