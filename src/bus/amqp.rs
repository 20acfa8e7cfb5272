//! The AMQP transport: thalamus declares the durable topic exchanges and its own durable
//! queue (idempotently), consumes with manual acknowledgements and a prefetch bound, and
//! reconnects with exponential backoff when the broker goes away.

use std::time::Duration;

use anyhow::Context as _;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{deliver, Delivery, EventsSettings};
use crate::config::redact_url;
use crate::engine::Engine;
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
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            next = self.consumer.next() => next,
        };
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
            payload: delivery.data.clone(),
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
        Ok(Some((event, delivery.acker)))
    }

    /// Consumes until shutdown (`Ok`) or until the connection fails (`Err`): deliver, then ack.
    pub async fn consume(
        &mut self,
        engine: &Engine,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        while let Some((event, acker)) = self.recv(shutdown).await? {
            if deliver(engine, &event, shutdown).await == Delivery::Abandoned {
                return Ok(());
            }
            acker
                .ack(BasicAckOptions::default())
                .await
                .context("acknowledging an AMQP message")?;
        }
        Ok(())
    }
}

/// Consumes until shutdown, reconnecting with exponential backoff whenever the broker is
/// unreachable or drops the connection. Unacknowledged messages are redelivered by the broker.
pub async fn run_amqp(engine: Engine, events: EventsSettings, shutdown: CancellationToken) {
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
                delays = backoff.build();
                match session.consume(&engine, &shutdown).await {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        warn!(url = %url, "AMQP unavailable, reconnecting in {delay:?}: {error:#}");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
