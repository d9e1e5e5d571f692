//! Rooms across nodes (scale-out, `docs/scale-out.md` §4): the store orders every room's log
//! and is the truth; the bus only carries news of what it committed. Each loaded room keeps a
//! watermark W (every seq up to it is in the document) and heals from the store whatever the
//! bus lost, repeated, reordered or trimmed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use resonant_bus::Bus;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

/// How a registry takes part in a cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The bus other nodes publish their committed updates on.
    pub bus: Arc<dyn Bus>,
    /// A gap (a seq missing below one received) is healed from the store once it has lasted
    /// this long: two nodes committing one room at once routinely publish out of seq order.
    pub gap_heal: Duration,
    /// Every loaded room's head is compared with its watermark this often (one query per
    /// node): catches a lost *last* update, and everything while the bus is down.
    pub probe: Duration,
    /// The probe interval while the bus is down.
    pub probe_when_down: Duration,
    /// Entries a room's stream keeps (approximately).
    pub stream_max_len: usize,
    /// How long a room's stream outlives its last publish.
    pub stream_ttl: Duration,
}

impl ClusterConfig {
    /// The defaults of `docs/scale-out.md` §12 over `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        ClusterConfig {
            bus,
            gap_heal: Duration::from_millis(250),
            probe: Duration::from_secs(2),
            probe_when_down: Duration::from_millis(500),
            stream_max_len: 1000,
            stream_ttl: Duration::from_secs(3600),
        }
    }
}

/// The bus topic of a room's committed updates.
pub(crate) fn doc_topic(room: &str) -> String {
    format!("doc:{room}")
}

/// The bus topic of a room's presence changes.
pub(crate) fn aw_topic(room: &str) -> String {
    format!("aw:{room}")
}

/// A presence payload: a y-protocols awareness update follows.
pub(crate) const AW_UPDATE: u8 = 0;
/// A presence payload: a node that just loaded the room asks for everyone's presence.
pub(crate) const AW_QUERY: u8 = 1;

/// Presence streams are short: nothing in them outlives the awareness timeout, and a
/// reader more than a hundred entries behind has lost only states their clients renew (each
/// entry may hold a few hundred KiB of states: a longer stream would be Redis memory a
/// flooding client could fill).
pub(crate) fn aw_publish_options() -> resonant_bus::PublishOptions {
    resonant_bus::PublishOptions {
        max_len: 100,
        ttl: Some(Duration::from_secs(300)),
    }
}

/// Updates larger than this cross the bus as their seq alone (an empty update, which Yjs
/// never produces), and the other nodes read them from the store: Redis keeps up to
/// `stream_max_len` entries per room, which at the 16 MiB message limit would let one client
/// park gigabytes in it.
pub(crate) const INLINE_MAX: usize = 64 << 10;

/// Encodes committed updates of one room as a bus payload: a count, then per update its seq
/// and bytes (lib0 var-ints, like the rest of the wire).
pub(crate) fn encode_entries<'a>(entries: impl ExactSizeIterator<Item = (i64, &'a [u8])>) -> Bytes {
    let mut out: Vec<u8> = Vec::new();
    out.write_var(entries.len() as u64);
    for (seq, data) in entries {
        out.write_var(seq as u64);
        out.write_buf(data);
    }
    out.into()
}

/// Decodes a payload of [`encode_entries`]; `None` when it is malformed.
pub(crate) fn decode_entries(payload: &Bytes) -> Option<Vec<(i64, Bytes)>> {
    let mut cursor = Cursor::new(payload);
    let count: u64 = cursor.read_var().ok()?;
    // Each entry takes at least two bytes: a count past that is a lie, not an allocation.
    if count > payload.len() as u64 / 2 {
        return None;
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let seq: u64 = cursor.read_var().ok()?;
        let data = cursor.read_buf().ok()?;
        let seq = i64::try_from(seq).ok().filter(|s| *s > 0)?;
        entries.push((seq, payload.slice_ref(data)));
    }
    (cursor.next == payload.len()).then_some(entries)
}

