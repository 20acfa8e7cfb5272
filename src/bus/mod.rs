//! Event transports (Kafka, AMQP) and the delivery rule they share: a message is acknowledged
//! (or its offset committed) only after its effect, or its dead letter, is stored. A message
//! whose effect cannot be stored yet (say, the database is down) is retried in place, never
//! skipped; at shutdown it is left unacknowledged so the broker delivers it again.

mod amqp;
mod kafka;
mod metrics;
mod settings;

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use amqp::{run_amqp, AmqpSession};
pub use kafka::{run_kafka, KafkaSource, Received};
pub use metrics::{EventMetrics, MetricsSnapshot};
pub use settings::{AmqpBinding, AmqpSettings, EventsSettings, KafkaSettings};

use crate::engine::{Engine, EventReport};
use crate::step::Event;
use crate::store::NewDeadLetter;

/// What became of a delivered message; every variant but `Abandoned` may be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Applied,
    /// A duplicate or stale message: nothing changed.
    Unchanged,
    /// Stored as dead letter `id`.
    DeadLettered(i64),
    /// Shutdown came while the effect could not be stored: do not acknowledge.
    Abandoned,
}

/// Applies `event`, retrying while its effect cannot be stored, and dead-letters what no step
/// can apply. Counts everything in the engine's event metrics.
pub async fn deliver(engine: &Engine, event: &Event, shutdown: &CancellationToken) -> Delivery {
    let metrics = engine.event_metrics();
    metrics.consumed();
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .with_jitter()
        .build();
    loop {
        let outcome = match engine.apply_event(event).await {
            Ok(EventReport::Applied(_)) => {
                metrics.applied();
                engine.wake();
                return Delivery::Applied;
            }
            Ok(EventReport::Unchanged(_)) => {
                metrics.unchanged();
                return Delivery::Unchanged;
            }
            Ok(EventReport::Rejected(reason)) => dead_letter(engine, event, &reason).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(id) => {
                metrics.dead_lettered();
                return Delivery::DeadLettered(id);
            }
            Err(e) => {
                metrics.retried();
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                warn!(topic = %event.topic, position = %event.position,
                    "cannot store the effect of a message yet; retrying in {delay:?}: {e:#}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Delivery::Abandoned,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn dead_letter(engine: &Engine, event: &Event, reason: &str) -> anyhow::Result<i64> {
    let letter = NewDeadLetter {
        transport: format!("{:?}", event.transport).to_lowercase(),
        topic: event.topic.clone(),
        routing_key: event.routing_key.clone(),
        position: event.position.clone(),
        headers: serde_json::to_string(&event.headers)?,
        payload: event.payload.clone(),
        reason: reason.to_string(),
        received_at: engine.now_ms(),
    };
    let id = engine.store().add_dead_letter(&letter).await?;
    info!(id, topic = %event.topic, position = %event.position, "dead-lettered: {reason}");
    Ok(id)
}
