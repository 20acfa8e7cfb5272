//! This process's seat among the replicas of a PostgreSQL store. A holder id is used by one
//! live process at a time, proven by a heartbeat; so a process restarted under the same id
//! (the default is the host name) takes over what its dead predecessor leased as soon as that
//! heartbeat lapses, instead of waiting out every lease. SQLite needs none of this: its lock
//! file already admits one process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tracing::{debug, error, info, warn};

use super::Engine;
use crate::clock::{format_ms, Clock as _, SystemClock};

/// A registration under this engine's holder id, until [`Engine::leave`].
#[derive(Debug, Clone)]
pub struct Seat {
    instance: String,
}

impl Engine {
    /// Registers this process under its holder id, waiting while another live process uses
    /// the id (its heartbeat not yet lapsed: it is running, or was killed moments ago).
    /// Returns `None` if shutdown was requested while waiting.
    pub async fn join(&self) -> anyhow::Result<Option<Seat>> {
        static JOINS: AtomicU64 = AtomicU64::new(0);
        // Unique per process start (and per join within one process).
        let instance = format!(
            "{}:{}:{}",
            std::process::id(),
            SystemClock.now_ms(),
            JOINS.fetch_add(1, Ordering::Relaxed)
        );
        let mut warned = false;
        loop {
            let now = self.clock.now_ms();
            let until = now.saturating_add(self.heartbeat_ms());
            let other = self
                .store
                .timed(
                    self.store
                        .join_replicas(self.holder(), &instance, now, until),
                )
                .await
                .context("registering this process among the replicas")?;
            let Some(other) = other else {
                // No other live process uses this id: what it leases was left by a
                // predecessor that died (a crash, SIGKILL). Take it over at once.
                let left = self
                    .store
                    .timed(self.store.release_holder_leases(self.holder()))
                    .await
                    .context("taking over the leases of an earlier process")?;
                if left > 0 {
                    info!(
                        holder = self.holder(),
                        leases = left,
                        "took over the leases an earlier process under this id left behind"
                    );
                }
                return Ok(Some(Seat { instance }));
            };
            if !warned {
                warn!(
                    holder = self.holder(),
                    other = %other.instance,
                    "another thalamus process runs as holder {:?} (its heartbeat lasts until {}); \
                     waiting for it to stop. Processes on one host need their own sync.holder_id",
                    self.holder(),
                    format_ms(other.heartbeat_until)
                );
                warned = true;
            }
            let wait = Duration::from_millis(self.heartbeat_ms().clamp(100, 1000) as u64);
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Keeps `seat`'s heartbeat alive until shutdown. If another process has taken the
    /// holder id over (this one's heartbeat lapsed in a long outage), this one stops.
    pub async fn keep(&self, seat: &Seat) {
        let every = Duration::from_millis((self.heartbeat_ms() / 3).max(100) as u64);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let until = self.clock.now_ms().saturating_add(self.heartbeat_ms());
            let beat = self.store.heartbeat(self.holder(), &seat.instance, until);
            match self.store.timed(beat).await {
                Ok(true) => {}
                Ok(false) => {
                    error!(
                        holder = self.holder(),
                        "another process has taken over holder id {:?}; stopping",
                        self.holder()
                    );
                    self.shutdown.cancel();
                    return;
                }
                // An outage: the store's health says so once; the next beat tries again.
                Err(e) => self
                    .health
                    .failed(self.clock.now_ms(), "a heartbeat", &e.into()),
            }
        }
    }

    /// Ends `seat`'s registration, so the next process under this id starts at once.
    pub async fn leave(&self, seat: &Seat) {
        let leave = self.store.leave_replicas(self.holder(), &seat.instance);
        match self.store.timed(leave).await {
            Ok(()) => debug!(holder = self.holder(), "left the replicas"),
            Err(e) => warn!("could not leave the replicas (the heartbeat lapses by itself): {e}"),
        }
    }

    fn heartbeat_ms(&self) -> i64 {
        i64::try_from(self.settings.sync.heartbeat_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }
}
