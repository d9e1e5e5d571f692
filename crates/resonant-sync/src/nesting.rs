//! How deep an update would nest shared types, checked before it is integrated.
//!
//! yrs walks nested types recursively in several places (deleting a type deletes its
//! children, `to_json` descends into them), and so does every reader of a document's content.
//! No single update looks implausible — depth builds up through parent ids, across updates —
//! so a client that nests Y.Maps a few hundred thousand levels deep in small steps can make
//! the next delete or content read overflow any stack, aborting the process. The validator
//! cannot see that (it checks one payload's shape), so the room checks each update against
//! its live document: every shared type the update creates gets the depth of its parent plus
//! one, and an update creating a type deeper than the limit is refused before yrs sees it.
//!
//! The parent of an item is named in the update (a root name or the id of a type item) or,
//! when the item has an origin, inherited from its left (or right) neighbour, which may sit in
//! the same update or in the document. Depths of the document's type items are cached per
//! room: an item's parent never changes, so neither does its depth.
//!
//! A type whose parent has not arrived yet waits in yrs' pending update, and real clients send
//! such updates when they reconnect, so it cannot be refused for that alone. But a chain sent
//! leaf first would then integrate all at once, at any depth. So while a document has pending
//! structs, they are checked together with each update: a chain that hangs from a missing
//! parent is measured from that parent (its height may not pass the limit either), and once
//! the parent resolves, from the parent's real depth.

