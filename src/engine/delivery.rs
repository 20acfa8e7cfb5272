//! Delivering broker messages into the models: a message is acknowledged (or its offset
//! committed) only after its effect, or its dead letter, is stored. A message whose effect
//! cannot be stored yet (say, the database is down) is retried in place, never skipped; at
//! shutdown it is left unacknowledged so the broker delivers it again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::event::EventReport;
use super::event_metrics::EventMetrics;
use super::Engine;
use crate::step::{Event, Transport};
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

/// What a transport needs of the engine: messages delivered at least once, and the counters
/// it feeds (Kafka's lag). Transports know the engine only through this.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// See [`Engine::deliver_batch`].
    async fn deliver_batch(
        &self,
        events: &[Event],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Delivery>>;

    /// The counters of consumed, applied and dead-lettered messages.
    fn event_metrics(&self) -> Arc<EventMetrics>;
}

#[async_trait]
impl EventSink for Engine {
    async fn deliver_batch(
        &self,
        events: &[Event],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Delivery>> {
        Engine::deliver_batch(self, events, shutdown).await
    }

    fn event_metrics(&self) -> Arc<EventMetrics> {
        self.events.clone()
    }
}

impl Engine {
    /// Applies `event`, retrying while its effect cannot be stored, and dead-letters what no
    /// step can apply; see [`Engine::deliver_batch`].
    pub async fn deliver(&self, event: &Event, shutdown: &CancellationToken) -> Delivery {
        self.deliver_batch(std::slice::from_ref(event), shutdown)
            .await
            .and_then(|mut d| d.pop())
            .unwrap_or(Delivery::Abandoned)
    }

    /// Applies messages in order, retrying the whole batch while its effects cannot be
    /// stored, and dead-letters what no step can apply; one [`Delivery`] per message, or
    /// `None` when shutdown came first (acknowledge none of them). Counts everything in the
    /// event metrics.
    pub async fn deliver_batch(
        &self,
        events: &[Event],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Delivery>> {
        let engine = self;
        let metrics = &engine.events;
        // A transport hands over a batch of its own messages.
        let transport = events.first().map_or(Transport::Direct, |e| e.transport);
        metrics.consumed(transport, events.len());
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .with_jitter()
            .build();
        let mut retried = false;
        loop {
            match apply(engine, events).await {
                Ok(deliveries) => {
                    let count =
                        |want: fn(&Delivery) -> bool| deliveries.iter().filter(|d| want(d)).count();
                    let applied = count(|d| *d == Delivery::Applied);
                    metrics.applied(transport, applied);
                    metrics.unchanged(transport, count(|d| *d == Delivery::Unchanged));
                    let dead = count(|d| matches!(d, Delivery::DeadLettered(_)));
                    metrics.dead_lettered(transport, dead);
                    // A failed attempt may have stored effects that now read as unchanged.
                    if applied > 0 || retried {
                        engine.wake();
                    }
                    return Some(deliveries);
                }
                Err(e) => {
                    retried = true;
                    metrics.retried(transport);
                    let delay = delays.next().unwrap_or(Duration::from_secs(30));
                    let first = events.first().map_or("", |e| e.position.as_str());
                    warn!(messages = events.len(), first = %first,
                    "cannot store the effect of messages yet; retrying in {delay:?}: {e:#}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// One attempt at a batch: apply, then store the dead letters of what was rejected.
async fn apply(engine: &Engine, events: &[Event]) -> anyhow::Result<Vec<Delivery>> {
    let reports = engine.apply_events(events).await?;
    let mut letters = Vec::new();
    for (event, report) in events.iter().zip(&reports) {
        if let EventReport::Rejected(reason) = report {
            letters.push(NewDeadLetter {
                transport: format!("{:?}", event.transport).to_lowercase(),
                topic: event.topic.clone(),
                routing_key: event.routing_key.clone(),
                position: event.position.clone(),
                headers: serde_json::to_string(&event.headers)?,
                payload: event.payload.clone(),
                reason: reason.clone(),
                received_at: engine.now_ms(),
            });
        }
    }
    let mut ids = engine.store().add_dead_letters(&letters).await?.into_iter();
    let mut deliveries = Vec::with_capacity(reports.len());
    for (event, report) in events.iter().zip(reports) {
        deliveries.push(match report {
            EventReport::Applied(_) => Delivery::Applied,
            EventReport::Unchanged(_) => Delivery::Unchanged,
            EventReport::Rejected(reason) => {
                let id = ids
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("a dead letter was not stored"))?;
                info!(id, topic = %event.topic, position = %event.position, "dead-lettered: {reason}");
                Delivery::DeadLettered(id)
            }
        });
    }
    Ok(deliveries)
}
