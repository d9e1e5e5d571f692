//! A room's presence (y-protocols awareness): who is here, their cursors and selections.
//!
//! We keep our own table instead of yrs' `Awareness` for two reasons: yrs never forgets a
//! client id (removed states stay as entries forever, so one hostile connection could grow a
//! room without bound), and expiry there is a read followed by a separate removal, so a
//! renewal landing in between was wiped. Here every operation is one call under the room's
//! lock, removed entries are forgotten after the timeout, and the caller enforces limits per
//! connection and per message.
//!
//! Semantics follow y-protocols' `applyAwarenessUpdate`: a state is taken when its clock is
//! newer, or when it is a removal (`null`) at the same clock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::ClientID;

use crate::protocol;

/// Limits on what one connection may put into a room's presence.
#[derive(Debug, Clone, Copy)]
pub struct AwarenessLimits {
    /// Most client ids one connection may introduce.
    pub max_ids_per_connection: usize,
    /// Most entries in one awareness message.
    pub max_entries_per_message: usize,
    /// Largest JSON state of one client, in bytes.
    pub max_state_bytes: usize,
}

impl Default for AwarenessLimits {
    fn default() -> Self {
        AwarenessLimits {
            max_ids_per_connection: 8,
            max_entries_per_message: 32,
            max_state_bytes: 32 << 10,
        }
    }
}

/// Why (part of) an awareness message was refused; the rest of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwarenessRefusal {
    /// The message carried more entries than allowed; none of it was applied.
    #[error("awareness message has {got} entries; at most {max} are allowed")]
    TooManyEntries {
        /// Entries in the message.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The connection tried to introduce more client ids than allowed.
    #[error("this connection may introduce at most {max} awareness client ids")]
    TooManyIds {
        /// The limit.
        max: usize,
    },
    /// A state's JSON is larger than allowed.
    #[error("awareness state of {got} bytes is larger than the {max}-byte limit")]
    StateTooLarge {
        /// The state's size.
        got: usize,
        /// The limit.
        max: usize,
    },
}

struct Entry {
    clock: u32,
    /// `None` once removed; kept until the timeout so an older update cannot revive it.
    state: Option<Arc<str>>,
    updated: Instant,
    /// The node that announced it (scale-out), `None` for this node's own peers: that node
    /// renews it, and its states go when it dies.
    origin: Option<u64>,
}

/// The presence table of one room, plus its broadcast coalescing state.
#[derive(Default)]
pub(crate) struct Presence {
    entries: HashMap<ClientID, Entry>,
    /// Client ids changed since the last broadcast (coalescing).
    pub(crate) dirty: HashSet<ClientID>,
    pub(crate) last_flush: Option<Instant>,
    pub(crate) flush_scheduled: bool,
    /// Entries other nodes announced (removed ones included), held to a cap per room.
    remote: usize,
}

impl Presence {
    /// Applies a client's message. `owned` holds the ids this connection introduced so far
    /// (grown here, within the limit). Returns the ids whose entries changed, and the first
    /// refusal if some entries were not applied.
    pub(crate) fn apply(
        &mut self,
        update: AwarenessUpdate,
        owned: &mut HashSet<ClientID>,
        limits: &AwarenessLimits,
        now: Instant,
    ) -> (Vec<ClientID>, Option<AwarenessRefusal>) {
        self.apply_from(update, owned, limits, now, None)
    }

    /// [`Presence::apply`] for states another node (`origin`) announced, or a local peer's.
    /// Other nodes' entries are held to `limits.max_ids_per_connection` in all (their
    /// origin's id limits do not add up across nodes); ids beyond it are refused.
    pub(crate) fn apply_from(
        &mut self,
        update: AwarenessUpdate,
        owned: &mut HashSet<ClientID>,
        limits: &AwarenessLimits,
        now: Instant,
        origin: Option<u64>,
    ) -> (Vec<ClientID>, Option<AwarenessRefusal>) {
        if update.clients.len() > limits.max_entries_per_message {
            let refusal = AwarenessRefusal::TooManyEntries {
                got: update.clients.len(),
                max: limits.max_entries_per_message,
            };
            return (Vec::new(), Some(refusal));
        }
        let mut changed = Vec::new();
        let mut refusal = None;
        for (id, AwarenessUpdateEntry { clock, json }) in update.clients {
            let removal = &*json == "null";
            if !removal && json.len() > limits.max_state_bytes {
                refusal.get_or_insert(AwarenessRefusal::StateTooLarge {
                    got: json.len(),
                    max: limits.max_state_bytes,
                });
                continue;
            }
            let newer = match self.entries.get(&id) {
                None => true,
                Some(e) => e.clock < clock || (e.clock == clock && removal && e.state.is_some()),
            };
            // Stale entries change nothing and make no one their owner: y-websocket clients
            // echo every state they receive back to the server, others' included.
            if !newer {
                continue;
            }
            let state = (!removal).then_some(json);
            // A removal of an id we never saw changes nothing anyone could observe.
            if state.is_none() && !self.entries.contains_key(&id) {
                continue;
            }
            if origin.is_some() {
                let known = self.entries.get(&id).is_some_and(|e| e.origin.is_some());
                if !known && self.remote >= limits.max_ids_per_connection {
                    refusal.get_or_insert(AwarenessRefusal::TooManyIds {
                        max: limits.max_ids_per_connection,
                    });
                    continue;
                }
            } else if !owned.contains(&id) {
                if owned.len() >= limits.max_ids_per_connection {
                    refusal.get_or_insert(AwarenessRefusal::TooManyIds {
                        max: limits.max_ids_per_connection,
                    });
                    continue;
                }
                owned.insert(id);
            }
            let before = self.entries.insert(
                id,
                Entry {
                    clock,
                    state,
                    updated: now,
                    origin,
                },
            );
            let was_remote = before.is_some_and(|e| e.origin.is_some());
            match (was_remote, origin.is_some()) {
                (false, true) => self.remote += 1,
                (true, false) => self.remote -= 1,
                _ => {}
            }
            changed.push(id);
        }
        (changed, refusal)
    }

