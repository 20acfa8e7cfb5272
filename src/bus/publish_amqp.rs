//! Publishing outbox rows on AMQP topic exchanges: persistent messages, each with its stable
//! id as `message_id` and the announcing thalamus in a header, confirmed by the broker
//! (publisher confirms) before the relay marks them sent. A batch is published at once and
//! its confirms awaited after, in order.

use std::collections::HashSet;

use anyhow::Context as _;
use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;

use crate::outbox::relay::message_id;
use crate::outbox::{Publisher, ORIGIN_HEADER};
use crate::secret::redact_url;
use crate::store::OutboxRow;

/// A connection with a confirming channel, and the exchanges declared on it.
struct Open {
    _connection: Connection,
    channel: Channel,
    declared: HashSet<String>,
}

/// Publishes on the broker at `url`, reconnecting after any failure.
pub struct AmqpPublisher {
    url: String,
    origin: String,
    open: Mutex<Option<Open>>,
}

impl AmqpPublisher {
    /// A publisher for `url`, announcing as `origin` (the holder id).
    pub fn new(url: &str, origin: &str) -> Self {
        Self {
            url: url.to_string(),
            origin: origin.to_string(),
            open: Mutex::new(None),
        }
    }

    async fn connect(&self) -> anyhow::Result<Open> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to {}", redact_url(&self.url)))?;
        let channel = connection
            .create_channel()
            .await
            .context("opening an AMQP channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Open {
            _connection: connection,
            channel,
            declared: HashSet::new(),
        })
    }

    /// Publishes `rows` on `open`; one result per row.
    async fn send(
        &self,
        open: &mut Open,
        rows: &[&OutboxRow],
    ) -> anyhow::Result<Vec<anyhow::Result<()>>> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut confirms = Vec::with_capacity(rows.len());
        for row in rows {
            if !open.declared.contains(&row.topic) {
                open.channel
                    .exchange_declare(
                        row.topic.as_str().into(),
                        ExchangeKind::Topic,
                        durable,
                        FieldTable::default(),
                    )
                    .await
                    .with_context(|| format!("declaring exchange {}", row.topic))?;
                open.declared.insert(row.topic.clone());
            }
            let mut headers = FieldTable::default();
            headers.insert(
                ORIGIN_HEADER.into(),
                AMQPValue::LongString(LongString::from(self.origin.as_bytes().to_vec())),
            );
            let properties = BasicProperties::default()
                .with_message_id(message_id(row).into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_headers(headers);
            let confirm = open
                .channel
                .basic_publish(
                    row.topic.as_str().into(),
                    row.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    row.payload.as_bytes(),
                    properties,
                )
                .await
                .with_context(|| format!("publishing to {}", row.topic))?;
            confirms.push(confirm);
        }
        let mut results = Vec::with_capacity(confirms.len());
        for confirm in confirms {
            results.push(match confirm.await {
                Ok(Confirmation::Ack(_)) => Ok(()),
                Ok(Confirmation::Nack(_)) => Err(anyhow::anyhow!("the broker refused the message")),
                Ok(Confirmation::NotRequested) => Err(anyhow::anyhow!("no confirm was requested")),
                Err(e) => Err(anyhow::Error::new(e).context("waiting for the broker's confirm")),
            });
        }
        Ok(results)
    }
}

#[async_trait]
impl Publisher for AmqpPublisher {
    fn transport(&self) -> &'static str {
        "amqp"
    }

    async fn publish(&self, rows: &[&OutboxRow]) -> Vec<anyhow::Result<()>> {
        let mut open = self.open.lock().await;
        if open.is_none() {
            match self.connect().await {
                Ok(o) => *open = Some(o),
                Err(e) => {
                    let why = format!("{e:#}");
                    return rows.iter().map(|_| Err(anyhow::anyhow!("{why}"))).collect();
                }
            }
        }
        let results = match open.as_mut() {
            Some(o) => self.send(o, rows).await,
            None => Err(anyhow::anyhow!("no AMQP connection")),
        };
        match results {
            Ok(results) => {
                if results.iter().any(Result::is_err) {
                    *open = None; // a fresh channel for the retry
                }
                results
            }
            Err(e) => {
                *open = None;
                let why = format!("{e:#}");
                rows.iter().map(|_| Err(anyhow::anyhow!("{why}"))).collect()
            }
        }
    }
}
