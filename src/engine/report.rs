//! What a sync pass did, counted by outcome: the CLI's summary, `run --once`'s progress test,
//! and tests read it.

use std::ops::AddAssign;

/// What one sync pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub synced: usize,
    pub deferred: usize,
    pub failed: usize,
    pub permanent: usize,
    pub waiting: usize,
    pub reaped: usize,
    /// Claimed but given back unrun (shutdown, or changed since it was claimed ahead).
    pub released: usize,
    /// Dropped because another holder took the lease over (this process stalled past it).
    pub lost: usize,
    /// Ran, but an event changed the status meanwhile: due again at once, not recorded.
    pub rerun: usize,
    /// Rounds of rechecks and retries that gave back their unstarted objects because news
    /// came (see [`crate::store::Lane`]): the pass ends so policies and news go first.
    pub yielded: usize,
}

impl SyncReport {
    /// Steps that ran (or objects reaped): the measure of progress.
    pub fn attempted(&self) -> usize {
        self.synced + self.deferred + self.failed + self.permanent + self.reaped
    }

    /// Whether another pass may find work now: steps ran, or a round yielded to news.
    pub fn another_pass(&self) -> bool {
        self.attempted() > 0 || self.yielded > 0
    }
}

impl AddAssign for SyncReport {
    fn add_assign(&mut self, o: Self) {
        self.synced += o.synced;
        self.deferred += o.deferred;
        self.failed += o.failed;
        self.permanent += o.permanent;
        self.waiting += o.waiting;
        self.reaped += o.reaped;
        self.released += o.released;
        self.lost += o.lost;
        self.rerun += o.rerun;
        self.yielded += o.yielded;
    }
}
