//! Pull steps: each polls its source on its interval (sooner when its hint fires) and upserts
//! desired state. A failing poll is logged and retried next interval, never fatal.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Engine;
use crate::step::{PullReport, PullStep};
use crate::store::NewExecution;

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
            Ok(r) if r.created + r.updated == 0 => return Some(r.clone()),
            Ok(r) => {
                info!(
                    step = step.name(),
                    seen = r.seen,
                    created = r.created,
                    updated = r.updated,
                    "pulled"
                );
                ("ok", None)
            }
            Err(e) => {
                warn!(
                    step = step.name(),
                    "poll failed (retrying next interval): {e:#}"
                );
                ("error", Some(format!("{e:#}")))
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
            outcome: outcome.into(),
            error,
        };
        if let Err(e) = self.store.record(&[execution]).await {
            warn!(step = step.name(), "could not record poll: {e}");
        }
        result.ok()
    }

    /// Polls `step` until shutdown, on its interval or sooner when its hint fires.
    pub(crate) async fn pull_loop(&self, step: Arc<dyn PullStep>) {
        loop {
            if self
                .poll(step.as_ref())
                .await
                .is_some_and(|r| r.created + r.updated > 0)
            {
                self.wake();
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(step.interval()) => {}
                _ = step.changed() => {}
            }
        }
    }
}
