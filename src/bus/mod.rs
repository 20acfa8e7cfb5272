//! Event transports (Kafka, AMQP): adapters that receive messages and hand them to the
//! engine's [`EventSink`](crate::engine::EventSink), acknowledging (or committing) only what
//! it says is stored. The delivery rule itself is the engine's (`engine/delivery.rs`). The
//! bootstrap starts them ([`start`]); the engine never does.

mod amqp;
mod kafka;
mod publish_amqp;
mod publish_kafka;
mod settings;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use amqp::{run_amqp, AmqpSession};
pub use kafka::{reachable, run_kafka, KafkaSource, Received};
pub use publish_amqp::AmqpPublisher;
pub use publish_kafka::KafkaPublisher;
pub use settings::{AmqpBinding, AmqpSettings, EventsSettings, KafkaSettings};

use crate::engine::EventSink;

/// Starts the enabled transports, delivering into `sink` until `shutdown`; `instance` names
/// this process to the brokers (its holder id: the Kafka consumer's static group membership).
pub fn start(
    sink: Arc<dyn EventSink>,
    instance: &str,
    events: &EventsSettings,
    shutdown: &CancellationToken,
) -> JoinSet<()> {
    let mut transports = JoinSet::new();
    if events.kafka.enabled {
        transports.spawn(run_kafka(
            sink.clone(),
            instance.to_string(),
            events.clone(),
            shutdown.clone(),
        ));
    }
    if events.amqp.enabled {
        transports.spawn(run_amqp(sink, events.clone(), shutdown.clone()));
    }
    transports
}
