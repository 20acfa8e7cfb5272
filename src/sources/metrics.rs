//! Process-wide scan metrics, exported by the operator surface: how long each scan of a
//! source root takes and how many of its datasets still wait for their settle window.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `root` label: the directory a pull step scans.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RootLabel {
    pub root: String,
}

/// Scan durations and datasets pending settle, per scanned root.
#[derive(Debug)]
pub struct ScanMetrics {
    duration: Family<RootLabel, Histogram, fn() -> Histogram>,
    pending: Family<RootLabel, Gauge>,
}

fn scan_histogram() -> Histogram {
    // 1 ms … ~65 s, quadrupling.
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

/// This process's scan metrics.
pub fn scan_metrics() -> &'static ScanMetrics {
    static METRICS: OnceLock<ScanMetrics> = OnceLock::new();
    METRICS.get_or_init(|| ScanMetrics {
        duration: Family::new_with_constructor(scan_histogram as fn() -> Histogram),
        pending: Family::default(),
    })
}

impl ScanMetrics {
    /// A scan of `root` took `took` and left `pending` datasets waiting to settle.
    pub fn scanned(&self, root: &str, took: Duration, pending: usize) {
        let label = RootLabel { root: root.into() };
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        self.pending.get_or_create(&label).set(pending as i64);
    }

    /// Adds the scan metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "thalamus_pull_scan_seconds",
            "How long one scan of a source root took",
            self.duration.clone(),
        );
        registry.register(
            "thalamus_pull_datasets_pending_settle",
            "Datasets listed but not yet settled, per source root",
            self.pending.clone(),
        );
    }
}
