//! A directory whose immediate subdirectories are datasets, polled as a pull step: each
//! settled dataset becomes an Observation; see `crate::sources` for the settle rules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::steps::models::{DataFile, Instrument, Observation, Product};
use crate::steps::prelude::*;

/// Observations are upserted in batches of this many datasets.
const BATCH: usize = 100;

/// How a source finds files that belong to a dataset but live outside its directory.
pub(super) type ExtraFiles = dyn Fn(&DatasetScan) -> std::io::Result<Vec<PathBuf>> + Send + Sync;

/// A directory whose immediate subdirectories are datasets.
pub struct DirectorySource {
    name: &'static str,
    instrument: Instrument,
    product: Product,
    root: PathBuf,
    marker: Option<String>,
    interval: Duration,
    settler: Arc<Mutex<Settler>>,
    extra: Arc<ExtraFiles>,
    /// Directories to watch for the inotify hint.
    watch: Vec<PathBuf>,
    /// The hint, set up by the first poll that finds every watched directory (so commands
    /// that only build the registry watch nothing, and a directory mounted later still gets one).
    hint: Mutex<Option<Arc<Hint>>>,
    /// When the soonest pending dataset may settle, so the next poll comes right then.
    next_deadline: Mutex<Option<Duration>>,
    /// Whether the last poll found the root missing (warn once, not every poll).
    root_missing: Mutex<bool>,
}

/// Where a directory source looks and how patiently.
pub(super) struct Layout {
    pub root: PathBuf,
    /// Directories whose changes hint that a poll is due (the root, and BDFs for VLA).
    pub watch: Vec<PathBuf>,
    pub marker: Option<String>,
    pub poll_seconds: u64,
    pub settle_seconds: u64,
    /// How long a dataset missing files it references waits for them (0: no longer than
    /// the settle window).
    pub missing_wait_seconds: u64,
}

impl DirectorySource {
    /// A source named `name` whose datasets are `instrument`'s `product`.
    pub(super) fn new(
        name: &'static str,
        instrument: Instrument,
        product: Product,
        layout: Layout,
        extra: Arc<ExtraFiles>,
    ) -> Self {
        Self {
            name,
            instrument,
            product,
            watch: layout.watch,
            hint: Mutex::new(None),
            marker: layout.marker,
            interval: Duration::from_secs(layout.poll_seconds),
            settler: Arc::new(Mutex::new(
                Settler::new(Duration::from_secs(layout.settle_seconds))
                    .with_missing_wait(Duration::from_secs(layout.missing_wait_seconds)),
            )),
            extra,
            next_deadline: Mutex::new(None),
            root_missing: Mutex::new(false),
            root: layout.root,
        }
    }

    /// Starts the inotify hint once every watched directory exists. Watching walks the whole
    /// tree (a watch per directory), so it runs on a blocking thread, not a runtime worker.
    async fn ensure_hint(&self) -> anyhow::Result<()> {
        let started = self
            .hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let wanted = !started && self.watch.iter().all(|d| d.is_dir());
        if !wanted {
            return Ok(());
        }
        let dirs = self.watch.clone();
        let watched = tokio::task::spawn_blocking(move || {
            let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
            Hint::watch(&dirs)
        })
        .await
        .context("watching the tree")?;
        let mut hint = self.hint.lock().unwrap_or_else(|p| p.into_inner());
        hint.get_or_insert_with(|| Arc::new(watched));
        Ok(())
    }

    /// Loads the settle state a previous process stored, once, before the first poll.
    async fn restore(&self, models: &Models) -> anyhow::Result<()> {
        if self.settler().is_restored() {
            return Ok(());
        }
        let records = models
            .settle_state(self.name)
            .await
            .context("loading the settle state")?;
        self.settler().restore(records);
        Ok(())
    }

    /// Stores what changed in the settle state this poll; if the store fails, the changes
    /// are offered again next poll.
    async fn save(&self, models: &Models, changes: SettleChanges) -> anyhow::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        match models
            .save_settle_state(self.name, &changes.changed, &changes.vanished)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                self.settler().requeue(changes);
                Err(e.context("saving the settle state"))
            }
        }
    }

    fn settler(&self) -> std::sync::MutexGuard<'_, Settler> {
        self.settler.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observation(&self, scan: DatasetScan) -> (String, Observation) {
        let files = scan
            .files
            .into_iter()
            .map(|f| DataFile {
                path: f.path.to_string_lossy().into_owned(),
                size: f.size,
                mtime_ns: f.mtime_ns,
            })
            .collect();
        let missing_files = scan
            .missing
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let obs = Observation {
            instrument: self.instrument,
            product: self.product,
            name: scan.name,
            location: scan.dir.to_string_lossy().into_owned(),
            files,
            requested_at: None,
            missing_files,
        };
        (obs.key(), obs)
    }
}

