//! The retry schedule: `min(cap, base · factor^(attempts-1))`, spread by deterministic jitter.
//! It is persisted by the store as `next_attempt_at`, so it survives restarts.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::settings::BackoffSettings;

/// The exponential backoff schedule from `sync.backoff`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: f64,
    factor: f64,
    max_ms: f64,
    jitter: f64,
}

impl Backoff {
    /// The schedule configured in `sync.backoff`.
    pub fn new(s: &BackoffSettings) -> Self {
        Self {
            base_ms: s.base_seconds * 1000.0,
            factor: s.factor,
            max_ms: s.max_seconds * 1000.0,
            jitter: s.jitter,
        }
    }

    /// The delay before retry number `attempts` (1 after the first failure). `salt` (the
    /// object's identity) spreads the jitter so failures of many objects do not retry in
    /// lockstep, while the same object and attempt always get the same delay.
    pub fn delay_ms(&self, attempts: i32, salt: &str) -> i64 {
        let exponent = attempts.saturating_sub(1).max(0);
        let raw = self.base_ms * self.factor.powi(exponent);
        let capped = if raw.is_finite() {
            raw.min(self.max_ms)
        } else {
            self.max_ms
        };
        let mut hasher = DefaultHasher::new();
        (salt, attempts).hash(&mut hasher);
        let unit = (hasher.finish() % 2_000_001) as f64 / 1_000_000.0 - 1.0; // in [-1, 1]
        let spread = capped * (1.0 + self.jitter * unit);
        spread.min(self.max_ms).max(1.0).round() as i64
    }
}
