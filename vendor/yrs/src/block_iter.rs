use crate::block::{Block, Item, ItemContent, ItemPtr, Prelim, SplittableString};
use crate::branch::BranchPtr;
use crate::doc::OffsetKind;
use crate::transaction::{ReadTxn, TransactionMut};
use crate::types::TypePtr;
use crate::{Out, ID};

/// Struct used for iterating over the sequence of item's values with respect to a potential
/// [Move] markers that may change their order.
#[derive(Debug, Clone)]
pub(crate) struct BlockIter {
    branch: BranchPtr,
    index: u32,
    rel: u32,
    next_item: Option<ItemPtr>,
    reached_end: bool,
    /// RESONANT PATCH (array_iter_linear): where the last read of a string item stopped, so
    /// that the next read resumes there instead of counting `rel` out from the item's start.
    str_pos: Option<StrPos>,
}

/// RESONANT PATCH (array_iter_linear): `rel` (in the document's offset kind) inside the string
/// item `id` is at byte `byte` of its content. Keyed by the item's ID, not its pointer, so a
/// stale position is never dereferenced; an item keeps its start (splits truncate it on the
/// right), so the pair stays true for as long as the item exists.
#[derive(Debug, Clone, Copy)]
struct StrPos {
    id: ID,
    rel: u32,
    byte: usize,
}

impl BlockIter {
    pub fn new(branch: BranchPtr) -> Self {
        let next_item = branch.start;
        let reached_end = branch.start.is_none();
        BlockIter {
            branch,
            next_item,
            reached_end,
            index: 0,
            rel: 0,
            str_pos: None,
        }
    }

    #[inline]
    pub fn rel(&self) -> u32 {
        self.rel
    }

    #[inline]
    pub fn finished(&self) -> bool {
        self.reached_end || self.index == self.branch.content_len
    }

    #[inline]
    pub fn next_item(&self) -> Option<ItemPtr> {
        self.next_item
    }

    pub fn left(&self) -> Option<ItemPtr> {
        if self.reached_end {
            self.next_item
        } else if let Some(item) = self.next_item.as_deref() {
            item.left
        } else {
            None
        }
    }

    pub fn right(&self) -> Option<ItemPtr> {
        if self.reached_end {
            None
        } else {
            self.next_item
        }
    }

    fn can_forward(&self, ptr: Option<ItemPtr>, len: u32) -> bool {
        if !self.reached_end {
            if len > 0 {
                return true;
            } else if let Some(item) = ptr.as_deref() {
                return !item.is_countable() || item.is_deleted() || self.reached_end;
            }
        }

        false
    }

    pub fn forward<T: ReadTxn>(&mut self, txn: &T, len: u32) {
        if !self.try_forward(txn, len) {
            panic!("Length exceeded")
        }
    }

    pub fn try_forward<T: ReadTxn>(&mut self, txn: &T, mut len: u32) -> bool {
        if len == 0 && self.next_item.is_none() {
            return true;
        }

        if self.index + len > self.branch.content_len() || self.next_item.is_none() {
            return false;
        }

        let mut item = self.next_item;
        self.index += len;
        if self.rel != 0 {
            len += self.rel;
            self.rel = 0;
        }

        let encoding = txn.store().offset_kind;
        while self.can_forward(item, len) {
            if item.is_none() {
                return false;
            } else if let Some(i) = item.as_deref() {
                if i.is_countable() && !i.is_deleted() && len > 0 {
                    let item_len = i.content_len(encoding);
                    if item_len > len {
                        self.rel = len;
                        len = 0;
                        break;
                    } else {
                        len -= item_len;
                    }
                }
            }

            if self.reached_end {
                return false;
            }

            match item.as_deref() {
                Some(i) if i.right.is_some() => item = i.right,
                _ => self.reached_end = true, //TODO: we need to ensure to iterate further if this.currMoveEnd === null
            }
        }

        self.index -= len;
        self.next_item = item;
        true
    }

