//! The NFS-safe dataset scanner. Each immediate subdirectory of a source directory is a
//! dataset; a poll lists it with `stat` (never trusting inotify, which misses NFS writes) and
//! hands it to the [`Settler`], which calls it settled only once every file's size and mtime
//! have stayed the same for the settle window, or its marker file exists. Half-written or
//! vanishing files therefore never become an observation. Names that are not UTF-8 are
//! refused (see `refused.rs`).
//!
//! Every `stat` a poll makes is counted ([`stat_calls`]), so `thalamus bench` can hold an idle
//! poll to at most one per entry of the tree: one per entry listed, one per directory opened
//! (glibc's `opendir` sizes its buffer with an `fstat`) and one per file looked up elsewhere
//! (BDFs); reading a dataset's file makes none ([`DatasetScan::read`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use tracing::{debug, warn};

/// `stat` calls made by scans in this process since it started.
static STAT_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many `stat` calls (`stat`, `fstat`, `statx`) the scans of this process have made.
pub fn stat_calls() -> u64 {
    STAT_CALLS.load(Ordering::Relaxed)
}

fn counted(stats: u64) {
    STAT_CALLS.fetch_add(stats, Ordering::Relaxed);
}

/// `read_dir`, counted: opening a directory costs one `fstat`.
fn read_dir(dir: &Path) -> io::Result<std::fs::ReadDir> {
    counted(1);
    std::fs::read_dir(dir)
}

use super::settle::Settler;

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
    /// Files the dataset references elsewhere that do not exist (yet), sorted: VLA BDFs
    /// named in Main.xml that have not arrived.
    pub missing: Vec<PathBuf>,
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
            for entry in read_dir(&d)? {
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
                counted(1);
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
            missing: Vec::new(),
            not_utf8,
        })
    }

    /// Adds files that live elsewhere (VLA BDFs); those that do not exist (yet) are listed in
    /// [`DatasetScan::missing`] instead, since they may not have arrived yet.
    pub fn add_files(&mut self, paths: impl IntoIterator<Item = PathBuf>) -> io::Result<()> {
        for path in paths {
            counted(1);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => self.files.push(ScannedFile {
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                    path,
                }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.missing.push(path),
                Err(e) => return Err(e),
            }
        }
        self.files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        self.files.dedup_by(|a, b| a.path == b.path);
        self.missing.sort_unstable();
        self.missing.dedup();
        Ok(())
    }

    /// Reads the dataset's file `name` whole (e.g. `Main.xml`); `None` if it does not exist.
    /// Unlike `fs::read_to_string`, which `fstat`s the open file to size its buffer, it makes
    /// no `stat`: the listing has just made one, and a poll makes one per entry at most.
    pub fn read(&self, name: &str) -> io::Result<Option<String>> {
        let path = self.dir.join(name);
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let listed = self
            .files
            .iter()
            .find(|f| f.path == path)
            .map_or(0, |f| f.size);
        let mut text = String::with_capacity(usize::try_from(listed).unwrap_or(0));
        // Through `Take`, `read_to_string` reads until the end without asking the size.
        io::Read::read_to_string(&mut io::Read::take(&mut file, u64::MAX), &mut text)?;
        Ok(Some(text))
    }

    /// A digest of every file's path, size and mtime: any write changes it. Stable across
    /// processes and Rust releases (FNV-1a), since it is stored to survive restarts.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv1a::default();
        for f in &self.files {
            // Dataset paths are UTF-8 (others are refused), so this borrows, and its bytes
            // are the same on every platform and Rust release.
            h.write(f.path.to_string_lossy().as_bytes());
            h.write(&[0]); // no path holds a NUL: the end of this one
            h.write(&f.size.to_le_bytes());
            h.write(&f.mtime_ns.to_le_bytes());
        }
        h.0
    }
}

/// 64-bit FNV-1a: tiny, and defined by its constants, so a digest means the same in every
/// build (std's `DefaultHasher` promises no such thing).
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Lists every dataset under `root`, feeds the settler, and passes each settled dataset the
/// settler has to report (changed since reported, or a full report) to `settled` (which may
/// stop the scan by returning false); returns how many settled datasets were left out as
/// unchanged. Datasets that cannot be listed are logged and retried next poll; only an
/// unreadable `root` is an error.
pub fn scan_root(
    root: &Path,
    marker: Option<&str>,
    settler: &mut Settler,
    now_ms: i64,
    extra: &dyn Fn(&DatasetScan) -> io::Result<Vec<PathBuf>>,
    settled: &mut dyn FnMut(DatasetScan) -> bool,
) -> io::Result<usize> {
    let started = std::time::Instant::now();
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in read_dir(root)? {
        let entry = entry?;
        let raw = entry.file_name();
        // The type comes with the listing (`d_type`), not from a `stat`, on local file
        // systems and NFS alike.
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
    let datasets = dirs.len();
    settler.begin_poll();
    let (mut aborted, mut unchanged) = (false, 0);
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
                if !settler.observe(&scan, now_ms) {
                    continue;
                }
                if !settler.report(&scan.name) {
                    unchanged += 1;
                } else if !settled(scan) {
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
    let root_name = root.display().to_string();
    super::metrics::scan_metrics().scanned(&root_name, started.elapsed(), settler.pending());
    // `thalamus bench` reads this line to count a running controller's polls and stats.
    debug!(root = %root.display(), datasets, unchanged, stat_calls_total = stat_calls(), "scan done");
    Ok(unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing makes one `stat` per entry and one per directory it opens; reading a file of
    /// the dataset makes none. (No other unit test scans, so the process-wide count is ours.)
    #[test]
    fn a_listing_stats_each_entry_once_and_a_read_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Main.xml"), "<MainTable/>").unwrap();
        std::fs::write(dir.path().join("Scan.xml"), "<ScanTable/>").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/data"), "x").unwrap();
        std::fs::write(dir.path().join("DONE"), "").unwrap();
        let before = stat_calls();
        let scan = DatasetScan::list("d", dir.path(), Some("DONE")).unwrap();
        // Two directories opened; Main.xml, Scan.xml, sub and sub/data stat'ed; the marker
        // is known by its name.
        assert_eq!(stat_calls() - before, 6);
        assert!(scan.marked);
        assert_eq!(scan.files.len(), 3);
        let before = stat_calls();
        assert_eq!(
            scan.read("Main.xml").unwrap().as_deref(),
            Some("<MainTable/>")
        );
        assert_eq!(scan.read("Missing.xml").unwrap(), None);
        assert_eq!(stat_calls(), before);
    }
}
