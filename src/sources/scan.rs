//! The NFS-safe dataset scanner. Each immediate subdirectory of a source directory is a
//! dataset; a poll lists it with `stat` (never trusting inotify, which misses NFS writes) and
//! hands it to the [`Settler`], which calls it settled only once every file's size and mtime
//! have stayed the same for the settle window, or its marker file exists. Half-written or
//! vanishing files therefore never become an observation.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tracing::warn;

use super::refused::Refusals;

/// One file as listed this poll.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScannedFile {
    pub path: PathBuf,
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// One dataset as listed this poll.
#[derive(Debug, Clone)]
pub struct DatasetScan {
    /// The directory's name.
    pub name: String,
    pub dir: PathBuf,
    /// Sorted by path.
    pub files: Vec<ScannedFile>,
    /// The marker file exists: the writer says the dataset is complete.
    pub marked: bool,
    /// The first entry found whose name is not UTF-8: it cannot be named in a spec without
    /// loss, so the dataset is refused until it is renamed.
    pub not_utf8: Option<PathBuf>,
}

impl DatasetScan {
    /// Lists `dir` recursively. Dotfiles (editors' and rsync's temporaries) and the marker are
    /// not part of the dataset; symbolic links are not followed.
    pub fn list(name: &str, dir: &Path, marker: Option<&str>) -> io::Result<Self> {
        let mut files = Vec::new();
        let mut marked = false;
        let mut not_utf8 = None;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let entry = entry?;
                let file_name = entry.file_name();
                if file_name.as_encoded_bytes().starts_with(b".") {
                    continue;
                }
                if d == dir && marker.is_some_and(|m| file_name == *m) {
                    marked = true;
                    continue;
                }
                if file_name.to_str().is_none() {
                    not_utf8.get_or_insert_with(|| entry.path());
                    continue;
                }
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() {
                    files.push(ScannedFile {
                        path: entry.path(),
                        size: meta.len(),
                        mtime_ns: mtime_ns(&meta),
                    });
                }
            }
        }
        files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            files,
            marked,
            not_utf8,
        })
    }

    /// Adds files that live elsewhere (VLA BDFs); missing ones are skipped, since they may not
    /// have arrived yet.
    pub fn add_files(&mut self, paths: impl IntoIterator<Item = PathBuf>) -> io::Result<()> {
        for path in paths {
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => self.files.push(ScannedFile {
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                    path,
                }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        self.files.dedup_by(|a, b| a.path == b.path);
        Ok(())
    }

    /// A digest of every file's path, size and mtime: any write changes it.
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.files.hash(&mut h);
        h.finish()
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// What the settler remembers of a dataset between polls: a fingerprint, not its files, so
/// memory stays per dataset rather than per file.
#[derive(Debug, Clone, Copy)]
struct Seen {
    fingerprint: u64,
    since_ms: i64,
    settled: bool,
    polled: bool,
}

/// Decides when a dataset has been still long enough to be taken.
#[derive(Debug)]
pub struct Settler {
    settle_ms: i64,
    seen: HashMap<String, Seen>,
    refusals: Refusals,
}

impl Settler {
    /// A settler with the given window.
    pub fn new(settle: Duration) -> Self {
        Self {
            settle_ms: settle.as_millis() as i64,
            seen: HashMap::new(),
            refusals: Refusals::default(),
        }
    }

    /// Heap bytes its memory of datasets holds (table slots, names), for the benchmark: a
    /// figure the allocator's reuse of freed memory cannot hide, as it can an RSS delta.
    pub fn tracked_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(String, Seen)>() + 1;
        let names: usize = self.seen.keys().map(String::capacity).sum();
        self.seen.capacity() * slot + names
    }

    /// Records this poll's listing of a dataset; returns whether it is settled now.
    pub fn observe(&mut self, scan: &DatasetScan, now_ms: i64) -> bool {
        let fingerprint = scan.fingerprint();
        let entry = self.seen.entry(scan.name.clone()).or_insert(Seen {
            fingerprint,
            since_ms: now_ms,
            settled: false,
            polled: true,
        });
        entry.polled = true;
        if entry.fingerprint != fingerprint {
            *entry = Seen {
                fingerprint,
                since_ms: now_ms,
                settled: false,
                polled: true,
            };
        }
        entry.settled =
            !scan.files.is_empty() && (scan.marked || now_ms - entry.since_ms >= self.settle_ms);
        entry.settled
    }

    /// A dataset could not be listed this poll (unreadable, or changing under the scan):
    /// its window starts again.
    pub fn unsettle(&mut self, name: &str, now_ms: i64) {
        self.seen.insert(
            name.to_string(),
            Seen {
                fingerprint: 0,
                since_ms: now_ms,
                settled: false,
                polled: true,
            },
        );
    }

    /// Starts a poll.
    pub fn begin_poll(&mut self) {
        for s in self.seen.values_mut() {
            s.polled = false;
        }
    }

    /// Ends a poll: datasets that were not listed have vanished and are forgotten.
    pub fn end_poll(&mut self) {
        self.seen.retain(|_, s| s.polled);
        self.refusals.end_poll();
    }

    /// Refuses the dataset at or around `path` this poll (it is not tracked, so it settles
    /// afresh once fixed), warning the first time only.
    pub fn refuse(&mut self, path: &Path, why: &str) {
        self.refusals.refuse(path, why);
    }

    /// How long until the soonest unsettled dataset could settle, if it stays still. One
    /// whose window has passed without settling (it has no files) cannot settle by waiting:
    /// it asks for no early poll, or the source would poll every few milliseconds.
    pub fn next_deadline(&self, now_ms: i64) -> Option<Duration> {
        self.seen
            .values()
            .filter(|s| !s.settled)
            .map(|s| s.since_ms + self.settle_ms - now_ms)
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

/// Lists every dataset under `root`, feeds the settler, and passes each settled dataset to
/// `settled` (which may stop the scan by returning false). Datasets that cannot be listed are
/// logged and retried next poll; only an unreadable `root` is an error.
pub fn scan_root(
    root: &Path,
    marker: Option<&str>,
    settler: &mut Settler,
    now_ms: i64,
    extra: &dyn Fn(&DatasetScan) -> io::Result<Vec<PathBuf>>,
    settled: &mut dyn FnMut(DatasetScan) -> bool,
) -> io::Result<()> {
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let raw = entry.file_name();
        if raw.as_encoded_bytes().starts_with(b".") || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        match raw.into_string() {
            Ok(name) => dirs.push((name, entry.path())),
            // `caf\xe9` and `caf\xe8` would both read as `caf\u{FFFD}`: one key, two datasets.
            Err(_) => settler.refuse(&entry.path(), "its directory name is not UTF-8"),
        }
    }
    dirs.sort_unstable();
    settler.begin_poll();
    let mut aborted = false;
    for (name, dir) in dirs {
        let listed = DatasetScan::list(&name, &dir, marker).and_then(|mut scan| {
            let more = extra(&scan)?;
            scan.add_files(more)?;
            Ok(scan)
        });
        match listed {
            Ok(DatasetScan {
                not_utf8: Some(odd),
                ..
            }) => settler.refuse(&odd, "it holds a file whose name is not UTF-8"),
            Ok(scan) => {
                if settler.observe(&scan, now_ms) && !settled(scan) {
                    aborted = true;
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Vanished mid-listing: it is changing, so it is not settled.
                settler.unsettle(&name, now_ms);
            }
            Err(e) => {
                warn!(dataset = %dir.display(), "cannot list dataset (retrying next poll): {e}");
                settler.unsettle(&name, now_ms);
            }
        }
    }
    if !aborted {
        settler.end_poll();
    }
    Ok(())
}