    pub fn backward<T: ReadTxn>(&mut self, txn: &mut T, mut len: u32) {
        if self.index < len {
            panic!("Length exceeded");
        }
        self.index -= len;
        let encoding = txn.store().offset_kind;
        if self.reached_end {
            if let Some(next_item) = self.next_item.as_deref() {
                self.rel = if next_item.is_countable() && !next_item.is_deleted() {
                    next_item.content_len(encoding)
                } else {
                    0
                };
            }
        }
        if self.rel >= len {
            self.rel -= len;
            return;
        }
        let mut item = self.next_item;
        if let Some(i) = item.as_deref() {
            len += if i.is_countable() && !i.is_deleted() {
                i.content_len(encoding)
            } else {
                0
            };
            len -= self.rel;
        }
        self.rel = 0;
        while let Some(i) = item.as_deref() {
            if len == 0 {
                break;
            }

            if i.is_countable() && !i.is_deleted() {
                let item_len = i.content_len(encoding);
                if len < item_len {
                    self.rel = item_len - len;
                    len = 0;
                } else {
                    len -= item_len;
                }
                if len == 0 {
                    break;
                }
            }

            item = if let Some(i) = item.as_deref() {
                i.left
            } else {
                None
            };
        }
        self.next_item = item;
    }

    pub fn delete(&mut self, txn: &mut TransactionMut, mut len: u32) {
        let mut item = self.next_item;
        if self.index + len > self.branch.content_len() {
            panic!("Length exceeded");
        }

        let encoding = txn.store().offset_kind;
        let mut i: &Item;
        while len > 0 {
            while let Some(block) = item.as_deref() {
                i = block;
                if !i.is_deleted() && i.is_countable() && !self.reached_end && len > 0 {
                    if self.rel > 0 {
                        let mut id = i.id.clone();
                        id.clock += self.rel;
                        let store = txn.store_mut();
                        item = store
                            .blocks
                            .get_item_clean_start(&id)
                            .map(|s| store.materialize(s));
                        i = item.as_deref().unwrap();
                        self.rel = 0;
                    }
                    if len < i.content_len(encoding) {
                        let mut id = i.id.clone();
                        id.clock += len;
                        let store = txn.store_mut();
                        store
                            .blocks
                            .get_item_clean_start(&id)
                            .map(|s| store.materialize(s));
                    }
                    len -= i.content_len(encoding);
                    txn.delete(item.unwrap());
                    if i.right.is_some() {
                        item = i.right;
                    } else {
                        self.reached_end = true;
                    }
                } else {
                    break;
                }
            }
            if len > 0 {
                self.next_item = item;
                if self.try_forward(txn, 0) {
                    item = self.next_item;
                } else {
                    panic!("Block iter couldn't move forward");
                }
            }
        }
        self.next_item = item;
    }

