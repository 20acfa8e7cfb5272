//! The four step traits and the outcomes they return.

use std::time::Duration;

use async_trait::async_trait;

use super::context::{Models, StepContext};
use super::model::{Model, Obj};

/// How a sync or delete attempt ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The world now matches this generation of the spec.
    Done,
    /// Work is under way elsewhere (e.g. a Workspaces request is executing): look again after
    /// `after`; this is not a failure and does not grow the backoff.
    Deferred { after: Duration, reason: String },
}

impl Progress {
    /// Shorthand for [`Progress::Deferred`].
    pub fn deferred(after: Duration, reason: impl Into<String>) -> Self {
        Progress::Deferred {
            after,
            reason: reason.into(),
        }
    }
}

/// How a sync or delete attempt failed.
#[derive(Debug)]
pub enum StepError {
    /// Might work later (network, 5xx, timeout): retried with exponential backoff.
    Transient(anyhow::Error),
    /// Will not work until the spec changes or an operator retries (4xx, bad input).
    Permanent(String),
}

impl StepError {
    /// A failure retrying cannot fix.
    pub fn permanent(reason: impl Into<String>) -> Self {
        StepError::Permanent(reason.into())
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Transient(e) => write!(f, "{e:#}"),
            StepError::Permanent(reason) => f.write_str(reason),
        }
    }
}

/// Errors given `.context(…)` become transient failures, retried with backoff.
impl From<anyhow::Error> for StepError {
    fn from(e: anyhow::Error) -> Self {
        StepError::Transient(e)
    }
}

/// What a sync or delete attempt returns.
pub type StepResult = Result<Progress, StepError>;

/// Converges the world to one kind's spec. Must be idempotent: running twice is a waste,
/// never a fault. Changes to `obj.status` are stored with the outcome.
#[async_trait]
pub trait SyncStep: Send + Sync + 'static {
    type Model: Model;

    /// Makes the world match `obj.spec` at `obj.generation`.
    async fn sync(&self, obj: &mut Obj<Self::Model>, ctx: &StepContext) -> StepResult;

    /// Undoes what `sync` did; runs after every dependent is gone. Default: nothing to undo.
    async fn delete(&self, obj: &mut Obj<Self::Model>, ctx: &StepContext) -> StepResult {
        let _ = (obj, ctx);
        Ok(Progress::Done)
    }
}

/// What one poll of a source found, for logs and the executions trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Objects reported by the source this poll.
    pub seen: usize,
    pub created: usize,
    pub updated: usize,
    /// Items the source listed that could not be used (a row with a NULL key, say); each is
    /// named in `problems`.
    pub skipped: usize,
    /// What went wrong without failing the poll (a bad row, one broken query of several),
    /// one sentence each, naming where: the engine logs them when they change and keeps them
    /// in the source's health.
    pub problems: Vec<String>,
}

/// Polls a source and upserts desired state. Stateless: report the whole listing every time;
/// unchanged specs change nothing.
#[async_trait]
pub trait PullStep: Send + Sync + 'static {
    /// A stable name for logs and the executions trail.
    fn name(&self) -> &str;

    /// How often to poll.
    fn interval(&self) -> Duration;

    /// Lists the source and upserts what it finds through `models`.
    async fn pull(&self, models: &Models) -> anyhow::Result<PullReport>;

    /// What `thalamus check` can learn by asking the source (say, whether its queries return
    /// the columns it reads): one line per finding, a warning when it could not ask. An
    /// `Err` is a source configured wrong. Default: nothing to ask.
    async fn check(&self) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// A hint source (e.g. inotify) that makes the next poll come sooner; `None` if the source
    /// has none. Waiting on it must be cancel-safe.
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
}

