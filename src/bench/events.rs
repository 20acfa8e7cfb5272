//! Events: N capability-status messages applied through Kafka and through AMQP, against a raw
//! consumer of the same crate that only counts them.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::db::{Backend, Scratch};
use super::{BenchArgs, Figure, Goal};
use crate::bus::{AmqpBinding, AmqpSession, EventsSettings, KafkaSource};
use crate::config::Settings;
use crate::engine::Engine;
use crate::engine::MetricsSnapshot;
use crate::graph::DepGraph;
use crate::step::Registry;

/// Message `i` is the first status of request `i + 1`, so every one applies whatever order
/// the partitions deliver them in.
fn message(i: usize) -> Vec<u8> {
    let id = i + 1;
    let secs = i % 86_400;
    format!(
        r#"{{"type":"capability-status","capability_request_id":{id},"state":"Executing","message":"step {secs}","timestamp":"2026-01-01T{:02}:{:02}:{:02}Z"}}"#,
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
    .into_bytes()
}

async fn world(
    args: &BenchArgs,
    events: EventsSettings,
    requests: usize,
) -> anyhow::Result<(Scratch, Engine)> {
    let scratch = Scratch::new(Backend::Sqlite, &args.scratch(), &args.pg_url).await?;
    scratch
        .exec(&format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {requests}) \
             INSERT INTO objects (kind, key, spec, status, generation, enacted, revision, policed, created_at, updated_at) \
             SELECT 'Ingestion', 'VLA/obs' || g, \
             '{{\"instrument\":\"VLA\",\"name\":\"obs' || g || '\",\"observation\":\"VLA/obs' || g || '\",\"observation_generation\":1,\"product\":\"sdm\"}}', \
             '{{\"request_id\":' || g || ',\"state\":\"Submitted\"}}', \
             1, 0, 1, 1, 0, 0 FROM s"
        ))
        .await?;
    let mut settings = Settings::default();
    settings.database.url = scratch.url.clone();
    settings.events = events;
    let mut registry = Registry::new();
    crate::steps::events::register(&mut registry, &settings)?;
    let graph = DepGraph::parse("bench", "{}", &[])?;
    let engine = crate::app::EngineBuilder::new(&settings)
        .registry(registry)
        .graph(graph)
        .build(scratch.store.clone())?;
    Ok((scratch, engine))
}

/// Messages whose effect (or dead letter) is stored.
fn settled(m: &MetricsSnapshot) -> usize {
    (m.applied + m.unchanged + m.dead_lettered) as usize
}

pub(super) fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("thalamus.bench.{name}.{nanos}")
}

/// Kafka: messages/s applied vs. a raw counting consumer.
pub async fn kafka(args: &BenchArgs, n: usize) -> anyhow::Result<Figure> {
    let topic = unique("status");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .set("linger.ms", "5")
        .create()?;
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(1000) {
        let sends = chunk.iter().map(|&i| {
            let payload = message(i);
            let (p, topic) = (&producer, &topic);
            async move {
                p.send(
                    FutureRecord::<(), _>::to(topic).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
            }
        });
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }
    // Raw: the same crate, a fresh group, counting only.
    let raw: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .set("group.id", unique("raw"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    raw.subscribe(&[&topic])?;
    let _ = raw.recv().await?; // the group join is not part of the rate
    let started = Instant::now();
    for _ in 1..n {
        raw.recv().await?;
    }
    let baseline = (n - 1) as f64 / started.elapsed().as_secs_f64();
    drop(raw);

    let mut events = EventsSettings::default();
    events.kafka.brokers = args.kafka.clone();
    events.kafka.group_id = unique("thalamus");
    events.kafka.topics = vec![topic.clone()];
    events
        .aliases
        .insert(topic, crate::steps::events::STATUS_TOPIC.into());
    let (scratch, engine) = world(args, events.clone(), n).await?;
    let source = KafkaSource::connect(&events, engine.event_metrics(), None).await?;
    let shutdown = CancellationToken::new();
    // The group join is not part of the rate: the clock starts at the first message.
    let first = source.recv().await?;
    engine.deliver(&first.event, &shutdown).await;
    source.commit(std::slice::from_ref(&first))?;
    let metrics = engine.event_metrics();
    let started = Instant::now();
    let consume = {
        let (engine, shutdown, max) = (engine.clone(), shutdown.clone(), events.max_batch);
        tokio::spawn(async move { source.consume(&engine, max, &shutdown).await })
    };
    while (settled(&metrics.snapshot())) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let value = (n - 1) as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    consume.await?;
    let m = engine.event_metrics().snapshot();
    anyhow::ensure!(
        m.applied as usize == n && m.dead_lettered == 0,
        "applied {} of {n}: {m:?}",
        m.applied
    );
    scratch.drop_all().await?;
    Ok(Figure::new(
        "events via Kafka",
        value,
        baseline,
        Goal::AtLeast(0.5),
        "messages/s",
    ))
}

/// AMQP: messages/s applied vs. a raw counting consumer.
pub async fn amqp(args: &BenchArgs, n: usize) -> anyhow::Result<Figure> {
    let exchange = unique("status");
    let mut events = EventsSettings::default();
    events.amqp.url = args.amqp.clone();
    events.amqp.queue = unique("queue");
    events.amqp.bindings = vec![AmqpBinding {
        exchange: exchange.clone(),
        routing_key: "#".into(),
    }];
    events
        .aliases
        .insert(exchange.clone(), crate::steps::events::STATUS_TOPIC.into());
    let publish = || async {
        drop(AmqpSession::connect(&events).await?); // declares exchange, queue and binding
        let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        for i in 0..n {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    "x".into(),
                    BasicPublishOptions::default(),
                    &message(i),
                    BasicProperties::default(),
                )
                .await?;
        }
        conn.close(200, "published".into()).await?;
        anyhow::Ok(())
    };
    publish().await?;
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let mut raw = channel
        .basic_consume(
            events.amqp.queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    for _ in 0..n {
        let d = raw
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("raw consumer closed"))??;
        d.ack(BasicAckOptions::default()).await?;
    }
    let baseline = n as f64 / started.elapsed().as_secs_f64();
    conn.close(200, "done".into()).await?;

    publish().await?;
    let (scratch, engine) = world(args, events.clone(), n).await?;
    let shutdown = CancellationToken::new();
    let mut session = AmqpSession::connect(&events).await?;
    let metrics = engine.event_metrics();
    let started = Instant::now();
    let consume = {
        let (engine, shutdown) = (engine.clone(), shutdown.clone());
        tokio::spawn(async move { session.consume(&engine, &shutdown).await })
    };
    while settled(&metrics.snapshot()) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let value = n as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    consume.await??;
    let m = metrics.snapshot();
    anyhow::ensure!(
        m.applied as usize == n,
        "applied {} of {n}: {m:?}",
        m.applied
    );
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_delete(
            events.amqp.queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    scratch.drop_all().await?;
    Ok(Figure::new(
        "events via AMQP",
        value,
        baseline,
        Goal::AtLeast(0.5),
        "messages/s",
    ))
}
