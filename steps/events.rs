//! Event steps: Workspaces capability and workflow status, and the archive's
//! ingestion-complete, written into the models' observed status so the sync loop reacts at
//! once (its own polling of Workspaces stays the safety net when a message is lost).

use super::models::{Calibration, Ingestion};
use crate::step::prelude::*;

/// The status exchange/topic Workspaces publishes to.
pub const STATUS_TOPIC: &str = "workspaces.capability-status";
/// The archive's event exchange.
pub const ARCHIVE_TOPIC: &str = "archive.events";

/// `{"type": "capability-status" | "workflow-status", …}`; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct StatusMessage {
    #[serde(rename = "type")]
    kind: String,
    capability_request_id: Option<i64>,
    workflow_request_id: Option<i64>,
    state: String,
    message: Option<String>,
    timestamp: Option<String>,
}

/// Request states in the order they happen; terminal states share the last rank.
fn rank(state: &str) -> Option<u8> {
    match state {
        "Created" => Some(0),
        "Submitted" => Some(1),
        "Executing" => Some(2),
        "Complete" | "Failed" | "Cancelled" => Some(3),
        _ => None,
    }
}

/// Whether a message (state at time `ts`) is newer than what `current` already holds: by the
/// source's timestamp when both have one, else by how far along the request is.
fn is_newer(current: &RequestStatus, state: &str, ts: Option<&str>) -> bool {
    let cur_rank = current.state.as_deref().and_then(rank);
    let new_rank = rank(state);
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    match (
        current.updated_at.as_deref().and_then(parse),
        ts.and_then(parse),
    ) {
        (Some(cur), Some(new)) => new > cur || (new == cur && new_rank > cur_rank),
        // No comparable timestamps: go by progress; at equal progress a different state, or a
        // first source timestamp for the known state, is news.
        (cur_ts, _) => {
            let first_timestamp = cur_ts.is_none() && ts.is_some();
            new_rank > cur_rank
                || (new_rank == cur_rank
                    && (current.state.as_deref() != Some(state) || first_timestamp))
        }
    }
}

/// Applies a status message to one request status; returns whether it changed anything.
fn apply(current: &mut RequestStatus, msg: &StatusMessage) -> bool {
    if !is_newer(current, &msg.state, msg.timestamp.as_deref()) {
        return false;
    }
    current.state = Some(msg.state.clone());
    if msg.message.is_some() {
        current.message = msg.message.clone();
    }
    if msg.timestamp.is_some() {
        current.updated_at = msg.timestamp.clone();
    }
    true
}

/// Capability status (and workflow status, level-changed into it) → the Ingestion or
/// Calibration that made the request, then an immediate re-sync.
pub struct RequestStatusFeed;

#[async_trait]
impl EventStep for RequestStatusFeed {
    fn name(&self) -> &str {
        "request-status"
    }

    fn topics(&self) -> Vec<String> {
        vec![STATUS_TOPIC.into()]
    }

    async fn handle(&self, event: &Event, models: &Models) -> Result<EventOutcome, EventError> {
        let msg: StatusMessage = serde_json::from_slice(&event.payload)
            .map_err(|e| EventError::Reject(format!("not a status message: {e}")))?;
        let id = match msg.kind.as_str() {
            "capability-status" => msg.capability_request_id,
            "workflow-status" => msg.capability_request_id.or(msg.workflow_request_id),
            other => {
                return Err(EventError::Reject(format!(
                    "unknown status message type {other:?}"
                )))
            }
        }
        .ok_or_else(|| EventError::Reject(format!("{} without a request id", msg.kind)))?;
        if rank(&msg.state).is_none() {
            return Err(EventError::Reject(format!(
                "unknown request state {:?}",
                msg.state
            )));
        }
        let mut changed = Vec::new();
        let mut matched =
            apply_to::<Ingestion>(models, id, &msg, |s| &mut s.request, &mut changed).await?;
        matched +=
            apply_to::<Calibration>(models, id, &msg, |s| &mut s.request, &mut changed).await?;
        match (matched, changed.is_empty()) {
            (0, _) => Err(EventError::Reject(format!(
                "no Ingestion or Calibration has request {id}"
            ))),
            (_, true) => Ok(EventOutcome::Unchanged(format!(
                "request {id} {} is not newer than what is known",
                msg.state
            ))),
            (_, false) => Ok(EventOutcome::Applied(changed.join("; "))),
        }
    }
}

/// Applies a status message to every `M` that made request `id`, re-syncing those it changed
/// (described in `changed`); returns how many matched.
async fn apply_to<M: Model>(
    models: &Models,
    id: i64,
    msg: &StatusMessage,
    request: fn(&mut M::Status) -> &mut RequestStatus,
    changed: &mut Vec<String>,
) -> anyhow::Result<usize> {
    let objects = models.with_request_id::<M>(id).await?;
    let matched = objects.len();
    for mut obj in objects {
        if apply(request(&mut obj.status), msg)
            && models.set_status::<M>(&obj.key, &obj.status).await?
        {
            models.resync::<M>(&obj.key).await?;
            changed.push(format!(
                "{} {} request {id} is {}",
                M::KIND,
                obj.key,
                msg.state
            ));
        }
    }
    Ok(matched)
}

/// `{"application": "ingestion", "type": "ingestion-complete", "instrument", "name", …}`.
#[derive(Debug, Deserialize)]
struct ArchiveEvent {
    #[serde(rename = "type")]
    kind: String,
    instrument: Option<String>,
    name: Option<String>,
}

/// The archive's ingestion-complete → the Ingestion's observed status (which the policy turns
/// into a Calibration), then an immediate re-sync.
pub struct IngestionComplete;

#[async_trait]
impl EventStep for IngestionComplete {
    fn name(&self) -> &str {
        "ingestion-complete"
    }

    fn topics(&self) -> Vec<String> {
        vec![ARCHIVE_TOPIC.into()]
    }

    async fn handle(&self, event: &Event, models: &Models) -> Result<EventOutcome, EventError> {
        let msg: ArchiveEvent = serde_json::from_slice(&event.payload)
            .map_err(|e| EventError::Reject(format!("not an archive event: {e}")))?;
        if msg.kind != "ingestion-complete" {
            return Ok(EventOutcome::Unchanged(format!(
                "archive event {:?} is not for thalamus",
                msg.kind
            )));
        }
        let (Some(instrument), Some(name)) = (msg.instrument, msg.name) else {
            return Err(EventError::Reject(
                "ingestion-complete without instrument and name".into(),
            ));
        };
        let key = format!("{instrument}/{name}");
        let Some(mut obj) = models.get::<Ingestion>(&key).await? else {
            return Err(EventError::Reject(format!("no Ingestion {key}")));
        };
        if obj.status.completed(obj.generation) {
            return Ok(EventOutcome::Unchanged(format!(
                "Ingestion {key} already complete"
            )));
        }
        obj.status.request.completed_generation = Some(obj.generation);
        obj.status.request.state = Some("Complete".into());
        models.set_status::<Ingestion>(&key, &obj.status).await?;
        models.resync::<Ingestion>(&key).await?;
        Ok(EventOutcome::Applied(format!(
            "Ingestion {key} generation {} complete",
            obj.generation
        )))
    }
}

/// Registers the event steps.
pub fn register(registry: &mut Registry, _settings: &Settings) -> anyhow::Result<()> {
    registry.event(RequestStatusFeed).event(IngestionComplete);
    Ok(())
}
