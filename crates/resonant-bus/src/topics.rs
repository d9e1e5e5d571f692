//! The Redis bus's table of subscribed topics: each topic's read cursor and registrations,
//! kept as a state machine without I/O so its races can be unit-tested.
//!
//! A topic's cursor is where its reader continues `XREAD`:
//!
//! - `Fresh`: just created by a subscriber whose `XREVRANGE` anchor is in flight; not read.
//! - `Unanchored`: its reader lost its place (reconnect) or the subscriber could not anchor;
//!   the reader anchors it (*hard* anchor: every registration gets a Resync) before reading.
//! - `Broken`: the key holds something other than a stream; left out of `XREAD` (one bad key
//!   would fail the shared read of every topic) and retried by the periodic check.
//! - `At(id)`: read from `id`.
//!
//! A registration keeps `after`, the id of the last entry it was given (or its anchor), and
//! only ever receives entries above it. That makes moving a topic's cursor *back* always safe
//! (nothing is delivered twice to a registration, nothing after its anchor is skipped), which
//! is how concurrent subscribers of one new topic are reconciled: whoever anchors lowest wins.
//!
//! Every change of a cursor other than the reader's own advance bumps the topic's generation;
//! an `XREAD` reply for an older generation is discarded, as the new cursor reads it again.

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::{fingerprint, Decoded, LastEntry, StreamId};
use crate::queue::{Queue, QUEUE_CAPACITY};
use crate::Message;

/// Where a topic's reader stands (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    Fresh,
    Unanchored,
    Broken,
    At(StreamId),
}

struct Topic {
    reader: usize,
    cursor: Cursor,
    /// Where reading started since the cursor was last set from outside (an anchor or a move
    /// back): everything read from there on was offered to every registration then present.
    read_from: StreamId,
    /// Fingerprint of the entry at the cursor, when known: a different entry with that same
    /// id means the stream restarted (deleted, then written again in the same millisecond).
    cursor_fingerprint: Option<u64>,
    generation: u64,
    regs: Vec<Reg>,
}

struct Reg {
    id: u64,
    queue: Arc<Queue>,
    /// `None` while its subscriber anchors it; then the last id it was given (or its anchor).
    after: Option<StreamId>,
    /// Entries routed while it waits for its anchor, and whether some had to be dropped.
    buffer: Vec<(StreamId, Message)>,
    buffer_overflowed: bool,
}

impl Reg {
    fn give(&mut self, id: StreamId, message: &Message) {
        match self.after {
            Some(after) if id > after => {
                self.queue.push(message.clone());
                self.after = Some(id);
            }
            Some(_) => {}
            None if self.buffer.len() < QUEUE_CAPACITY => {
                self.buffer.push((id, message.clone()));
            }
            None => self.buffer_overflowed = true,
        }
    }

    /// Anchors at `anchor`, handing over what was buffered above it.
    fn anchor(&mut self, anchor: StreamId) {
        self.after = Some(anchor);
        let mut buffer = std::mem::take(&mut self.buffer);
        // A cursor moved back re-reads entries already buffered: in id order, `give` drops
        // the repeats.
        buffer.sort_by_key(|(id, _)| *id);
        for (id, message) in buffer {
            self.give(id, &message);
        }
        if std::mem::take(&mut self.buffer_overflowed) {
            self.queue.resync();
        }
    }

    /// Anchors at `anchor` and owes a Resync: whatever came before is for the heal to find.
    fn hard_anchor(&mut self, anchor: StreamId) {
        self.after = Some(anchor);
        self.buffer.clear();
        self.buffer_overflowed = false;
        self.queue.resync();
    }
}

/// What [`Topics::register`] did.
pub(crate) struct Registered {
    pub(crate) id: u64,
    /// The subscriber must anchor it (`XREVRANGE`), then call [`Topics::anchored`] or
    /// [`Topics::anchor_failed`]; otherwise it is anchored at the topic's current cursor.
    pub(crate) needs_anchor: bool,
    /// A reader index that does not exist yet and must be started.
    pub(crate) new_reader: Option<usize>,
}

