//! The AMQP transport: thalamus declares the durable topic exchanges and its own durable
//! queue (idempotently), consumes with manual acknowledgements and a prefetch bound, and
//! reconnects with exponential backoff when the broker goes away.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::EventsSettings;
use crate::engine::EventSink;
use crate::secret::redact_url;
use crate::step::{Event, Transport};

/// A connected consumer on thalamus's queue.
pub struct AmqpSession {
    _connection: Connection,
    consumer: Consumer,
    events: EventsSettings,
}

impl AmqpSession {
    /// Connects, declares exchanges, queue and bindings, and starts consuming.
    pub async fn connect(events: &EventsSettings) -> anyhow::Result<Self> {
        let settings = &events.amqp;
        let connection = Connection::connect(&settings.url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to {}", redact_url(&settings.url)))?;
        let channel = connection
            .create_channel()
            .await
            .context("opening an AMQP channel")?;
        channel
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for binding in &settings.bindings {
            channel
                .exchange_declare(
                    binding.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("declaring exchange {}", binding.exchange))?;
        }
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(settings.queue.as_str().into(), queue, FieldTable::default())
            .await
            .with_context(|| format!("declaring queue {}", settings.queue))?;
        for b in &settings.bindings {
            channel
                .queue_bind(
                    settings.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| {
                    format!(
                        "binding {} to {} with {}",
                        settings.queue, b.exchange, b.routing_key
                    )
                })?;
        }
        let consumer = channel
            .basic_consume(
                settings.queue.as_str().into(),
                "thalamus".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("starting the AMQP consumer")?;
        Ok(Self {
            _connection: connection,
            consumer,
            events: events.clone(),
        })
    }

    /// Waits for the next message (`None` at shutdown); `Err` when the connection fails.
    pub async fn recv(
        &mut self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(Event, Acker)>> {
        let batch = self.recv_batch(1, shutdown).await?;
        Ok(batch.and_then(|(mut events, acker)| events.pop().map(|e| (e, acker))))
    }

    /// Waits for the next message, then takes up to `max - 1` more that have already
    /// arrived; `None` at shutdown, `Err` when the connection fails.
    pub async fn recv_batch(
        &mut self,
        max: usize,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(Vec<Event>, Acker)>> {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            next = self.consumer.next() => next,
        };
        let (event, mut last) = self.event(next)?;
        let mut events = vec![event];
        while events.len() < max {
            let Some(next) = self.consumer.next().now_or_never() else {
                break;
            };
            let (event, acker) = self.event(next)?;
            events.push(event);
            last = acker;
        }
        Ok(Some((events, last)))
    }

    /// The event in a delivery, and what acknowledges it.
    fn event(
        &self,
        next: Option<Result<lapin::message::Delivery, lapin::Error>>,
    ) -> anyhow::Result<(Event, Acker)> {
        let delivery = match next {
            Some(d) => d.context("AMQP delivery failed")?,
            None => anyhow::bail!("the AMQP consumer was closed by the broker"),
        };
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), format!("{v:?}")))
                    .collect()
            })
            .unwrap_or_default();
        let event = Event {
            transport: Transport::Amqp,
            topic: self.events.logical_topic(delivery.exchange.as_str()),
            routing_key: Some(delivery.routing_key.to_string()),
            payload: delivery.data,
            headers,
            position: format!(
                "{} delivery {}{}",
                delivery.exchange,
                delivery.delivery_tag,
                if delivery.redelivered {
                    " (redelivered)"
                } else {
                    ""
                }
            ),
        };
        Ok((event, delivery.acker))
    }

    /// Consumes until shutdown (`Ok`) or until the connection fails (`Err`): a batch of what
    /// has arrived (at most `events.max_batch`) is delivered, then acknowledged at once
    /// (`multiple`: every delivery up to the batch's last).
    pub async fn consume(
        &mut self,
        sink: &dyn EventSink,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let max = self.events.max_batch;
        while let Some((events, last)) = self.recv_batch(max, shutdown).await? {
            if sink.deliver_batch(&events, shutdown).await.is_none() {
                return Ok(());
            }
            last.ack(BasicAckOptions { multiple: true })
                .await
                .context("acknowledging AMQP messages")?;
        }
        Ok(())
    }
}

/// Consumes until shutdown, reconnecting with exponential backoff whenever the broker is
/// unreachable or drops the connection. Unacknowledged messages are redelivered by the broker.
pub async fn run_amqp(
    sink: Arc<dyn EventSink>,
    events: EventsSettings,
    shutdown: CancellationToken,
) {
    let settings = &events.amqp;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .with_jitter();
    let mut delays = backoff.build();
    let url = redact_url(&settings.url);
    while !shutdown.is_cancelled() {
        let error = match AmqpSession::connect(&events).await {
            Ok(mut session) => {
                info!(url = %url, queue = %settings.queue, "consuming AMQP");
                sink.event_metrics().set_connected(Transport::Amqp, true);
                delays = backoff.build();
                match session.consume(sink.as_ref(), &shutdown).await {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        sink.event_metrics().set_connected(Transport::Amqp, false);
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        warn!(url = %url, "AMQP unavailable, reconnecting in {delay:?}: {error:#}");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
