//! `outbox.*` settings: which messages thalamus announces, on which brokers, and how long sent
//! messages are kept.

use serde::{Deserialize, Serialize};

/// What is announced, where, and for how long it is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    pub amqp: OutboxAmqp,
    pub kafka: OutboxKafka,
    /// Which of thalamus's own message types ([`MESSAGE_TYPES`]) are announced; one not
    /// listed is not written at all. (A type only a rule publishes is always written.)
    pub announce: Vec<String>,
    /// Exchange/topic the archive names → the one this site uses (as `events.aliases`).
    pub aliases: std::collections::BTreeMap<String, String>,
    /// Sent messages are kept this long, then pruned by `run` (0 keeps all).
    pub retain_days: u64,
    /// Most messages the relay publishes before it records them sent.
    pub batch: usize,
}

/// Announcing on AMQP topic exchanges (publisher confirms, persistent messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxAmqp {
    pub enabled: bool,
    /// `amqp://user:password@host:port/vhost` (the password is never printed).
    pub url: String,
}

/// Announcing on Kafka topics (idempotent producer, `acks=all`, keyed by model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxKafka {
    pub enabled: bool,
    /// `host:port[,host:port…]`.
    pub brokers: String,
}

/// Every message type thalamus can announce.
pub const MESSAGE_TYPES: [&str; 5] = [
    "new-file",
    "ingestion-complete",
    "calibration-complete",
    "request-failed",
    "capability-status",
];

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            amqp: OutboxAmqp::default(),
            kafka: OutboxKafka::default(),
            announce: MESSAGE_TYPES.iter().map(|t| t.to_string()).collect(),
            aliases: Default::default(),
            retain_days: 7,
            batch: 256,
        }
    }
}

impl Default for OutboxAmqp {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        }
    }
}

impl Default for OutboxKafka {
    fn default() -> Self {
        Self {
            enabled: false,
            brokers: "127.0.0.1:19092".into(),
        }
    }
}

impl OutboxSettings {
    /// Whether anything is announced at all (a transport is enabled).
    pub fn enabled(&self) -> bool {
        self.amqp.enabled || self.kafka.enabled
    }

    /// Checks what the relay cannot work with; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(unknown) = self
            .announce
            .iter()
            .find(|t| !MESSAGE_TYPES.contains(&t.as_str()))
        {
            return Err((
                "outbox.announce",
                format!(
                    "names {unknown:?}, which thalamus does not announce (it announces {})",
                    MESSAGE_TYPES.join(", ")
                ),
            ));
        }
        if self.amqp.enabled
            && !(self.amqp.url.starts_with("amqp://") || self.amqp.url.starts_with("amqps://"))
        {
            return Err((
                "outbox.amqp.url",
                "must be an amqp:// or amqps:// URL".into(),
            ));
        }
        if self.kafka.enabled && self.kafka.brokers.trim().is_empty() {
            return Err((
                "outbox.kafka.brokers",
                "must name at least one broker".into(),
            ));
        }
        if let Some((from, _)) = self
            .aliases
            .iter()
            .find(|(f, to)| f.trim().is_empty() || to.trim().is_empty())
        {
            return Err((
                "outbox.aliases",
                format!(
                    "maps {from:?} to an empty name (or from one): say which exchange or topic"
                ),
            ));
        }
        if self.batch == 0 {
            return Err(("outbox.batch", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_to_an_empty_name_is_refused_by_key() {
        let mut s = OutboxSettings::default();
        s.aliases.insert("archive.events".into(), " ".into());
        let (key, why) = s.validate().unwrap_err();
        assert_eq!(key, "outbox.aliases");
        assert!(why.contains("\"archive.events\""), "{why}");
        s.aliases
            .insert("archive.events".into(), "site.events".into());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn an_unknown_message_type_is_refused() {
        let s = OutboxSettings {
            announce: vec!["bogus-type".into()],
            ..Default::default()
        };
        assert_eq!(s.validate().unwrap_err().0, "outbox.announce");
    }
}
