//! Live access: each open socket watches its user's role in the workflow's workspace, so a
//! role change or removal reaches it within seconds.
//!
//! Changes made through this process's REST API are pushed at once ([`Access::changed`]);
//! changes made elsewhere (another process, a direct database edit) are picked up by a
//! sweep that re-reads the roles every `recheck` interval. API changes are numbered, so a
//! role read from the database before one (by the sweep or a joining socket) never
//! overwrites it.
//!
//! It also knows each user's live sockets, so a user deleted at the identity provider is
//! disconnected everywhere at once ([`Access::kick`]).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::{self, Db, Role};

/// A (user id, workspace id) pair.
type Key = (String, String);

/// The registry of roles watched by live sockets; cheap to clone.
#[derive(Clone)]
pub struct Access {
    watchers: Arc<DashMap<Key, Watched>>,
    /// Counts the changes made through the API ([`Access::changed`]), so that a role read
    /// from the database before a change is never written over it (see [`Access::seq`]).
    seq: Arc<std::sync::atomic::AtomicU64>,
    /// The live sockets of each user (by the identity provider's id): one token they all
    /// watch, and how many hold it. Cancelling it closes them all ([`Access::kick`]).
    users: Arc<DashMap<String, Sockets>>,
    /// Users deleted in the last [`TOMBSTONE`], so that a socket authenticated just before
    /// the deletion but registered just after it is closed too.
    deleted: Arc<DashMap<String, std::time::Instant>>,
    /// On a cluster: role changes and kicks made here are announced to the other nodes.
    bus: Arc<std::sync::OnceLock<Arc<dyn resonant_bus::Bus>>>,
}

/// The bus topic of role changes and kicks between nodes.
const CONTROL_TOPIC: &str = "ctl:access";

/// What one node tells the others. Invalidations, never values: a role is re-read from the
/// database, so two quick changes made on two nodes cannot land in the wrong order.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum Control {
    /// `user`'s role in `workspace` changed (or the membership went).
    Access { user: String, workspace: String },
    /// `user` was deleted: close its sockets.
    Kick { user: String },
}

/// One watched (user, workspace) pair.
struct Watched {
    tx: watch::Sender<Option<Role>>,
    /// The [`Access::seq`] of the last API change to it (0: none).
    changed_at: u64,
}

/// How long a deleted user's sockets are refused after the deletion, covering sockets that
/// were authenticated before it and are still waiting to join (admission waits seconds).
const TOMBSTONE: Duration = Duration::from_secs(60);

/// The live sockets of one user.
struct Sockets {
    /// Tells the registrations apart from a later set of the same user's (after a kick).
    generation: u64,
    token: CancellationToken,
    count: usize,
}

/// A live socket's registration under its user; dropping it unregisters.
pub struct Presence {
    users: Arc<DashMap<String, Sockets>>,
    user: String,
    generation: u64,
    token: CancellationToken,
}

impl Presence {
    /// Resolves when the user is deleted ([`Access::kick`]).
    pub async fn kicked(&self) {
        self.token.cancelled().await
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.users.remove_if_mut(&self.user, |_, sockets| {
            if sockets.generation != self.generation {
                return false;
            }
            sockets.count = sockets.count.saturating_sub(1);
            sockets.count == 0
        });
    }
}