use std::collections::HashMap;
use yrs::branch::{Branch, BranchPtr};
use yrs::encoding::read::Read;
use yrs::types::text::YChange;
use yrs::types::xml::XmlFragment;
use yrs::updates::decoder::{Decoder, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{
    Assoc, BranchID, ClientID, Doc, GetString, Map, Out, ReadTxn, StickyIndex, Text, Transact, ID,
};

// The struct format's bits and kinds, shared with the validator (yrs's `block.rs`).
use resonant_protocol::validate::format::{
    BLOCK_GC, BLOCK_SKIP, CONTENT_ANY, CONTENT_BINARY, CONTENT_DELETED, CONTENT_DOC, CONTENT_EMBED,
    CONTENT_FORMAT, CONTENT_JSON, CONTENT_STRING, CONTENT_TYPE, HAS_ORIGIN, HAS_PARENT_SUB,
    HAS_RIGHT_ORIGIN, TYPE_XML_ELEMENT,
};
/// Weak links (yrs `types/mod.rs`) are not compiled in, so the validator never names them.
const TYPE_WEAK: u8 = 7;

/// Why an update was refused by the nesting check.
#[derive(Debug, thiserror::Error)]
pub enum NestingError {
    /// A shared type would sit deeper than the room's limit.
    #[error("update nests shared types deeper than the limit of {limit} levels")]
    TooDeep {
        /// The limit in force.
        limit: u32,
    },
    /// The bytes did not decode (the validator normally catches this first).
    #[error("update does not decode: {0}")]
    Decode(String),
}

/// What a struct of the update names as its parent.
#[derive(Clone, Debug)]
enum ParentRef {
    Root,
    Type(ID),
    /// Inherits the parent of the item holding this id (its origin or right origin).
    Neighbour(ID),
    /// GC and skip ranges hold nothing.
    Nothing,
}

/// Where a struct's parent resolved to.
#[derive(Clone, Copy, Debug)]
enum Parent {
    Root,
    Type(ID),
    /// The parent was garbage collected: yrs integrates the item as deleted.
    Gone,
    Missing,
}

/// How deep a type of the update would sit.
#[derive(Clone, Copy, Debug)]
enum Depth {
    /// Its depth in the document (roots are 1).
    Known(u32),
    /// Its parent chain ends at a parent not seen yet: the levels from there.
    Floating(u32),
    /// Its parent was collected: yrs integrates it as deleted.
    Gone,
}

impl Depth {
    fn child(self) -> Depth {
        match self {
            Depth::Known(d) => Depth::Known(d.saturating_add(1)),
            Depth::Floating(h) => Depth::Floating(h.saturating_add(1)),
            Depth::Gone => Depth::Gone,
        }
    }

    fn exceeds(self, limit: u32) -> bool {
        matches!(self, Depth::Known(d) | Depth::Floating(d) if d > limit)
    }

    fn from_parent(p: Parent) -> Depth {
        match p {
            Parent::Missing => Depth::Floating(0),
            _ => Depth::Gone,
        }
    }
}

struct Struct {
    clock: u32,
    len: u32,
    is_type: bool,
    parent: ParentRef,
}

/// The structs of one update, per client in clock order.
struct Parsed {
    clients: HashMap<ClientID, Vec<Struct>>,
    types: usize,
    structs: usize,
}

fn parse(bytes: &[u8]) -> Result<Parsed, NestingError> {
    let err = |e: yrs::encoding::read::Error| NestingError::Decode(e.to_string());
    let mut d = DecoderV1::from(bytes);
    let mut parsed = Parsed {
        clients: HashMap::new(),
        types: 0,
        structs: 0,
    };
    let clients: u32 = d.read_var().map_err(err)?;
    for _ in 0..clients {
        let count: u32 = d.read_var().map_err(err)?;
        let client = d.read_client().map_err(err)?;
        let mut clock: u32 = d.read_var().map_err(err)?;
        // The validator has checked every count against the bytes present.
        let list = parsed.clients.entry(client).or_default();
        for _ in 0..count {
            let info = d.read_info().map_err(err)?;
            let (len, is_type, parent) = match info {
                BLOCK_SKIP => (d.read_var::<u32>().map_err(err)?, false, ParentRef::Nothing),
                BLOCK_GC => (d.read_len().map_err(err)?, false, ParentRef::Nothing),
                info => {
                    let origin = if info & HAS_ORIGIN != 0 {
                        Some(d.read_left_id().map_err(err)?)
                    } else {
                        None
                    };
                    let right = if info & HAS_RIGHT_ORIGIN != 0 {
                        Some(d.read_right_id().map_err(err)?)
                    } else {
                        None
                    };
                    let parent = match (origin, right) {
                        (Some(id), _) | (None, Some(id)) => ParentRef::Neighbour(id),
                        (None, None) => {
                            let parent = if d.read_parent_info().map_err(err)? {
                                d.read_string().map_err(err)?;
                                ParentRef::Root
                            } else {
                                ParentRef::Type(d.read_left_id().map_err(err)?)
                            };
                            if info & HAS_PARENT_SUB != 0 {
                                d.read_string().map_err(err)?;
                            }
                            parent
                        }
                    };
                    let is_type = info & 0b1111 == CONTENT_TYPE;
                    (
                        skip_content(&mut d, info & 0b1111).map_err(err)?,
                        is_type,
                        parent,
                    )
                }
            };
            parsed.types += is_type as usize;
            parsed.structs += 1;
            list.push(Struct {
                clock,
                len,
                is_type,
                parent,
            });
            clock = clock.saturating_add(len);
        }
    }
    Ok(parsed)
}

/// Reads past one struct's content without building it (yrs would allocate a branch per
/// type, which for a million-level chain is hundreds of megabytes); returns its clock length.
fn skip_content(d: &mut DecoderV1, kind: u8) -> Result<u32, yrs::encoding::read::Error> {
    Ok(match kind {
        CONTENT_DELETED => d.read_len()?,
        CONTENT_JSON => {
            // yrs reads one more string than the count says (legacy format).
            let n = d.read_len()?;
            for _ in 0..=n {
                d.read_string()?;
            }
            n.saturating_add(1)
        }
        CONTENT_BINARY => {
            d.read_buf()?;
            1
        }
        CONTENT_STRING => d.read_string()?.encode_utf16().count() as u32,
        CONTENT_EMBED => {
            d.read_string()?;
            1
        }
        CONTENT_FORMAT => {
            d.read_string()?;
            d.read_string()?;
            1
        }
        CONTENT_TYPE => {
            let type_ref = d.read_type_ref()?;
            match type_ref {
                TYPE_XML_ELEMENT => {
                    d.read_string()?;
                }
                // yrs is built without weak links: it refuses them, and so do we.
                TYPE_WEAK => return Err(yrs::encoding::read::Error::UnexpectedValue),
                _ => {}
            }
            1
        }
        CONTENT_ANY => {
            let n = d.read_len()?;
            for _ in 0..n {
                d.read_any()?;
            }
            n
        }
        CONTENT_DOC => {
            d.read_string()?;
            d.read_any()?;
            1
        }
        _ => return Err(yrs::encoding::read::Error::UnexpectedValue),
    })
}

impl Parsed {
    /// Adds the structs of `other` (the document's pending update) that this update does not
    /// carry itself; each client's list stays sorted and without overlaps.
    fn merge(&mut self, other: Parsed) {
        for (client, theirs) in other.clients {
            let list = self.clients.entry(client).or_default();
            list.extend(theirs);
            list.sort_by_key(|s| s.clock);
            let mut end = 0u32;
            let mut first = true;
            list.retain(|s| {
                let keep = first || s.clock >= end;
                if keep {
                    end = s.clock.saturating_add(s.len);
                    first = false;
                }
                keep
            });
        }
        self.structs = self.clients.values().map(Vec::len).sum();
        self.types = self
            .clients
            .values()
            .flatten()
            .filter(|s| s.is_type)
            .count();
    }

    /// The update's struct holding `id`: (client, index).
    fn find(&self, id: &ID) -> Option<(ClientID, usize)> {
        let list = self.clients.get(&id.client)?;
        let i = list.partition_point(|s| s.clock + s.len <= id.clock);
        let s = list.get(i)?;
        (s.clock <= id.clock).then_some((id.client, i))
    }
}

/// Per-room cache of the depth of the document's type items (root types are depth 1).
#[derive(Default)]
pub(crate) struct DepthCache {
    depths: HashMap<ID, u32>,
}

impl DepthCache {
    /// The depth of the document's type item `id`, walking up its parents (at most `limit`
    /// levels); `None` if it is not in the document (or was collected).
    fn doc_depth<T: ReadTxn>(&mut self, txn: &T, id: ID, limit: u32) -> Option<u32> {
        let mut chain = Vec::new();
        let mut cur = id;
        let base = loop {
            if let Some(&d) = self.depths.get(&cur) {
                break d;
            }
            if chain.len() as u32 > limit {
                // Deeper than anything we accept; no need to know how much.
                break limit + 1;
            }
            chain.push(cur);
            match parent_branch(txn, cur)? {
                BranchID::Root(_) => break 1,
                BranchID::Nested(p) => cur = p,
            }
        };
        let mut depth = base;
        for id in chain.into_iter().rev() {
            depth = depth.saturating_add(1);
            self.depths.insert(id, depth);
        }
        Some(depth)
    }

    /// The depth a child of `parent` would get, for a parent in the document.
    fn child_depth_in_doc<T: ReadTxn>(
        &mut self,
        txn: &T,
        neighbour: ID,
        limit: u32,
    ) -> Result<u32, Parent> {
        match parent_branch(txn, neighbour) {
            Some(BranchID::Root(_)) => Ok(2),
            Some(BranchID::Nested(p)) => match self.doc_depth(txn, p, limit) {
                Some(d) => Ok(d.saturating_add(1)),
                None => Err(Parent::Gone),
            },
            None => Err(missing_or_gone(txn, &neighbour)),
        }
    }

    /// Forgets the cache (a room rebuilt from the store starts a new one anyway).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.depths.len()
    }
}

