//! `events.*` settings: which brokers to consume, and how.

use serde::{Deserialize, Serialize};

/// Both transports; each is off unless enabled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    pub kafka: KafkaSettings,
    pub amqp: AmqpSettings,
    /// Actual exchange/topic name → the topic event steps consume (e.g. when a site prefixes
    /// its exchanges). Names not listed are used as they are.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// Most messages applied and acknowledged together. A batch is only what has already
    /// arrived, so a quiet broker's message is applied at once, alone.
    pub max_batch: usize,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            amqp: AmqpSettings::default(),
            aliases: Default::default(),
            max_batch: 256,
        }
    }
}

impl EventsSettings {
    /// The topic event steps see for a message from exchange/topic `actual`.
    pub fn logical_topic(&self, actual: &str) -> String {
        self.aliases
            .get(actual)
            .cloned()
            .unwrap_or_else(|| actual.to_string())
    }
}

/// A Kafka consumer group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    pub enabled: bool,
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub session_timeout_ms: u32,
    /// Create missing topics at start (a consumer cannot subscribe to a missing topic).
    pub create_topics: bool,
}

/// An AMQP queue bound to exchanges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    pub enabled: bool,
    /// `amqp://user:password@host:port/vhost` (the password is never printed).
    pub url: String,
    /// thalamus's own durable queue: messages published while it is down wait there.
    pub queue: String,
    /// Unacknowledged messages the broker may send ahead; best above `events.max_batch`, so
    /// the next batch arrives while one is applied (below it, batches are at most this big).
    pub prefetch: u16,
    pub bindings: Vec<AmqpBinding>,
}

/// One binding of the queue to a durable topic exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpBinding {
    pub exchange: String,
    pub routing_key: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            brokers: "127.0.0.1:19092".into(),
            group_id: "thalamus".into(),
            topics: vec!["workspaces.capability-status".into()],
            session_timeout_ms: 6000,
            create_topics: true,
        }
    }
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue: "thalamus.events".into(),
            prefetch: 512,
            bindings: vec![
                AmqpBinding {
                    exchange: "archive.events".into(),
                    routing_key: "*.event".into(),
                },
                AmqpBinding {
                    exchange: "workspaces.capability-status".into(),
                    routing_key: "#".into(),
                },
            ],
        }
    }
}

impl EventsSettings {
    /// Checks values the transports cannot run without; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_batch == 0 {
            return Err(("events.max_batch", "must be at least 1"));
        }
        let k = &self.kafka;
        if k.enabled {
            if k.brokers.trim().is_empty() {
                return Err(("events.kafka.brokers", "must name at least one broker"));
            }
            if k.topics.is_empty() {
                return Err(("events.kafka.topics", "must name at least one topic"));
            }
            if k.group_id.trim().is_empty() {
                return Err(("events.kafka.group_id", "must not be empty"));
            }
        }
        let a = &self.amqp;
        if a.enabled {
            if !(a.url.starts_with("amqp://") || a.url.starts_with("amqps://")) {
                return Err(("events.amqp.url", "must start with amqp:// or amqps://"));
            }
            if a.prefetch == 0 {
                return Err(("events.amqp.prefetch", "must be at least 1"));
            }
            if a.bindings.is_empty() {
                return Err(("events.amqp.bindings", "must bind at least one exchange"));
            }
        }
        Ok(())
    }
}
