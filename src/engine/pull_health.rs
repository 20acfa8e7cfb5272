//! How each pull step has been faring: its run of failed polls sets how long the next poll
//! waits (the interval, doubling while it fails, capped), and what changed since the last poll
//! is what gets logged, so an outage says "failing" once and "recovered" once, not a line per
//! poll.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// One step's run of failures.
#[derive(Debug, Default)]
struct Health {
    /// Consecutive failed polls.
    failures: u32,
    /// The last failure's message.
    error: Option<String>,
}

/// What a poll's outcome changed, and so what is worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Nothing new: as healthy, or failing with the same message, as before.
    Same,
    /// The step started failing, or fails with a different message now.
    Failing,
    /// The step works again after this many failed polls.
    Recovered(u32),
}

/// Every pull step's health, shared by [`super::Engine::pull_once`] and the pull loops.
#[derive(Debug, Default)]
pub(crate) struct PullHealth {
    steps: Mutex<HashMap<String, Health>>,
    /// What was last stored of each step's health, so a poll writes only what changed.
    recorded: Mutex<HashMap<String, crate::store::SourceHealth>>,
}

impl PullHealth {
    /// Records a successful poll of `step`.
    pub(crate) fn succeeded(&self, step: &str) -> Transition {
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        match steps.remove(step) {
            Some(h) if h.failures > 0 => Transition::Recovered(h.failures),
            _ => Transition::Same,
        }
    }

    /// Records a failed poll of `step` with `error`.
    pub(crate) fn failed(&self, step: &str, error: &str) -> Transition {
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let h = steps.entry(step.to_string()).or_default();
        h.failures = h.failures.saturating_add(1);
        if h.error.as_deref() == Some(error) {
            return Transition::Same;
        }
        h.error = Some(error.to_string());
        Transition::Failing
    }

    /// What was last stored of `step`'s health by this process.
    pub(crate) fn recorded(&self, step: &str) -> Option<crate::store::SourceHealth> {
        let recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        recorded.get(step).cloned()
    }

    /// Remembers what was stored of a step's health.
    pub(crate) fn record(&self, health: crate::store::SourceHealth) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        recorded.insert(health.source.clone(), health);
    }

    /// Whether `step`'s last poll failed.
    pub(crate) fn failing(&self, step: &str) -> bool {
        self.failures(step) > 0
    }

    /// How long to wait before polling `step` again: its interval, or while it fails
    /// `interval · 2^(failures-1)`, at most `max` (never less than the interval).
    pub(crate) fn delay(&self, step: &str, interval: Duration, max: Duration) -> Duration {
        backoff(self.failures(step), interval, max)
    }

    fn failures(&self, step: &str) -> u32 {
        let steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        steps.get(step).map_or(0, |h| h.failures)
    }
}

/// `interval · 2^(failures-1)` capped at `max` (or at the interval, if that is longer).
fn backoff(failures: u32, interval: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    interval
        .saturating_mul(1u32 << doublings)
        .min(max.max(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_interval_up_to_the_cap() {
        let s = Duration::from_secs;
        let delays: Vec<_> = (0..8)
            .map(|f| backoff(f, s(30), s(300)).as_secs())
            .collect();
        assert_eq!(delays, [30, 30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX, s(30), s(300)), s(300));
        assert_eq!(
            backoff(5, s(600), s(300)),
            s(600),
            "never below the interval"
        );
    }
}
