//! Reconcile metrics under controller-runtime's names, kept by the sync rounds so the operator
//! surface exports what existing Kubernetes-controller dashboards read. One "controller" is
//! one model kind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::Settled;

/// The `controller` label: the model kind a reconcile ran for.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

/// The `controller` and `result` labels of `controller_runtime_reconcile_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub controller: String,
    pub result: String,
}

/// The `name` label of the `workqueue_*` metrics (the model kind).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub name: String,
}

type TimeFamily = Family<ControllerLabel, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 5 ms … ~82 s, doubling.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Counters, gauges and a histogram of the sync steps this process ran.
#[derive(Debug)]
pub struct ReconcileMetrics {
    total: Family<ResultLabels, Counter>,
    errors: Family<ControllerLabel, Counter>,
    time: TimeFamily,
    retries: Family<QueueLabel, Counter>,
    active: Family<ControllerLabel, Gauge>,
    /// Rounds of rechecks and retries that gave way to news: how often a backlog paused.
    yields: Counter,
    /// Steps running now: id → what runs, since when.
    running: Mutex<HashMap<u64, RunningStep>>,
    next: AtomicU64,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            total: Family::default(),
            errors: Family::default(),
            time: Family::new_with_constructor(reconcile_histogram as fn() -> Histogram),
            retries: Family::default(),
            active: Family::default(),
            yields: Counter::default(),
            running: Mutex::default(),
            next: AtomicU64::new(0),
        }
    }
}

/// A step running in this process: its object, and when it started (an `Instant` for the
/// gauges, epoch ms for people).
#[derive(Debug, Clone)]
struct RunningStep {
    kind: String,
    key: String,
    since: Instant,
    since_ms: i64,
}

/// A step in progress; dropping it (the step ended, or was cancelled) takes it off the gauge.
#[derive(Debug)]
pub struct Running {
    metrics: Arc<ReconcileMetrics>,
    id: u64,
    kind: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.metrics.active.get_or_create(&label(&self.kind)).dec();
        self.metrics.lock().remove(&self.id);
    }
}

fn label(kind: &str) -> ControllerLabel {
    ControllerLabel {
        controller: kind.to_string(),
    }
}

impl ReconcileMetrics {
    /// The step of `kind` `key` starts at `now_ms`; the gauge counts it (and
    /// [`ReconcileMetrics::running_since`] names it) until the returned guard drops.
    pub fn start(self: &Arc<Self>, kind: &str, key: &str, now_ms: i64) -> Running {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.active.get_or_create(&label(kind)).inc();
        let step = RunningStep {
            kind: kind.to_string(),
            key: key.to_string(),
            since: Instant::now(),
            since_ms: now_ms,
        };
        self.lock().insert(id, step);
        Running {
            metrics: self.clone(),
            id,
            kind: kind.to_string(),
        }
    }

    /// A step of `kind` ended as `settled` after `duration_ms`.
    pub fn finished(&self, kind: &str, settled: &Settled, duration_ms: i64) {
        let result = match settled {
            Settled::Synced | Settled::Reaped => "success",
            Settled::Deferred { .. } => "requeue_after",
            Settled::Waiting { .. } => "requeue",
            Settled::Failed { .. } | Settled::Permanent { .. } => "error",
            Settled::Released => return,
        };
        let controller = kind.to_string();
        self.total
            .get_or_create(&ResultLabels {
                controller: controller.clone(),
                result: result.into(),
            })
            .inc();
        if result == "error" {
            self.errors.get_or_create(&label(kind)).inc();
        }
        if matches!(settled, Settled::Failed { .. }) {
            self.retries
                .get_or_create(&QueueLabel { name: controller })
                .inc();
        }
        self.time
            .get_or_create(&label(kind))
            .observe(duration_ms.max(0) as f64 / 1000.0);
    }

    /// A round of rechecks and retries gave way to news.
    pub fn yielded(&self) {
        self.yields.inc();
    }

    /// How many rounds of rechecks and retries have given way to news.
    pub fn yields(&self) -> u64 {
        self.yields.get()
    }

    /// How long the longest step of each kind running now has been running.
    pub fn longest_running(&self) -> HashMap<String, Duration> {
        let mut longest: HashMap<String, Duration> = HashMap::new();
        for step in self.lock().values() {
            let d = step.since.elapsed();
            let e = longest.entry(step.kind.clone()).or_default();
            *e = (*e).max(d);
        }
        longest
    }

    /// When the step of `kind` `key` running in this process started (epoch ms), if one is
    /// running: what `describe` and the API show as "running since".
    pub fn running_since(&self, kind: &str, key: &str) -> Option<i64> {
        self.lock()
            .values()
            .filter(|s| s.kind == kind && s.key == key)
            .map(|s| s.since_ms)
            .min()
    }

    /// Adds the controller-runtime metrics this process keeps to `registry` (the names get
    /// `_total` and the histogram's suffixes when encoded).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            self.total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            self.errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            self.time.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            self.active.clone(),
        );
        registry.register(
            "thalamus_sync_yields",
            "Rounds of rechecks and retries that gave way to news",
            self.yields.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            self.retries.clone(),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, RunningStep>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}