impl Access {
    /// Creates the registry and starts its sweep in `tasks`; the sweep stops with `stop`.
    pub fn new(
        db: Db,
        recheck: Duration,
        stop: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Access {
        let access = Access {
            watchers: Arc::default(),
            seq: Arc::default(),
            users: Arc::default(),
            deleted: Arc::default(),
            bus: Arc::default(),
        };
        let sweeper = access.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(recheck);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => sweeper.sweep(&db).await,
                }
            }
        });
        access
    }

    /// Joins a cluster: changes and kicks made on this node are announced on `bus`, and the
    /// other nodes' are applied here (a role re-read from `db`) until `stop`. Without it,
    /// each node's sweep still catches a change within `--access-recheck-secs`.
    pub fn follow_cluster(
        &self,
        bus: Arc<dyn resonant_bus::Bus>,
        db: Db,
        stop: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        if self.bus.set(bus.clone()).is_err() {
            return;
        }
        let access = self.clone();
        tasks.spawn(async move {
            let own = bus.node();
            let mut sub = tokio::select! {
                _ = stop.cancelled() => return,
                sub = bus.subscribe(CONTROL_TOPIC) => sub,
            };
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => return,
                    d = sub.recv() => d,
                };
                let m = match delivery {
                    None => return,
                    Some(resonant_bus::Delivery::Message(m)) if m.origin != own => m,
                    // A lost announcement is caught by the sweep.
                    Some(_) => continue,
                };
                match serde_json::from_slice::<Control>(&m.payload) {
                    Ok(Control::Kick { user }) => access.kick_here(&user),
                    Ok(Control::Access { user, workspace }) => {
                        let since = access.seq();
                        match db::memberships(&db, &user).await {
                            Ok(roles) => {
                                let role = roles
                                    .iter()
                                    .find(|(w, _)| *w == workspace)
                                    .map(|(_, r)| *r);
                                access.refreshed(&(user, workspace), role, since);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "could not re-read a role changed on another node; the sweep will")
                            }
                        }
                    }
                    Err(_) => metrics::counter!("resonant_bus_entries_malformed_total").increment(1),
                }
            }
        });
    }

    fn announce(&self, control: &Control) {
        if let Some(bus) = self.bus.get() {
            let payload = serde_json::to_vec(control).expect("serializes");
            bus.publish(
                CONTROL_TOPIC,
                payload.into(),
                resonant_bus::PublishOptions {
                    max_len: 10_000,
                    // Only news for nodes that are up: nothing in it matters an hour later.
                    ttl: Some(Duration::from_secs(3600)),
                },
            );
        }
    }

    /// The current change count: take it before reading a role from the database and pass
    /// it to [`Access::watch`].
    pub fn seq(&self) -> u64 {
        self.seq.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts watching `user`'s role in `workspace`: `role`, read from the database after
    /// [`Access::seq`] returned `since`. If the API changed the role after that read, the
    /// newer role stands: read the receiver's current value, not `role`.
    pub fn watch(
        &self,
        user: &str,
        workspace: &str,
        role: Role,
        since: u64,
    ) -> watch::Receiver<Option<Role>> {
        let key = (user.to_string(), workspace.to_string());
        let entry = self.watchers.entry(key).or_insert_with(|| Watched {
            tx: watch::channel(Some(role)).0,
            changed_at: 0,
        });
        if entry.changed_at > since {
            return entry.tx.subscribe();
        }
        entry.tx.send_if_modified(|r| {
            let changed = *r != Some(role);
            *r = Some(role);
            changed
        });
        entry.tx.subscribe()
    }

    /// Tells the live sockets of `user` in `workspace` about its new role (`None`: removed).
    /// Remembered even while nobody watches (until the next sweep), so a socket whose role
    /// was read just before the change does not start with the stale one.
    pub fn changed(&self, user: &str, workspace: &str, role: Option<Role>) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let key = (user.to_string(), workspace.to_string());
        let mut entry = self.watchers.entry(key).or_insert_with(|| Watched {
            tx: watch::channel(role).0,
            changed_at: seq,
        });
        entry.changed_at = seq;
        entry.tx.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
        drop(entry);
        self.announce(&Control::Access {
            user: user.to_string(),
            workspace: workspace.to_string(),
        });
    }

    /// Sets a role read from the database by the sweep, unless the API changed it since
    /// the read (`since`): a sweep must not restore the role a demotion just took away.
    fn refreshed(&self, key: &Key, role: Option<Role>, since: u64) {
        if let Some(entry) = self.watchers.get(key) {
            if entry.changed_at > since {
                return;
            }
            entry.tx.send_if_modified(|r| {
                let changed = *r != role;
                *r = role;
                changed
            });
        }
    }

    /// Registers a live socket of `user` (the identity provider's id); the registration
    /// resolves [`Presence::kicked`] when the user is deleted, at once if it already was.
    pub fn connect(&self, user: &str) -> Presence {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let fresh = || Sockets {
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            token: CancellationToken::new(),
            count: 0,
        };
        let mut entry = self.users.entry(user.to_string()).or_insert_with(fresh);
        if entry.token.is_cancelled() {
            // Left by a registration that raced a kick: its sockets are closing.
            *entry = fresh();
        }
        entry.count += 1;
        let presence = Presence {
            users: self.users.clone(),
            user: user.to_string(),
            generation: entry.generation,
            token: entry.token.clone(),
        };
        drop(entry);
        // Checked after registering, so a kick running meanwhile either finds this socket or
        // has left its tombstone for us to see.
        if self
            .deleted
            .get(user)
            .is_some_and(|at| at.elapsed() < TOMBSTONE)
        {
            presence.token.cancel();
        }
        presence
    }

    /// Closes every live socket of `user` (deleted at the identity provider) and refuses its
    /// sockets that register within the next minute.
    pub fn kick(&self, user: &str) {
        self.kick_here(user);
        self.announce(&Control::Kick {
            user: user.to_string(),
        });
    }

    /// [`Access::kick`] on this node only.
    fn kick_here(&self, user: &str) {
        self.deleted
            .insert(user.to_string(), std::time::Instant::now());
        if let Some((_, sockets)) = self.users.remove(user) {
            sockets.token.cancel();
        }
    }

    /// Forgets a deletion (the user was created again).
    pub fn restored(&self, user: &str) {
        self.deleted.remove(user);
    }

    /// How many users have live sockets registered (for tests).
    pub fn connected_users(&self) -> usize {
        self.users.len()
    }

    /// Re-reads every watched role from the database and drops pairs nobody watches.
    async fn sweep(&self, db: &Db) {
        self.deleted.retain(|_, at| at.elapsed() < TOMBSTONE);
        self.watchers.retain(|_, w| w.tx.receiver_count() > 0);
        let mut users: Vec<String> = self.watchers.iter().map(|e| e.key().0.clone()).collect();
        users.sort();
        users.dedup();
        for user in users {
            let since = self.seq();
            let roles = match db::memberships(db, &user).await {
                Ok(roles) => roles,
                Err(e) => {
                    tracing::warn!(error = %e, "could not re-read roles; keeping the current ones");
                    return;
                }
            };
            let keys: Vec<Key> = self
                .watchers
                .iter()
                .filter(|e| e.key().0 == user)
                .map(|e| e.key().clone())
                .collect();
            for key in keys {
                let role = roles.iter().find(|(w, _)| *w == key.1).map(|(_, r)| *r);
                self.refreshed(&key, role, since);
            }
        }
    }

    /// How many (user, workspace) pairs are watched (for tests).
    pub fn watched(&self) -> usize {
        self.watchers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn access() -> Access {
        let db = crate::db::memory().await.unwrap();
        Access::new(
            db,
            Duration::from_secs(3600),
            CancellationToken::new(),
            &tokio_util::task::TaskTracker::new(),
        )
    }

    #[tokio::test]
    async fn an_api_change_is_never_overwritten_by_an_older_read() {
        let access = access().await;
        let key: Key = ("u".into(), "w".into());
        // A socket read "member", then the API demoted the user before it registered: the
        // demotion stands.
        let since = access.seq();
        access.changed("u", "w", Some(Role::Viewer));
        let rx = access.watch("u", "w", Role::Member, since);
        assert_eq!(*rx.borrow(), Some(Role::Viewer));
        // The sweep read "member" before another API change: it does not restore it.
        let since = access.seq();
        access.changed("u", "w", None);
        access.refreshed(&key, Some(Role::Member), since);
        assert_eq!(*rx.borrow(), None);
        // A read made after the change applies (a change made outside the API).
        access.refreshed(&key, Some(Role::Member), access.seq());
        assert_eq!(*rx.borrow(), Some(Role::Member));
    }

    #[tokio::test]
    async fn kicking_a_user_ends_every_registration_and_refuses_new_ones() {
        let access = access().await;
        let (a, b) = (access.connect("ext"), access.connect("ext"));
        let other = access.connect("someone-else");
        assert_eq!(access.connected_users(), 2);
        access.kick("ext");
        let wait = Duration::from_secs(1);
        tokio::time::timeout(wait, a.kicked()).await.unwrap();
        tokio::time::timeout(wait, b.kicked()).await.unwrap();
        assert!(!other.token.is_cancelled());
        // Authenticated before the deletion, registered after: refused too.
        let late = access.connect("ext");
        tokio::time::timeout(wait, late.kicked()).await.unwrap();
        // Created again at the identity provider: welcome back.
        access.restored("ext");
        let back = access.connect("ext");
        assert!(!back.token.is_cancelled());
        drop((a, b, late, back, other));
        assert_eq!(access.connected_users(), 0);
    }
}
