//! Building blocks for pull steps that watch data sources: the NFS-safe dataset scanner with
//! its settle window, and the inotify hint. Where each source is (`sources.*`) is the step
//! modules' business.

mod metrics;
mod refused;
mod scan;
mod settle;
mod watch;

pub use metrics::{scan_metrics, ScanMetrics};
pub use scan::{scan_root, stat_calls, DatasetScan, ScannedFile};
pub use settle::{SettleChanges, Settler, FULL_REPORT_EVERY};
pub use watch::Hint;
