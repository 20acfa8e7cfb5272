//! `thalamus run`'s controller: pull loops in the background, policy and sync passes whenever
//! there is work, until shutdown. (Event transports are started beside it by the bootstrap.) A failing pass (say, the database is briefly down) is logged and
//! retried; it never ends the process.

use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info};

use super::Engine;

/// How often old executions are pruned.
const PRUNE_EVERY_MS: i64 = 3_600_000;
/// The longest wait between passes while they fail (the store is down).
const PASS_RETRY_MAX: Duration = Duration::from_secs(5);

impl Engine {
    /// Runs the controller until the shutdown token is cancelled, then lets running steps
    /// finish (bounded by `sync.shutdown_grace_seconds`) and returns.
    pub async fn run(&self) -> anyhow::Result<()> {
        let mut pulls = JoinSet::new();
        if self.settings.pull.enabled {
            for step in self.registry.pulls.iter().cloned() {
                let engine = self.clone();
                pulls.spawn(async move { engine.pull_loop(step).await });
            }
        }
        let interval = Duration::from_millis(self.settings.sync.interval_ms.max(10));
        let mut wait = interval;
        let mut next_prune = 0;
        info!(holder = self.holder(), "controller running");
        while !self.shutdown.is_cancelled() {
            let now = self.clock.now_ms();
            match self.busy_passes().await {
                Ok(()) => {
                    self.health.answered(self.clock.now_ms());
                    wait = interval;
                }
                Err(e) => {
                    // Logged once per outage (see `StoreHealth`); retried ever less often,
                    // at most every few seconds, so recovery is noticed quickly.
                    self.health.failed(now, "a sync pass", &e);
                    wait = (wait * 2).clamp(interval, PASS_RETRY_MAX.max(interval));
                }
            }
            let now = self.clock.now_ms();
            if now >= next_prune && self.health.failing_since().is_none() {
                next_prune = now + PRUNE_EVERY_MS;
                self.prune(now).await;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
        while pulls.join_next().await.is_some() {}
        info!("controller stopped");
        Ok(())
    }

    /// Policy and sync passes until one makes no progress.
    async fn busy_passes(&self) -> anyhow::Result<()> {
        while !self.shutdown.is_cancelled() {
            let policy = self.policy_pass().await?;
            let sync = self.sync_pass().await?;
            if policy.handled == 0 && !sync.another_pass() {
                break;
            }
        }
        Ok(())
    }

    /// Prunes executions and dead letters older than their retention (`executions.*`).
    pub async fn prune(&self, now: i64) {
        let days = self.settings.executions.retain_days as i64;
        if days > 0 {
            match self.store.prune_executions(now - days * 86_400_000).await {
                Ok(0) => {}
                Ok(n) => info!(rows = n, "pruned executions older than {days} days"),
                Err(e) => error!("could not prune executions: {e}"),
            }
        }
        let days = self.settings.executions.dead_letter_retain_days as i64;
        if days > 0 {
            match self.store.purge_dead_letters(now - days * 86_400_000).await {
                Ok(0) => {}
                Ok(n) => info!(rows = n, "pruned dead letters older than {days} days"),
                Err(e) => error!("could not prune dead letters: {e}"),
            }
        }
    }
}