/// The deepest nesting of shared types in `doc` (roots are level 1), walking its live content
/// without recursion and filling `cache` on the way; stops early once past `limit`. A room
/// loaded from data stored before the limit existed may hold deeper documents: those are
/// served read-only, since any delete in them may recurse through the whole chain.
pub(crate) fn deepest(doc: &Doc, cache: &mut DepthCache, limit: u32) -> u32 {
    let txn = doc.transact();
    let mut stack: Vec<(Out, u32)> = txn.root_refs().map(|(_, v)| (v, 1)).collect();
    let mut deepest = 0;
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        if deepest > limit {
            break;
        }
        let children: Vec<Out> = match &value {
            Out::YMap(m) => {
                note(cache, AsRef::<Branch>::as_ref(m).id(), depth);
                m.iter(&txn).map(|(_, v)| v).collect()
            }
            Out::YArray(a) => {
                note(cache, AsRef::<Branch>::as_ref(a).id(), depth);
                list_types(&txn, a.as_ref()).collect()
            }
            Out::YXmlFragment(x) => {
                note(cache, AsRef::<Branch>::as_ref(x).id(), depth);
                x.children(&txn).map(Out::from).collect()
            }
            Out::YXmlElement(x) => {
                note(cache, AsRef::<Branch>::as_ref(x).id(), depth);
                x.children(&txn).map(Out::from).collect()
            }
            // A root no code on the server has asked for by type (any root a client made):
            // its children may sit in its map part or its list part.
            Out::UndefinedRef(b) => {
                let map = yrs::MapRef::from(*b);
                map.iter(&txn)
                    .map(|(_, v)| v)
                    .chain(list_types(&txn, b))
                    .collect()
            }
            _ => Vec::new(),
        };
        stack.extend(
            children
                .into_iter()
                .filter(|c| !matches!(c, Out::Any(_)))
                .map(|c| (c, depth + 1)),
        );
    }
    deepest
}