    pub(crate) fn slice<T: ReadTxn>(&mut self, txn: &T, buf: &mut [Out]) -> u32 {
        let mut len = buf.len() as u32;
        if self.index + len > self.branch.content_len() {
            return 0;
        }
        self.index += len;
        let mut next_item = self.next_item;
        let encoding = txn.store().offset_kind;
        let mut read = 0u32;
        while len > 0 {
            if !self.reached_end {
                while let Some(item) = next_item {
                    if item.is_countable() && !self.reached_end && len > 0 {
                        if !item.is_deleted() {
                            // we're iterating inside of a block
                            // RESONANT PATCH (array_iter_linear): a string item is read from
                            // where the last read stopped, and `rel` advances by the length of
                            // what was read in the offset kind (as `try_forward` counts it), not
                            // by the number of characters: `ItemContent::read` counted the
                            // offset out in characters from the item's start (quadratic when
                            // iterating), and a character longer than one unit left `rel`
                            // short of the item's length forever (the loop never ended).
                            let dst = &mut buf[read as usize..];
                            let (r, next_rel) = match &item.content {
                                ItemContent::String(s) => self.read_str(item, s, encoding, dst),
                                content => {
                                    let r = content.read(self.rel as usize, dst) as u32;
                                    (r, self.rel + r)
                                }
                            };
                            read += r;
                            len -= r;
                            if next_rel >= item.content_len(encoding) {
                                self.rel = 0;
                            } else {
                                self.rel = next_rel;
                                continue; // do not iterate to item.right
                            }
                        }

                        if item.right.is_some() {
                            next_item = item.right;
                        } else {
                            self.reached_end = true;
                        }
                    } else {
                        break;
                    }
                }
                if !self.reached_end && len > 0 {
                    // always set nextItem before any method call
                    self.next_item = next_item;
                    if !self.try_forward(txn, 0) || self.next_item.is_none() {
                        return read;
                    }
                    next_item = self.next_item;
                }
            } else {
                // reached end and move stack is empty
                next_item = None;
                break;
            }
        }
        self.next_item = next_item;
        self.index -= len;
        read
    }

    /// RESONANT PATCH (array_iter_linear): reads characters of the string item `item` from
    /// `self.rel` into `buf`; returns how many it read and the `rel` after them.
    fn read_str(
        &mut self,
        item: ItemPtr,
        s: &SplittableString,
        kind: OffsetKind,
        buf: &mut [Out],
    ) -> (u32, u32) {
        let (from, at) = match self.str_pos {
            // In bytes, `rel` is the position itself; in UTF-16 units it has to be counted out
            // from the start unless the last read stopped there.
            Some(pos)
                if kind == OffsetKind::Utf16
                    && pos.id == item.id
                    && pos.rel == self.rel
                    && s.as_str().is_char_boundary(pos.byte) =>
            {
                (pos.byte, pos.rel)
            }
            _ => s.char_start(self.rel, kind),
        };
        let (read, end, units) = s.read_chars(from, buf, kind);
        let next_rel = at + units;
        self.str_pos = Some(StrPos {
            id: item.id,
            rel: next_rel,
            byte: end,
        });
        (read as u32, next_rel)
    }

    fn split_rel(&mut self, txn: &mut TransactionMut) {
        if self.rel > 0 {
            if let Some(ptr) = self.next_item {
                let mut item_id = ptr.id().clone();
                item_id.clock += self.rel;
                let store = txn.store_mut();
                self.next_item = store
                    .blocks
                    .get_item_clean_start(&item_id)
                    .map(|s| store.materialize(s));
                self.rel = 0;
            }
        }
    }

    pub(crate) fn read_value<T: ReadTxn>(&mut self, txn: &T) -> Option<Out> {
        let mut buf = [Out::default()];
        if self.slice(txn, &mut buf) != 0 {
            Some(std::mem::replace(&mut buf[0], Out::default()))
        } else {
            None
        }
    }

    pub fn insert_contents<V: Prelim>(
        &mut self,
        txn: &mut TransactionMut,
        value: V,
    ) -> Option<ItemPtr> {
        self.split_rel(txn);
        let id = {
            let store = txn.store();
            let client_id = store.client_id;
            let clock = store.blocks.get_clock(&client_id);
            ID::new(client_id, clock)
        };
        let parent = TypePtr::Branch(self.branch);
        let right = self.right();
        let left = self.left();
        let (mut content, remainder) = value.into_content(txn);
        let inner_ref = if let ItemContent::Type(inner_ref) = &mut content {
            Some(BranchPtr::from(inner_ref))
        } else {
            None
        };
        let block = Item::new(
            id,
            left,
            left.map(|ptr| ptr.last_id()),
            right,
            right.map(|r| *r.id()),
            parent,
            None,
            content,
        )?;
        let block_ptr = txn.integrate_item(block, 0);

        if let Some(remainder) = remainder {
            remainder.integrate(txn, inner_ref.unwrap().into())
        }

        if let Some(item) = right.as_deref() {
            self.next_item = item.right;
        } else {
            self.next_item = left;
            self.reached_end = true;
        }

        block_ptr
    }

