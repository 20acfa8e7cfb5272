//! The controller's loops. Each exposes a one-pass function so tests never sleep:
//! [`Engine::pull_once`], [`Engine::policy_pass`], [`Engine::sync_pass`], and
//! [`Engine::run_once`] (all of them until nothing more is runnable now); [`Engine::run`]
//! repeats them until shutdown.

mod backoff;
mod controller;
mod delivery;
mod event;
mod event_metrics;
mod health;
mod membership;
mod outcome;
mod policy;
mod pull;
mod pull_health;
mod reconcile_metrics;
mod report;
mod round;
mod settings;
mod sync;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use delivery::{Delivery, EventSink};
pub use event::EventReport;
pub use event_metrics::{EventMetrics, MetricsSnapshot, TransportSnapshot};
pub use health::StoreHealth;
pub use membership::Seat;
pub use policy::PolicyReport;
pub use pull::PullSummary;
pub use reconcile_metrics::{ControllerLabel, QueueLabel, ReconcileMetrics, ResultLabels, Running};
pub use report::SyncReport;
pub use settings::{
    BackoffSettings, EngineSettings, ExecutionSettings, PolicySettings, PullSettings, SyncSettings,
};

use crate::clock::Clock;
use crate::graph::DepGraph;
use crate::step::{Announcers, Models, Registry};
use crate::store::Store;

/// The reconciliation controller: the store, the steps, the graph, and the loops over them.
#[derive(Clone)]
pub struct Engine {
    pub(crate) store: Store,
    pub(crate) registry: Arc<Registry>,
    pub(crate) graph: Arc<DepGraph>,
    pub(crate) settings: Arc<EngineSettings>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) models: Models,
    /// What changes announce downstream, and the herald writing it to the outbox.
    pub(crate) announcers: Announcers,
    pub(crate) backoff: Backoff,
    holder: String,
    shutdown: CancellationToken,
    wake: Arc<Notify>,
    /// Counts wake-ups: a round of rechecks and retries watches it to yield to news.
    news: Arc<tokio::sync::watch::Sender<u64>>,
    events: Arc<EventMetrics>,
    /// Reconciles by kind and result, steps running now: controller-runtime's metrics.
    pub(crate) reconciles: Arc<ReconcileMetrics>,
    /// Whether the store answers, so outages are logged once and shown to operators.
    pub(crate) health: Arc<StoreHealth>,
    /// Held by a sync pass: one at a time per engine.
    pass_lock: Arc<Mutex<()>>,
    /// A pass failed part-way and may have left leases of this holder behind.
    stray_leases: Arc<AtomicBool>,
    /// How each pull step has been faring: its backoff, and what is worth a log line.
    pull_health: Arc<pull_health::PullHealth>,
}

/// What [`Engine::run_once`] did, for the CLI's summary line and tests.
#[derive(Debug, Clone, Default)]
pub struct OnceReport {
    pub pull: PullSummary,
    pub policy: PolicyReport,
    pub sync: SyncReport,
    /// Policy+sync passes run until nothing more was runnable.
    pub passes: usize,
}

impl Engine {
    /// Builds an engine; the store learns the link fields of `graph`.
    pub fn new(
        store: Store,
        registry: Registry,
        graph: DepGraph,
        settings: EngineSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let store = store.with_links(graph.link_fields());
        let holder = settings
            .sync
            .holder_id
            .clone()
            .unwrap_or_else(default_holder);
        let announcers = registry
            .announcers
            .clone()
            .with_herald(crate::outbox::Herald::new(&settings.outbox));
        let models = Models::new(store.clone(), clock.clone())
            .with_announcers(announcers.clone())
            .held_by(&holder);
        Self {
            backoff: Backoff::new(&settings.sync.backoff),
            store,
            registry: Arc::new(registry),
            graph: Arc::new(graph),
            settings: Arc::new(settings),
            clock,
            models,
            announcers,
            holder,
            shutdown: CancellationToken::new(),
            wake: Arc::new(Notify::new()),
            news: Arc::new(tokio::sync::watch::Sender::new(0)),
            events: Arc::new(EventMetrics::new()),
            reconciles: Arc::default(),
            health: Arc::new(StoreHealth::default()),
            pass_lock: Arc::new(Mutex::new(())),
            stray_leases: Arc::new(AtomicBool::new(false)),
            pull_health: Arc::default(),
        }
    }

    /// The store, with link fields configured.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The dependency graph this engine orders work by.
    pub fn graph(&self) -> &DepGraph {
        &self.graph
    }

    /// Typed model access on this engine's store and clock.
    pub fn models(&self) -> &Models {
        &self.models
    }

    /// The identity written into leases and executions.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Cancel this token to stop the engine gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Counters of consumed events, for the operator surface.
    pub fn event_metrics(&self) -> Arc<EventMetrics> {
        self.events.clone()
    }

    /// Reconcile counters and the steps running now, for the operator surface.
    pub fn reconcile_metrics(&self) -> Arc<ReconcileMetrics> {
        self.reconciles.clone()
    }

    /// Per rule: how often it matched, fired and failed (`/metrics`).
    pub fn rule_counts(&self) -> Vec<(String, [u64; 3])> {
        self.registry.rule_counts()
    }

    /// How many steps may run at once (`sync.concurrency`).
    pub fn max_concurrent_reconciles(&self) -> usize {
        self.settings.sync.concurrency
    }

    /// Whether the store answers, as the loops last found it.
    pub fn store_health(&self) -> &StoreHealth {
        &self.health
    }

    /// Now, from the engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Woken whenever a change wrote outbox rows, so the relay publishes them at once.
    pub fn outbox_written(&self) -> Arc<Notify> {
        self.announcers.written.clone()
    }

    /// Makes a sleeping [`Engine::run`] look for work now, and a running round of rechecks
    /// and retries yield to it (something changed: a pull, an event, an operator).
    pub fn wake(&self) {
        self.wake.notify_one();
        self.news.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// One poll of every pull step, then policy and sync passes until nothing more is
    /// runnable now (nothing dirty, or all of it waiting on backoff or dependencies).
    pub async fn run_once(&self) -> anyhow::Result<OnceReport> {
        let mut report = OnceReport {
            pull: self.pull_once().await,
            ..Default::default()
        };
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let policy = self.policy_pass().await?;
            let sync = self.sync_pass().await?;
            report.passes += 1;
            let progress = policy.handled > 0 || sync.another_pass();
            report.policy += policy;
            report.sync += sync;
            if !progress {
                break;
            }
        }
        Ok(report)
    }
}

/// The host name: stable across restarts, so a restarted process takes over what its
/// predecessor under the same id leased (see `membership.rs`).
fn default_holder() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
