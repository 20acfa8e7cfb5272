//! The settle window: a dataset is taken only once its files have stayed the same (by
//! fingerprint) for the window, or its marker exists. A dataset that references files which
//! have not arrived (VLA BDFs) is complete only once they have, or once it has stayed the same
//! for the longer wait for missing files; its marker means complete at once, whatever is
//! missing, for the files as they were when it appeared: a change made while the marker stays
//! (a late file) settles by the window. What the [`Settler`] remembers is kept
//! in the store as well (the `settle_state` table), so a restart, or `thalamus run --once`
//! from cron, resumes each window instead of starting it again. A poll reports only what
//! changed ([`Settler::take_changes`]), so an idle poll over settled datasets writes nothing.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::refused::Refusals;
use super::scan::DatasetScan;
use crate::store::SettleRecord;

/// What the settler remembers of a dataset between polls: a fingerprint, not its files, so
/// memory stays per dataset rather than per file.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// 0: the dataset could not be listed.
    fingerprint: u64,
    since_ms: i64,
    settled: bool,
    polled: bool,
    /// Changed since the store last heard of it.
    dirty: bool,
    /// It references files that do not exist (yet), so it waits the longer wait.
    missing: bool,
    /// The fingerprint it was last reported to the store with by this process (0: never).
    reported: u64,
    /// The marker was there at the last listing.
    marked: bool,
    /// The marker appeared while the files were as they are: it vouches for them. A change
    /// made while it stays (a late file, still being written) settles by the window.
    vouched: bool,
}

/// What changed in a settler since the last [`Settler::take_changes`], for the store.
#[derive(Debug, Clone, Default)]
pub struct SettleChanges {
    /// Datasets first seen, or seen with another fingerprint.
    pub changed: Vec<SettleRecord>,
    /// Datasets no longer there.
    pub vanished: Vec<String>,
}

impl SettleChanges {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.vanished.is_empty()
    }
}

/// Decides when a dataset has been still long enough to be taken.
#[derive(Debug)]
pub struct Settler {
    settle_ms: i64,
    /// How long a dataset missing referenced files must stay the same before it is taken.
    missing_wait_ms: i64,
    seen: HashMap<String, Seen>,
    /// Forgotten since the last [`Settler::take_changes`].
    vanished: Vec<String>,
    /// Whether the stored state has been loaded into this settler.
    restored: bool,
    refusals: Refusals,
    /// Polls since every settled dataset was last reported, changed or not.
    since_full_report: u32,
    /// Whether this poll reports every settled dataset.
    full_report: bool,
}

/// Every this many polls a source reports every settled dataset, changed or not, so the
/// store is corrected within a few polls of anything done to it behind the source's back (an
/// Observation deleted by hand, a restored backup); between them, only what changed.
pub const FULL_REPORT_EVERY: u32 = 10;

impl Settler {
    /// A settler with the given window.
    pub fn new(settle: Duration) -> Self {
        Self {
            settle_ms: settle.as_millis() as i64,
            missing_wait_ms: 0,
            seen: HashMap::new(),
            vanished: Vec::new(),
            restored: false,
            refusals: Refusals::default(),
            since_full_report: 0,
            full_report: true,
        }
    }

    /// The same settler, taking a dataset that references files which do not exist (yet)
    /// only once it has stayed the same for `wait` (or the settle window, if longer), unless
    /// its marker says it is complete.
    pub fn with_missing_wait(mut self, wait: Duration) -> Self {
        self.missing_wait_ms = wait.as_millis() as i64;
        self
    }

    /// How long a dataset must stay the same before it is taken.
    fn window_ms(&self, missing: bool) -> i64 {
        if missing {
            self.settle_ms.max(self.missing_wait_ms)
        } else {
            self.settle_ms
        }
    }

    /// Whether [`Settler::restore`] has run: a source loads its stored state once, on its
    /// first poll.
    pub fn is_restored(&self) -> bool {
        self.restored
    }

    /// Resumes the windows a previous process recorded (datasets already known keep what
    /// this settler saw); the next poll's [`Settler::observe`] decides from there.
    pub fn restore(&mut self, records: Vec<SettleRecord>) {
        for r in records {
            self.seen.entry(r.name).or_insert(Seen {
                fingerprint: r.fingerprint as u64,
                since_ms: r.since_ms,
                settled: false,
                polled: false,
                dirty: false,
                missing: false,
                reported: 0,
                // Not stored: a marker found at the first listing after a restart vouches, as
                // at first sight (so `run --once` from cron takes a marked dataset at once).
                marked: false,
                vouched: false,
            });
        }
        self.restored = true;
    }

