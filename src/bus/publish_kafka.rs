//! Publishing outbox rows on Kafka topics: an idempotent producer (`acks=all`), each message
//! keyed by its model so order holds per key, with its stable id and the announcing thalamus
//! in headers; a row counts as sent once its delivery is acknowledged.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::outbox::relay::message_id;
use crate::outbox::{Publisher, ORIGIN_HEADER};
use crate::store::OutboxRow;

/// How long a message may wait for its acknowledgement before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes on the brokers of `outbox.kafka.brokers`.
pub struct KafkaPublisher {
    producer: FutureProducer,
    origin: String,
}

impl KafkaPublisher {
    /// A producer for `brokers`, announcing as `origin` (the holder id).
    pub fn new(brokers: &str, origin: &str) -> anyhow::Result<Self> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "thalamus-outbox")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            origin: origin.to_string(),
        })
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    fn transport(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, rows: &[&OutboxRow]) -> Vec<anyhow::Result<()>> {
        let sends = rows.iter().map(|row| {
            let id = message_id(row);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "message-id",
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: ORIGIN_HEADER,
                    value: Some(self.origin.as_str()),
                });
            let record = FutureRecord::to(&row.topic)
                .key(&row.routing_key)
                .payload(&row.payload)
                .headers(headers);
            let sent = self.producer.send(record, DELIVERY_TIMEOUT);
            async move {
                sent.await
                    .map(|_| ())
                    .map_err(|(e, _)| anyhow::Error::new(e).context("delivering to Kafka"))
            }
        });
        futures::future::join_all(sends).await
    }
}