    pub fn values<'a, 'txn, T: ReadTxn>(
        &'a mut self,
        txn: &'txn mut TransactionMut<'txn>,
    ) -> Values<'a, 'txn> {
        Values::new(self, txn)
    }
}

pub struct Values<'a, 'txn> {
    iter: &'a mut BlockIter,
    txn: &'txn mut TransactionMut<'txn>,
}

impl<'a, 'txn> Values<'a, 'txn> {
    fn new(iter: &'a mut BlockIter, txn: &'txn mut TransactionMut<'txn>) -> Self {
        Values { iter, txn }
    }
}

impl<'a, 'txn> Iterator for Values<'a, 'txn> {
    type Item = Out;

    fn next(&mut self) -> Option<Self::Item> {
        if self.iter.reached_end || self.iter.index == self.iter.branch.content_len() {
            None
        } else {
            let mut buf = [Out::default()];
            if self.iter.slice(self.txn, &mut buf) != 0 {
                Some(std::mem::replace(&mut buf[0], Out::default()))
            } else {
                None
            }
        }
    }
}

/// RESONANT PATCH (array_iter_linear): string items read through an array.
#[cfg(test)]
mod test {
    use crate::block::{ClientID, CHAR_DECODES};
    use crate::doc::OffsetKind;
    use crate::types::ToJson;
    use crate::{Any, Array, Doc, GetString, Options, Out, Text, Transact};

    const KINDS: [OffsetKind; 2] = [OffsetKind::Bytes, OffsetKind::Utf16];

    fn doc(kind: OffsetKind) -> Doc {
        let mut options = Options::with_client_id(ClientID::new(1));
        options.offset_kind = kind;
        Doc::with_options(options)
    }

    fn units(c: char, kind: OffsetKind) -> u32 {
        match kind {
            OffsetKind::Bytes => c.len_utf8() as u32,
            OffsetKind::Utf16 => c.len_utf16() as u32,
        }
    }

    fn chars(s: &str) -> Vec<Out> {
        s.chars()
            .map(|c| Out::Any(Any::from(c.to_string())))
            .collect()
    }

    /// Text "aé😀x" (1, 2 and 4 UTF-8 bytes; the emoji is a surrogate pair in UTF-16) in the
    /// root "list", cut into items at character `cut` in one of two ways: written as two
    /// inserts, or written whole and split by an insert at `cut` that is then deleted.
    fn list_with_cut(kind: OffsetKind, cut: usize, split_by_delete: bool) -> Doc {
        const S: &str = "aé😀x";
        let doc = doc(kind);
        let text = doc.get_or_insert_text("list");
        let at = S.chars().take(cut).map(|c| units(c, kind)).sum::<u32>();
        let byte = S.char_indices().nth(cut).map_or(S.len(), |(b, _)| b);
        if split_by_delete {
            text.insert(&mut doc.transact_mut(), 0, S);
            text.insert(&mut doc.transact_mut(), at, "!");
            text.remove_range(&mut doc.transact_mut(), at, units('!', kind));
        } else {
            text.insert(&mut doc.transact_mut(), 0, &S[byte..]);
            text.insert(&mut doc.transact_mut(), 0, &S[..byte]);
        }
        assert_eq!(text.get_string(&doc.transact()), S);
        doc
    }

    #[test]
    fn array_iter_yields_each_character_of_string_items_once() {
        for kind in KINDS {
            for cut in 0..=4 {
                for split_by_delete in [false, true] {
                    let doc = list_with_cut(kind, cut, split_by_delete);
                    let array = doc.get_or_insert_array("list");
                    let txn = doc.transact();
                    let got: Vec<Out> = array.iter(&txn).collect();
                    assert_eq!(got, chars("aé😀x"), "{:?}, cut at {}", kind, cut);
                }
            }
        }
    }

