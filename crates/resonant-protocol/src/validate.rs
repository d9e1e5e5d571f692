//! Structural validation of client-supplied lib0 v1 payloads, run before any yrs decoder.
//!
//! yrs's decoders reserve memory from counts they read off the wire: `StateVector::decode`
//! and `AwarenessUpdate::decode` reserve a hash map of the declared entry count,
//! `Update::decode` reserves its client map and each client's block deque, and the content
//! decoders (`ItemContent::decode` for JSON and Any content, `Any::decode` for arrays and
//! maps) reserve vectors and maps of the declared length. Those reservations are fallible
//! (`try_reserve`), but a reservation the machine *can* satisfy still happens: eight bytes
//! claiming 2^28 state-vector entries make a hash map of several gigabytes, and its control
//! bytes are written at once. `Any::decode` also recurses once per nesting level, so a frame
//! of nested one-element arrays overflows the stack, which aborts the process.
//!
//! The walkers here follow the same byte layout as yrs's `DecoderV1`, reading every varint
//! exactly as yrs reads it, and check each count against what the bytes that follow could
//! hold before moving on. They then walk every element the count announced, so a payload
//! that passes has every reservation yrs will make backed by elements actually present in
//! the input. Nothing here allocates in proportion to the input, except the set of client
//! ids of an update's struct sections (each section takes at least 3 bytes). The checks are stricter
//! than yrs where yrs would panic in a debug build or silently wrap or truncate (clock
//! overflow, client ids over 53 bits, over-long signed varints), none of which an encoder
//! produces, and they refuse legacy JSON content, which yrs cannot round-trip.

use crate::DecodeError;

/// Deepest nesting of Any arrays and maps accepted; serde_json's default recursion limit,
/// which yrs already applies to the JSON-encoded content kinds (embeds, formats).
pub const MAX_ANY_DEPTH: usize = 128;

/// The struct format's bits and kinds, as in yrs's `block.rs` and `types/mod.rs` (the
/// server's nesting check reads the same format).
#[allow(missing_docs)]
pub mod format {
    // Struct info byte (low four bits: content kind), as in yrs's `block.rs`.
    pub const BLOCK_GC: u8 = 0;
    pub const BLOCK_SKIP: u8 = 10;
    pub const HAS_ORIGIN: u8 = 0b1000_0000;
    pub const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
    pub const HAS_PARENT_SUB: u8 = 0b0010_0000;

    pub const CONTENT_DELETED: u8 = 1;
    pub const CONTENT_JSON: u8 = 2;
    pub const CONTENT_BINARY: u8 = 3;
    pub const CONTENT_STRING: u8 = 4;
    pub const CONTENT_EMBED: u8 = 5;
    pub const CONTENT_FORMAT: u8 = 6;
    pub const CONTENT_TYPE: u8 = 7;
    pub const CONTENT_ANY: u8 = 8;
    pub const CONTENT_DOC: u8 = 9;

    // Type refs of `ContentType` (yrs `types/mod.rs`).
    pub const TYPE_XML_ELEMENT: u8 = 3;
}

use format::*;

/// Checks a v1 state vector (the body of sync step 1) before `StateVector::decode_v1`.
pub fn validate_state_vector_v1(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(bytes, "sync step 1");
    let count = r.var_u32()? as u64;
    // Each entry is a client varint and a clock varint: at least two bytes.
    let count = r.count(count, 2, "entries")?;
    for _ in 0..count {
        r.client()?;
        r.var_u32()?;
    }
    Ok(())
}

/// Checks a v1 awareness update before `AwarenessUpdate::decode_v1`.
pub fn validate_awareness_v1(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(bytes, "awareness update");
    let count = r.var_u64()?;
    // Client varint, clock varint and the JSON string's length prefix: at least three bytes.
    let count = r.count(count, 3, "clients")?;
    for _ in 0..count {
        r.client()?;
        r.var_u32()?;
        r.string()?;
    }
    Ok(())
}

/// Checks a v1 document update (sync step 2 or update body) before `Update::decode_v1`:
/// every struct of every client, their contents, and the delete set.
pub fn validate_update_v1(bytes: &[u8]) -> Result<(), DecodeError> {
    update_v1(bytes, true)
}

