//! The inotify hint: a change under a directory makes the next poll come sooner. It is only a
//! hint: inotify does not see writes made by other NFS clients, so polling stays the truth.

use std::path::Path;
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// Wakes a pull step early when something changes under its directories.
pub struct Hint {
    notify: Arc<Notify>,
    _watchers: Vec<notify::RecommendedWatcher>,
}

impl Hint {
    /// Watches `dirs` recursively; directories that cannot be watched (missing, too many
    /// watches) are logged and left to polling alone.
    pub fn watch(dirs: &[&Path]) -> Self {
        let notify = Arc::new(Notify::new());
        let mut watchers = Vec::new();
        for dir in dirs {
            let n = notify.clone();
            let made = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    n.notify_one();
                }
            });
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
            _watchers: watchers,
        }
    }

    /// A hint that never fires (polling only).
    pub fn none() -> Self {
        Self {
            notify: Arc::new(Notify::new()),
            _watchers: Vec::new(),
        }
    }

    /// Resolves when something changed since the last call.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}
