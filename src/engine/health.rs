//! Whether the store answers, as the loops found it: an outage is logged once when it starts
//! and once when it ends, however many passes, flushes and polls fail in between, and the
//! operator surface can tell since when the store has been failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tracing::{debug, info, warn};

/// The store's health as the engine's loops saw it last.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Since when (epoch ms) the store has been failing, and the first error seen.
    failing: Mutex<Option<(i64, String)>>,
    /// Store calls of the loops that failed since start.
    failures: AtomicU64,
}

impl StoreHealth {
    /// Since when (epoch ms) the store has been failing, if it is.
    pub fn failing_since(&self) -> Option<i64> {
        self.lock().as_ref().map(|(since, _)| *since)
    }

    /// How many of the loops' store calls have failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records that `what` failed at `now`; logs a warning only if this starts an outage.
    pub fn failed(&self, now: i64, what: &str, error: &anyhow::Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut failing = self.lock();
        match &*failing {
            None => {
                warn!("store unavailable ({what} failed): {error:#}; holding work and retrying until it answers");
                *failing = Some((now, format!("{error:#}")));
            }
            Some(_) => debug!("store still unavailable ({what} failed): {error:#}"),
        }
    }

    /// Records that the store answered at `now`; logs once if this ends an outage.
    pub fn answered(&self, now: i64) {
        let mut failing = self.lock();
        if let Some((since, _)) = failing.take() {
            let secs = (now - since).max(0) as f64 / 1000.0;
            info!("store available again after {secs:.1}s; work resumes");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, String)>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}
