//! Applying broker messages: route each run of consecutive messages on one topic to the event
//! steps that consume it, as one batch, and record each message's outcome. Transports (Kafka,
//! AMQP) call this and acknowledge only after it returns Ok.

use tracing::{debug, warn};

use super::Engine;
use crate::step::{Event, EventOutcome};
use crate::store::{NewExecution, Outcome};

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

/// What the steps said of one message, gathered into its report.
#[derive(Default)]
struct Tally {
    applied: Vec<String>,
    unchanged: Vec<String>,
    rejected: Vec<String>,
}

impl Tally {
    fn report(self) -> EventReport {
        if !self.applied.is_empty() {
            EventReport::Applied(self.applied)
        } else if !self.unchanged.is_empty() {
            EventReport::Unchanged(self.unchanged)
        } else {
            EventReport::Rejected(self.rejected.join("; "))
        }
    }
}

/// Whether a message carries the header thalamus puts on what it announces.
fn is_own_announcement(event: &Event) -> bool {
    event
        .headers
        .iter()
        .any(|(name, _)| name == crate::outbox::ORIGIN_HEADER)
}

impl Engine {
    /// Applies one message; see [`Engine::apply_events`].
    pub async fn apply_event(&self, event: &Event) -> anyhow::Result<EventReport> {
        let mut reports = self.apply_events(std::slice::from_ref(event)).await?;
        reports
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no report for message at {}", event.position))
    }

    /// Applies messages in their order through every event step subscribed to their topics,
    /// one report per message. Consecutive messages on one topic go to each step as one
    /// batch (a topic with several steps gives each step the whole run in turn). An `Err`
    /// means the effects may not all be stored: the transport must not acknowledge any of
    /// them, so they all come again (steps are idempotent).
    pub async fn apply_events(&self, events: &[Event]) -> anyhow::Result<Vec<EventReport>> {
        // thalamus's own announcements come back on the exchanges it consumes: they say
        // nothing new (their change is stored already), so they are acknowledged unapplied,
        // and a change can never announce itself again in a loop.
        let own: Vec<bool> = events.iter().map(is_own_announcement).collect();
        if !own.contains(&true) {
            return self.apply_foreign(events).await;
        }
        let foreign: Vec<Event> = events
            .iter()
            .zip(&own)
            .filter(|(_, own)| !**own)
            .map(|(e, _)| e.clone())
            .collect();
        let mut applied = self.apply_foreign(&foreign).await?.into_iter();
        Ok(own
            .iter()
            .map(|own| match own {
                true => Some(EventReport::Unchanged(vec![
                    "thalamus's own announcement".into()
                ])),
                false => applied.next(),
            })
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default())
    }

    /// [`Engine::apply_events`] for messages thalamus did not announce itself.
    async fn apply_foreign(&self, events: &[Event]) -> anyhow::Result<Vec<EventReport>> {
        let mut tallies: Vec<Tally> = events.iter().map(|_| Tally::default()).collect();
        let mut executions = Vec::with_capacity(events.len());
        let mut start = 0;
        while start < events.len() {
            let topic = &events[start].topic;
            let end = events[start..]
                .iter()
                .position(|e| &e.topic != topic)
                .map_or(events.len(), |n| start + n);
            let run: Vec<&Event> = events[start..end].iter().collect();
            let mut consumed = false;
            for step in self.registry.events.iter() {
                if !step.topics().contains(topic) {
                    continue;
                }
                consumed = true;
                let started = self.clock.now_ms();
                let results = step.handle_batch(&run, &self.models).await.map_err(|e| {
                    warn!(step = step.name(), topic = %topic, messages = run.len(),
                        "messages not applied, will be redelivered: {e:#}");
                    e.context(format!("event step {} failed", step.name()))
                })?;
                anyhow::ensure!(
                    results.len() == run.len(),
                    "event step {} returned {} results for {} messages",
                    step.name(),
                    results.len(),
                    run.len()
                );
                // The batch's time, shared evenly among its messages.
                let duration_ms = (self.clock.now_ms() - started).max(0) / run.len() as i64;
                for (i, result) in results.into_iter().enumerate() {
                    let event = run[i];
                    let tally = &mut tallies[start + i];
                    let (outcome, error) = match result {
                        Ok(EventOutcome::Applied(what)) => {
                            debug!(step = step.name(), topic = %topic, "applied: {what}");
                            tally.applied.push(what);
                            (Outcome::Ok, None)
                        }
                        Ok(EventOutcome::Unchanged(what)) => {
                            tally.unchanged.push(what);
                            (Outcome::Unchanged, None)
                        }
                        Err(reason) => {
                            tally.rejected.push(format!("{}: {reason}", step.name()));
                            (Outcome::Rejected, Some(reason))
                        }
                    };
                    executions.push(NewExecution {
                        kind: "event".into(),
                        key: topic.clone(),
                        step: format!("event:{}", step.name()),
                        generation: 0,
                        cause: format!("message at {}", event.position),
                        holder: self.holder().to_string(),
                        started_at: started,
                        duration_ms,
                        outcome,
                        error,
                    });
                }
            }
            if !consumed {
                for tally in &mut tallies[start..end] {
                    tally
                        .rejected
                        .push(format!("no event step consumes {topic}"));
                }
            }
            start = end;
        }
        self.store.record(&executions).await?;
        Ok(tallies.into_iter().map(Tally::report).collect())
    }
}
