//! Pull steps: each polls its source on its interval (sooner when its hint fires) and upserts
//! desired state. A failing poll is never fatal: it is retried at the interval, doubling while
//! it keeps failing (up to `pull.max_backoff_seconds`, and a hint does not cut that short),
//! and it is logged when the source starts failing, fails differently, or recovers, not once
//! per poll.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::pull_health::Transition;
use super::Engine;
use crate::step::{PullReport, PullStep};
use crate::store::{NewExecution, Outcome, SourceHealth};

/// How stale a working source's stored `last_success_at` may grow before an idle poll
/// (which otherwise writes nothing) refreshes it.
const HEALTH_REFRESH_MS: i64 = 600_000;

/// What one round of polls did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullSummary {
    pub steps: usize,
    pub seen: usize,
    pub created: usize,
    pub updated: usize,
    /// Items the sources listed but could not use (each reported in their health).
    pub skipped: usize,
    /// Pull steps whose poll failed.
    pub failed: usize,
}

impl Engine {
    /// Polls every registered pull step once.
    pub async fn pull_once(&self) -> PullSummary {
        let mut summary = PullSummary::default();
        if !self.settings.pull.enabled {
            return summary;
        }
        for step in &self.registry.pulls {
            summary.steps += 1;
            match self.poll(step.as_ref()).await {
                Some(r) => {
                    summary.seen += r.seen;
                    summary.created += r.created;
                    summary.updated += r.updated;
                    summary.skipped += r.skipped;
                }
                None => summary.failed += 1,
            }
        }
        summary
    }

