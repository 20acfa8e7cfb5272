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
use crate::store::{NewExecution, Outcome};

/// What one round of polls did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullSummary {
    pub steps: usize,
    pub seen: usize,
    pub created: usize,
    pub updated: usize,
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
        let (outcome, error) = match &result {
            Ok(r) => {
                if let Transition::Recovered(failures) = self.pull_health.succeeded(step.name()) {
                    info!(
                        step = step.name(),
                        "poll recovered after {failures} failed attempt(s)"
                    );
                }
                if r.created + r.updated == 0 {
                    return Some(r.clone());
                }
                info!(
                    step = step.name(),
                    seen = r.seen,
                    created = r.created,
                    updated = r.updated,
                    "pulled"
                );
                (Outcome::Ok, None)
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

    /// How long the pull loop waits before polling `step` again: its interval or, while it
    /// fails, its backoff. Public so tests and the operator surface can see the schedule.
    pub fn pull_delay(&self, step: &dyn PullStep) -> Duration {
        let max = Duration::from_secs(self.settings.pull.max_backoff_seconds);
        self.pull_health.delay(step.name(), step.interval(), max)
    }

    /// Polls `step` until shutdown, on its interval or sooner when its hint fires; while it
    /// fails, only after its backoff (a hint does not cut that short).
    pub(crate) async fn pull_loop(&self, step: Arc<dyn PullStep>) {
        loop {
            if self
                .poll(step.as_ref())
                .await
                .is_some_and(|r| r.created + r.updated > 0)
            {
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
