//! Admission control for new connections: a server-wide rate of joins (GCRA, through the
//! `governor` crate), so a burst of reconnects is told to come back later instead of making
//! every connected client wait behind it.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Decides whether a new connection may join now.
pub struct Admission {
    limiter: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

impl Admission {
    /// `per_sec` joins per second on average, with bursts of up to a quarter second's worth
    /// (at least 1); 0 admits everyone.
    pub fn new(per_sec: u32) -> Admission {
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let burst = NonZeroU32::new((per_sec / 4).max(1)).expect("at least 1");
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Admission {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// `None` if the connection may join; otherwise how long to wait before retrying.
    pub fn check(&self) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        match limiter.check() {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(self.clock.now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_past_the_rate_is_refused_with_a_retry_hint() {
        let a = Admission::new(40);
        let admitted = (0..100).filter(|_| a.check().is_none()).count();
        assert!(
            (10..=11).contains(&admitted),
            "burst of a quarter second: {admitted}"
        );
        let retry = a.check().expect("refused");
        assert!(retry <= Duration::from_millis(25), "{retry:?}");
        assert!(Admission::new(0).check().is_none());
    }
}