    /// One poll of one step, logged and recorded when it changed something or failed.
    async fn poll(&self, step: &dyn PullStep) -> Option<PullReport> {
        let started = self.clock.now_ms();
        let timeout = Duration::from_secs(self.settings.sync.step_timeout_seconds);
        let result = match tokio::time::timeout(timeout, step.pull(&self.models)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "poll timed out after {}s",
                timeout.as_secs()
            )),
        };
        let problems = self.keep_health(step.name(), &result).await;
        let (outcome, error) = match &result {
            Ok(r) => {
                if let Transition::Recovered(failures) = self.pull_health.succeeded(step.name()) {
                    info!(
                        step = step.name(),
                        "poll recovered after {failures} failed attempt(s)"
                    );
                }
                if r.created + r.updated == 0 && problems.is_none() {
                    return Some(r.clone());
                }
                info!(
                    step = step.name(),
                    seen = r.seen,
                    created = r.created,
                    updated = r.updated,
                    "pulled"
                );
                (Outcome::Ok, problems)
            }
            Err(e) => {
                let message = format!("{e:#}");
                if self.pull_health.failed(step.name(), &message) == Transition::Failing {
                    warn!(
                        step = step.name(),
                        "poll failed (retrying with backoff; logged again only when the error \
                         changes or the source recovers): {message}"
                    );
                }
                (Outcome::Error, Some(message))
            }
        };
        let execution = NewExecution {
            kind: "pull".into(),
            key: step.name().to_string(),
            step: format!("pull:{}", step.name()),
            generation: 0,
            cause: "poll".into(),
            holder: self.holder().to_string(),
            started_at: started,
            duration_ms: (self.clock.now_ms() - started).max(0),
            outcome,
            error: error.clone(),
        };
        if let Err(e) = self.store.record(&[execution]).await {
            // A failing poll has said so once already; the store is then most likely the
            // reason, and a line per poll is what the backoff is there to avoid.
            if error.is_some() {
                debug!(step = step.name(), "could not record poll: {e}");
            } else {
                warn!(step = step.name(), "could not record poll: {e}");
            }
        }
        result.ok()
    }

    /// Updates `step`'s stored health from a poll's result (see [`SourceHealth`]), writing
    /// only when something besides the time changed, or to refresh a stale last success, so
    /// an idle poll writes nothing. Logs a working poll's problems when they change; returns
    /// them then, for the audit trail.
    async fn keep_health(&self, step: &str, result: &anyhow::Result<PullReport>) -> Option<String> {
        let now = self.clock.now_ms();
        let prev = match self.pull_health.recorded(step) {
            Some(h) => Some(h),
            // A restarted process carries on from what its predecessor stored.
            None => self
                .store
                .source_health()
                .await
                .ok()
                .and_then(|all| all.into_iter().find(|h| h.source == step)),
        };
        let prev_problems = prev
            .as_ref()
            .filter(|h| h.state == "degraded")
            .and_then(|h| h.last_error.clone());
        let kept_error = prev
            .as_ref()
            .map(|h| (h.last_error.clone(), h.last_error_at))
            .unwrap_or_default();
        let mut said = None;
        let next = match result {
            Ok(r) => {
                let problems = (!r.problems.is_empty()).then(|| r.problems.join("; "));
                if problems != prev_problems {
                    match &problems {
                        Some(p) => {
                            warn!(
                                step,
                                skipped = r.skipped,
                                "poll worked with problems (logged again only when they change): {p}"
                            );
                            said = Some(p.clone());
                        }
                        None => info!(step, "poll problems cleared"),
                    }
                }
                let (last_error, last_error_at) = match &problems {
                    Some(p) if Some(p) == kept_error.0.as_ref() => (problems.clone(), kept_error.1),
                    Some(_) => (problems.clone(), Some(now)),
                    None => kept_error,
                };
                SourceHealth {
                    source: step.to_string(),
                    state: if problems.is_some() || r.skipped > 0 {
                        "degraded"
                    } else {
                        "ok"
                    }
                    .to_string(),
                    last_success_at: Some(now),
                    last_error,
                    last_error_at,
                    failures: 0,
                    seen: r.seen as i64,
                    skipped: r.skipped as i64,
                    updated_at: now,
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                let at = if kept_error.0.as_deref() == Some(message.as_str()) {
                    kept_error.1
                } else {
                    Some(now)
                };
                SourceHealth {
                    source: step.to_string(),
                    state: "failing".to_string(),
                    last_success_at: prev.as_ref().and_then(|h| h.last_success_at),
                    last_error: Some(message),
                    last_error_at: at,
                    failures: prev.as_ref().map_or(0, |h| h.failures).saturating_add(1),
                    seen: prev.as_ref().map_or(0, |h| h.seen),
                    skipped: prev.as_ref().map_or(0, |h| h.skipped),
                    updated_at: now,
                }
            }
        };
        let same = prev.as_ref().is_some_and(|p| {
            let timeless = |h: &SourceHealth| {
                (
                    h.state.clone(),
                    h.last_error.clone(),
                    h.failures,
                    h.seen,
                    h.skipped,
                )
            };
            timeless(p) == timeless(&next) && now - p.updated_at < HEALTH_REFRESH_MS
        });
        if !same {
            match self.store.save_source_health(&next).await {
                Ok(()) => self.pull_health.record(next),
                Err(e) => debug!(step, "could not store the source's health: {e}"),
            }
        }
        said
    }

    /// How long the pull loop waits before polling `step` again: its interval or, while it
    /// fails, its backoff. Public so tests and the operator surface can see the schedule.
    pub fn pull_delay(&self, step: &dyn PullStep) -> Duration {
        let max = Duration::from_secs(self.settings.pull.max_backoff_seconds);
        self.pull_health.delay(step.name(), step.interval(), max)
    }

    /// Polls `step` until shutdown, on its interval or sooner when its hint fires; while it
    /// fails, only after its backoff (a hint does not cut that short).
    /// A poll under way when shutdown comes is abandoned (a poll is stateless, and what it
    /// has not committed is rolled back), so shutdown never waits for a slow source.
    pub(crate) async fn pull_loop(&self, step: Arc<dyn PullStep>) {
        loop {
            let polled = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.poll(step.as_ref()) => r,
            };
            if polled.is_some_and(|r| r.created + r.updated > 0) {
                self.wake();
            }
            let delay = self.pull_delay(step.as_ref());
            if self.pull_health.failing(step.name()) {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            } else {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                    _ = step.changed() => {}
                }
            }
        }
    }
}