/// Derives models from models (an observation needs an ingestion, …). Runs when an object's
/// revision is newer than the revision policies last saw; must be idempotent.
#[async_trait]
pub trait ModelPolicy: Send + Sync + 'static {
    type Model: Model;

    /// A stable name for logs and the executions trail.
    fn name(&self) -> &str;

    /// The object was seen for the first time. Default: same as an update.
    async fn handle_create(&self, obj: &Obj<Self::Model>, models: &Models) -> anyhow::Result<()> {
        self.handle_update(obj, models).await
    }

    /// The object's spec or status changed.
    async fn handle_update(&self, obj: &Obj<Self::Model>, models: &Models) -> anyhow::Result<()> {
        let _ = (obj, models);
        Ok(())
    }

    /// The object was soft-deleted (its dependents are deleted with it by the store).
    async fn handle_delete(&self, obj: &Obj<Self::Model>, models: &Models) -> anyhow::Result<()> {
        let _ = (obj, models);
        Ok(())
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Kafka,
    Amqp,
    /// Fed in directly (tests, replays of dead letters).
    Direct,
}

/// One message from a broker.
#[derive(Debug, Clone)]
pub struct Event {
    pub transport: Transport,
    /// Kafka topic or AMQP exchange.
    pub topic: String,
    /// AMQP routing key or Kafka message key, if any.
    pub routing_key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Offset, partition or delivery tag, for dead letters and logs.
    pub position: String,
}

/// What an event step did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// The message changed a model; the sentence says how.
    Applied(String),
    /// Already known (a duplicate or stale message); nothing changed.
    Unchanged(String),
}

/// Why an event step could not apply a message.
#[derive(Debug)]
pub enum EventError {
    /// Malformed or matches nothing: store it as a dead letter and move on.
    Reject(String),
    /// The store or a dependency failed: do not acknowledge; the message comes again.
    Transient(anyhow::Error),
}

impl From<anyhow::Error> for EventError {
    /// Store failures are transient (the message comes again); a stored model that does not
    /// decode never will, so that message is rejected rather than retried forever.
    fn from(e: anyhow::Error) -> Self {
        if e.downcast_ref::<super::context::Undecodable>().is_some() {
            EventError::Reject(format!("{e:#}"))
        } else {
            EventError::Transient(e)
        }
    }
}

/// Absorbs feedback messages into models' observed status.
#[async_trait]
pub trait EventStep: Send + Sync + 'static {
    /// A stable name for logs, dead letters and the executions trail.
    fn name(&self) -> &str;

    /// The Kafka topics and AMQP exchanges this step consumes.
    fn topics(&self) -> Vec<String>;

    /// Applies one message; called at least once per message, so it must be idempotent.
    async fn handle(&self, event: &Event, models: &Models) -> Result<EventOutcome, EventError>;

    /// Applies consecutive messages in their order, one result per message (`Err` is a
    /// rejection). Transports hand over what has arrived together, so a step that reads and
    /// writes a batch's models in a few statements keeps up with a busy broker. `Err` means
    /// nothing may be acknowledged: the whole batch comes again, so this must be idempotent
    /// too. The default calls [`EventStep::handle`] on each message.
    async fn handle_batch(
        &self,
        events: &[&Event],
        models: &Models,
    ) -> anyhow::Result<Vec<Result<EventOutcome, String>>> {
        handle_each(self, events, models).await
    }
}

/// Applies messages one at a time through [`EventStep::handle`]: the default batch, and the
/// fallback of a step whose batch path meets something only a single message can report.
pub async fn handle_each<S: EventStep + ?Sized>(
    step: &S,
    events: &[&Event],
    models: &Models,
) -> anyhow::Result<Vec<Result<EventOutcome, String>>> {
    let mut results = Vec::with_capacity(events.len());
    for event in events {
        results.push(match step.handle(event, models).await {
            Ok(outcome) => Ok(outcome),
            Err(EventError::Reject(reason)) => Err(reason),
            Err(EventError::Transient(e)) => return Err(e),
        });
    }
    Ok(results)
}
