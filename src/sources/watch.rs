//! The inotify hint: a change under a directory makes the next poll come sooner. It is only a
//! hint: inotify does not see writes made by other NFS clients, so polling stays the truth.
//!
//! Only events that mean "something was written" are asked for: creation, modification of
//! data or metadata, close after writing, moves and deletes. The scan itself opens every
//! directory and reads every `Main.xml`; the watches' mask leaves out opens and reads, so the
//! kernel never queues those (notify's fixed mask asked for opens, and reading back the scan's
//! own 20,000 opens per poll cost a third of an idle controller's CPU).
//!
//! Watches are per directory (inotify is not recursive): every directory under a watched root
//! at the start, and each directory created or moved in later, as its event arrives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// Wakes a pull step early when something is written under its directories.
pub struct Hint {
    notify: Arc<Notify>,
    hints: Arc<AtomicU64>,
    last: Arc<Mutex<Option<PathBuf>>>,
    /// The task reading the events; aborted (closing the inotify descriptor) on drop.
    reader: Option<tokio::task::AbortHandle>,
}

impl Drop for Hint {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// What a watch asks the kernel for: writes, never reads or opens.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
}

/// The watched directories by descriptor, so an event's name becomes a path.
struct Tree {
    watches: Watches,
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl Tree {
    /// Watches `dir` and every directory under it (symlinks not followed).
    fn add(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        let mut first = true;
        while let Some(d) = stack.pop() {
            match self.watches.add(&d, mask() | WatchMask::DONT_FOLLOW) {
                Ok(wd) => {
                    self.dirs.insert(wd, d.clone());
                }
                // The root must be watchable; a subdirectory may vanish meanwhile.
                Err(e) if first => return Err(e),
                Err(e) => {
                    debug!(dir = %d.display(), "not watched: {e}");
                    continue;
                }
            }
            first = false;
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        Ok(())
    }
}

impl Hint {
    /// Watches `dirs` and the directories under them; when they cannot be watched (missing,
    /// too many watches, no async runtime) it says so and leaves the source to polling alone.
    pub fn watch(dirs: &[&Path]) -> Self {
        let mut hint = Self::none();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("no inotify hint (polling only): no async runtime");
            return hint;
        };
        let inotify = match Inotify::init() {
            Ok(i) => i,
            Err(e) => {
                warn!("no inotify hint (polling only): {e}");
                return hint;
            }
        };
        let mut tree = Tree {
            watches: inotify.watches(),
            dirs: HashMap::new(),
        };
        for dir in dirs {
            match tree.add(dir) {
                Ok(()) => debug!(dir = %dir.display(), "inotify hint active"),
                Err(e) => warn!(dir = %dir.display(), "no inotify hint (polling only): {e}"),
            }
        }
        let stream = match inotify.into_event_stream([0u8; 16384]) {
            Ok(s) => s,
            Err(e) => {
                warn!("no inotify hint (polling only): {e}");
                return hint;
            }
        };
        let (n, count, last) = (hint.notify.clone(), hint.hints.clone(), hint.last.clone());
        let task = runtime.spawn(async move {
            let mut stream = stream;
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(e) => {
                        debug!("inotify: {e}");
                        continue;
                    }
                };
                // An overflow says events were lost: polling on the interval catches up.
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    continue;
                }
                if event.mask.contains(EventMask::IGNORED) {
                    tree.dirs.remove(&event.wd);
                    continue;
                }
                let path = match (tree.dirs.get(&event.wd), &event.name) {
                    (Some(dir), Some(name)) => dir.join(name),
                    (Some(dir), None) => dir.clone(),
                    (None, _) => continue,
                };
                let new_dir = event.mask.contains(EventMask::ISDIR)
                    && (event.mask.contains(EventMask::CREATE)
                        || event.mask.contains(EventMask::MOVED_TO));
                if new_dir {
                    if let Err(e) = tree.add(&path) {
                        debug!(dir = %path.display(), "not watched: {e}");
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
                n.notify_one();
            }
        });
        hint.reader = Some(task.abort_handle());
        hint
    }

    /// A hint that never fires (polling only).
    pub fn none() -> Self {
        Self {
            notify: Arc::new(Notify::new()),
            hints: Arc::new(AtomicU64::new(0)),
            last: Arc::new(Mutex::new(None)),
            reader: None,
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
