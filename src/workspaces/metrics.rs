//! Process-wide call metrics of the REST clients, exported by the operator surface: calls by
//! service and result, and how long calls waited for the rate limiter.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `service` and `result` labels of a call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// workspaces or archive.
    pub service: String,
    /// ok, rejected (a 4xx that retrying cannot fix) or transient (retried later).
    pub result: String,
}

/// The `service` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

/// Calls by result, and the rate limiter's waits.
#[derive(Debug)]
pub struct CallMetrics {
    calls: Family<CallLabels, Counter>,
    wait: Family<ServiceLabel, Histogram, fn() -> Histogram>,
}

fn wait_histogram() -> Histogram {
    // 1 ms … ~16 s, quadrupling.
    Histogram::new(exponential_buckets(0.001, 4.0, 8))
}

/// This process's call metrics.
pub fn call_metrics() -> &'static CallMetrics {
    static METRICS: OnceLock<CallMetrics> = OnceLock::new();
    METRICS.get_or_init(|| CallMetrics {
        calls: Family::default(),
        wait: Family::new_with_constructor(wait_histogram as fn() -> Histogram),
    })
}

impl CallMetrics {
    /// A call to `service` ended as `result`.
    pub fn called(&self, service: &str, result: &str) {
        self.calls
            .get_or_create(&CallLabels {
                service: service.into(),
                result: result.into(),
            })
            .inc();
    }

    /// A call to `service` waited `waited` for the rate limiter.
    pub fn waited(&self, service: &str, waited: Duration) {
        self.wait
            .get_or_create(&ServiceLabel {
                service: service.into(),
            })
            .observe(waited.as_secs_f64());
    }

    /// Adds the call metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "thalamus_http_calls",
            "Calls to Workspaces and the archive, by result",
            self.calls.clone(),
        );
        registry.register(
            "thalamus_http_rate_limit_wait_seconds",
            "How long calls waited for the outbound rate limiter",
            self.wait.clone(),
        );
    }
}
