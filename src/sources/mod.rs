//! Building blocks for pull steps that watch data sources: the NFS-safe dataset scanner with
//! its settle window, the inotify hint, and the `sources.*` settings.

mod refused;
mod scan;
mod settings;
mod settle;
mod watch;

pub use scan::{scan_root, stat_calls, DatasetScan, ScannedFile};
pub use settings::{AlmaSettings, DirectorySettings, SourcesSettings, VlaSettings};
pub use settle::{SettleChanges, Settler};
pub use watch::Hint;
