//! A downstream consumer of what thalamus announces: an exclusive queue bound with `#` to
//! exchanges on the RabbitMQ at 127.0.0.1:5672, collecting every message with its id, routing
//! key, origin header and JSON body.

use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use super::brokers::AMQP;

/// One message as a downstream consumer saw it.
#[derive(Debug, Clone)]
pub struct Heard {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub origin: Option<String>,
    pub body: Value,
}

impl Heard {
    /// The message's `type`.
    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
}

/// A consumer listening to some exchanges; stops when the test's runtime does.
pub struct Listener {
    heard: Arc<Mutex<Vec<Heard>>>,
    _connection: Connection,
}

impl Listener {
    /// Declares `exchanges` (durable topic, as thalamus does) and listens to all they carry.
    pub async fn on(exchanges: &[&str]) -> Self {
        let connection = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let channel = connection.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .unwrap();
        for exchange in exchanges {
            channel
                .exchange_declare(
                    (*exchange).into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await
                .unwrap();
            channel
                .queue_bind(
                    queue.name().clone(),
                    (*exchange).into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "listener".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
        let sink = heard.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let props = &delivery.properties;
                let origin = props
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(thalamus::outbox::ORIGIN_HEADER).cloned())
                    .and_then(|v| match v {
                        AMQPValue::LongString(s) => Some(s.to_string()),
                        _ => None,
                    });
                sink.lock().unwrap().push(Heard {
                    exchange: delivery.exchange.to_string(),
                    routing_key: delivery.routing_key.to_string(),
                    message_id: props.message_id().as_ref().map(|m| m.to_string()),
                    origin,
                    body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                });
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
        Self {
            heard,
            _connection: connection,
        }
    }

    /// Everything heard so far, in order.
    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` messages were heard; returns them.
    pub async fn until(&self, n: usize) -> Vec<Heard> {
        super::brokers::eventually(&format!("{n} message(s) downstream"), || async {
            self.heard().len() >= n
        })
        .await;
        self.heard()
    }
}
