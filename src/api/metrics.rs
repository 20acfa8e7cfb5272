//! `/metrics`: Prometheus text (OpenMetrics) under controller-runtime's names, so existing
//! dashboards fit, plus thalamus's own. Counters live in the engine; gauges read the store
//! at scrape time with the same query as `thalamus status`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::views;
use super::Api;
use crate::engine::{ControllerLabel, QueueLabel};
use crate::store::State as ModelState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindState {
    kind: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// The OpenMetrics content type Prometheus negotiates.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric, encoded now.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text (OpenMetrics)", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(api): State<Api>) -> Response {
    let mut registry = Registry::default();
    let engine = &api.engine;
    let reconciles = engine.reconcile_metrics();
    reconciles.register(&mut registry);
    crate::workspaces::call_metrics().register(&mut registry);
    crate::sources::scan_metrics().register(&mut registry);

    let max = Family::<ControllerLabel, Gauge>::default();
    let depth = Family::<QueueLabel, Gauge>::default();
    let longest = Family::<QueueLabel, Gauge<f64, AtomicU64>>::default();
    let models = Family::<KindState, Gauge>::default();
    let kinds: Vec<String> = engine.graph().sync_order().to_vec();
    for kind in &kinds {
        max.get_or_create(&ControllerLabel {
            controller: kind.clone(),
        })
        .set(engine.max_concurrent_reconciles() as i64);
    }
    let running = reconciles.longest_running();
    for kind in &kinds {
        let secs = running.get(kind).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        longest
            .get_or_create(&QueueLabel { name: kind.clone() })
            .set(secs);
    }
    let mut store_up = 1;
    let outbox_waiting = Gauge::<i64>::default();
    let outbox_age = Gauge::<f64, AtomicU64>::default();
    match views::counts(engine.store()).await {
        Ok(counts) => {
            outbox_waiting.set(counts.outbox_waiting);
            let age = counts
                .oldest_outbox_ms
                .map_or(0, |t| engine.now_ms().saturating_sub(t));
            outbox_age.set(age as f64 / 1000.0);
            for k in &counts.kinds {
                for state in ModelState::ALL {
                    models
                        .get_or_create(&KindState {
                            kind: k.kind.clone(),
                            state: state.as_str().into(),
                        })
                        .set(k.get(state));
                }
                // Due or waiting to run again: what a workqueue would hold.
                depth
                    .get_or_create(&QueueLabel {
                        name: k.kind.clone(),
                    })
                    .set(k.pending + k.backoff + k.deleting);
            }
        }
        Err(_) => store_up = 0,
    }
    registry.register(
        "controller_runtime_max_concurrent_reconciles",
        "Maximum number of concurrent reconciles per controller",
        max,
    );
    registry.register("workqueue_depth", "Current depth of workqueue", depth);
    registry.register(
        "workqueue_longest_running_processor_seconds",
        "How many seconds has the longest running processor for workqueue been running",
        longest,
    );
    registry.register(
        "thalamus_models",
        "Models per kind and state (as `thalamus status` counts them)",
        models,
    );
    registry.register(
        "thalamus_outbox_waiting",
        "Announcements written but not yet confirmed by their broker",
        outbox_waiting,
    );
    registry.register(
        "thalamus_outbox_oldest_age_seconds",
        "Age of the oldest announcement waiting in the outbox (0 when none waits)",
        outbox_age,
    );
    let up = Gauge::<i64>::default();
    up.set(store_up);
    registry.register(
        "thalamus_store_up",
        "Whether the store answered this scrape",
        up,
    );
    let failures = Counter::<u64>::default();
    failures.inc_by(engine.store_health().failures());
    registry.register(
        "thalamus_store_failures",
        "Store calls of the engine's loops that failed",
        failures,
    );

    let consumers = super::overview::consumer_list(&api);
    let connected = Family::<TransportLabel, Gauge>::default();
    for c in consumers
        .iter()
        .filter(|c| c.enabled && c.transport != "direct")
    {
        connected
            .get_or_create(&TransportLabel {
                transport: c.transport.clone(),
            })
            .set(i64::from(c.connected));
    }
    registry.register(
        "thalamus_events_connected",
        "Whether the transport's broker is connected",
        connected,
    );
    let rule_counts = engine.rule_counts();
    let names = [
        (
            "thalamus_rule_matched",
            "Events a rule's condition was evaluated for",
        ),
        (
            "thalamus_rule_fired",
            "Times a rule's condition held and its responses were applied",
        ),
        (
            "thalamus_rule_failed",
            "Times a rule could not be evaluated or applied",
        ),
    ];
    for (i, (name, help)) in names.into_iter().enumerate() {
        let family = Family::<RuleLabel, Counter>::default();
        for (rule, counts) in &rule_counts {
            family
                .get_or_create(&RuleLabel { rule: rule.clone() })
                .inc_by(counts[i]);
        }
        registry.register(name, help, family);
    }
    type Pick = fn(&super::overview::Consumer) -> u64;
    let counters: [(&str, &str, Pick); 5] = [
        ("thalamus_events_consumed", "Event messages consumed", |c| {
            c.consumed
        }),
        (
            "thalamus_events_applied",
            "Event messages that changed a model",
            |c| c.applied,
        ),
        (
            "thalamus_events_unchanged",
            "Event messages that changed nothing (duplicates, stale)",
            |c| c.unchanged,
        ),
        (
            "thalamus_events_dead_lettered",
            "Event messages stored as dead letters",
            |c| c.dead_lettered,
        ),
        (
            "thalamus_events_retried",
            "Event batches that could not be stored and were retried",
            |c| c.retried,
        ),
    ];
    for (name, help, pick) in counters {
        let family = Family::<TransportLabel, Counter>::default();
        for c in consumers.iter().filter(|c| c.enabled) {
            family
                .get_or_create(&TransportLabel {
                    transport: c.transport.clone(),
                })
                .inc_by(pick(c));
        }
        registry.register(name, help, family);
    }
    if let Some(lag) = consumers.iter().find_map(|c| c.lag) {
        let gauge = Gauge::<i64>::default();
        gauge.set(lag);
        registry.register(
            "thalamus_kafka_lag_messages",
            "Kafka consumer lag, summed over partitions",
            gauge,
        );
    }

    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}