/// The shared types in a branch's list part, in order. Read as text on purpose: a text diff
/// hands back a string item as one value and still every nested type, where the array
/// iterator yields a value per character (unpatched yrs did that in quadratic time; see
/// `vendor/yrs/PATCHES.md` §3).
fn list_types<T: ReadTxn>(txn: &T, branch: &Branch) -> impl Iterator<Item = Out> {
    yrs::TextRef::from(BranchPtr::from(branch))
        .diff(txn, YChange::identity)
        .into_iter()
        .map(|d| d.insert)
        .filter(|o| !matches!(o, Out::Any(_)))
}

/// Whether a list (an array, or a root read as one) holds text items. Honest Yjs clients
/// never put text in an array, so readers of workflow lists refuse one that does.
pub fn list_holds_text<T: ReadTxn>(txn: &T, branch: &Branch) -> bool {
    !yrs::TextRef::from(BranchPtr::from(branch))
        .get_string(txn)
        .is_empty()
}

fn note(cache: &mut DepthCache, id: BranchID, depth: u32) {
    if let BranchID::Nested(id) = id {
        cache.depths.insert(id, depth);
    }
}

/// The branch holding the document's item `id` (`None` if the item is not there or was
/// collected).
fn parent_branch<T: ReadTxn>(txn: &T, id: ID) -> Option<BranchID> {
    let offset = StickyIndex::from_id(id, Assoc::After).get_offset(txn)?;
    Some(offset.branch.id())
}

fn missing_or_gone<T: ReadTxn>(txn: &T, id: &ID) -> Parent {
    if txn.state_vector().get(&id.client) > id.clock {
        Parent::Gone
    } else {
        Parent::Missing
    }
}

/// How many structs (runs of inserted items) an update carries: what a room counts against
/// its item limit, since each costs the document memory whatever its byte size.
pub(crate) fn count_structs(update: &[u8]) -> Result<usize, NestingError> {
    Ok(parse(update)?.structs)
}

/// Checks that `update` creates no shared type deeper than `limit` in the document read by
/// `txn`, and returns how many structs it carries. Cheap when the update creates no types
/// and the document has nothing pending (most edits): one pass over its structs.
pub(crate) fn check<T: ReadTxn>(
    txn: &T,
    cache: &mut DepthCache,
    update: &[u8],
    limit: u32,
) -> Result<usize, NestingError> {
    let mut parsed = parse(update)?;
    let structs = parsed.structs;
    // Structs waiting for a parent join the check: this update may be the one that completes
    // (or extends) a chain sent leaf first. yrs merges every update into its pending one
    // while anything is pending, so this costs the same order of work as the apply.
    if let Some(pending) = txn.store().pending_update() {
        parsed.merge(parse(&pending.update.encode_v1())?);
    }
    if parsed.types == 0 {
        return Ok(structs);
    }
    let mut resolver = Resolver {
        txn,
        cache,
        parsed: &parsed,
        limit,
        parents: HashMap::new(),
        depths: HashMap::new(),
    };
    for (&client, list) in &parsed.clients {
        for (i, s) in list.iter().enumerate() {
            if s.is_type && resolver.type_depth(client, i).exceeds(limit) {
                return Err(NestingError::TooDeep { limit });
            }
        }
    }
    Ok(structs)
}

