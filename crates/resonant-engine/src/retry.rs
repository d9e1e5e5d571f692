//! One retry policy for every block: how many attempts, how long to wait between them, which
//! failures are worth another try, and how long one attempt and the whole block may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What kind of failure a block attempt ended with; decides whether it is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// The attempt ran past its timeout.
    Timeout,
    /// Connecting, sending or reading failed (including a stream cut mid-way).
    Network,
    /// The other side said 429 (or the equivalent).
    RateLimited,
    /// The other side failed (5xx, an overloaded provider, a malformed stream).
    Server,
    /// The request itself was refused (4xx other than 429): retrying sends the same thing.
    Client,
    /// The block's own input or output was wrong (a template error, JSON that did not parse).
    Invalid,
    /// A rule refused it (a private address, a token limit, cancellation): never retried.
    Refused,
}

/// A failed block attempt.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct BlockError {
    /// Decides whether the policy retries it.
    pub class: ErrorClass,
    /// Said to the user as is.
    pub message: String,
    /// The other side's `Retry-After`, honoured as the minimum wait before the next attempt.
    pub retry_after: Option<Duration>,
}

impl BlockError {
    /// An error of `class` saying `message`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> BlockError {
        BlockError {
            class,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, with the other side's requested wait.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> BlockError {
        self.retry_after = after;
        self
    }
}

/// A block's retry policy, from its config's `retry` object (camelCase fields, all optional).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub attempts: u32,
    /// Wait before the second attempt.
    pub initial_interval_ms: u64,
    /// Each further wait is this many times the previous one.
    pub multiplier: f64,
    /// No wait is longer than this (a `Retry-After` may be, up to `maxRetryAfterMs`).
    pub max_interval_ms: u64,
    /// The longest `Retry-After` honoured; a longer one fails the attempt for good.
    pub max_retry_after_ms: u64,
    /// Each wait is scaled by a random factor in `1 ± jitter` (0–1).
    pub jitter: f64,
    /// Which failures are retried.
    pub retry_on: Vec<ErrorClass>,
    /// One attempt's limit.
    pub attempt_timeout_ms: Option<u64>,
    /// The whole block's limit, attempts and waits included.
    pub total_timeout_ms: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial_interval_ms: 500,
            multiplier: 2.0,
            max_interval_ms: 30_000,
            max_retry_after_ms: 120_000,
            jitter: 0.2,
            retry_on: vec![
                ErrorClass::Timeout,
                ErrorClass::Network,
                ErrorClass::RateLimited,
                ErrorClass::Server,
            ],
            attempt_timeout_ms: None,
            total_timeout_ms: None,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn once() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Reads a block config's `retry` field; absent means the default policy.
    pub fn from_config(config: &serde_json::Value) -> Result<RetryPolicy, String> {
        let mut policy = match config.get("retry") {
            None | Some(serde_json::Value::Null) => RetryPolicy::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| e.to_string())?,
        };
        if let Some(ms) = config.get("timeoutMs").and_then(|v| v.as_u64()) {
            policy.attempt_timeout_ms = Some(ms);
        }
        policy.check()?;
        Ok(policy)
    }

    /// Refuses values that make no sense (zero attempts, negative jitter, …).
    pub fn check(&self) -> Result<(), String> {
        if self.attempts == 0 || self.attempts > 100 {
            return Err("retry.attempts must be between 1 and 100".into());
        }
        if !(self.multiplier >= 1.0 && self.multiplier <= 100.0) {
            return Err("retry.multiplier must be between 1 and 100".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err("retry.jitter must be between 0 and 1".into());
        }
        if self.attempt_timeout_ms == Some(0) || self.total_timeout_ms == Some(0) {
            return Err("timeouts must be positive".into());
        }
        Ok(())
    }

    /// Whether a failure of `error` on attempt `attempt` (1-based) gets another attempt.
    pub fn should_retry(&self, error: &BlockError, attempt: u32) -> bool {
        if attempt >= self.attempts || !self.retry_on.contains(&error.class) {
            return false;
        }
        match error.retry_after {
            Some(after) => after <= Duration::from_millis(self.max_retry_after_ms),
            None => true,
        }
    }

    /// The wait after failed attempt `attempt` (1-based): exponential, capped, jittered, and
    /// never shorter than the other side's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.initial_interval_ms as f64 * exp).min(self.max_interval_ms as f64);
        let factor = if self.jitter > 0.0 {
            1.0 + self.jitter * (rand::random::<f64>() * 2.0 - 1.0)
        } else {
            1.0
        };
        let wait = Duration::from_millis((base * factor).max(0.0) as u64);
        match retry_after {
            Some(after) => wait.max(after),
            None => wait,
        }
    }

    /// One attempt's timeout, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout_ms.map(Duration::from_millis)
    }

    /// The whole block's timeout, if any.
    pub fn total_timeout(&self) -> Option<Duration> {
        self.total_timeout_ms.map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn delays_grow_cap_and_honour_retry_after() {
        let p = RetryPolicy {
            jitter: 0.0,
            initial_interval_ms: 100,
            max_interval_ms: 1_000,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay(1, None), Duration::from_millis(100));
        assert_eq!(p.delay(2, None), Duration::from_millis(200));
        assert_eq!(p.delay(10, None), Duration::from_millis(1_000));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        let jittered = RetryPolicy {
            jitter: 0.5,
            ..p.clone()
        };
        for _ in 0..100 {
            let d = jittered.delay(1, None).as_millis();
            assert!((50..=150).contains(&d), "{d}");
        }
    }

    #[test]
    fn only_listed_failures_retry_within_the_attempts() {
        let p = RetryPolicy::default();
        let server = BlockError::new(ErrorClass::Server, "500");
        assert!(p.should_retry(&server, 1));
        assert!(p.should_retry(&server, 2));
        assert!(!p.should_retry(&server, 3));
        assert!(!p.should_retry(&BlockError::new(ErrorClass::Client, "400"), 1));
        assert!(!p.should_retry(&BlockError::new(ErrorClass::Refused, "no"), 1));
        let far = BlockError::new(ErrorClass::RateLimited, "429")
            .with_retry_after(Some(Duration::from_secs(3600)));
        assert!(
            !p.should_retry(&far, 1),
            "an hour's Retry-After is not waited out"
        );
    }

    #[test]
    fn config_is_read_and_checked() {
        let p = RetryPolicy::from_config(
            &json!({"retry": {"attempts": 5, "retryOn": ["timeout"]}, "timeoutMs": 250}),
        )
        .unwrap();
        assert_eq!(p.attempts, 5);
        assert_eq!(p.retry_on, vec![ErrorClass::Timeout]);
        assert_eq!(p.attempt_timeout(), Some(Duration::from_millis(250)));
        assert_eq!(
            RetryPolicy::from_config(&json!({})).unwrap(),
            RetryPolicy::default()
        );
        assert!(RetryPolicy::from_config(&json!({"retry": {"attempts": 0}})).is_err());
        assert!(RetryPolicy::from_config(&json!({"retry": {"tries": 2}})).is_err());
        assert!(RetryPolicy::from_config(&json!({"retry": {"jitter": 2}})).is_err());
    }
}