/// [`validate_update_v1`] without its rules on how structs refer to each other (one struct
/// section per client, no references to the own client's later clocks): only what keeps yrs's
/// decoder within bounds (and subdocuments out, which yrs leaks). The `yrs_updates` fuzz
/// target uses it to test yrs's own handling of those shapes (vendor/yrs/PATCHES.md §2).
pub fn validate_update_v1_for_decoding(bytes: &[u8]) -> Result<(), DecodeError> {
    update_v1(bytes, false)
}

fn update_v1(bytes: &[u8], reference_rules: bool) -> Result<(), DecodeError> {
    let mut r = Reader::new(bytes, "update");
    r.reference_rules = reference_rules;
    let clients = r.var_u32()? as u64;
    // A client section is a struct count, a client id and a start clock.
    let clients = r.count(clients, 3, "clients")?;
    // yrs appends a second section for the same client to the first, so one update can carry
    // the same clocks twice; integrating the second copy over the first freed live items in
    // yrs 0.28 (vendor/yrs/PATCHES.md §2). Yjs and yrs encoders write each client once.
    // The first clients are remembered on the stack: validating a real update allocates
    // nothing (tests/decode_alloc.rs); a set takes over for updates with many clients.
    let mut few = [0u64; 16];
    let mut n_few = 0;
    let mut many: Option<std::collections::HashSet<u64>> = None;
    for _ in 0..clients {
        let structs = r.var_u32()? as u64;
        let at = r.pos;
        let client = r.client()?;
        let repeated = if few[..n_few].contains(&client) {
            true
        } else if n_few < few.len() {
            few[n_few] = client;
            n_few += 1;
            false
        } else {
            !many.get_or_insert_with(Default::default).insert(client)
        };
        if repeated && r.reference_rules {
            return Err(r.invalid(format!(
                "second struct section for client {client} at offset {at}"
            )));
        }
        let mut clock = r.var_u32()?;
        // Every struct starts with its info byte and holds at least one more.
        let structs = r.count(structs, 2, "structs")?;
        for _ in 0..structs {
            let len = r.block(client, clock)?;
            // yrs adds each struct's length to a u32 clock (panicking in debug builds, wrapping
            // in release); a real client never gets near 2^32 operations.
            clock = clock
                .checked_add(len)
                .ok_or_else(|| r.invalid(format!("clock overflows u32 at offset {}", r.pos)))?;
        }
    }
    r.delete_set()
}