/// One topic an `XREAD` reads.
pub(crate) struct ReadKey {
    pub(crate) key: Arc<str>,
    pub(crate) generation: u64,
    pub(crate) cursor: StreamId,
}

/// One topic to anchor or check with `XREVRANGE … COUNT 1`.
pub(crate) struct CheckKey {
    pub(crate) key: Arc<str>,
    pub(crate) generation: u64,
}

/// What routing one stream's entries did, for metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Routed {
    pub(crate) messages: u64,
    pub(crate) malformed: u64,
}

/// Every subscribed topic of one Redis bus, by Redis key.
pub(crate) struct Topics {
    map: HashMap<Arc<str>, Topic>,
    /// Keys assigned to each reader.
    reader_keys: Vec<usize>,
    keys_per_reader: usize,
    next_generation: u64,
    next_reg: u64,
    closed: bool,
}

impl Topics {
    pub(crate) fn new(keys_per_reader: usize) -> Topics {
        Topics {
            map: HashMap::new(),
            // Reader 0 always exists: it also reads the node's wake-up key.
            reader_keys: vec![0],
            keys_per_reader: keys_per_reader.max(1),
            next_generation: 0,
            next_reg: 0,
            closed: false,
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Registers `queue` on `key`; `None` once closed.
    pub(crate) fn register(&mut self, key: &str, queue: Arc<Queue>) -> Option<Registered> {
        if self.closed {
            return None;
        }
        self.next_reg += 1;
        let id = self.next_reg;
        let mut new_reader = None;
        if !self.map.contains_key(key) {
            let reader = match self
                .reader_keys
                .iter()
                .position(|&n| n < self.keys_per_reader)
            {
                Some(reader) => reader,
                None => {
                    self.reader_keys.push(0);
                    new_reader = Some(self.reader_keys.len() - 1);
                    self.reader_keys.len() - 1
                }
            };
            self.reader_keys[reader] += 1;
            let generation = self.generation();
            self.map.insert(
                key.into(),
                Topic {
                    reader,
                    cursor: Cursor::Fresh,
                    read_from: StreamId::ZERO,
                    cursor_fingerprint: None,
                    generation,
                    regs: Vec::new(),
                },
            );
        }
        let topic = self.map.get_mut(key).expect("inserted above");
        // A topic already being read anchors a newcomer at the reader's position: it gets
        // everything read from there on (a few entries published just before it subscribed,
        // harmlessly), with no round trip.
        let after = match topic.cursor {
            Cursor::At(cursor) => Some(cursor),
            _ => None,
        };
        topic.regs.push(Reg {
            id,
            queue,
            after,
            buffer: Vec::new(),
            buffer_overflowed: false,
        });
        Some(Registered {
            id,
            needs_anchor: after.is_none(),
            new_reader,
        })
    }

    /// Removes registration `id` of `key` (and the topic with its last registration).
    pub(crate) fn unregister(&mut self, key: &str, id: u64) {
        let Some(topic) = self.map.get_mut(key) else {
            return;
        };
        topic.regs.retain(|reg| reg.id != id);
        if topic.regs.is_empty() {
            let reader = topic.reader;
            self.map.remove(key);
            self.reader_keys[reader] -= 1;
        }
    }

    /// The subscriber of registration `id` found the stream's last entry `last`
    /// ([`LastEntry::NONE`] when the stream is absent). Returns the reader to wake when the
    /// topic's reading changed.
    pub(crate) fn anchored(&mut self, key: &str, id: u64, last: LastEntry) -> Option<usize> {
        let (last, last_fingerprint) = (last.id, last.fingerprint);
        let generation = self.next_generation + 1;
        let topic = self.map.get_mut(key)?;
        let reg = topic.regs.iter_mut().find(|reg| reg.id == id)?;
        if reg.after.is_some() {
            return None;
        }
        match topic.cursor {
            Cursor::Fresh => {
                reg.anchor(last);
                topic.cursor = Cursor::At(last);
                topic.read_from = last;
                topic.cursor_fingerprint = last_fingerprint;
            }
            Cursor::At(_) if last < topic.read_from => {
                // Another subscriber anchored the topic higher, so the reader never read what
                // lies between: move it back. What this registration buffered is read again.
                reg.buffer.clear();
                reg.anchor(last);
                topic.cursor = Cursor::At(last);
                topic.read_from = last;
                topic.cursor_fingerprint = last_fingerprint;
            }
            Cursor::At(_) => {
                // Registered while the topic was not read yet, so everything read since
                // `read_from` is in its buffer.
                reg.anchor(last);
                return None;
            }
            // The reader's hard anchor will cover it (with a Resync for everyone).
            Cursor::Unanchored | Cursor::Broken => return None,
        }
        topic.generation = generation;
        self.next_generation = generation;
        Some(topic.reader)
    }

    /// The subscriber of registration `id` could not anchor (timeout, Redis down). Returns the
    /// reader to wake when the topic now waits for the reader's anchor.
    pub(crate) fn anchor_failed(&mut self, key: &str, id: u64) -> Option<usize> {
        let generation = self.next_generation + 1;
        let topic = self.map.get_mut(key)?;
        let reg = topic.regs.iter_mut().find(|reg| reg.id == id)?;
        if reg.after.is_some() {
            return None;
        }
        match topic.cursor {
            Cursor::At(_) => {
                // Someone else anchored the topic after this registration was made, so what it
                // buffered is all it can get: take it, and heal the rest.
                reg.anchor(StreamId::ZERO);
                reg.queue.resync();
                None
            }
            Cursor::Fresh => {
                topic.cursor = Cursor::Unanchored;
                topic.generation = generation;
                self.next_generation = generation;
                Some(topic.reader)
            }
            Cursor::Unanchored | Cursor::Broken => None,
        }
    }

    /// What reader `reader` must anchor before its next read (its `Unanchored` topics).
    pub(crate) fn to_anchor(&self, reader: usize) -> Vec<CheckKey> {
        self.keys(reader, |cursor| cursor == Cursor::Unanchored)
    }

    /// What the periodic check of reader `reader` looks at (`At` and `Broken` topics).
    pub(crate) fn to_check(&self, reader: usize) -> Vec<CheckKey> {
        self.keys(reader, |cursor| {
            matches!(cursor, Cursor::At(_) | Cursor::Broken)
        })
    }

    fn keys(&self, reader: usize, wanted: impl Fn(Cursor) -> bool) -> Vec<CheckKey> {
        self.map
            .iter()
            .filter(|(_, t)| t.reader == reader && wanted(t.cursor))
            .map(|(key, t)| CheckKey {
                key: key.clone(),
                generation: t.generation,
            })
            .collect()
    }

    /// What reader `reader` reads next (its `At` topics and their cursors).
    pub(crate) fn to_read(&self, reader: usize) -> Vec<ReadKey> {
        self.map
            .iter()
            .filter(|(_, t)| t.reader == reader)
            .filter_map(|(key, t)| match t.cursor {
                Cursor::At(cursor) => Some(ReadKey {
                    key: key.clone(),
                    generation: t.generation,
                    cursor,
                }),
                _ => None,
            })
            .collect()
    }

    /// The reader anchored `key` at `last` itself: every registration gets a Resync. Ignored
    /// if the topic changed since `generation` was read. Returns whether it applied.
    pub(crate) fn hard_anchor(&mut self, key: &str, generation: u64, last: LastEntry) -> bool {
        let next = self.next_generation + 1;
        let Some(topic) = self.map.get_mut(key) else {
            return false;
        };
        if topic.generation != generation {
            return false;
        }
        topic.cursor = Cursor::At(last.id);
        topic.read_from = last.id;
        topic.cursor_fingerprint = last.fingerprint;
        topic.generation = next;
        self.next_generation = next;
        for reg in &mut topic.regs {
            reg.hard_anchor(last.id);
        }
        true
    }

    /// `key` does not hold a stream: leave it out of reads until a check finds one.
    pub(crate) fn mark_broken(&mut self, key: &str, generation: u64) {
        let next = self.next_generation + 1;
        if let Some(topic) = self.map.get_mut(key) {
            if topic.generation == generation {
                topic.cursor = Cursor::Broken;
                topic.generation = next;
                self.next_generation = next;
            }
        }
    }

    /// The periodic check found `key`'s last entry `last` (`None`: no such key). Returns
    /// whether the stream restarted under the cursor (and was re-anchored, with a Resync for
    /// all).
    pub(crate) fn checked(&mut self, key: &str, generation: u64, last: Option<LastEntry>) -> bool {
        let Some(topic) = self.map.get_mut(key) else {
            return false;
        };
        if topic.generation != generation {
            return false;
        }
        match (topic.cursor, last) {
            (Cursor::At(_), None) => {
                // The stream is gone (expired, trimmed to nothing, deleted): whatever is added
                // next is new, even in the same millisecond as the old last entry. Nothing was
                // skipped by this, so no Resync. The reader is not mid-read (it runs the check
                // itself), so no generation bump is needed.
                topic.cursor = Cursor::At(StreamId::ZERO);
                topic.read_from = StreamId::ZERO;
                topic.cursor_fingerprint = None;
                for reg in &mut topic.regs {
                    if reg.after.is_some() {
                        reg.after = Some(StreamId::ZERO);
                    }
                }
                false
            }
            (Cursor::At(cursor), Some(last))
                if last.id < cursor
                    || (last.id == cursor
                        && last.fingerprint.is_some()
                        && topic.cursor_fingerprint.is_some()
                        && last.fingerprint != topic.cursor_fingerprint) =>
            {
                self.hard_anchor(key, generation, last)
            }
            (Cursor::Broken, last) => {
                self.hard_anchor(key, generation, last.unwrap_or(LastEntry::NONE));
                false
            }
            _ => false,
        }
    }

    /// Reader `reader` lost its connection: every topic it was reading must be anchored anew.
    pub(crate) fn reader_failed(&mut self, reader: usize) {
        for topic in self.map.values_mut() {
            if topic.reader == reader && matches!(topic.cursor, Cursor::At(_)) {
                self.next_generation += 1;
                topic.cursor = Cursor::Unanchored;
                topic.generation = self.next_generation;
            }
        }
    }

    /// Delivers what an `XREAD` from generation `generation` returned for `key`, in stream
    /// order; `Err` entries are malformed (dropped, each registration owed a Resync).
    pub(crate) fn route(
        &mut self,
        key: &str,
        generation: u64,
        entries: Vec<(StreamId, Decoded)>,
    ) -> Routed {
        let mut routed = Routed::default();
        let Some(topic) = self.map.get_mut(key) else {
            return routed;
        };
        if topic.generation != generation || !matches!(topic.cursor, Cursor::At(_)) {
            return routed;
        }
        if let Some((_, last)) = entries.last() {
            topic.cursor_fingerprint = Some(fingerprint(last));
        }
        for (id, entry) in entries {
            topic.cursor = Cursor::At(id);
            match entry {
                Ok(message) => {
                    routed.messages += 1;
                    for reg in &mut topic.regs {
                        reg.give(id, &message);
                    }
                }
                Err(reason) => {
                    routed.malformed += 1;
                    tracing::warn!(key, %id, reason, "malformed bus entry dropped");
                    for reg in &mut topic.regs {
                        match reg.after {
                            Some(_) => {
                                reg.after = Some(id);
                                reg.queue.resync();
                            }
                            None => reg.buffer_overflowed = true,
                        }
                    }
                }
            }
        }
        routed
    }

    /// Ends every subscription and refuses new ones.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        for topic in self.map.values() {
            for reg in &topic.regs {
                reg.queue.close();
            }
        }
        self.map.clear();
        for keys in &mut self.reader_keys {
            *keys = 0;
        }
    }

