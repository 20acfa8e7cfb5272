//! The in-memory lease table behind the SQLite book (`memory.rs`). One process holds a SQLite
//! store (the lock file sees to it), so its leases need not be written: every handle on the
//! same file in this process shares one table here, and the leases end with the process, as a
//! crash would end them. Written leases cost a SQLite reconcile a quarter of its throughput.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// The leases of one SQLite database: object id → (holder, until).
#[derive(Debug, Default)]
pub(crate) struct MemLeases {
    held: Mutex<HashMap<i64, (Arc<str>, i64)>>,
}

/// One table per database file in this process.
static BY_FILE: LazyLock<Mutex<HashMap<std::path::PathBuf, Arc<MemLeases>>>> =
    LazyLock::new(Default::default);

impl MemLeases {
    /// The table shared by every handle on `path` in this process.
    pub fn for_file(path: &Path) -> Arc<Self> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let mut files = BY_FILE.lock().unwrap_or_else(|e| e.into_inner());
        files.entry(key).or_default().clone()
    }

    fn held(&self) -> MutexGuard<'_, HashMap<i64, (Arc<str>, i64)>> {
        // A panic while holding this lock leaves the map consistent (single inserts/removes).
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every lease: (id, holder, until).
    pub fn all(&self) -> Vec<(i64, String, i64)> {
        let held = self.held();
        held.iter()
            .map(|(id, (holder, until))| (*id, holder.to_string(), *until))
            .collect()
    }

    /// Ids `holder` may not claim as of `now`: leased by anyone until now or later, or by
    /// `holder` itself however long ago.
    pub fn unavailable(&self, now: i64, holder: &str) -> Vec<i64> {
        let held = self.held();
        held.iter()
            .filter(|(_, (h, until))| *until >= now || &**h == holder)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Leases each free (or expired as of `now`, and not `holder`'s own) id to `holder` until
    /// `until`; returns whether each was taken.
    pub fn take(&self, ids: &[i64], holder: &str, until: i64, now: i64) -> Vec<bool> {
        let holder: Arc<str> = Arc::from(holder);
        let mut held = self.held();
        ids.iter()
            .map(|id| match held.get(id) {
                Some((h, live)) if *live >= now || *h == holder => false,
                _ => {
                    held.insert(*id, (holder.clone(), until));
                    true
                }
            })
            .collect()
    }

    /// Extends to `until` (if given) the leases `holder` still has on `ids`; returns whether
    /// each was held.
    pub fn renew(&self, ids: &[i64], holder: &str, until: Option<i64>) -> Vec<bool> {
        let mut held = self.held();
        ids.iter()
            .map(|id| match held.get_mut(id) {
                Some((h, live)) if &**h == holder => {
                    if let Some(until) = until {
                        *live = until;
                    }
                    true
                }
                _ => false,
            })
            .collect()
    }

    /// Gives back the leases `holder` still has on `ids`; returns whether each was held.
    pub fn release(&self, ids: &[i64], holder: &str) -> Vec<bool> {
        let mut held = self.held();
        ids.iter()
            .map(|id| match held.get(id) {
                Some((h, _)) if &**h == holder => {
                    held.remove(id);
                    true
                }
                _ => false,
            })
            .collect()
    }

    /// Whether `holder` still has each of `ids` (expired or not).
    pub fn held_by(&self, ids: &[i64], holder: &str) -> Vec<bool> {
        let held = self.held();
        ids.iter()
            .map(|id| held.get(id).is_some_and(|(h, _)| &**h == holder))
            .collect()
    }

    /// Gives back every lease `holder` has; returns how many there were.
    pub fn release_holder(&self, holder: &str) -> u64 {
        let mut held = self.held();
        let before = held.len();
        held.retain(|_, (h, _)| &**h != holder);
        (before - held.len()) as u64
    }

    /// Gives back every lease; returns how many there were.
    pub fn clear(&self) -> u64 {
        let mut held = self.held();
        let n = held.len() as u64;
        held.clear();
        n
    }
}