struct Resolver<'a, T: ReadTxn> {
    txn: &'a T,
    cache: &'a mut DepthCache,
    parsed: &'a Parsed,
    limit: u32,
    /// Resolved parents of the update's structs (memo: origin chains can be long).
    parents: HashMap<(ClientID, usize), Parent>,
    /// Depths of the update's type items.
    depths: HashMap<(ClientID, usize), Depth>,
}

impl<T: ReadTxn> Resolver<'_, T> {
    /// The parent of the update's struct, following neighbours inside the update without
    /// recursion (an origin chain may be as long as the update).
    fn parent(&mut self, start: (ClientID, usize)) -> Result<Parent, (ClientID, usize, ID)> {
        let mut chain = Vec::new();
        let mut cur = start;
        let found = loop {
            if let Some(p) = self.parents.get(&cur) {
                break Ok(*p);
            }
            chain.push(cur);
            let s = &self.parsed.clients[&cur.0][cur.1];
            match &s.parent {
                ParentRef::Root => break Ok(Parent::Root),
                ParentRef::Type(id) => break Ok(Parent::Type(*id)),
                ParentRef::Nothing => break Ok(Parent::Gone),
                ParentRef::Neighbour(id) => match self.parsed.find(id) {
                    // A chain longer than the update has a cycle: yrs would never integrate it.
                    Some(_) if chain.len() > self.parsed.structs => break Ok(Parent::Missing),
                    Some(next) => cur = next,
                    // The neighbour is in the document: its parent is resolved there.
                    None => break Err(*id),
                },
            }
        };
        match found {
            Ok(p) => {
                for c in chain {
                    self.parents.insert(c, p);
                }
                Ok(p)
            }
            Err(id) => Err((start.0, start.1, id)),
        }
    }

    /// The depth of the update's type struct at (client, index).
    fn type_depth(&mut self, client: ClientID, index: usize) -> Depth {
        // Types nested inside types of the same update: walk up iteratively, then fill in.
        let mut chain: Vec<(ClientID, usize)> = Vec::new();
        let mut cur = (client, index);
        let base: Depth = loop {
            if let Some(d) = self.depths.get(&cur) {
                break *d;
            }
            if chain.len() as u32 > self.limit {
                break Depth::Known(self.limit + 1);
            }
            chain.push(cur);
            let parent = match self.parent(cur) {
                Ok(p) => p,
                Err((_, _, neighbour)) => {
                    break match self
                        .cache
                        .child_depth_in_doc(self.txn, neighbour, self.limit)
                    {
                        Ok(d) => Depth::Known(d - 1),
                        Err(p) => Depth::from_parent(p),
                    };
                }
            };
            match parent {
                Parent::Root => break Depth::Known(1),
                Parent::Gone => break Depth::Gone,
                // A cycle in the update never integrates; a missing parent may arrive later.
                Parent::Missing => break Depth::Floating(0),
                Parent::Type(id) => match self.parsed.find(&id) {
                    Some(p) if self.parsed.clients[&p.0][p.1].is_type => {
                        if chain.contains(&p) {
                            break Depth::Floating(0);
                        }
                        cur = p;
                    }
                    // Not a type: yrs cannot integrate it under that parent.
                    Some(_) => break Depth::Gone,
                    None => match self.cache.doc_depth(self.txn, id, self.limit) {
                        Some(d) => break Depth::Known(d),
                        None => break Depth::from_parent(missing_or_gone(self.txn, &id)),
                    },
                },
            }
        };
        // `base` is the depth of the parent of the last struct in the chain.
        let mut result = base;
        for c in chain.into_iter().rev() {
            result = result.child();
            self.depths.insert(c, result);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, ArrayPrelim, Doc, Map, MapPrelim, MapRef, StateVector, Transact, Update};

    fn apply(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }

    /// A client doc nesting maps `levels` deep under root map "m"; returns it and its update.
    fn nested(levels: usize) -> (Doc, MapRef, Vec<u8>) {
        let doc = Doc::with_client_id(7);
        let root = doc.get_or_insert_map("m");
        let mut cur = root.clone();
        {
            let mut txn = doc.transact_mut();
            for _ in 0..levels {
                cur = cur.insert(&mut txn, "k", MapPrelim::default());
            }
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        (doc, cur, update)
    }

    fn check_on(
        server: &Doc,
        cache: &mut DepthCache,
        update: &[u8],
        limit: u32,
    ) -> Result<usize, NestingError> {
        check(&server.transact(), cache, update, limit)
    }

    #[test]
    fn shallow_updates_pass_and_deep_ones_are_refused() {
        let server = Doc::new();
        let mut cache = DepthCache::default();
        // Root "m" is depth 1; 9 nested maps reach depth 10.
        let (_, _, ok) = nested(9);
        check_on(&server, &mut cache, &ok, 10).unwrap();
        let (_, _, deep) = nested(10);
        assert!(matches!(
            check_on(&server, &mut cache, &deep, 10),
            Err(NestingError::TooDeep { limit: 10 })
        ));
    }

    #[test]
    fn depth_adds_up_across_updates() {
        let server = Doc::new();
        let mut cache = DepthCache::default();
        let (client, mut leaf, first) = nested(5);
        check_on(&server, &mut cache, &first, 10).unwrap();
        apply(&server, &first);
        let mut refused = None;
        for step in 0..10 {
            let before = client.transact().state_vector();
            {
                let mut txn = client.transact_mut();
                leaf = leaf.insert(&mut txn, "k", MapPrelim::default());
            }
            let diff = client.transact().encode_diff_v1(&before);
            match check_on(&server, &mut cache, &diff, 10) {
                Ok(_) => apply(&server, &diff),
                Err(e) => {
                    refused = Some((step, e));
                    break;
                }
            }
        }
        // Depth 6 after the first update; steps 0..=3 reach 10, step 4 would make 11.
        let (step, err) = refused.expect("a deep chain was accepted");
        assert_eq!(step, 4);
        assert!(matches!(err, NestingError::TooDeep { .. }));
        assert!(cache.len() > 0);
    }

    #[test]
    fn types_inserted_next_to_existing_items_inherit_their_parent() {
        // A second map value next to an existing key (origin = the old value) and a map
        // pushed into an array after other items both resolve through the document.
        let server = Doc::new();
        let mut cache = DepthCache::default();
        let client = Doc::with_client_id(9);
        let blocks = client.get_or_insert_array("blocks");
        use yrs::{Array, ArrayPrelim};
        let before = client.transact().state_vector();
        let inner = {
            let mut txn = client.transact_mut();
            blocks.push_back(&mut txn, 1);
            blocks.push_back(&mut txn, MapPrelim::default())
        };
        let u1 = client.transact().encode_diff_v1(&before);
        check_on(&server, &mut cache, &u1, 3).unwrap();
        apply(&server, &u1);
        let before = client.transact().state_vector();
        {
            let mut txn = client.transact_mut();
            let nested = inner.insert(&mut txn, "config", MapPrelim::default());
            nested.insert(&mut txn, "x", 1);
            // Overwrite: the new value's origin is the old one.
            inner.insert(&mut txn, "config", MapPrelim::default());
            blocks.push_back(&mut txn, ArrayPrelim::default());
        }
        let u2 = client.transact().encode_diff_v1(&before);
        // blocks(1) > map(2) > config(3): allowed at 3, refused at 2.
        check_on(&server, &mut cache, &u2, 3).unwrap();
        assert!(check_on(&server, &mut DepthCache::default(), &u2, 2).is_err());
    }

    #[test]
    fn types_under_unknown_parents_wait_as_pending() {
        let (client, leaf, first) = nested(2);
        let before = client.transact().state_vector();
        leaf.insert(&mut client.transact_mut(), "k", MapPrelim::default());
        let second = client.transact().encode_diff_v1(&before);
        let server = Doc::new();
        // The second update alone names a parent the server has never seen: yrs keeps it
        // pending, as reconnecting clients need.
        check_on(&server, &mut DepthCache::default(), &second, 64).unwrap();
        check_on(&server, &mut DepthCache::default(), &first, 64).unwrap();
    }

    /// One update per level of a chain `levels` deep under root map "m", each holding only its
    /// own map: the first level first.
    fn chain_of_updates(levels: usize) -> Vec<Vec<u8>> {
        let client = Doc::with_client_id(7);
        let mut cur = client.get_or_insert_map("m");
        (0..levels)
            .map(|_| {
                let before = client.transact().state_vector();
                cur = cur.insert(&mut client.transact_mut(), "k", MapPrelim::default());
                client.transact().encode_diff_v1(&before)
            })
            .collect()
    }

    /// Applies each update the check lets through; how many it refused.
    fn apply_checked(server: &Doc, updates: impl Iterator<Item = Vec<u8>>, limit: u32) -> usize {
        let mut cache = DepthCache::default();
        let mut refused = 0;
        for u in updates {
            match check_on(server, &mut cache, &u, limit) {
                Ok(_) => apply(server, &u),
                Err(NestingError::TooDeep { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        refused
    }

    #[test]
    fn a_chain_sent_leaf_first_cannot_pass_the_limit() {
        // Each level alone names a parent the server has not seen, so it waits as pending;
        // the last update (the top level) would integrate the whole chain at once.
        let server = Doc::new();
        let refused = apply_checked(&server, chain_of_updates(40).into_iter().rev(), 10);
        assert!(refused > 0, "a 40-level chain sent leaf first was accepted");
        let deepest = deepest(&server, &mut DepthCache::default(), 1000);
        assert!(deepest <= 10, "the document nests {deepest} levels");
    }

    #[test]
    fn a_chain_sent_leaf_first_within_the_limit_integrates() {
        // Reconnecting clients send such updates: within the limit they all integrate.
        let server = Doc::new();
        assert_eq!(
            apply_checked(&server, chain_of_updates(9).into_iter().rev(), 10),
            0
        );
        assert!(server.transact().store().pending_update().is_none());
        assert_eq!(deepest(&server, &mut DepthCache::default(), 1000), 10);
    }

    #[test]
    fn a_pending_chain_is_measured_from_where_it_attaches() {
        // The top half of a chain arrives first and integrates (depth 1 + 6); the rest arrives
        // leaf first, each alone within the limit, until the level joining them would
        // integrate it all past the limit.
        let server = Doc::new();
        let mut updates = chain_of_updates(14);
        let bottom = updates.split_off(6);
        assert_eq!(apply_checked(&server, updates.into_iter(), 10), 0);
        assert!(apply_checked(&server, bottom.into_iter().rev(), 10) > 0);
        assert!(deepest(&server, &mut DepthCache::default(), 1000) <= 10);
    }

    #[test]
    fn a_deleted_parent_does_not_block_the_update() {
        // A user adds a map inside a block another user deleted meanwhile: yrs integrates it
        // as deleted; refusing would make that client reconnect and resend for ever.
        let server = Doc::new();
        let (client, leaf, first) = nested(2);
        apply(&server, &first);
        let root = server.get_or_insert_map("m");
        root.remove(&mut server.transact_mut(), "k");
        let before = client.transact().state_vector();
        leaf.insert(&mut client.transact_mut(), "k", MapPrelim::default());
        let second = client.transact().encode_diff_v1(&before);
        check_on(&server, &mut DepthCache::default(), &second, 64).unwrap();
    }

    #[test]
    fn an_untyped_roots_list_part_is_walked_past_long_text() {
        // A client's root the server never typed, holding a long pasted string and, after
        // it, an array with a map inside: the walk must reach the map (depth 3) without
        // reading the string character by character.
        let client = Doc::new();
        let text = client.get_or_insert_text("t");
        {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, &"x".repeat(200_000));
            let inner = text.insert_embed(&mut txn, 200_000, ArrayPrelim::default());
            inner.push_back(&mut txn, MapPrelim::default());
        }
        let server = Doc::new();
        apply(
            &server,
            &client
                .transact()
                .encode_state_as_update_v1(&Default::default()),
        );
        assert_eq!(deepest(&server, &mut DepthCache::default(), 1000), 3);
    }
}