    /// Heap bytes its memory of datasets holds (table slots, names), for the benchmark: a
    /// figure the allocator's reuse of freed memory cannot hide, as it can an RSS delta.
    pub fn tracked_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(String, Seen)>() + 1;
        let names: usize = self.seen.keys().map(String::capacity).sum();
        self.seen.capacity() * slot + names
    }

    /// Datasets seen and not (yet) settled.
    pub fn pending(&self) -> usize {
        self.seen.values().filter(|s| !s.settled).count()
    }

    /// Records this poll's listing of a dataset; returns whether it is settled now.
    pub fn observe(&mut self, scan: &DatasetScan, now_ms: i64) -> bool {
        let fingerprint = scan.fingerprint().max(1); // 0 means "could not be listed"
        let fresh = Seen {
            fingerprint,
            since_ms: now_ms,
            settled: false,
            polled: true,
            dirty: true,
            missing: false,
            reported: 0,
            marked: false,
            vouched: false,
        };
        let window = self.window_ms(!scan.missing.is_empty());
        let entry = self.seen.entry(scan.name.clone()).or_insert(fresh);
        entry.polled = true;
        let appeared = scan.marked && !entry.marked;
        if entry.fingerprint != fingerprint {
            *entry = Seen {
                reported: entry.reported,
                ..fresh
            };
        }
        entry.vouched |= appeared;
        entry.marked = scan.marked;
        entry.missing = !scan.missing.is_empty();
        entry.settled = !scan.files.is_empty()
            && ((scan.marked && entry.vouched) || now_ms - entry.since_ms >= window);
        entry.settled
    }

    /// Whether the settled dataset `name` is to be reported to the store this poll: it
    /// changed since this process last reported it, or this is a full report. Reporting it
    /// is then taken as done; [`Settler::report_failed`] undoes that for the lot.
    pub fn report(&mut self, name: &str) -> bool {
        let full = self.full_report;
        match self.seen.get_mut(name) {
            Some(s) if s.settled && (full || s.reported != s.fingerprint) => {
                s.reported = s.fingerprint;
                true
            }
            _ => false,
        }
    }

    /// The store did not take (all of) this poll's report: the next poll reports everything.
    pub fn report_failed(&mut self) {
        self.since_full_report = FULL_REPORT_EVERY;
    }

    /// A dataset could not be listed this poll (unreadable, or changing under the scan):
    /// its window starts again.
    pub fn unsettle(&mut self, name: &str, now_ms: i64) {
        let unlisted = Seen {
            fingerprint: 0,
            since_ms: now_ms,
            settled: false,
            polled: true,
            dirty: true,
            missing: false,
            reported: 0,
            marked: false,
            vouched: false,
        };
        match self.seen.get_mut(name) {
            // Already recorded as unlistable: only the (unstored) wait moves.
            Some(s) if s.fingerprint == 0 => {
                s.since_ms = now_ms;
                s.polled = true;
            }
            Some(s) => {
                *s = Seen {
                    marked: s.marked,
                    ..unlisted
                }
            }
            None => {
                self.seen.insert(name.to_string(), unlisted);
            }
        }
    }

    /// Refuses the dataset at or around `path` this poll (it is not tracked, so it settles
    /// afresh once fixed), warning the first time only.
    pub fn refuse(&mut self, path: &Path, why: &str) {
        self.refusals.refuse(path, why);
    }

    /// Starts a poll (every [`FULL_REPORT_EVERY`]th reports every settled dataset).
    pub fn begin_poll(&mut self) {
        for s in self.seen.values_mut() {
            s.polled = false;
        }
        self.full_report =
            self.since_full_report == 0 || self.since_full_report >= FULL_REPORT_EVERY;
        self.since_full_report = if self.full_report {
            1
        } else {
            self.since_full_report + 1
        };
    }

    /// Ends a poll: datasets that were not listed have vanished and are forgotten.
    pub fn end_poll(&mut self) {
        let vanished = &mut self.vanished;
        self.seen.retain(|name, s| {
            if !s.polled {
                vanished.push(name.clone());
            }
            s.polled
        });
        self.refusals.end_poll();
    }

    /// What changed since the last call, for the store; nothing after an idle poll.
    pub fn take_changes(&mut self) -> SettleChanges {
        let mut changed = Vec::new();
        for (name, s) in self.seen.iter_mut().filter(|(_, s)| s.dirty) {
            s.dirty = false;
            changed.push(SettleRecord {
                name: name.clone(),
                fingerprint: s.fingerprint as i64,
                since_ms: s.since_ms,
            });
        }
        SettleChanges {
            changed,
            vanished: std::mem::take(&mut self.vanished),
        }
    }

    /// Changes the store could not take: they are offered again by the next
    /// [`Settler::take_changes`] (as they stand then).
    pub fn requeue(&mut self, changes: SettleChanges) {
        for r in changes.changed {
            if let Some(s) = self.seen.get_mut(&r.name) {
                s.dirty = true;
            }
        }
        for name in changes.vanished {
            if !self.seen.contains_key(&name) {
                self.vanished.push(name);
            }
        }
    }

    /// How long until the soonest unsettled dataset could settle, if it stays still. One
    /// whose window has passed without settling (it has no files) cannot settle by waiting:
    /// it asks for no early poll, or the source would poll every few milliseconds.
    pub fn next_deadline(&self, now_ms: i64) -> Option<Duration> {
        self.seen
            .values()
            .filter(|s| !s.settled)
            .map(|s| s.since_ms + self.window_ms(s.missing) - now_ms)
            .filter(|&ms| ms > 0)
            .min()
            .map(|ms| Duration::from_millis(ms as u64))
    }

    /// Datasets being tracked.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no dataset is tracked.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}
