//! Brokers for event tests: Kafka (a tansu broker on 127.0.0.1:19092, started through
//! `.ci/kafka.sh` if it is not running) and RabbitMQ (127.0.0.1:5672). Each test gets its own
//! exchanges, topics, queue and group, aliased to the logical names the steps consume.

use std::sync::Once;

use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use thalamus::bus::{AmqpBinding, EventsSettings};

pub const KAFKA: &str = "127.0.0.1:19092";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const STATUS: &str = "workspaces.capability-status";
pub const ARCHIVE: &str = "archive.events";

static KAFKA_UP: Once = Once::new();

/// Makes sure a Kafka-protocol broker answers on 127.0.0.1:19092.
pub fn ensure_kafka() {
    KAFKA_UP.call_once(|| {
        if std::net::TcpStream::connect(KAFKA).is_ok() {
            return;
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/kafka.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .status()
            .expect("run .ci/kafka.sh");
        assert!(
            status.success(),
            ".ci/kafka.sh could not start the Kafka broker"
        );
    });
}

/// A unique suffix for this test's broker names.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}.{}.{nanos}", std::process::id())
}

/// Event settings with this test's own names, both transports enabled.
pub fn events(test: &str) -> EventsSettings {
    let id = unique(test);
    let mut e = EventsSettings::default();
    e.kafka.enabled = true;
    e.kafka.brokers = KAFKA.into();
    e.kafka.group_id = format!("thalamus.{id}");
    e.kafka.topics = vec![format!("{STATUS}.{id}"), format!("{ARCHIVE}.{id}")];
    e.amqp.enabled = true;
    e.amqp.url = AMQP.into();
    e.amqp.queue = format!("thalamus.{id}");
    e.amqp.bindings = vec![
        AmqpBinding {
            exchange: format!("{ARCHIVE}.{id}"),
            routing_key: "*.event".into(),
        },
        AmqpBinding {
            exchange: format!("{STATUS}.{id}"),
            routing_key: "#".into(),
        },
    ];
    for logical in [STATUS, ARCHIVE] {
        e.aliases.insert(format!("{logical}.{id}"), logical.into());
    }
    e
}

/// The actual exchange/topic name standing for `logical` in these settings.
pub fn actual(e: &EventsSettings, logical: &str) -> String {
    e.aliases
        .iter()
        .find(|(_, l)| *l == logical)
        .map(|(a, _)| a.clone())
        .unwrap()
}

/// Publishes persistent messages to a topic exchange.
pub async fn publish_amqp(exchange: &str, routing_key: &str, payloads: &[Vec<u8>]) {
    try_publish_amqp(exchange, routing_key, payloads)
        .await
        .unwrap()
}

/// Publishes persistent messages to a topic exchange, each confirmed by the broker; an
/// error may come after some were published.
pub async fn try_publish_amqp(
    exchange: &str,
    routing_key: &str,
    payloads: &[Vec<u8>],
) -> lapin::Result<()> {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for p in payloads {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                p,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
    }
    conn.close(200, "done".into()).await
}

/// Removes this test's queue and exchanges from RabbitMQ (best effort: a broker that is not
/// there keeps them).
pub async fn cleanup_amqp(e: &EventsSettings) {
    let Ok(conn) = Connection::connect(AMQP, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(channel) = conn.create_channel().await else {
        return;
    };
    let _ = channel
        .queue_delete(e.amqp.queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    for b in &e.amqp.bindings {
        let _ = channel
            .exchange_delete(b.exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Produces messages to one Kafka topic of the shared broker, in order.
pub async fn produce_kafka(topic: &str, payloads: &[Vec<u8>]) {
    produce_kafka_to(KAFKA, topic, payloads).await
}

/// Produces messages to one topic of the broker at `brokers`, in order, each acknowledged.
pub async fn produce_kafka_to(brokers: &str, topic: &str, payloads: &[Vec<u8>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for p in payloads {
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(p),
                std::time::Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Waits (bounded) for `condition` to hold, polling; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
