//! One circuit breaker per provider and key: after `failure_threshold` consecutive failed calls
//! the provider is skipped for `cooldown`, then one trial call is let through (half-open); its
//! success closes the breaker, its failure opens it for another cooldown.
//!
//! Only failures that say something about the provider's health count (timeouts, network
//! errors, 429s, 5xx and malformed streams). A 4xx answer means the provider is up: it resets the
//! count like a success does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::config::BreakerConfig;
use crate::retry::ErrorClass;

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown is over and one trial call is under way.
    HalfOpen,
}

/// The breakers of every provider (keyed by the caller, e.g. provider id and key fingerprint).
#[derive(Debug)]
pub(crate) struct Breakers {
    config: BreakerConfig,
    states: Mutex<HashMap<String, State>>,
}

/// Whether a failure of this class counts against the provider's health.
pub(crate) fn counts(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::Timeout | ErrorClass::Network | ErrorClass::RateLimited | ErrorClass::Server
    )
}

impl Breakers {
    pub(crate) fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            config,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a call may go to `key` now. Once the cooldown is over this lets exactly one
    /// trial through; the caller must then report its outcome (`success`, `failure` or
    /// `release`).
    pub(crate) fn try_acquire(&self, key: &str) -> bool {
        let mut states = self.states.lock().unwrap();
        let state = states
            .entry(key.to_string())
            .or_insert(State::Closed { failures: 0 });
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// The call answered (successfully, or with an error that is not the provider's fault).
    pub(crate) fn success(&self, key: &str) {
        self.states
            .lock()
            .unwrap()
            .insert(key.to_string(), State::Closed { failures: 0 });
    }

    /// The call failed in a way that counts against the provider.
    pub(crate) fn failure(&self, key: &str) {
        let mut states = self.states.lock().unwrap();
        let state = states
            .entry(key.to_string())
            .or_insert(State::Closed { failures: 0 });
        let open = State::Open {
            until: Instant::now() + self.config.cooldown,
        };
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } | State::HalfOpen => open,
            State::Open { until } => State::Open { until },
        };
    }

    /// The call ended without telling anything (cancelled): a half-open trial is given back.
    pub(crate) fn release(&self, key: &str) {
        let mut states = self.states.lock().unwrap();
        if let Some(state) = states.get_mut(key) {
            if *state == State::HalfOpen {
                *state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }

    /// Whether the breaker of `key` is open (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn is_open(&self, key: &str) -> bool {
        matches!(
            self.states.lock().unwrap().get(key),
            Some(State::Open { .. } | State::HalfOpen)
        )
    }
}