/// A cursor over the payload; every read mirrors the `DecoderV1` call yrs makes there.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
    /// Whether structs' references are checked too (see `validate_update_v1_for_decoding`).
    reference_rules: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            what,
            reference_rules: true,
        }
    }

    fn invalid(&self, reason: String) -> DecodeError {
        DecodeError::Invalid {
            what: self.what,
            reason,
        }
    }

    fn truncated(&self, needed: usize) -> DecodeError {
        self.invalid(format!(
            "ends early: {needed} more bytes needed at offset {} of {}",
            self.pos,
            self.buf.len()
        ))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Rejects a count whose elements, at `min_bytes` each, cannot fit in what is left.
    fn count(&self, count: u64, min_bytes: usize, unit: &str) -> Result<usize, DecodeError> {
        let left = self.remaining();
        if count > (left / min_bytes) as u64 {
            return Err(self.invalid(format!("claims {count} {unit} in {left} bytes")));
        }
        Ok(count as usize)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.truncated(1))?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// yrs `read_var_u64`: up to eleven bytes, shifts wrapping modulo 64.
    fn var_u64(&mut self) -> Result<u64, DecodeError> {
        let mut num = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            num |= u64::wrapping_shl((b & 0x7f) as u64, shift);
            shift += 7;
            if b < 0x80 {
                return Ok(num);
            }
            if shift > 70 {
                return Err(self.invalid(format!("bad varint at offset {}", self.pos)));
            }
        }
    }

    /// yrs `read_var_u32`: the same loop, shifts wrapping modulo 32.
    fn var_u32(&mut self) -> Result<u32, DecodeError> {
        let mut num = 0u32;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            num |= u32::wrapping_shl((b & 0x7f) as u32, shift);
            shift += 7;
            if b < 0x80 {
                return Ok(num);
            }
            if shift > 70 {
                return Err(self.invalid(format!("bad varint at offset {}", self.pos)));
            }
        }
    }

    /// yrs `read_var_i64` (Any integers). Its eleventh byte would be shifted by 69 bits,
    /// which panics in a debug build; lib0 writes at most 53-bit integers, so reject it.
    fn var_i64(&mut self) -> Result<(), DecodeError> {
        let mut b = self.u8()?;
        let mut bytes = 1;
        while b >= 0x80 {
            if bytes == 10 {
                return Err(self.invalid(format!("signed varint too long at offset {}", self.pos)));
            }
            b = self.u8()?;
            bytes += 1;
        }
        Ok(())
    }

    /// A client id: yrs's `ClientID::new` keeps 53 bits (JavaScript's safe integers), asserting
    /// the rest are zero in debug builds and silently dropping them in release, where a larger
    /// id would alias a smaller one. Yjs ids are 32-bit and yrs's 53-bit, so refuse the rest.
    fn client(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let id = self.var_u64()?;
        if id >> 53 != 0 {
            return Err(self.invalid(format!("client id {id} at offset {at} exceeds 53 bits")));
        }
        Ok(id)
    }

    /// `read_buf`: a u32 length and that many bytes.
    fn buf(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.var_u32()? as usize;
        self.skip(len)
    }

    /// `read_string`: a buffer that must be UTF-8 (yrs rejects it otherwise).
    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let bytes = self.buf()?;
        std::str::from_utf8(bytes)
            .map_err(|_| self.invalid(format!("string at offset {at} is not UTF-8")))
    }

    /// `read_left_id` / `read_right_id`: client and clock.
    fn id(&mut self) -> Result<(u64, u32), DecodeError> {
        let client = self.client()?;
        let clock = self.var_u32()?;
        Ok((client, clock))
    }

    /// One struct as `Update::decode_block` reads it, for the struct `client`:`clock`;
    /// returns its clock length (0 for an item yrs drops because its content is empty).
    fn block(&mut self, client: u64, clock: u32) -> Result<u32, DecodeError> {
        let at = self.pos;
        let info = self.u8()?;
        match info {
            BLOCK_SKIP | BLOCK_GC => {
                let len = self.var_u32()?;
                if len == 0 {
                    // yrs fails here too ("block cannot have 0 length").
                    return Err(self.invalid(format!("empty struct at offset {at}")));
                }
                return Ok(len);
            }
            _ => {}
        }
        let mut deps = [None; 3];
        if info & HAS_ORIGIN != 0 {
            deps[0] = Some(self.id()?);
        }
        if info & HAS_RIGHT_ORIGIN != 0 {
            deps[1] = Some(self.id()?);
        }
        // Without origins the struct names its parent, and maybe a map key.
        if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
            if self.var_u32()? == 1 {
                self.string()?; // root type name
            } else {
                deps[2] = Some(self.id()?); // parent item
            }
            if info & HAS_PARENT_SUB != 0 {
                self.string()?;
            }
        }
        // A struct can only refer to structs that existed when it was made, so never to its
        // own client's clock at or after its own. yrs integrates a client's structs in clock
        // order on load, so such a struct waits for ever there, while a live document that
        // saw the later struct first integrates it: the reloaded document differs from the
        // one served (fuzz/findings/reload_diverges_*).
        if let Some((_, dep)) = deps
            .iter()
            .flatten()
            .find(|d| self.reference_rules && d.0 == client && d.1 >= clock)
        {
            return Err(self.invalid(format!(
                "struct {client}:{clock} at offset {at} refers to its own client's later clock \
                 {dep}"
            )));
        }
        self.content(info & 0b1111, at)
    }

    /// `ItemContent::decode`; returns the content's length in clock units.
    fn content(&mut self, kind: u8, at: usize) -> Result<u32, DecodeError> {
        match kind {
            CONTENT_DELETED => self.var_u32(),
            CONTENT_JSON => {
                // Legacy content: Yjs has written Any content instead since v13. yrs reads
                // count + 1 strings where its own encoder (and Yjs) writes count, so it misreads
                // Yjs's encoding, and what it accepts it re-encodes in a form it cannot read
                // back: a stored document holding it no longer loads. Refuse it outright.
                Err(self.invalid(format!(
                    "uses legacy JSON content (struct at offset {at}), which yrs cannot round-trip"
                )))
            }
            CONTENT_BINARY => self.buf().map(|_| 1),
            CONTENT_STRING => {
                let s = self.string()?;
                // The clock length is the UTF-16 length: one unit per character, two for
                // characters outside the BMP (four-byte UTF-8 sequences).
                let units = s
                    .bytes()
                    .map(|b| ((b & 0xc0) != 0x80) as u32 + (b >= 0xf0) as u32)
                    .sum();
                Ok(units)
            }
            CONTENT_EMBED => self.string().map(|_| 1),
            CONTENT_FORMAT => {
                self.string()?; // key
                self.string()?; // JSON value
                Ok(1)
            }
            CONTENT_TYPE => {
                match self.u8()? {
                    0 | 1 | 2 | 4 | 5 | 6 | 9 | 15 => {}
                    TYPE_XML_ELEMENT => {
                        self.string()?; // tag name
                    }
                    // 7 is a weak link, which yrs only decodes with its "weak" feature (off
                    // here); anything else it rejects.
                    other => {
                        return Err(self.invalid(format!("unknown type ref {other} at offset {at}")))
                    }
                }
                Ok(1)
            }
            CONTENT_ANY => {
                let count = self.var_u32()? as u64;
                let count = self.count(count, 1, "Any values")?;
                for _ in 0..count {
                    self.any(1)?;
                }
                Ok(count as u32)
            }
            CONTENT_DOC => {
                // Workflow documents have no use for subdocuments, and yrs never frees a
                // document holding one (fuzz/findings/subdoc_leak.rs): refuse them.
                Err(self.invalid(format!(
                    "holds a subdocument (struct at offset {at}); subdocuments are not supported"
                )))
            }
            other => Err(self.invalid(format!("unknown content kind {other} at offset {at}"))),
        }
    }

    /// `Any::decode`, with its recursion bounded.
    fn any(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_ANY_DEPTH {
            return Err(self.invalid(format!(
                "nests Any values deeper than {MAX_ANY_DEPTH} levels at offset {}",
                self.pos
            )));
        }
        let at = self.pos;
        match self.u8()? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => {}
            // integer
            125 => self.var_i64()?,
            // float32
            124 => {
                self.skip(4)?;
            }
            // float64, bigint
            123 | 122 => {
                self.skip(8)?;
            }
            // string
            119 => {
                self.string()?;
            }
            // binary
            116 => {
                self.buf()?;
            }
            118 => {
                let count = self.var_u64()?;
                // A key (at least its length byte) and a value (at least its tag).
                let count = self.count(count, 2, "Any map entries")?;
                for _ in 0..count {
                    self.string()?;
                    self.any(depth + 1)?;
                }
            }
            117 => {
                let count = self.var_u64()?;
                let count = self.count(count, 1, "Any array elements")?;
                for _ in 0..count {
                    self.any(depth + 1)?;
                }
            }
            other => {
                return Err(self.invalid(format!("unknown Any tag {other} at offset {at}")));
            }
        }
        Ok(())
    }

    /// `IdSet::decode`: per client, a list of (clock, length) ranges.
    fn delete_set(&mut self) -> Result<(), DecodeError> {
        let clients = self.var_u32()? as u64;
        // A client id and a range count.
        let clients = self.count(clients, 2, "delete set clients")?;
        for _ in 0..clients {
            self.client()?;
            let ranges = self.var_u32()? as u64;
            let ranges = self.count(ranges, 2, "delete set ranges")?;
            for _ in 0..ranges {
                let clock = self.var_u32()?;
                let len = self.var_u32()?;
                // yrs computes `clock + len` in u32 (debug panic, release wrap).
                if clock.checked_add(len).is_none() {
                    return Err(self.invalid(format!(
                        "delete range {clock}+{len} overflows u32 at offset {}",
                        self.pos
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use yrs::sync::Awareness;
    use yrs::types::text::YChange;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, Array, ArrayPrelim, ClientID, Doc, GetString, Map, MapPrelim, ReadTxn, StateVector,
        Text, TextPrelim, Transact, Update, Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    use super::*;
    use crate::{self as protocol, ClientMessage as Incoming};

    /// lib0 varuint (yrs's own encoder).
    fn var(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        yrs::encoding::write::Write::write_var(&mut out, n);
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn reason(err: DecodeError) -> String {
        match err {
            DecodeError::Invalid { .. } => err.to_string(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    /// The validator accepts the update and yrs decodes it.
    fn accepted(update: &[u8]) {
        if let Err(e) = validate_update_v1(update) {
            panic!("valid update of {} bytes rejected: {e}", update.len());
        }
        Update::decode_v1(update).expect("yrs decodes what the validator accepted");
    }

    /// Collects every update a document emits.
    fn recorder(doc: &Doc) -> Arc<Mutex<Vec<Vec<u8>>>> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        doc.observe_update_v1("recorder", move |_, e| {
            sink.lock().unwrap().push(e.update.clone())
        })
        .unwrap();
        log
    }

    /// A document using every kind of content a client produces.
    fn rich_doc() -> (Doc, Vec<Vec<u8>>) {
        let doc = Doc::with_client_id(7);
        let log = recorder(&doc);
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        let array = doc.get_or_insert_array("array");
        let xml = doc.get_or_insert_xml_fragment("xml");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello wörld 🎉 and more");
            let bold: yrs::types::Attrs = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
            text.format(&mut txn, 0, 5, bold.clone());
            text.insert_with_attributes(&mut txn, 3, "ins", bold);
            text.insert_embed(
                &mut txn,
                2,
                Any::from(HashMap::from([(
                    "image".to_string(),
                    Any::from("https://example.com/a.png"),
                )])),
            );
            text.remove_range(&mut txn, 6, 4);
        }
        {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, "null", Any::Null);
            map.insert(&mut txn, "undefined", Any::Undefined);
            map.insert(&mut txn, "bool", false);
            map.insert(&mut txn, "int", -123_456_i64);
            map.insert(&mut txn, "big", i64::MAX);
            map.insert(&mut txn, "float32", 0.5_f64);
            map.insert(&mut txn, "float64", 0.1_f64);
            map.insert(&mut txn, "string", "värde");
            map.insert(
                &mut txn,
                "binary",
                Any::Buffer(Arc::from(&b"\x00\x01\xff"[..])),
            );
            let nested = Any::from(HashMap::from([
                (
                    "list".to_string(),
                    Any::from(vec![Any::from(1), Any::from("two")]),
                ),
                (
                    "deep".to_string(),
                    Any::from(HashMap::from([("x".to_string(), Any::Null)])),
                ),
            ]));
            map.insert(&mut txn, "json", nested);
            let inner = map.insert(&mut txn, "inner", MapPrelim::default());
            inner.insert(&mut txn, "k", "v");
            let list = inner.insert(&mut txn, "list", ArrayPrelim::default());
            list.insert_range(&mut txn, 0, [1, 2, 3]);
            list.insert(&mut txn, 1, TextPrelim::new("nested text"));
            map.insert(&mut txn, "overwritten", 1);
            map.insert(&mut txn, "overwritten", 2);
            map.remove(&mut txn, "bool");
        }
        {
            let mut txn = doc.transact_mut();
            array.insert_range(&mut txn, 0, (0..100).map(|i| i * 3));
            array.insert(&mut txn, 50, MapPrelim::from([("a", 1)]));
            array.remove_range(&mut txn, 10, 20);
            array.push_back(&mut txn, "end");
        }
        {
            let mut txn = doc.transact_mut();
            let p = xml.insert(&mut txn, 0, XmlElementPrelim::empty("p"));
            p.insert_attribute(&mut txn, "class", "intro");
            p.insert(&mut txn, 0, XmlTextPrelim::new("para"));
        }
        let updates = log.lock().unwrap().clone();
        (doc, updates)
    }

    #[test]
    fn accepts_every_update_a_document_emits() {
        let (doc, updates) = rich_doc();
        assert!(updates.len() >= 4);
        for u in &updates {
            accepted(u);
        }
        let txn = doc.transact();
        accepted(&txn.encode_state_as_update_v1(&StateVector::default()));
        accepted(&txn.encode_diff_v1(&StateVector::from_iter([(ClientID::new(7), 3)])));
        drop(txn);
        accepted(&Update::new().encode_v1());
        // Merging non-adjacent updates leaves a gap, encoded as a skip struct.
        let merged = yrs::merge_updates_v1([updates[0].as_slice(), updates[2].as_slice()]).unwrap();
        accepted(&merged);
        // And the result is the same document.
        let copy = Doc::new();
        for u in &updates {
            copy.transact_mut()
                .apply_update(Update::decode_v1(u).unwrap())
                .unwrap();
        }
        let t = copy.get_or_insert_text("text");
        let orig = doc.get_or_insert_text("text");
        assert_eq!(
            t.get_string(&copy.transact()),
            orig.get_string(&doc.transact())
        );
        let _ = YChange::identity; // formatting is in there (see the attributes above)
    }

    #[test]
    fn accepts_large_documents() {
        let doc = Doc::with_client_id(1);
        let log = recorder(&doc);
        let text = doc.get_or_insert_text("t");
        let array = doc.get_or_insert_array("a");
        for i in 0..2000u32 {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, (i * 7919) % (len + 1), "lorem ipsum dolor ");
            if i % 3 == 0 && len > 10 {
                text.remove_range(&mut txn, (i * 31) % (len - 5), 5);
            }
        }
        array.insert_range(&mut doc.transact_mut(), 0, (0..50_000).map(|i| i as i64));
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert!(state.len() > 100_000, "{}", state.len());
        accepted(&state);
        for u in log.lock().unwrap().iter() {
            validate_update_v1(u).unwrap();
        }
        let sv = doc.transact().state_vector().encode_v1();
        validate_state_vector_v1(&sv).unwrap();
    }

    #[test]
    fn accepts_client_state_vectors_and_awareness() {
        let (doc, _) = rich_doc();
        let other = Doc::with_client_id(u32::MAX as u64);
        other
            .transact_mut()
            .apply_update(
                Update::decode_v1(
                    &doc.transact()
                        .encode_state_as_update_v1(&StateVector::default()),
                )
                .unwrap(),
            )
            .unwrap();
        other
            .get_or_insert_text("text")
            .insert(&mut other.transact_mut(), 0, "x");
        let sv = other.transact().state_vector();
        let msg = protocol::encode_sync_step1(&sv);
        assert!(matches!(Incoming::decode(&msg).unwrap(), Incoming::SyncStep1(got) if got == sv));
        let msg = protocol::encode_sync_step1(&StateVector::default());
        assert!(matches!(
            Incoming::decode(&msg).unwrap(),
            Incoming::SyncStep1(_)
        ));

        let mut awareness = Awareness::new(doc);
        awareness
            .set_local_state(
                serde_json::json!({"user": {"name": "Ann", "color": "#f00"}, "cursor": null}),
            )
            .unwrap();
        let update = awareness.update().unwrap();
        let msg = protocol::encode_awareness(&update);
        assert!(matches!(Incoming::decode(&msg).unwrap(), Incoming::Awareness(u) if u == update));
        awareness.clean_local_state();
        let removal = awareness.update().unwrap();
        Incoming::decode(&protocol::encode_awareness(&removal)).unwrap();
    }

    #[test]
    fn rejects_step1_claiming_2_pow_28_entries() {
        let frame = [0, 0, 5, 0x80, 0x80, 0x80, 0x80, 0x01];
        let err = reason(Incoming::decode(&frame).unwrap_err());
        assert_eq!(err, "sync step 1 claims 268435456 entries in 0 bytes");
        // Still rejected with some entries present.
        let frame = cat(&[&[0, 0, 9], &var(1 << 20), &[1, 1, 2, 2, 3, 3]]);
        reason(Incoming::decode(&frame).unwrap_err());
    }

    #[test]
    fn rejects_awareness_claiming_2_pow_30_clients() {
        let frame = [1, 5, 0x80, 0x80, 0x80, 0x80, 0x04];
        let err = reason(Incoming::decode(&frame).unwrap_err());
        assert_eq!(err, "awareness update claims 1073741824 clients in 0 bytes");
        let frame = cat(&[&[1, 11], &var(u64::MAX), &[1, 1, 0]]);
        reason(Incoming::decode(&frame).unwrap_err());
        // One real entry whose string runs past the end.
        let frame = [1, 4, 1, 1, 1, 9];
        reason(Incoming::decode(&frame).unwrap_err());
    }

    /// `[clients=1][structs][client=1][clock=0]` followed by `body`, then an empty delete set.
    fn one_client(structs: u64, body: &[u8]) -> Vec<u8> {
        cat(&[&[1], &var(structs), &[1, 0], body, &[0]])
    }

    /// An Any-content struct at the root type "a" holding the given Any encodings.
    fn any_struct(count: u64, values: &[u8]) -> Vec<u8> {
        cat(&[&[8, 1, 1, b'a'], &var(count), values])
    }

    #[test]
    fn rejects_a_second_section_for_the_same_client() {
        // Client 1 twice, each with the string "x" at clock 0 of root "a" (the minimal
        // reproducer of the second yrs use-after-free); clients 1 and 2 once each pass.
        let section = |client: u8| [1, client, 0, 4, 1, 1, b'a', 1, b'x'];
        let twice = cat(&[&[2], &section(1), &section(1), &[0]]);
        let err = reason(validate_update_v1(&twice).unwrap_err());
        assert_eq!(
            err,
            "update second struct section for client 1 at offset 11"
        );
        accepted(&cat(&[&[2], &section(1), &section(2), &[0]]));
        validate_update_v1_for_decoding(&twice).expect("decodes within bounds");
    }

    #[test]
    fn rejects_huge_client_and_struct_counts() {
        let err = reason(validate_update_v1(&cat(&[&var(u32::MAX as u64), &[0]])).unwrap_err());
        assert_eq!(err, "update claims 4294967295 clients in 1 bytes");
        let err = reason(validate_update_v1(&one_client(1 << 30, &[])).unwrap_err());
        assert!(err.contains("claims 1073741824 structs"), "{err}");
        // A plausible count whose structs are not there.
        let err = reason(validate_update_v1(&one_client(2, &[10, 1, 4])).unwrap_err());
        assert!(err.contains("ends early"), "{err}");
    }

    #[test]
    fn rejects_huge_any_lengths() {
        // Content claiming 2^31 values.
        let u = one_client(1, &any_struct(1 << 31, &[126]));
        let err = reason(validate_update_v1(&u).unwrap_err());
        assert!(err.contains("claims 2147483648 Any values"), "{err}");
        // An array value claiming 2^40 elements.
        let arr = cat(&[&[117], &var(1 << 40), &[126, 126]]);
        let err = reason(validate_update_v1(&one_client(1, &any_struct(1, &arr))).unwrap_err());
        assert!(
            err.contains("claims 1099511627776 Any array elements"),
            "{err}"
        );
        // A map claiming 2^25 entries.
        let map = cat(&[&[118], &var(1 << 25), &[1, b'k', 126]]);
        let err = reason(validate_update_v1(&one_client(1, &any_struct(1, &map))).unwrap_err());
        assert!(err.contains("Any map entries"), "{err}");
        // Nested arrays each claiming almost all that is left: every count is plausible on
        // its own, but the elements are not there.
        let mut nested = Vec::new();
        for i in 0..50u64 {
            nested.extend(cat(&[&[117], &var(200 - 2 * i)]));
        }
        let err = reason(validate_update_v1(&one_client(1, &any_struct(1, &nested))).unwrap_err());
        assert!(
            err.contains("ends early") || err.contains("claims"),
            "{err}"
        );
        // A subdocument's options are an Any too.
        let doc = cat(&[&[9, 1, 1, b'a', 0, 117], &var(1 << 30)]);
        reason(validate_update_v1(&one_client(1, &doc)).unwrap_err());
    }

    #[test]
    fn rejects_subdocuments() {
        let doc = Doc::with_client_id(7);
        let log = recorder(&doc);
        let map = doc.get_or_insert_map("map");
        map.insert(&mut doc.transact_mut(), "subdoc", Doc::new());
        let update = log.lock().unwrap()[0].clone();
        let err = reason(validate_update_v1(&update).unwrap_err());
        assert!(err.contains("subdocuments are not supported"), "{err}");
    }

    #[test]
    fn rejects_forward_self_references() {
        // 1:0 with origin 1:0 (itself), right origin 1:3 (later), parent item 1:1 (later).
        for struct_ in [
            &[0x88, 1, 0, 1, 0x7d, 1][..],
            &[0x48, 1, 3, 1, 0x7d, 1][..],
            &[8, 0, 1, 1, 1, 0x7d, 1][..],
        ] {
            let err = reason(validate_update_v1(&one_client(1, struct_)).unwrap_err());
            assert!(
                err.contains("refers to its own client's later clock"),
                "{err}"
            );
        }
        // Another client's clocks, and this client's earlier ones, are fine.
        let earlier = cat(&[&[1, 1, 1, 5, 0x88, 1, 4, 1, 0x7d, 1], &[0]]);
        validate_update_v1(&earlier).unwrap();
        accepted(&one_client(1, &[0x88, 2, 9, 1, 0x7d, 1]));
    }

    #[test]
    fn rejects_deep_any_nesting() {
        let depth = 100_000;
        let mut values = [117u8, 1].repeat(depth);
        values.push(126);
        let err = reason(validate_update_v1(&one_client(1, &any_struct(1, &values))).unwrap_err());
        assert!(err.contains("deeper than 128"), "{err}");
        // The limit itself is fine, and yrs decodes it.
        let mut values = [117u8, 1].repeat(MAX_ANY_DEPTH - 1);
        values.push(126);
        accepted(&one_client(1, &any_struct(1, &values)));
    }

    #[test]
    fn rejects_legacy_json_content() {
        // yrs accepts this (reading count + 1 = 2 strings) but writes it back as count 2 with
        // two strings, which it then reads as three: the stored document would not load.
        let u = one_client(1, &[2, 1, 1, b'a', 1, 1, b'1', 1, b'2']);
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&u).unwrap())
            .unwrap();
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert!(
            Update::decode_v1(&state).is_err(),
            "yrs now re-reads its JSON content: the validator could accept it again"
        );
        let err = reason(validate_update_v1(&u).unwrap_err());
        assert!(err.contains("legacy JSON content"), "{err}");
        let u = one_client(1, &cat(&[&[2, 1, 1, b'a'], &var(1 << 31), &[1, b'1']]));
        reason(validate_update_v1(&u).unwrap_err());
    }

    #[test]
    fn rejects_huge_delete_set_counts() {
        let ds = cat(&[&[0], &var(u32::MAX as u64), &[1, 1]]);
        let err = reason(validate_update_v1(&ds).unwrap_err());
        assert_eq!(
            err,
            "update claims 4294967295 delete set clients in 2 bytes"
        );
        let ds = cat(&[&[0, 1, 5], &var(1 << 30), &[1, 1]]);
        let err = reason(validate_update_v1(&ds).unwrap_err());
        assert!(err.contains("claims 1073741824 delete set ranges"), "{err}");
        // A range whose end overflows u32.
        let ds = cat(&[&[0, 1, 5, 1], &var(u32::MAX as u64), &[2]]);
        reason(validate_update_v1(&ds).unwrap_err());
        // A real one passes.
        let ds = [0, 1, 5, 2, 0, 3, 10, 1];
        accepted(&ds);
    }

    #[test]
    fn rejects_clock_overflow_and_bad_structs() {
        // Two skips adding up past u32::MAX.
        let body = cat(&[&[10], &var(u32::MAX as u64), &[10, 1]]);
        reason(validate_update_v1(&one_client(2, &body)).unwrap_err());
        // Zero-length GC struct, unknown content kind, weak link type, bad Any tag.
        reason(validate_update_v1(&one_client(1, &[0, 0, 0])).unwrap_err());
        reason(validate_update_v1(&one_client(1, &[11, 1, 1, b'a', 0])).unwrap_err());
        reason(validate_update_v1(&one_client(1, &[7, 1, 1, b'a', 7, 0])).unwrap_err());
        reason(validate_update_v1(&one_client(1, &any_struct(1, &[3]))).unwrap_err());
        // An 11-byte signed varint (yrs would shift by 69 bits).
        let mut int = vec![125];
        int.extend([0xff; 10]);
        int.push(1);
        reason(validate_update_v1(&one_client(1, &any_struct(1, &int))).unwrap_err());
        // Not UTF-8.
        reason(validate_update_v1(&one_client(1, &[4, 1, 1, b'a', 1, 0xff])).unwrap_err());
    }

    #[test]
    fn rejects_client_ids_over_53_bits() {
        let big = var(1 << 53);
        let sv = cat(&[&[1], &big, &[0]]);
        let err = reason(validate_state_vector_v1(&sv).unwrap_err());
        assert!(err.contains("exceeds 53 bits"), "{err}");
        validate_state_vector_v1(&cat(&[&[1], &var((1 << 53) - 1), &[0]])).unwrap();
        reason(validate_awareness_v1(&cat(&[&[1], &big, &[0, 2, b'{', b'}']])).unwrap_err());
        reason(validate_update_v1(&cat(&[&[1, 1], &big, &[0, 10, 1, 0]])).unwrap_err());
        // As an origin, and in the delete set.
        let origin = cat(&[&[0x84], &big, &[0, 1, b'x']]);
        reason(validate_update_v1(&one_client(1, &origin)).unwrap_err());
        reason(validate_update_v1(&cat(&[&[0, 1], &big, &[1, 0, 1]])).unwrap_err());
    }

    #[test]
    fn truncated_updates_never_panic_and_never_pass_with_missing_structs() {
        let (doc, updates) = rich_doc();
        let full = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        for u in updates.iter().chain([&full]) {
            for end in 0..u.len() {
                let cut = &u[..end];
                if validate_update_v1(cut).is_ok() {
                    // Only a cut inside the delete set's trailing bytes can pass; yrs must
                    // still decode it without trouble.
                    let _ = Update::decode_v1(cut);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = Incoming::decode(&bytes);
            if validate_update_v1(&bytes).is_ok() {
                let _ = Update::decode_v1(&bytes);
            }
            let _ = validate_state_vector_v1(&bytes);
            let _ = validate_awareness_v1(&bytes);
        }
    }
}
