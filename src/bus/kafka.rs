//! The Kafka transport: a consumer group with auto-commit off; offsets are committed only
//! after the effects (or dead letters) of the messages before them are stored. A new group
//! starts from the earliest offset. librdkafka reconnects by itself; a failed start is
//! retried with backoff.
//!
//! The consumer is a static group member (`group.instance.id` = the holder id, one live
//! process per id): it never sends LeaveGroup, and a restart under the same id takes its
//! place. A LeaveGroup sent while the group is rebalancing (which a client cannot know for
//! sure) wedged tansu 0.6's group for good: its coordinator keeps a leader that has left as
//! the leader of the forming group, so every later member waits for that leader's assignment
//! forever (see the README, Events). A rebalance that does not complete is logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::EventsSettings;
use crate::engine::EventMetrics;
use crate::engine::EventSink;
use crate::step::{Event, Transport};

/// Where the consumer stands in its group, as librdkafka's rebalance callbacks tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    /// Subscribed, and waiting for a rebalance to complete and hand out partitions.
    Joining,
    /// The last rebalance completed; this many partitions are ours (maybe none).
    Assigned(usize),
}

/// Feeds librdkafka's statistics (consumer lag per partition) into the event metrics, and its
/// rebalances into the consumer's [`Membership`].
pub struct LagContext {
    metrics: Arc<EventMetrics>,
    membership: watch::Sender<Membership>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let lags = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .map(|p| p.consumer_lag);
        let known: Vec<i64> = lags.filter(|lag| *lag >= 0).collect();
        if !known.is_empty() {
            self.metrics.set_lag(known.iter().sum());
        }
        let up = statistics
            .brokers
            .values()
            .any(|b| b.state == "UP" && b.source != "internal");
        self.metrics.set_connected(Transport::Kafka, up);
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            self.membership.send_replace(Membership::Joining);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                info!(partitions = partitions.count(), "Kafka partitions assigned");
                self.membership
                    .send_replace(Membership::Assigned(partitions.count()));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!("Kafka rebalance failed: {e}"),
        }
    }
}

/// A message received and not yet committed.
#[derive(Debug, Clone)]
pub struct Received {
    pub event: Event,
    mark: Mark,
}

/// Where a received message stands in its partition, to commit past it.
#[derive(Debug, Clone)]
struct Mark {
    topic: String,
    partition: i32,
    offset: i64,
}

/// A subscribed consumer in the configured group.
pub struct KafkaSource {
    consumer: StreamConsumer<LagContext>,
    membership: watch::Receiver<Membership>,
    aliases: EventsSettings,
}

