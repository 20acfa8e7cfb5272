//! From an announcement to outbox rows: the message's envelope (its `type`, a `source`), the
//! topic aliases, and one row per enabled transport.

use serde_json::Value;

use super::OutboxSettings;
use crate::store::NewOutboxRow;

/// The AMQP header (and Kafka header) naming the thalamus that announced a message, so its own
/// consumer can tell its announcements from the world's and never re-consume them.
pub const ORIGIN_HEADER: &str = "x-thalamus-origin";

/// A message a model change announces.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// The message's `type` (`new-file`, `ingestion-complete`, …).
    pub message_type: &'static str,
    /// The exchange or topic, as the archive names it.
    pub topic: String,
    /// The AMQP routing key (Kafka messages are keyed by their model instead).
    pub routing_key: String,
    /// The JSON body; its `type` is set to `message_type`.
    pub payload: Value,
}

/// Writes announcements as outbox rows, as `outbox.*` says.
#[derive(Debug, Clone, Default)]
pub struct Herald {
    settings: Option<OutboxSettings>,
}

impl Herald {
    /// A herald announcing as `settings` says (nothing when no transport is enabled).
    pub fn new(settings: &OutboxSettings) -> Self {
        Self {
            settings: settings.enabled().then(|| settings.clone()),
        }
    }

    /// Whether anything is announced at all.
    pub fn announces(&self) -> bool {
        self.settings.is_some()
    }

    /// The outbox rows of `announcements` about the object `kind`/`key`.
    pub fn rows(
        &self,
        kind: &str,
        key: &str,
        announcements: Vec<Announcement>,
    ) -> Vec<NewOutboxRow> {
        let Some(settings) = &self.settings else {
            return Vec::new();
        };
        let model = format!("{kind}/{key}");
        let mut rows = Vec::new();
        for a in announcements {
            // `outbox.announce` chooses among thalamus's own types; a type only a rule
            // publishes is the rule's author's choice, and is written.
            let own = super::settings::MESSAGE_TYPES.contains(&a.message_type);
            if own && !settings.announce.iter().any(|t| t == a.message_type) {
                continue;
            }
            let mut payload = a.payload;
            if let Value::Object(fields) = &mut payload {
                fields.insert("type".into(), Value::from(a.message_type));
            }
            let payload = payload.to_string();
            let topic = settings.aliases.get(&a.topic).unwrap_or(&a.topic).clone();
            if settings.amqp.enabled {
                rows.push(NewOutboxRow {
                    transport: "amqp".into(),
                    topic: topic.clone(),
                    routing_key: a.routing_key.clone(),
                    message_type: a.message_type.into(),
                    model: model.clone(),
                    payload: payload.clone(),
                });
            }
            if settings.kafka.enabled {
                rows.push(NewOutboxRow {
                    transport: "kafka".into(),
                    topic,
                    routing_key: model.clone(),
                    message_type: a.message_type.into(),
                    model: model.clone(),
                    payload,
                });
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement() -> Announcement {
        Announcement {
            message_type: "new-file",
            topic: "archive.events".into(),
            routing_key: "ingestion.event".into(),
            payload: serde_json::json!({"name": "x"}),
        }
    }

    #[test]
    fn one_row_per_enabled_transport_with_its_type_and_alias() {
        let mut s = OutboxSettings::default();
        s.amqp.enabled = true;
        s.kafka.enabled = true;
        s.aliases
            .insert("archive.events".into(), "site.archive.events".into());
        let rows = Herald::new(&s).rows("Observation", "VLA/x", vec![announcement()]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].transport, "amqp");
        assert_eq!(rows[0].routing_key, "ingestion.event");
        assert_eq!(rows[1].transport, "kafka");
        assert_eq!(rows[1].routing_key, "Observation/VLA/x", "keyed by model");
        for row in &rows {
            assert_eq!(row.topic, "site.archive.events");
            assert_eq!(row.payload, r#"{"name":"x","type":"new-file"}"#);
        }
    }

    #[test]
    fn nothing_when_no_transport_or_the_type_is_not_announced() {
        let none = Herald::new(&OutboxSettings::default());
        assert!(none
            .rows("Observation", "k", vec![announcement()])
            .is_empty());
        let mut s = OutboxSettings::default();
        s.amqp.enabled = true;
        s.announce = vec!["ingestion-complete".into()];
        assert!(Herald::new(&s)
            .rows("Observation", "k", vec![announcement()])
            .is_empty());
    }
}
