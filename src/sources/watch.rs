//! The inotify hint: a change under a directory makes the next poll come sooner. It is only a
//! hint: inotify does not see writes made by other NFS clients, so polling stays the truth.
//!
//! Only events that mean "something was written" hint: creation, modification of data, name
//! or metadata, close after writing, moves and deletes. The scan itself opens directories and
//! reads `Main.xml`; notify reports those opens too, and if they hinted, every poll would wake
//! the next one, forever.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// Wakes a pull step early when something is written under its directories.
pub struct Hint {
    notify: Arc<Notify>,
    hints: Arc<AtomicU64>,
    last: Arc<Mutex<Option<PathBuf>>>,
    _watchers: Vec<notify::RecommendedWatcher>,
}

/// Whether an event means data changed (and so is worth a poll). Reads, opens and closes
/// without writing are the scan's own footprints. A queue overflow (`Other` with the rescan
/// flag) does not hint either: during a scan of a large tree it can be caused by the scan's
/// own opens, and polling on the interval catches up with whatever was lost.
fn is_write(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

impl Hint {
    /// Watches `dirs` recursively; directories that cannot be watched (missing, too many
    /// watches) are logged and left to polling alone.
    pub fn watch(dirs: &[&Path]) -> Self {
        let notify = Arc::new(Notify::new());
        let hints = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(None));
        let mut watchers = Vec::new();
        for dir in dirs {
            let (n, count, last) = (notify.clone(), hints.clone(), last.clone());
            let made =
                notify::recommended_watcher(
                    move |event: notify::Result<notify::Event>| match event {
                        Ok(event) if is_write(&event.kind) => {
                            count.fetch_add(1, Ordering::SeqCst);
                            *last.lock().unwrap_or_else(|p| p.into_inner()) =
                                event.paths.first().cloned();
                            n.notify_one();
                        }
                        Ok(_) => {}
                        Err(e) => debug!("inotify: {e}"),
                    },
                );
            match made.and_then(|mut w| w.watch(dir, RecursiveMode::Recursive).map(|()| w)) {
                Ok(w) => {
                    debug!(dir = %dir.display(), "inotify hint active");
                    watchers.push(w);
                }
                Err(e) => warn!(dir = %dir.display(), "no inotify hint (polling only): {e}"),
            }
        }
        Self {
            notify,
            hints,
            last,
            _watchers: watchers,
        }
    }

    /// A hint that never fires (polling only).
    pub fn none() -> Self {
        Self {
            notify: Arc::new(Notify::new()),
            hints: Arc::new(AtomicU64::new(0)),
            last: Arc::new(Mutex::new(None)),
            _watchers: Vec::new(),
        }
    }

    /// Resolves when something changed since the last call.
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// How many events have hinted so far: what an idle source should keep at zero.
    pub fn hints(&self) -> u64 {
        self.hints.load(Ordering::SeqCst)
    }

    /// The path of the last event that hinted, to tell what keeps waking a source.
    pub fn last_hint(&self) -> Option<PathBuf> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
