//! Admission control for new connections: a server-wide rate of joins (GCRA, through the
//! `governor` crate), so a reconnect storm cannot take latency from the clients already here.
//!
//! It runs before the WebSocket upgrade. A join over the rate first waits its turn (up to
//! `MAX_QUEUE_SECS` of the rate's worth of joins may wait, and none longer than that): the
//! request is pending, which costs the server nothing, and every waiting client gets in
//! without a retry. Past that queue a join is refused with HTTP 503 and `Retry-After`. A
//! refusal before the upgrade costs a fraction of a join (no WebSocket, no room, no sync),
//! where a close after the upgrade cost a whole handshake: at 1000 offered joins/s on one
//! core, that difference decided whether connected readers saw 70 ms or 16 s (see
//! docs/benchmarks.md).
//!
//! Refusals are booked like joins: each one takes the next free slot at the admission rate
//! after the queue, and its `Retry-After` points there. Refused clients therefore come back
//! spread out at the rate the server admits, rather than together a moment later, which
//! would turn every refusal into another refusal.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Seconds' worth of joins allowed to wait their turn before joins are refused.
const MAX_QUEUE_SECS: f64 = 2.0;
/// Longest `Retry-After`: past it clients are better served by their own backoff than by a
/// booking minutes away.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Decides whether (and when) a new connection may join.
pub struct Admission {
    limiter: Option<DefaultDirectRateLimiter>,
    rate: u32,
    waiting: AtomicU64,
    /// The last slot handed to a refused join.
    booked: Mutex<Option<Instant>>,
}

impl Admission {
    /// `per_sec` joins per second on average, with bursts of up to a quarter second's worth
    /// (at least 1); 0 admits everyone at once.
    pub fn new(per_sec: u32) -> Admission {
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let burst = NonZeroU32::new((per_sec / 4).max(1)).expect("at least 1");
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Admission {
            limiter,
            rate: per_sec,
            waiting: AtomicU64::new(0),
            booked: Mutex::new(None),
        }
    }

    /// A cheap check before any other work on a join: `Some(retry_after)` if the queue is
    /// full, so this join would be refused anyway (the refusal is booked).
    pub fn busy(&self) -> Option<Duration> {
        self.limiter.as_ref()?;
        (self.queue_secs(self.waiting.load(Ordering::Relaxed)) >= MAX_QUEUE_SECS)
            .then(|| self.book())
    }

    /// Waits for this connection's turn (at most 1.5 × `MAX_QUEUE_SECS`); `Err(retry_after)`
    /// if the queue is full or the wait ran out.
    pub async fn admit(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.check().is_ok() {
            return Ok(());
        }
        let ahead = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _queued = Queued(&self.waiting);
        if self.queue_secs(ahead) >= MAX_QUEUE_SECS {
            return Err(self.book());
        }
        // governor wakes waiters in no particular order: bound each wait, so no join sits
        // pending much longer than the queue promises (in order, all would be in by then).
        let wait = Duration::from_secs_f64(MAX_QUEUE_SECS * 1.5);
        tokio::time::timeout(wait, limiter.until_ready())
            .await
            .map_err(|_| self.book())
    }

    fn queue_secs(&self, joins: u64) -> f64 {
        joins as f64 / f64::from(self.rate.max(1))
    }

    /// Books the next free slot for a refused join: after the queue, one admission interval
    /// past the previous booking, at most `MAX_RETRY_AFTER` away. Returns the delay until it.
    fn book(&self) -> Duration {
        let now = Instant::now();
        let step = Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1)));
        let earliest = now + Duration::from_secs_f64(MAX_QUEUE_SECS);
        let mut booked = self.booked.lock().unwrap_or_else(|e| e.into_inner());
        let slot = booked.map_or(earliest, |last| (last + step).max(earliest));
        let slot = slot.min(now + MAX_RETRY_AFTER);
        *booked = Some(slot);
        slot - now
    }
}

struct Queued<'a>(&'a AtomicU64);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `Retry-After` in whole seconds, rounded up, so a client never returns before its slot.
pub fn retry_after_secs(retry: Duration) -> u64 {
    retry.as_secs() + u64::from(retry.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joins_over_the_rate_wait_their_turn_then_are_refused_with_a_booked_slot() {
        let a = std::sync::Arc::new(Admission::new(4));
        // The burst (1) gets in at once; the next ones queue (2 s at 4/s = 8 places).
        assert!(a.admit().await.is_ok());
        assert_eq!(a.busy(), None);
        let queued: Vec<_> = (0..8)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.admit().await })
            })
            .collect();
        // Let the queued joins register before the next one arrives.
        while a.waiting.load(Ordering::Relaxed) < 8 {
            tokio::task::yield_now().await;
        }
        let first = a.busy().expect("the queue is full");
        assert!(first >= Duration::from_secs(2), "{first:?}");
        let second = a.admit().await.expect_err("the queue is full");
        // Refusals are spaced at the admission rate (a quarter second at 4/s).
        assert!(
            second >= first + Duration::from_millis(240),
            "{first:?} {second:?}"
        );
        for q in queued {
            assert!(q.await.unwrap().is_ok(), "every queued join gets in");
        }
        assert!(Admission::new(0).admit().await.is_ok());
        assert_eq!(Admission::new(0).busy(), None);
    }

    #[test]
    fn bookings_stop_at_the_cap() {
        let a = Admission::new(1);
        let last = (0..200).map(|_| a.book()).last().unwrap();
        assert!(last <= MAX_RETRY_AFTER && last > MAX_RETRY_AFTER - Duration::from_secs(1));
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }
}