    #[cfg(test)]
    fn cursor(&self, key: &str) -> Option<Cursor> {
        self.map.get(key).map(|t| t.cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Subscription;
    use crate::Delivery;
    use bytes::Bytes;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn last(ms: u64) -> LastEntry {
        LastEntry {
            id: id(ms),
            fingerprint: None,
        }
    }

    fn message(n: u8) -> Message {
        Message {
            origin: 9,
            sent_ms: 0,
            payload: Bytes::from(vec![n]),
        }
    }

    fn sub(topics: &mut Topics, key: &str) -> (Registered, Subscription) {
        let queue = Queue::new();
        let registered = topics.register(key, queue.clone()).unwrap();
        (
            registered,
            Subscription::new(key.into(), queue, Box::new(|| {})),
        )
    }

    fn drain(sub: &mut Subscription) -> Vec<Delivery> {
        std::iter::from_fn(|| sub.try_recv()).collect()
    }

    fn got(ns: &[u8]) -> Vec<Delivery> {
        ns.iter().map(|&n| Delivery::Message(message(n))).collect()
    }

    fn read(topics: &Topics, key: &str) -> ReadKey {
        topics
            .to_read(0)
            .into_iter()
            .find(|r| &*r.key == key)
            .unwrap()
    }

    #[test]
    fn a_fresh_topic_is_read_from_its_anchor() {
        let mut topics = Topics::new(10);
        let (reg, mut s) = sub(&mut topics, "k");
        assert!(reg.needs_anchor);
        assert!(
            topics.to_read(0).is_empty(),
            "not read before it is anchored"
        );
        assert_eq!(topics.anchored("k", reg.id, last(5)), Some(0));
        let r = read(&topics, "k");
        assert_eq!(r.cursor, id(5));
        topics.route("k", r.generation, vec![(id(6), Ok(message(6)))]);
        assert_eq!(drain(&mut s), got(&[6]));
        assert_eq!(topics.cursor("k"), Some(Cursor::At(id(6))));
    }

    #[test]
    fn a_second_subscriber_joins_at_the_readers_position_without_anchoring() {
        let mut topics = Topics::new(10);
        let (reg, mut a) = sub(&mut topics, "k");
        topics.anchored("k", reg.id, last(1));
        let (reg_b, mut b) = sub(&mut topics, "k");
        assert!(!reg_b.needs_anchor);
        let r = read(&topics, "k");
        topics.route("k", r.generation, vec![(id(2), Ok(message(2)))]);
        assert_eq!(drain(&mut a), got(&[2]));
        assert_eq!(drain(&mut b), got(&[2]));
        topics.unregister("k", reg.id);
        topics.route("k", r.generation, vec![(id(3), Ok(message(3)))]);
        assert_eq!(drain(&mut a), got(&[]), "unregistered");
        assert_eq!(
            drain(&mut b),
            got(&[3]),
            "the other registration is untouched"
        );
    }

    #[test]
    fn the_lowest_anchor_wins_and_nothing_is_delivered_twice() {
        let mut topics = Topics::new(10);
        // Both subscribe before either anchor is applied; a's XREVRANGE ran earlier (id 1),
        // b's later (id 3), but b's reply is applied first.
        let (ra, mut a) = sub(&mut topics, "k");
        let (rb, mut b) = sub(&mut topics, "k");
        // c's anchor (id 2) is applied last of all.
        let (rc, mut c) = sub(&mut topics, "k");
        assert!(ra.needs_anchor && rb.needs_anchor);
        topics.anchored("k", rb.id, last(3));
        let r = read(&topics, "k");
        topics.route("k", r.generation, vec![(id(4), Ok(message(4)))]);
        assert_eq!(drain(&mut b), got(&[4]));
        // a anchors lower: the cursor moves back to 1 and the in-flight read is stale.
        assert_eq!(topics.anchored("k", ra.id, last(1)), Some(0));
        let stale = topics.route("k", r.generation, vec![(id(5), Ok(message(5)))]);
        assert_eq!(
            stale,
            Routed::default(),
            "a reply from before the move is dropped"
        );
        let r = read(&topics, "k");
        assert_eq!(r.cursor, id(1));
        topics.route(
            "k",
            r.generation,
            vec![
                (id(2), Ok(message(2))),
                (id(3), Ok(message(3))),
                (id(4), Ok(message(4))),
                (id(5), Ok(message(5))),
            ],
        );
        assert_eq!(drain(&mut a), got(&[2, 3, 4, 5]));
        assert_eq!(
            drain(&mut b),
            got(&[5]),
            "b saw 4 already and is anchored at 3"
        );
        // c buffered 4 twice (before and after the move back): it gets each entry once.
        assert_eq!(topics.anchored("k", rc.id, last(2)), None);
        assert_eq!(drain(&mut c), got(&[3, 4, 5]));
    }

    #[test]
    fn a_pending_registration_keeps_what_is_read_after_its_anchor() {
        let mut topics = Topics::new(10);
        let (ra, _a) = sub(&mut topics, "k");
        topics.anchored("k", ra.id, last(1));
        // A newcomer to a topic being read is anchored at once; one made while the reader
        // reconnects waits for an anchor instead.
        topics.reader_failed(0);
        let (rb, mut b) = sub(&mut topics, "k");
        assert!(rb.needs_anchor);
        let check = topics.to_anchor(0);
        assert_eq!(check.len(), 1);
        assert!(topics.hard_anchor("k", check[0].generation, last(2)));
        assert_eq!(
            drain(&mut b),
            vec![Delivery::Resync],
            "hard anchors owe a Resync"
        );
        // b's own anchor arrives late and changes nothing.
        assert_eq!(topics.anchored("k", rb.id, last(9)), None);
        assert_eq!(topics.cursor("k"), Some(Cursor::At(id(2))));
    }

    #[test]
    fn buffered_entries_above_the_anchor_are_handed_over() {
        let mut topics = Topics::new(10);
        let (ra, _a) = sub(&mut topics, "k");
        let (rb, mut b) = sub(&mut topics, "k");
        topics.anchored("k", ra.id, last(1));
        let r = read(&topics, "k");
        topics.route(
            "k",
            r.generation,
            vec![(id(2), Ok(message(2))), (id(3), Ok(message(3)))],
        );
        assert_eq!(drain(&mut b), got(&[]), "b waits for its anchor");
        // The reader is past b's anchor (3 > 2), but started below it, so b's buffer holds
        // everything above its anchor: no move back.
        assert_eq!(topics.anchored("k", rb.id, last(2)), None);
        assert_eq!(drain(&mut b), got(&[3]));
        assert_eq!(topics.cursor("k"), Some(Cursor::At(id(3))));
    }

    #[test]
    fn a_failed_anchor_waits_for_the_reader_and_then_resyncs() {
        let mut topics = Topics::new(10);
        let (ra, mut a) = sub(&mut topics, "k");
        assert_eq!(topics.anchor_failed("k", ra.id), Some(0));
        assert!(topics.to_read(0).is_empty());
        let check = topics.to_anchor(0);
        topics.hard_anchor("k", check[0].generation, LastEntry::NONE);
        assert_eq!(drain(&mut a), vec![Delivery::Resync]);
        let r = read(&topics, "k");
        topics.route("k", r.generation, vec![(id(1), Ok(message(1)))]);
        assert_eq!(drain(&mut a), got(&[1]));
    }

    #[test]
    fn malformed_entries_resync_that_topic_only() {
        let mut topics = Topics::new(10);
        let (ra, mut a) = sub(&mut topics, "a");
        let (rb, mut b) = sub(&mut topics, "b");
        topics.anchored("a", ra.id, last(1));
        topics.anchored("b", rb.id, last(1));
        let ga = read(&topics, "a").generation;
        let gb = read(&topics, "b").generation;
        let routed = topics.route(
            "a",
            ga,
            vec![(id(2), Err("n is missing")), (id(3), Ok(message(3)))],
        );
        assert_eq!(
            routed,
            Routed {
                messages: 1,
                malformed: 1
            }
        );
        topics.route("b", gb, vec![(id(2), Ok(message(2)))]);
        assert_eq!(drain(&mut a), [vec![Delivery::Resync], got(&[3])].concat());
        assert_eq!(drain(&mut b), got(&[2]));
    }

    #[test]
    fn a_stream_restarted_below_the_cursor_is_reanchored_with_a_resync() {
        let mut topics = Topics::new(10);
        let (ra, mut a) = sub(&mut topics, "k");
        topics.anchored("k", ra.id, last(100));
        let check = topics.to_check(0);
        assert!(!topics.checked("k", check[0].generation, Some(last(100))));
        assert!(topics.checked("k", check[0].generation, Some(last(7))));
        assert_eq!(drain(&mut a), vec![Delivery::Resync]);
        let r = read(&topics, "k");
        assert_eq!(r.cursor, id(7));
        topics.route("k", r.generation, vec![(id(8), Ok(message(8)))]);
        assert_eq!(
            drain(&mut a),
            got(&[8]),
            "lower ids are delivered after the restart"
        );
    }

    #[test]
    fn a_different_entry_under_the_cursor_id_is_a_restart() {
        let mut topics = Topics::new(10);
        let (ra, mut a) = sub(&mut topics, "k");
        topics.anchored("k", ra.id, last(1));
        let r = read(&topics, "k");
        topics.route("k", r.generation, vec![(id(2), Ok(message(2)))]);
        assert_eq!(drain(&mut a), got(&[2]));
        let seen = LastEntry {
            id: id(2),
            fingerprint: Some(fingerprint(&Ok(message(2)))),
        };
        let check = topics.to_check(0);
        assert!(!topics.checked("k", check[0].generation, Some(seen)));
        // Deleted and written again within the same millisecond: same id, other content.
        let other = LastEntry {
            id: id(2),
            fingerprint: Some(fingerprint(&Ok(message(3)))),
        };
        assert!(topics.checked("k", check[0].generation, Some(other)));
        assert_eq!(drain(&mut a), vec![Delivery::Resync]);
    }

    #[test]
    fn a_vanished_stream_is_read_from_zero_without_a_resync() {
        let mut topics = Topics::new(10);
        let (ra, mut a) = sub(&mut topics, "k");
        topics.anchored("k", ra.id, last(100));
        let check = topics.to_check(0);
        assert!(!topics.checked("k", check[0].generation, None));
        assert_eq!(read(&topics, "k").cursor, StreamId::ZERO);
        let r = read(&topics, "k");
        topics.route("k", r.generation, vec![(id(100), Ok(message(1)))]);
        assert_eq!(
            drain(&mut a),
            got(&[1]),
            "same id as before the stream vanished"
        );
    }

    #[test]
    fn broken_keys_leave_reads_until_a_check_finds_a_stream() {
        let mut topics = Topics::new(10);
        let (ra, mut a) = sub(&mut topics, "k");
        topics.anchor_failed("k", ra.id);
        let g = topics.to_anchor(0)[0].generation;
        topics.mark_broken("k", g);
        assert!(topics.to_read(0).is_empty());
        assert!(topics.to_anchor(0).is_empty());
        let g = topics.to_check(0)[0].generation;
        topics.checked("k", g, Some(last(3)));
        assert_eq!(drain(&mut a), vec![Delivery::Resync]);
        assert_eq!(read(&topics, "k").cursor, id(3));
    }

    #[test]
    fn topics_spread_over_readers() {
        let mut topics = Topics::new(2);
        let mut subs = Vec::new();
        let mut started = Vec::new();
        for key in ["a", "b", "c", "d", "e"] {
            let (reg, s) = sub(&mut topics, key);
            started.extend(reg.new_reader);
            subs.push((key, reg.id, s));
        }
        assert_eq!(started, [1, 2]);
        // A freed slot is reused before a new reader is started.
        topics.unregister("c", subs[2].1);
        let (reg, _f) = sub(&mut topics, "f");
        assert_eq!(reg.new_reader, None);
        assert_eq!(topics.map["f"].reader, 1);
    }

    #[test]
    fn closing_ends_every_subscription() {
        let mut topics = Topics::new(10);
        let (_, mut a) = sub(&mut topics, "k");
        topics.close();
        assert!(topics.register("k", Queue::new()).is_none());
        assert_eq!(a.try_recv(), None);
    }
}
