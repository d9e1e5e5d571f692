//! Live access: each open socket watches its user's role in the workflow's workspace, so a
//! role change or removal reaches it within seconds.
//!
//! Changes made through this process's REST API are pushed at once ([`Access::changed`]);
//! changes made elsewhere (another process, a direct database edit) are picked up by a
//! sweep that re-reads the roles every `recheck` interval.

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
    watchers: Arc<DashMap<Key, watch::Sender<Option<Role>>>>,
}

impl Access {
    /// Creates the registry and starts its sweep, which stops with `stop`.
    pub fn new(db: Db, recheck: Duration, stop: CancellationToken) -> Access {
        let access = Access {
            watchers: Arc::default(),
        };
        let sweeper = access.clone();
        tokio::spawn(async move {
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

    /// Starts watching `user`'s role in `workspace`, currently `role`.
    pub fn watch(&self, user: &str, workspace: &str, role: Role) -> watch::Receiver<Option<Role>> {
        let key = (user.to_string(), workspace.to_string());
        let entry = self
            .watchers
            .entry(key)
            .or_insert_with(|| watch::channel(Some(role)).0);
        // The role read by the caller is at least as new as the one we hold.
        entry.send_if_modified(|r| {
            let changed = *r != Some(role);
            *r = Some(role);
            changed
        });
        entry.subscribe()
    }

    /// Tells the live sockets of `user` in `workspace` about its new role (`None`: removed).
    pub fn changed(&self, user: &str, workspace: &str, role: Option<Role>) {
        if let Some(tx) = self
            .watchers
            .get(&(user.to_string(), workspace.to_string()))
        {
            tx.send_if_modified(|r| {
                let changed = *r != role;
                *r = role;
                changed
            });
        }
    }

    /// Re-reads every watched role from the database and drops pairs nobody watches.
    async fn sweep(&self, db: &Db) {
        self.watchers.retain(|_, tx| tx.receiver_count() > 0);
        let mut users: Vec<String> = self.watchers.iter().map(|e| e.key().0.clone()).collect();
        users.sort();
        users.dedup();
        for user in users {
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
            for (u, ws) in keys {
                let role = roles.iter().find(|(w, _)| *w == ws).map(|(_, r)| *r);
                self.changed(&u, &ws, role);
            }
        }
    }

    /// How many (user, workspace) pairs are watched (for tests).
    pub fn watched(&self) -> usize {
        self.watchers.len()
    }
}
