//! Events: N capability-status messages applied through Kafka and through AMQP, against a
//! consumer of the same crate that does the least durable work: per batch of what has
//! arrived, one `UPDATE` of the same status rows, committed, then the offset commit (AMQP: one
//! multiple-ack). A consumer that only counts is printed too, as the transport's speed.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
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

/// A scratch store on `backend` holding the Ingestions of requests 1..=`requests`, each
/// Submitted.
async fn requests(args: &BenchArgs, backend: Backend, requests: usize) -> anyhow::Result<Scratch> {
    let scratch = Scratch::new(backend, &args.scratch(), &args.pg_url).await?;
    scratch
        .ingestions_in_flight("obs", requests, "Submitted", false)
        .await?;
    Ok(scratch)
}

/// What the fair baseline does per batch: one `UPDATE` setting each message's state and
/// message on its request's Ingestion (its own statement, so committed on return).
async fn apply_raw(scratch: &Scratch, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut keys = Vec::with_capacity(payloads.len());
    for p in payloads {
        let m: serde_json::Value = serde_json::from_slice(p)?;
        let id = m["capability_request_id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no capability_request_id"))?;
        keys.push(format!("'VLA/obs{id}'"));
    }
    let set = if scratch.is_postgres() {
        "jsonb_set(status::jsonb, '{state}', '\"Executing\"')::text"
    } else {
        "json_set(status, '$.state', 'Executing')"
    };
    scratch
        .exec(&format!(
            "UPDATE objects SET status = {set}, revision = revision + 1 \
             WHERE kind = 'Ingestion' AND key IN ({})",
            keys.join(", ")
        ))
        .await
}

async fn world(
    args: &BenchArgs,
    backend: Backend,
    events: EventsSettings,
    n: usize,
) -> anyhow::Result<(Scratch, Engine)> {
    let scratch = requests(args, backend, n).await?;
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

/// Kafka: messages/s applied on `backend` vs. the fair consumer on the same backend.
pub async fn kafka(args: &BenchArgs, backend: Backend, n: usize) -> anyhow::Result<Figure> {
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
    let transport = (n - 1) as f64 / started.elapsed().as_secs_f64();
    drop(raw);
    eprintln!("  events via Kafka: transport speed (a consumer that only counts) {transport:.0} messages/s");

    // Fair: the same crate, a fresh group, each batch's UPDATE committed, then the offsets.
    let scratch = requests(args, backend, n).await?;
    let fair: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .set("group.id", unique("fair"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()?;
    fair.subscribe(&[&topic])?;
    let max = EventsSettings::default().max_batch;
    let first = fair.recv().await?.payload().unwrap_or_default().to_vec();
    apply_raw(&scratch, &[first]).await?;
    fair.commit_consumer_state(CommitMode::Sync)?;
    let started = Instant::now();
    let mut done = 1;
    while done < n {
        let mut batch = vec![fair.recv().await?.payload().unwrap_or_default().to_vec()];
        while batch.len() < max {
            match tokio::time::timeout(Duration::ZERO, fair.recv()).await {
                Ok(m) => batch.push(m?.payload().unwrap_or_default().to_vec()),
                Err(_) => break,
            }
        }
        apply_raw(&scratch, &batch).await?;
        fair.commit_consumer_state(CommitMode::Sync)?;
        done += batch.len();
    }
    let baseline = (n - 1) as f64 / started.elapsed().as_secs_f64();
    drop(fair);
    scratch.drop_all().await?;

    let mut events = EventsSettings::default();
    events.kafka.brokers = args.kafka.clone();
    events.kafka.group_id = unique("thalamus");
    events.kafka.topics = vec![topic.clone()];
    events
        .aliases
        .insert(topic, crate::steps::events::STATUS_TOPIC.into());
    let (scratch, engine) = world(args, backend, events.clone(), n).await?;
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
        format!("events via Kafka ({})", backend.name()),
        value,
        baseline,
        Goal::AtLeast(0.5),
        "messages/s",
    ))
}

/// Events settings consuming a fresh exchange (`thalamus.bench.<name>.…`), as Workspaces'
/// status topic, through a fresh queue; and that exchange.
pub(super) fn amqp_status(args: &BenchArgs, name: &str) -> (EventsSettings, String) {
    let exchange = unique(name);
    let mut events = EventsSettings::default();
    events.amqp.url = args.amqp.clone();
    events.amqp.queue = unique(&format!("{name}-queue"));
    events.amqp.bindings = vec![AmqpBinding {
        exchange: exchange.clone(),
        routing_key: "#".into(),
    }];
    events
        .aliases
        .insert(exchange.clone(), crate::steps::events::STATUS_TOPIC.into());
    (events, exchange)
}

/// AMQP: messages/s applied on `backend` vs. the fair consumer on the same backend.
pub async fn amqp(args: &BenchArgs, backend: Backend, n: usize) -> anyhow::Result<Figure> {
    let (events, exchange) = amqp_status(args, "status");
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
    let transport = n as f64 / started.elapsed().as_secs_f64();
    conn.close(200, "done".into()).await?;
    eprintln!("  events via AMQP: transport speed (a consumer that acks each message) {transport:.0} messages/s");

    // Fair: per batch of what has arrived, the UPDATE committed, then one multiple-ack.
    publish().await?;
    let scratch = requests(args, backend, n).await?;
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let mut fair = channel
        .basic_consume(
            events.amqp.queue.as_str().into(),
            "fair".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let next = |d: Option<lapin::Result<lapin::message::Delivery>>| {
        d.ok_or_else(|| anyhow::anyhow!("fair consumer closed"))?
            .map_err(anyhow::Error::from)
    };
    let max = events.max_batch;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let mut batch = vec![next(fair.next().await)?];
        while batch.len() < max {
            match tokio::time::timeout(Duration::ZERO, fair.next()).await {
                Ok(d) => batch.push(next(d)?),
                Err(_) => break,
            }
        }
        let payloads: Vec<Vec<u8>> = batch.iter().map(|d| d.data.clone()).collect();
        apply_raw(&scratch, &payloads).await?;
        if let Some(last) = batch.last() {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        done += batch.len();
    }
    let baseline = n as f64 / started.elapsed().as_secs_f64();
    conn.close(200, "done".into()).await?;
    scratch.drop_all().await?;

    publish().await?;
    let (scratch, engine) = world(args, backend, events.clone(), n).await?;
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
        format!("events via AMQP ({})", backend.name()),
        value,
        baseline,
        Goal::AtLeast(0.5),
        "messages/s",
    ))
}
