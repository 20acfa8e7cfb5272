//! The outbox relay: N announcements published to RabbitMQ through the relay (read from the
//! outbox, publish with confirms, record sent), against a raw publisher of the same crate
//! that publishes the same messages with confirms, batch by batch, and records nothing.

use std::sync::Arc;
use std::time::Instant;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::db::{Backend, Scratch};
use super::events::unique;
use super::{BenchArgs, Figure, Goal};
use crate::bus::AmqpPublisher;
use crate::clock::SystemClock;
use crate::outbox::{OutboxAmqp, OutboxSettings, Publisher, Relay};

/// The body of announcement `i` (a `new-file` of a typical size).
fn payload(i: usize) -> String {
    format!(
        r#"{{"type":"new-file","application":"thalamus","key":"VLA/obs{i}","instrument":"VLA","product":"sdm","name":"obs{i}","location":"/lustre/vla/obs{i}","files":[{{"path":"Main.xml","size":20480,"mtime_ns":1795000000000000000}}]}}"#
    )
}

/// A durable exchange with a durable queue bound to it, so every message is routed and
/// stored by the broker (an unroutable one would be confirmed without being stored).
async fn routed(channel: &Channel, exchange: &str, queue: &str) -> anyhow::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), queue_options, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Publishes `n` messages with confirms, `batch` at a time: the physical limit of the relay.
async fn raw(channel: &Channel, exchange: &str, n: usize, batch: usize) -> anyhow::Result<f64> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let mut confirms = Vec::with_capacity(batch);
        for j in i..(i + batch).min(n) {
            let properties = BasicProperties::default()
                .with_message_id(format!("raw-{j}").into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        "thalamus.event".into(),
                        BasicPublishOptions::default(),
                        payload(j).as_bytes(),
                        properties,
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            confirm.await?;
        }
        i += batch;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Relay throughput (messages confirmed and recorded sent per second) against the raw
/// publisher, on the same broker, exchange and queue.
pub async fn relay(args: &BenchArgs, n: usize) -> anyhow::Result<Figure> {
    let exchange = unique("relay");
    let queue = unique("relay-queue");
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    routed(&channel, &exchange, &queue).await?;
    let settings = OutboxSettings {
        amqp: OutboxAmqp {
            enabled: true,
            url: args.amqp.clone(),
        },
        ..Default::default()
    };
    let baseline = raw(&channel, &exchange, n, settings.batch).await?;
    channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await?;

    let scratch = Scratch::new(Backend::Sqlite, &args.scratch(), &args.pg_url).await?;
    let body = payload(0).replace('\'', "''");
    scratch
        .exec(&format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) \
             INSERT INTO outbox (transport, topic, routing_key, message_type, model, payload, created_at) \
             SELECT 'amqp', '{exchange}', 'thalamus.event', 'new-file', 'Observation/VLA/obs' || g, '{body}', 0 FROM s"
        ))
        .await?;
    let publisher: Arc<dyn Publisher> = Arc::new(AmqpPublisher::new(&args.amqp, "bench"));
    let relay = Relay::new(
        scratch.store.clone(),
        "bench",
        Arc::new(SystemClock),
        settings,
        vec![publisher],
    );
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let pass = relay.pass().await?;
        if let Some((id, why)) = pass.failed {
            anyhow::bail!("the relay could not publish row {id}: {why}");
        }
        sent += pass.sent;
    }
    let value = n as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "measured".into()).await?;
    scratch.drop_all().await?;
    Ok(Figure::new(
        "outbox relay via AMQP (SQLite)",
        value,
        baseline,
        Goal::AtLeast(0.5),
        "msg/s",
    ))
}
