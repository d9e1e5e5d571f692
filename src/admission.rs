//! Admission control for new connections: a server-wide rate of joins (GCRA, through the
//! `governor` crate), so a reconnect storm cannot take latency from the clients already here.
//!
//! A join over the rate first waits its turn (up to `MAX_QUEUE` of the rate's worth of
//! joins may wait, about 2 s): the connection is open but idle, which costs the server
//! nothing, and every waiting client gets in without a retry. Only past that queue is a join
//! refused, with a retry hint as long as the queue ahead of it plus jitter: refusing early
//! with a hint of a few milliseconds would turn every refused client into another handshake
//! a moment later, which costs the server nearly as much as the join it refused.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Seconds' worth of joins allowed to wait their turn before joins are refused.
const MAX_QUEUE_SECS: f64 = 2.0;

/// Decides whether (and when) a new connection may join.
pub struct Admission {
    limiter: Option<DefaultDirectRateLimiter>,
    rate: u32,
    waiting: AtomicU64,
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
        }
    }

    /// Waits for this connection's turn; `Err(hint)` if the queue is full and the client
    /// should come back after `hint`.
    pub async fn admit(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.check().is_ok() {
            return Ok(());
        }
        let ahead = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _queued = Queued(&self.waiting);
        let queue_secs = ahead as f64 / f64::from(self.rate);
        if queue_secs >= MAX_QUEUE_SECS {
            return Err(retry_hint(queue_secs));
        }
        limiter.until_ready().await;
        Ok(())
    }
}

struct Queued<'a>(&'a AtomicU64);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The queue's length in time, plus as much again at random, so refused clients come back
/// spread out rather than all at once.
fn retry_hint(queue_secs: f64) -> Duration {
    Duration::from_secs_f64(queue_secs * (1.0 + rand::random::<f64>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joins_over_the_rate_wait_their_turn_then_are_refused_with_a_hint() {
        let a = std::sync::Arc::new(Admission::new(4));
        // The burst (1) gets in at once; the next ones queue (2 s at 4/s = 8 places).
        assert!(a.admit().await.is_ok());
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
        let hint = a.admit().await.expect_err("the queue is full");
        assert!(hint >= Duration::from_secs(2), "{hint:?}");
        for q in queued {
            assert!(q.await.unwrap().is_ok(), "every queued join gets in");
        }
        assert!(Admission::new(0).admit().await.is_ok());
    }
}
