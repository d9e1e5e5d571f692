//! The webhooks' writes: each event is recorded in `webhook_events` in the same transaction
//! as the change it makes, so a redelivered event changes nothing and a failed change leaves
//! the event unrecorded for the sender's retry.

use super::{new_id, now_ms, Db, DbError};
use crate::with_pool;

/// What a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The change was applied.
    Processed,
    /// The event id was seen before: nothing changed.
    Duplicate,
    /// Not an event we act on (recorded as seen), or about nobody we know.
    Ignored,
}

/// Records `(sender, event)` as seen inside `tx`: false if it was seen before.
macro_rules! first_delivery {
    ($tx:expr, $sender:expr, $event:expr) => {
        sqlx::query(
            "INSERT INTO webhook_events (provider, event_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider, event_id) DO NOTHING",
        )
        .bind($sender)
        .bind($event)
        .bind(now_ms())
        .execute(&mut *$tx)
        .await?
        .rows_affected()
            == 1
    };
}

/// What a Clerk event asks of the users table.
pub enum ClerkChange {
    /// Create or update the user; `restore` undoes a deletion (a user created again).
    Upsert {
        /// The identity provider's user id.
        external_id: String,
        /// Primary email address.
        email: Option<String>,
        /// Display name.
        name: Option<String>,
        /// Avatar URL.
        image_url: Option<String>,
        /// Whether a deleted user comes back.
        restore: bool,
    },
    /// Mark the user deleted.
    Delete {
        /// The identity provider's user id.
        external_id: String,
    },
    /// An event type we do not act on.
    Ignore,
}

/// What a subscription event says about a customer's subscription.
#[derive(Debug)]
pub struct Subscription {
    /// Stripe's subscription id.
    pub id: String,
    /// Stripe's customer id, once known.
    pub customer: Option<String>,
    /// Our user id, from `metadata.userId`.
    pub user_id: Option<String>,
    /// The Clerk user id, from `metadata.clerkId`.
    pub clerk_id: Option<String>,
    /// Stripe's status (`active`, `canceled`, …).
    pub status: Option<String>,
    /// The plan (a name in the plan table), with its token allowance.
    pub plan: Option<(String, i64)>,
    /// Whether the subscription ended.
    pub deleted: bool,
}

/// Applies a Clerk change and records the event, in one transaction. Returns the outcome
/// and the external id of the user that changed.
pub async fn apply_clerk(
    db: &Db,
    event_id: &str,
    change: &ClerkChange,
    free_tokens: i64,
) -> Result<(Outcome, Option<String>), DbError> {
    let now = now_ms();
    with_pool!(db, p => {
        let mut tx = p.begin().await?;
        if !first_delivery!(tx, "clerk", event_id) {
            return Ok((Outcome::Duplicate, None));
        }
        let result = match change {
            ClerkChange::Upsert { external_id, email, name, image_url, restore } => {
                // Clerk is the source of truth for the profile: its values replace ours.
                sqlx::query(
                    "INSERT INTO users (id, external_id, email, name, image_url, tokens_used, tokens_limit, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $7) \
                     ON CONFLICT (external_id) DO UPDATE SET email = excluded.email, name = excluded.name, \
                       image_url = excluded.image_url, \
                       deleted_at = CASE WHEN $8 THEN NULL ELSE users.deleted_at END, \
                       updated_at = excluded.updated_at")
                    .bind(new_id()).bind(external_id).bind(email).bind(name).bind(image_url)
                    .bind(free_tokens).bind(now).bind(*restore)
                    .execute(&mut *tx).await?;
                (Outcome::Processed, Some(external_id.clone()))
            }
            ClerkChange::Delete { external_id } => {
                let n = sqlx::query("UPDATE users SET deleted_at = $2, updated_at = $2 WHERE external_id = $1")
                    .bind(external_id).bind(now)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    (Outcome::Ignored, None)
                } else {
                    (Outcome::Processed, Some(external_id.clone()))
                }
            }
            ClerkChange::Ignore => (Outcome::Ignored, None),
        };
        tx.commit().await?;
        Ok(result)
    })
}

/// Applies a subscription change and records the event, in one transaction. Returns the
/// outcome and the external id of the user that changed.
pub async fn apply_stripe(
    db: &Db,
    event_id: &str,
    created: Option<i64>,
    sub: Option<&Subscription>,
) -> Result<(Outcome, Option<String>), DbError> {
    let now = now_ms();
    with_pool!(db, p => {
        let mut tx = p.begin().await?;
        if !first_delivery!(tx, "stripe", event_id) {
            return Ok((Outcome::Duplicate, None));
        }
        let Some(sub) = sub else {
            tx.commit().await?;
            return Ok((Outcome::Ignored, None));
        };
        // The customer id once we know it; the metadata the checkout put on the subscription
        // before that (and then we remember the customer id).
        let mut user: Option<(String, String)> = None;
        if let Some(customer) = &sub.customer {
            user = sqlx::query_as("SELECT id, external_id FROM users WHERE stripe_customer_id = $1 ORDER BY id LIMIT 1")
                .bind(customer).fetch_optional(&mut *tx).await?;
        }
        if let (None, Some(id)) = (&user, &sub.user_id) {
            user = sqlx::query_as("SELECT id, external_id FROM users WHERE id = $1")
                .bind(id).fetch_optional(&mut *tx).await?;
        }
        if let (None, Some(clerk)) = (&user, &sub.clerk_id) {
            user = sqlx::query_as("SELECT id, external_id FROM users WHERE external_id = $1")
                .bind(clerk).fetch_optional(&mut *tx).await?;
        }
        let Some((user_id, external_id)) = user else {
            // Not recorded as seen: redelivering it once the user exists will apply it.
            tracing::warn!(event = event_id, subscription = sub.id, customer = ?sub.customer,
                "stripe webhook about a customer we do not know; ignored");
            return Ok((Outcome::Ignored, None));
        };
        let (plan, limit) = sub.plan.clone().unzip();
        // A deletion applies only to the user's current subscription: the end of an old one,
        // delivered late, must not cancel a newer one. And an event older than the last one
        // applied (Stripe's `created`) is stale: `updated` delivered after `deleted` must not
        // bring a plan back.
        let n = sqlx::query(
            "UPDATE users SET subscription_id = $2, subscription_status = COALESCE($3, subscription_status), \
             subscription_plan = COALESCE($4, subscription_plan), tokens_limit = COALESCE($5, tokens_limit), \
             stripe_customer_id = COALESCE($6, stripe_customer_id), updated_at = $7, \
             subscription_event_at = COALESCE($9, subscription_event_at) \
             WHERE id = $1 AND (NOT $8 OR subscription_id IS NULL OR subscription_id = $2) \
             AND ($9 IS NULL OR subscription_event_at IS NULL OR subscription_event_at <= $9)")
            .bind(&user_id).bind(&sub.id).bind(&sub.status).bind(plan).bind(limit)
            .bind(&sub.customer).bind(now).bind(sub.deleted).bind(created)
            .execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        if n == 0 {
            return Ok((Outcome::Ignored, None));
        }
        Ok((Outcome::Processed, Some(external_id)))
    })
}