    /// Marks `ids` as removed (a null state at the *current* clock, as y-protocols does for
    /// remote clients, so the client's next real change after a reconnect is still newer).
    /// Returns the ids that were present.
    pub(crate) fn remove(
        &mut self,
        ids: impl IntoIterator<Item = ClientID>,
        now: Instant,
    ) -> Vec<ClientID> {
        let mut removed = Vec::new();
        for id in ids {
            if let Some(e) = self.entries.get_mut(&id) {
                if e.state.take().is_some() {
                    e.updated = now;
                    removed.push(id);
                }
            }
        }
        removed
    }

    /// In one step: removes states not renewed within `timeout` (returned, to broadcast), and
    /// forgets removed entries older than `timeout`.
    pub(crate) fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<ClientID> {
        let mut expired = Vec::new();
        let remote = &mut self.remote;
        self.entries.retain(|id, e| {
            if now.saturating_duration_since(e.updated) < timeout {
                return true;
            }
            if e.state.take().is_some() {
                e.updated = now;
                expired.push(*id);
                return true;
            }
            if e.origin.is_some() {
                *remote -= 1;
            }
            false
        });
        expired
    }

    /// Number of entries held, removed ones included.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Encodes the current entries of `ids` (removed ones as `null`) as one message.
    pub(crate) fn encode(&self, ids: impl IntoIterator<Item = ClientID>) -> Option<Bytes> {
        self.update_for(ids)
            .map(|update| protocol::encode_awareness(&update))
    }

    /// The other nodes whose peers have a present state here.
    pub(crate) fn origins(&self) -> HashSet<u64> {
        self.entries
            .values()
            .filter(|e| e.state.is_some())
            .filter_map(|e| e.origin)
            .collect()
    }

