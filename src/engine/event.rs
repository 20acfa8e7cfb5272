//! Applying one broker message: route it to the event steps that consume its topic and record
//! each attempt. Transports (Kafka, AMQP) call this and acknowledge only after it returns Ok.

use tracing::{debug, warn};

use super::Engine;
use crate::step::{Event, EventError, EventOutcome};
use crate::store::NewExecution;

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventReport {
    /// At least one step changed a model.
    Applied(Vec<String>),
    /// Steps ran; nothing changed (duplicate or stale).
    Unchanged(Vec<String>),
    /// No step could use it: the transport stores it as a dead letter and acknowledges it.
    Rejected(String),
}

impl Engine {
    /// Applies `event` through every event step subscribed to its topic. An `Err` means the
    /// effect is not stored: the transport must not acknowledge, so the message comes again.
    pub async fn apply_event(&self, event: &Event) -> anyhow::Result<EventReport> {
        let steps: Vec<_> = self
            .registry
            .events
            .iter()
            .filter(|s| s.topics().contains(&event.topic))
            .collect();
        if steps.is_empty() {
            return Ok(EventReport::Rejected(format!(
                "no event step consumes {}",
                event.topic
            )));
        }
        let (mut applied, mut unchanged, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
        let mut executions = Vec::new();
        for step in steps {
            let started = self.clock.now_ms();
            let result = step.handle(event, &self.models).await;
            let (outcome, error) = match result {
                Ok(EventOutcome::Applied(what)) => {
                    debug!(step = step.name(), topic = %event.topic, "applied: {what}");
                    applied.push(what);
                    ("ok", None)
                }
                Ok(EventOutcome::Unchanged(what)) => {
                    unchanged.push(what);
                    ("unchanged", None)
                }
                Err(EventError::Reject(reason)) => {
                    rejected.push(format!("{}: {reason}", step.name()));
                    ("rejected", Some(reason))
                }
                Err(EventError::Transient(e)) => {
                    warn!(step = step.name(), topic = %event.topic, "event not applied, will be redelivered: {e:#}");
                    return Err(e.context(format!("event step {} failed", step.name())));
                }
            };
            executions.push(NewExecution {
                kind: "event".into(),
                key: event.topic.clone(),
                step: format!("event:{}", step.name()),
                generation: 0,
                cause: format!("message at {}", event.position),
                holder: self.holder().to_string(),
                started_at: started,
                duration_ms: (self.clock.now_ms() - started).max(0),
                outcome: outcome.into(),
                error,
            });
        }
        self.store.record(&executions).await?;
        Ok(if !applied.is_empty() {
            EventReport::Applied(applied)
        } else if !unchanged.is_empty() {
            EventReport::Unchanged(unchanged)
        } else {
            EventReport::Rejected(rejected.join("; "))
        })
    }
}
