//! The policy pass: objects whose revision is newer than `policed` go through their kind's
//! policies (create, update or delete), which derive other models.

use std::ops::AddAssign;
use std::panic::AssertUnwindSafe;

use anyhow::Context as _;
use futures::FutureExt as _;
use tracing::warn;

use super::Engine;
use crate::step::PolicyHook;
use crate::store::{NewExecution, Outcome};

/// What one policy pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Objects whose policies all succeeded (or that have none).
    pub handled: usize,
    /// Objects with at least one failing policy; they stay due and are retried next pass.
    pub failed: usize,
}

impl AddAssign for PolicyReport {
    fn add_assign(&mut self, o: Self) {
        self.handled += o.handled;
        self.failed += o.failed;
    }
}

impl Engine {
    /// Runs the policies of every object changed since policies last saw it, a page at a time.
    pub async fn policy_pass(&self) -> anyhow::Result<PolicyReport> {
        let mut report = PolicyReport::default();
        let mut after = 0;
        loop {
            let page = self
                .store
                .unpoliced(after, self.settings.policy.page_size)
                .await
                .context("reading changed objects")?;
            let Some(last) = page.last() else { break };
            after = last.row.id;
            let mut seen = Vec::with_capacity(page.len());
            let mut executions = Vec::new();
            for due in &page {
                let row = &due.row;
                let Some(policies) = self.registry.policies.get(&row.kind) else {
                    seen.push((row.id, row.revision, due.to()));
                    report.handled += 1;
                    continue;
                };
                let event = match (row.deleted_at, row.policed) {
                    (Some(_), _) => PolicyHook::Delete,
                    (None, 0) => PolicyHook::Create,
                    (None, _) => PolicyHook::Update,
                };
                let mut ok = true;
                for policy in policies {
                    let started = self.clock.now_ms();
                    let models = self.models.counting();
                    let run = AssertUnwindSafe(policy.run(event, due, &models))
                        .catch_unwind()
                        .await;
                    let error = match run {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(format!("{e:#}")),
                        Err(_) => Some("policy panicked".to_string()),
                    };
                    if let Some(error) = &error {
                        ok = false;
                        warn!(kind = %row.kind, key = %row.key, policy = policy.name(), "policy failed: {error}");
                    }
                    // A pass that changed nothing (a recheck of a request in progress) is
                    // no news: the audit trail keeps what policies did, and what failed.
                    if error.is_none() && models.changes() == 0 {
                        continue;
                    }
                    executions.push(NewExecution {
                        kind: row.kind.clone(),
                        key: row.key.clone(),
                        step: format!("policy:{}", policy.name()),
                        generation: row.generation,
                        cause: format!("{event:?} (revision {})", row.revision).to_lowercase(),
                        holder: self.holder().to_string(),
                        started_at: started,
                        duration_ms: (self.clock.now_ms() - started).max(0),
                        outcome: if error.is_none() {
                            Outcome::Ok
                        } else {
                            Outcome::Error
                        },
                        error,
                    });
                }
                if ok {
                    seen.push((row.id, row.revision, due.to()));
                    report.handled += 1;
                } else {
                    report.failed += 1;
                }
            }
            self.store
                .mark_policed(&seen)
                .await
                .context("marking objects policed")?;
            self.store
                .record(&executions)
                .await
                .context("recording policy executions")?;
        }
        Ok(report)
    }
}