impl KafkaSource {
    /// Creates missing topics (if configured) and subscribes.
    pub async fn connect(
        events: &EventsSettings,
        metrics: Arc<EventMetrics>,
        instance: Option<&str>,
    ) -> anyhow::Result<Self> {
        let settings = &events.kafka;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            // The broker names members after it (tansu: "thalamus-<uuid>"): logs say who.
            .set("client.id", "thalamus")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set("statistics.interval.ms", "5000")
            .set("enable.partition.eof", "false")
            // After a broker restart a topic may come back later: look for it every 10 s.
            .set("topic.metadata.refresh.interval.ms", "10000");
        if let Some(instance) = instance {
            // Static membership (KIP-345): a stopped consumer never sends LeaveGroup, and
            // one restarted under the same id takes its place without a rebalance.
            config.set("group.instance.id", instance);
        }
        if settings.create_topics {
            let admin: AdminClient<_> =
                config.create().context("creating the Kafka admin client")?;
            let topics: Vec<NewTopic> = settings
                .topics
                .iter()
                .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
                .collect();
            let results = admin
                .create_topics(
                    &topics,
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                )
                .await
                .context("creating Kafka topics")?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        anyhow::bail!("cannot create Kafka topic {topic}: {code}")
                    }
                }
            }
        }
        let (membership, watching) = watch::channel(Membership::Joining);
        let consumer: StreamConsumer<LagContext> = config
            .create_with_context(LagContext {
                metrics,
                membership,
            })
            .context("creating the Kafka consumer")?;
        let consumer = Self {
            consumer,
            membership: watching,
            aliases: events.clone(),
        };
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer
            .consumer
            .subscribe(&topics)
            .context("subscribing to Kafka topics")?;
        Ok(consumer)
    }

    /// Logs a rebalance that has not completed within `bound`, and when it completes at last;
    /// never returns. A broker whose rebalance never completes needs an operator: see the
    /// README, Events.
    async fn watch_rebalances(&self, group: &str, bound: Duration) {
        let mut membership = self.membership.clone();
        let assigned = |m: &Membership| matches!(m, Membership::Assigned(_));
        loop {
            if membership
                .wait_for(|m| *m == Membership::Joining)
                .await
                .is_err()
            {
                break;
            }
            let started = Instant::now();
            match tokio::time::timeout(bound, membership.wait_for(assigned)).await {
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => break,
                Err(_) => {}
            }
            warn!(
                group,
                "Kafka: no rebalance of the group completed in {bound:?}, so nothing is consumed; \
                 the broker may be waiting for a member that is gone (tansu 0.6 waits forever \
                 after the leader of a rebalance left the group: restart the broker)"
            );
            if membership.wait_for(assigned).await.is_err() {
                break;
            }
            info!(
                group,
                "Kafka: the group's rebalance completed after {:?}",
                started.elapsed()
            );
        }
        // The context (the sender) lives as long as the consumer: not reached.
        std::future::pending::<()>().await
    }

    /// Waits for the next message.
    pub async fn recv(&self) -> anyhow::Result<Received> {
        let m = self.consumer.recv().await.context("receiving from Kafka")?;
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let event = Event {
            transport: Transport::Kafka,
            topic: self.aliases.logical_topic(m.topic()),
            routing_key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
            position: format!("{}/{}@{}", m.topic(), m.partition(), m.offset()),
        };
        Ok(Received {
            event,
            mark: Mark {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
            },
        })
    }

    /// Waits for the next message, then takes up to `max - 1` more that have already
    /// arrived, so a busy topic is applied in batches and a quiet one message at a time.
    pub async fn recv_batch(&self, max: usize) -> anyhow::Result<Vec<Received>> {
        let mut batch = vec![self.recv().await?];
        while batch.len() < max {
            match self.recv().now_or_never() {
                Some(Ok(received)) => batch.push(received),
                Some(Err(e)) => {
                    warn!("Kafka: {e:#}");
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }

    /// Commits past every message of `batch`: their effects are stored.
    pub fn commit(&self, batch: &[Received]) -> anyhow::Result<()> {
        self.commit_marks(batch.iter().map(|r| &r.mark))
    }

    /// Commits, in each partition, past the furthest of `marks`.
    fn commit_marks<'a>(&self, marks: impl Iterator<Item = &'a Mark>) -> anyhow::Result<()> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in marks {
            let offset = next.entry((m.topic.as_str(), m.partition)).or_default();
            *offset = (*offset).max(m.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
                .context("building the commit")?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .context("committing the Kafka offsets")?;
        Ok(())
    }

    /// Consumes until shutdown: a batch of what has arrived (at most `max_batch`) is
    /// delivered, then its offsets are committed.
    pub async fn consume(
        &self,
        sink: &dyn EventSink,
        max_batch: usize,
        shutdown: &CancellationToken,
    ) {
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                b = self.recv_batch(max_batch) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    warn!("Kafka: {e:#}");
                    continue;
                }
            };
            let (events, marks): (Vec<Event>, Vec<Mark>) =
                batch.into_iter().map(|r| (r.event, r.mark)).unzip();
            if sink.deliver_batch(&events, shutdown).await.is_none() {
                return;
            }
            if let Err(e) = self.commit_marks(marks.iter()) {
                // The effects are stored; a lost commit only means a harmless redelivery.
                let first = events.first().map_or("", |e| e.position.as_str());
                warn!(messages = events.len(), first = %first, "{e:#}");
            }
        }
    }
}

/// Consumes until shutdown: deliver, then commit. A start that fails (broker down) is retried
/// with exponential backoff; errors while consuming are logged and librdkafka reconnects.
pub async fn run_kafka(
    sink: Arc<dyn EventSink>,
    instance: String,
    events: EventsSettings,
    shutdown: CancellationToken,
) {
    let settings = &events.kafka;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .without_max_times()
        .build();
    // librdkafka would wait a minute before saying anything: say at once that no broker
    // answers; the connect below keeps retrying in the background.
    if let Err(e) = reachable(&settings.brokers).await {
        warn!(brokers = %settings.brokers, "Kafka unreachable, retrying in the background: {e}");
    }
    let source = loop {
        let connect = KafkaSource::connect(&events, sink.event_metrics(), Some(&instance));
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = connect => c,
        };
        match connected {
            Ok(s) => break s,
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(60));
                warn!(brokers = %settings.brokers, "Kafka not available, retrying in {delay:?}: {e:#}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    info!(brokers = %settings.brokers, group = %settings.group_id, topics = ?settings.topics, "consuming Kafka");
    sink.event_metrics().set_connected(Transport::Kafka, true);
    // Ten session timeouts: a broker expires a vanished member within one.
    let bound = Duration::from_millis(u64::from(settings.session_timeout_ms) * 10);
    tokio::select! {
        _ = source.consume(sink.as_ref(), events.max_batch, &shutdown) => {}
        _ = source.watch_rebalances(&settings.group_id, bound) => {}
    }
}

/// How long the first look at the brokers waits for a TCP connection.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether any of `brokers` (`host:port,…`) accepts a TCP connection; the error says why
/// none did.
pub async fn reachable(brokers: &str) -> Result<(), String> {
    let mut why = Vec::new();
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        match tokio::time::timeout(REACHABLE_TIMEOUT, tokio::net::TcpStream::connect(broker)).await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => why.push(format!("{broker}: {e}")),
            Err(_) => why.push(format!("{broker}: no answer in {REACHABLE_TIMEOUT:?}")),
        }
    }
    Err(why.join("; "))
}