    #[test]
    fn array_iter_reaches_values_after_multi_unit_characters() {
        for kind in KINDS {
            let doc = list_with_cut(kind, 2, false);
            let array = doc.get_or_insert_array("list");
            array.insert(&mut doc.transact_mut(), 0, 0);
            // The end as `BlockIter` counts (in the offset kind); `Array::len` counts UTF-16
            // units whatever the kind, which lands inside the text under `Bytes`.
            let end = 1 + "aé😀x".chars().map(|c| units(c, kind)).sum::<u32>();
            array.insert(&mut doc.transact_mut(), end, 1);
            let txn = doc.transact();
            let got: Vec<Out> = array.iter(&txn).collect();
            let mut expected = vec![Out::Any(Any::from(0))];
            expected.extend(chars("aé😀x"));
            expected.push(Out::Any(Any::from(1)));
            assert_eq!(got, expected, "{:?}", kind);
        }
    }

    #[test]
    fn array_to_json_has_each_character_of_string_items() {
        for kind in KINDS {
            for cut in 0..=4 {
                let doc = list_with_cut(kind, cut, true);
                let array = doc.get_or_insert_array("list");
                let json = array.to_json(&doc.transact());
                let expected =
                    Any::Array("aé😀x".chars().map(|c| Any::from(c.to_string())).collect());
                assert_eq!(json, expected, "{:?}, cut at {}", kind, cut);
            }
        }
    }

    #[test]
    fn array_get_at_every_offset_is_the_character_covering_it() {
        // `BlockIter` counts string items in the document's offset kind, so an index may fall
        // inside a character: it reads that character.
        for kind in KINDS {
            for cut in 0..=4 {
                for split_by_delete in [false, true] {
                    let doc = list_with_cut(kind, cut, split_by_delete);
                    let array = doc.get_or_insert_array("list");
                    let txn = doc.transact();
                    let covering: Vec<Option<Out>> = "aé😀x"
                        .chars()
                        .flat_map(|c| {
                            let v = Out::Any(Any::from(c.to_string()));
                            std::iter::repeat(Some(v)).take(units(c, kind) as usize)
                        })
                        .collect();
                    let end = covering.len() as u32;
                    let got: Vec<Option<Out>> = (0..end).map(|i| array.get(&txn, i)).collect();
                    assert_eq!(got, covering, "{:?}, cut at {}", kind, cut);
                    assert_eq!(array.get(&txn, end), None);
                }
            }
        }
    }

    #[test]
    fn array_iter_decodes_each_character_of_a_long_string_item_once() {
        // Before the patch every element was read with `chars().skip(i)`: n(n+1)/2 decodes
        // (500 500 here) instead of about n. The first two cases are the ones the old code
        // finished at all (one unit per character); with the others it never returned.
        const N: usize = 1000;
        let cases = [
            (OffsetKind::Bytes, "ab"),
            (OffsetKind::Utf16, "aé"),
            (OffsetKind::Bytes, "aé😀"),
            (OffsetKind::Utf16, "aé😀"),
        ];
        for (kind, pattern) in cases {
            let s: String = pattern.chars().cycle().take(N).collect();
            let doc = doc(kind);
            doc.get_or_insert_text("list")
                .insert(&mut doc.transact_mut(), 0, &s);
            let array = doc.get_or_insert_array("list");
            let txn = doc.transact();
            CHAR_DECODES.with(|c| c.set(0));
            assert_eq!(array.iter(&txn).collect::<Vec<_>>(), chars(&s));
            let decodes = CHAR_DECODES.with(|c| c.get());
            // Each character once, plus (in UTF-16) the first character found from the start.
            assert!(
                decodes <= N + 1,
                "{:?} {:?}: {} decodes for {} characters",
                kind,
                pattern,
                decodes,
                N
            );
        }
    }
}