/// Most seqs a room remembers above a gap before it stops recording and heals.
const MAX_ABOVE: usize = 10_000;

/// Which seqs of a room's log its document has applied.
#[derive(Debug)]
pub(crate) struct Watermark {
    /// Every seq up to this one is applied.
    w: i64,
    /// Seqs applied above a gap.
    above: BTreeSet<i64>,
    /// When the current gap was first seen.
    gap_since: Option<Instant>,
}

impl Watermark {
    pub(crate) fn new(w: i64) -> Self {
        Watermark {
            w,
            above: BTreeSet::new(),
            gap_since: None,
        }
    }

    pub(crate) fn w(&self) -> i64 {
        self.w
    }

    pub(crate) fn is_applied(&self, seq: i64) -> bool {
        seq <= self.w || self.above.contains(&seq)
    }

    /// Records `seq` as applied.
    pub(crate) fn mark(&mut self, seq: i64) {
        if seq <= self.w {
            return;
        }
        if seq == self.w + 1 {
            self.w = seq;
            while self.above.remove(&(self.w + 1)) {
                self.w += 1;
            }
        } else if self.above.len() < MAX_ABOVE {
            self.above.insert(seq);
        } else {
            // Past the cap nothing more is recorded; the gap's heal brings W up instead.
            self.gap_since.get_or_insert(Instant::now());
        }
        self.settle();
    }

    /// Everything up to `seq` is applied (a heal read the log up to its head).
    pub(crate) fn raise_to(&mut self, seq: i64) {
        if seq > self.w {
            self.w = seq;
        }
        self.above = self.above.split_off(&(self.w + 1));
        while self.above.remove(&(self.w + 1)) {
            self.w += 1;
        }
        self.settle();
    }

    fn settle(&mut self) {
        if self.above.is_empty() {
            self.gap_since = None;
        } else {
            self.gap_since.get_or_insert(Instant::now());
        }
    }

    /// When the current gap was first seen, if there is one.
    pub(crate) fn gap_since(&self) -> Option<Instant> {
        self.gap_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_advances_over_contiguous_seqs_only() {
        let mut wm = Watermark::new(3);
        wm.mark(5);
        assert_eq!(wm.w(), 3);
        assert!(wm.gap_since().is_some());
        assert!(wm.is_applied(5) && !wm.is_applied(4));
        wm.mark(4);
        assert_eq!(wm.w(), 5);
        assert!(wm.gap_since().is_none());
        wm.mark(2);
        assert_eq!(wm.w(), 5, "old seqs change nothing");
        wm.mark(9);
        wm.raise_to(7);
        assert_eq!(wm.w(), 7);
        assert!(wm.gap_since().is_some(), "9 is still above a gap");
        wm.raise_to(8);
        assert_eq!(wm.w(), 9);
        assert!(wm.gap_since().is_none());
    }

    #[test]
    fn entries_round_trip_and_malformed_payloads_are_refused() {
        let a = [1u8, 2, 3];
        let b = [9u8; 300];
        let payload = encode_entries([(7i64, &a[..]), (8, &b[..])].into_iter());
        let got = decode_entries(&payload).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, &got[0].1[..]), (7, &a[..]));
        assert_eq!((got[1].0, &got[1].1[..]), (8, &b[..]));
        for bad in [
            &payload[..payload.len() - 1],
            &[0xff, 0xff, 0xff, 0xff, 0x0f][..],
            &[1, 0, 0][..],
            &[][..],
        ] {
            assert!(
                decode_entries(&Bytes::copy_from_slice(bad)).is_none(),
                "{bad:?}"
            );
        }
        let mut trailing = payload.to_vec();
        trailing.push(0);
        assert!(decode_entries(&Bytes::from(trailing)).is_none());
    }
}