    /// Removes every state node `origin` announced (it died); returns the ids removed.
    pub(crate) fn remove_origin(&mut self, origin: u64, now: Instant) -> Vec<ClientID> {
        let mut removed = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            if e.origin == Some(origin) && e.state.take().is_some() {
                e.updated = now;
                removed.push(*id);
            }
        }
        removed
    }

    /// The present states this node's own peers set, for another node that asks.
    pub(crate) fn local_present(&self) -> Vec<ClientID> {
        self.entries
            .iter()
            .filter(|(_, e)| e.state.is_some() && e.origin.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The current entries of `ids` (removed ones as `null`) as an awareness update.
    pub(crate) fn update_for(
        &self,
        ids: impl IntoIterator<Item = ClientID>,
    ) -> Option<AwarenessUpdate> {
        let clients: HashMap<ClientID, AwarenessUpdateEntry> = ids
            .into_iter()
            .filter_map(|id| {
                let e = self.entries.get(&id)?;
                let json = e.state.clone().unwrap_or_else(|| Arc::from("null"));
                Some((
                    id,
                    AwarenessUpdateEntry {
                        clock: e.clock,
                        json,
                    },
                ))
            })
            .collect();
        (!clients.is_empty()).then_some(AwarenessUpdate { clients })
    }

    /// Everyone's present state, for a joiner's greeting or a query.
    pub(crate) fn encode_all(&self) -> Option<Bytes> {
        let present: Vec<ClientID> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state.is_some())
            .map(|(id, _)| *id)
            .collect();
        self.encode(present)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: entries
                .iter()
                .map(|(id, clock, json)| {
                    (
                        ClientID::new(*id),
                        AwarenessUpdateEntry {
                            clock: *clock,
                            json: Arc::from(*json),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn newer_clocks_win_and_removals_apply_at_the_same_clock() {
        let mut p = Presence::default();
        let mut owned = HashSet::new();
        let limits = AwarenessLimits::default();
        let now = Instant::now();
        let (changed, _) = p.apply(update(&[(1, 1, "{\"a\":1}")]), &mut owned, &limits, now);
        assert_eq!(changed.len(), 1);
        let (changed, _) = p.apply(update(&[(1, 1, "{\"a\":2}")]), &mut owned, &limits, now);
        assert!(changed.is_empty(), "same clock, not a removal: stale");
        let (changed, _) = p.apply(update(&[(1, 1, "null")]), &mut owned, &limits, now);
        assert_eq!(changed.len(), 1, "removal at the same clock");
        assert!(p.encode_all().is_none());
        let (changed, _) = p.apply(update(&[(1, 2, "{\"a\":3}")]), &mut owned, &limits, now);
        assert_eq!(changed.len(), 1, "back after a removal with a newer clock");
    }

    #[test]
    fn echoed_states_of_others_are_not_owned() {
        let mut p = Presence::default();
        let (mut a, mut b) = (HashSet::new(), HashSet::new());
        let limits = AwarenessLimits::default();
        let now = Instant::now();
        p.apply(update(&[(1, 3, "{\"me\":\"a\"}")]), &mut a, &limits, now);
        // b's client relays what it received, as y-websocket providers do.
        let (changed, _) = p.apply(update(&[(1, 3, "{\"me\":\"a\"}")]), &mut b, &limits, now);
        assert!(changed.is_empty());
        assert!(b.is_empty(), "b must not remove a's state when it leaves");
    }

    #[test]
    fn limits_refuse_the_excess_and_keep_the_rest() {
        let mut p = Presence::default();
        let mut owned = HashSet::new();
        let limits = AwarenessLimits {
            max_ids_per_connection: 2,
            max_entries_per_message: 3,
            max_state_bytes: 10,
        };
        let now = Instant::now();
        let (changed, refusal) = p.apply(
            update(&[(1, 1, "{}"), (2, 1, "{}"), (3, 1, "{}")]),
            &mut owned,
            &limits,
            now,
        );
        assert_eq!(changed.len(), 2);
        assert_eq!(refusal, Some(AwarenessRefusal::TooManyIds { max: 2 }));
        let (changed, refusal) = p.apply(
            update(&[(1, 2, "{\"x\":\"long state\"}")]),
            &mut owned,
            &limits,
            now,
        );
        assert!(changed.is_empty());
        assert!(matches!(
            refusal,
            Some(AwarenessRefusal::StateTooLarge { .. })
        ));
        let (changed, refusal) = p.apply(
            update(&[(1, 3, "{}"), (2, 3, "{}"), (4, 3, "{}"), (5, 1, "{}")]),
            &mut owned,
            &limits,
            now,
        );
        assert!(changed.is_empty());
        assert!(matches!(
            refusal,
            Some(AwarenessRefusal::TooManyEntries { got: 4, max: 3 })
        ));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn other_nodes_entries_are_capped_per_room_and_freed_by_expiry() {
        let mut p = Presence::default();
        let limits = AwarenessLimits {
            max_ids_per_connection: 3,
            ..AwarenessLimits::default()
        };
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        let from = |p: &mut Presence, node: u64, entries: &[(u64, u32, &str)], at: Instant| {
            p.apply_from(
                update(entries),
                &mut HashSet::new(),
                &limits,
                at,
                Some(node),
            )
        };
        // Two nodes, each within its own peers' limits, together over the room's cap.
        let (changed, refusal) = from(&mut p, 7, &[(1, 1, "{}"), (2, 1, "{}")], t0);
        assert_eq!((changed.len(), refusal), (2, None));
        let (changed, refusal) = from(&mut p, 8, &[(3, 1, "{}"), (4, 1, "{}")], t0);
        assert_eq!(changed.len(), 1, "one of the two fits");
        assert_eq!(refusal, Some(AwarenessRefusal::TooManyIds { max: 3 }));
        // Known ids still change, and this node's own peers are not affected.
        let (changed, _) = from(&mut p, 7, &[(1, 2, "{\"x\":1}")], t0);
        assert_eq!(changed.len(), 1);
        let (changed, refusal) = p.apply(update(&[(9, 1, "{}")]), &mut HashSet::new(), &limits, t0);
        assert_eq!((changed.len(), refusal), (1, None));
        // Once forgotten, their places are free again.
        p.expire(t0 + timeout, timeout);
        p.expire(t0 + timeout * 2, timeout);
        assert_eq!(p.len(), 0);
        let entries = [(10, 1, "{}"), (11, 1, "{}"), (12, 1, "{}")];
        let (changed, _) = from(&mut p, 8, &entries, t0 + timeout * 2);
        assert_eq!(changed.len(), 3);
    }

    #[test]
    fn expiry_removes_then_forgets() {
        let mut p = Presence::default();
        let mut owned = HashSet::new();
        let limits = AwarenessLimits::default();
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        p.apply(
            update(&[(1, 1, "{}"), (2, 1, "{}")]),
            &mut owned,
            &limits,
            t0,
        );
        p.apply(update(&[(2, 2, "{}")]), &mut owned, &limits, t0 + timeout);
        let expired = p.expire(t0 + timeout, timeout);
        assert_eq!(expired, vec![ClientID::new(1)], "2 was renewed in time");
        assert_eq!(p.len(), 2, "1 is kept as removed for a while");
        assert!(p
            .expire(t0 + timeout * 2, timeout)
            .contains(&ClientID::new(2)));
        p.expire(t0 + timeout * 3, timeout);
        assert_eq!(
            p.len(),
            0,
            "removed entries are forgotten after the timeout"
        );
    }
}