#[async_trait]
impl PullStep for DirectorySource {
    fn name(&self) -> &str {
        self.name
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn pull(&self, models: &Models) -> anyhow::Result<PullReport> {
        self.ensure_hint().await?;
        self.restore(models).await?;
        let now = models.now_ms();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<DatasetScan>(BATCH);
        let (root, marker, settler, extra) = (
            self.root.clone(),
            self.marker.clone(),
            self.settler.clone(),
            self.extra.clone(),
        );
        // Listing is blocking I/O (and slow on NFS): do it off the async workers, streaming
        // settled datasets back so memory stays bounded by the batch, not the tree.
        let scan = tokio::task::spawn_blocking(move || {
            let mut settler = settler.lock().unwrap_or_else(|p| p.into_inner());
            let result = scan_root(
                &root,
                marker.as_deref(),
                &mut settler,
                now,
                &*extra,
                &mut |d| tx.blocking_send(d).is_ok(),
            );
            (result, settler.next_deadline(now), settler.take_changes())
        });
        let mut report = PullReport::default();
        let mut batch = Vec::with_capacity(BATCH);
        let mut stored = Ok(());
        while let Some(scan) = rx.recv().await {
            batch.push(self.observation(scan));
            if batch.len() == BATCH {
                stored = upsert(models, &mut batch, &mut report).await;
                if stored.is_err() {
                    break;
                }
            }
        }
        if stored.is_ok() {
            stored = upsert(models, &mut batch, &mut report).await;
        }
        // If the store failed, this stops the scan: the rest could not be stored either.
        drop(rx);
        let (result, deadline, changes) = scan.await.context("directory scan task failed")?;
        if stored.is_err() || report.skipped > 0 {
            // What was not stored is reported again next poll (every dataset, to be sure).
            self.settler().report_failed();
        }
        *self.next_deadline.lock().unwrap_or_else(|p| p.into_inner()) = deadline;
        let saved = self.save(models, changes).await;
        stored?;
        saved?;
        let mut missing = self.root_missing.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(unchanged) => {
                report.seen += unchanged;
                if *missing {
                    info!(source = self.name, root = %self.root.display(), "source directory is back");
                }
                *missing = false;
                Ok(report)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !*missing {
                    warn!(source = self.name, root = %self.root.display(),
                        "source directory does not exist (yet); polling on");
                }
                *missing = true;
                Ok(report)
            }
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("listing {}", self.root.display())))
            }
        }
    }

    async fn changed(&self) {
        let deadline = *self.next_deadline.lock().unwrap_or_else(|p| p.into_inner());
        let hint = self.hint.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let hinted = async {
            match &hint {
                Some(h) => h.changed().await,
                None => std::future::pending().await,
            }
        };
        match deadline {
            Some(after) => {
                tokio::select! {
                    _ = hinted => {}
                    _ = tokio::time::sleep(after + Duration::from_millis(10)) => {}
                }
            }
            None => hinted.await,
        }
    }
}

/// Upserts a batch of observations; an item the store refuses is logged and tried again next
/// poll without holding back the others. Only a failure of the store itself is an error.
async fn upsert(
    models: &Models,
    batch: &mut Vec<(String, Observation)>,
    report: &mut PullReport,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    report.seen += batch.len();
    let (changes, refused) = models.upsert_each(batch).await?;
    for (key, e) in &refused {
        warn!(key, "observation not stored (tried again next poll): {e:#}");
        report.skipped += 1;
        report
            .problems
            .push(format!("observation {key} not stored: {e:#}"));
    }
    let missing: HashMap<&str, &[String]> = batch
        .iter()
        .filter(|(_, o)| !o.missing_files.is_empty())
        .map(|(key, o)| (key.as_str(), o.missing_files.as_slice()))
        .collect();
    for change in changes {
        match change.change {
            Change::Created => report.created += 1,
            Change::Updated { .. } => report.updated += 1,
            Change::Unchanged => continue,
        }
        if let Some(files) = missing.get(change.key.as_str()) {
            warn!(
                key = change.key,
                missing_files = ?files,
                "dataset taken without {} referenced file(s) that have not arrived (its \
                 marker says complete, or the wait for missing files passed); it is \
                 ingested without them, and again when they land",
                files.len()
            );
        }
    }
    batch.clear();
    Ok(())
}
