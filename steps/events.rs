//! Event steps: Workspaces capability and workflow status, and the archive's
//! ingestion-complete, written into the models' observed status so the sync loop reacts at
//! once (its own polling of Workspaces stays the safety net when a message is lost). The
//! level change (a workflow status re-said as capability status) is a rule:
//! `rules/announcements.yaml`.

use super::models::{Calibration, Ingestion, RequestStatus};
use crate::steps::prelude::*;

/// The status exchange/topic Workspaces publishes to.
pub const STATUS_TOPIC: &str = "workspaces.capability-status";
/// The archive's event exchange.
pub const ARCHIVE_TOPIC: &str = "archive.events";

/// `{"type": "capability-status" | "workflow-status", …}`; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct StatusMessage {
    #[serde(rename = "type")]
    kind: StatusKind,
    capability_request_id: Option<i64>,
    workflow_request_id: Option<i64>,
    state: RequestState,
    message: Option<String>,
    timestamp: Option<String>,
}

/// What a status message is about; another type is kept as said, to be named when rejected.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StatusKind {
    CapabilityStatus,
    WorkflowStatus,
    #[serde(untagged)]
    Other(String),
}

/// Whether a message (state at time `ts`) is newer than what `current` already holds: by the
/// source's timestamp when both have one, else by how far along the request is.
fn is_newer(current: &RequestStatus, state: &RequestState, ts: Option<&str>) -> bool {
    let cur_rank = current.state.as_ref().and_then(RequestState::rank);
    let new_rank = state.rank();
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
                    && (current.state.as_ref() != Some(state) || first_timestamp))
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
/// Calibration that made the request, then an immediate re-sync. A batch of messages costs
/// one lookup and one write per kind, whatever its size.
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
        let mut results = apply_statuses(&[event], models).await?;
        match results.pop() {
            Some(Ok(outcome)) => Ok(outcome),
            Some(Err(reason)) => Err(EventError::Reject(reason)),
            None => Err(EventError::Transient(anyhow!("no outcome for the message"))),
        }
    }

    async fn handle_batch(
        &self,
        events: &[&Event],
        models: &Models,
    ) -> anyhow::Result<Vec<Result<EventOutcome, String>>> {
        match apply_statuses(events, models).await {
            // A stored model that does not decode rejects only the messages meant for it.
            Err(e) if e.downcast_ref::<Undecodable>().is_some() => {
                handle_each(self, events, models).await
            }
            result => result,
        }
    }
}

/// Reads a status message: its request id and what it says, or why it is rejected.
fn parse_status(event: &Event) -> Result<(i64, StatusMessage), String> {
    let msg: StatusMessage =
        serde_json::from_slice(&event.payload).map_err(|e| format!("not a status message: {e}"))?;
    let id = match &msg.kind {
        StatusKind::CapabilityStatus => msg
            .capability_request_id
            .ok_or("capability-status without a request id")?,
        StatusKind::WorkflowStatus => msg
            .capability_request_id
            .or(msg.workflow_request_id)
            .ok_or("workflow-status without a request id")?,
        StatusKind::Other(other) => return Err(format!("unknown status message type {other:?}")),
    };
    if let RequestState::Other(state) = &msg.state {
        return Err(format!("unknown request state {state:?}"));
    }
    Ok((id, msg))
}

/// Applies status messages in order to the Ingestions and Calibrations that made their
/// requests: one lookup per kind for the whole batch, the messages applied in memory, then
/// each kind's changed statuses written (and re-synced) in one transaction.
async fn apply_statuses(
    events: &[&Event],
    models: &Models,
) -> anyhow::Result<Vec<Result<EventOutcome, String>>> {
    let parsed: Vec<_> = events.iter().map(|e| parse_status(e)).collect();
    let mut ids: Vec<i64> = parsed.iter().flatten().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    let (ingestions, calibrations) = models
        .with_request_ids_of::<Ingestion, Calibration>(&ids)
        .await?;
    let mut ingestions = Requesters::new(ingestions, |s| &mut s.request);
    let mut calibrations = Requesters::new(calibrations, |s| &mut s.request);
    let results = parsed
        .into_iter()
        .map(|parsed| {
            let (id, msg) = parsed?;
            let mut changed = Vec::new();
            let matched = ingestions.apply(id, &msg, &mut changed)
                + calibrations.apply(id, &msg, &mut changed);
            match (matched, changed.is_empty()) {
                (0, _) => Err(format!("no Ingestion or Calibration has request {id}")),
                (_, true) => Ok(EventOutcome::Unchanged(format!(
                    "request {id} {} is not newer than what is known",
                    msg.state
                ))),
                (_, false) => Ok(EventOutcome::Applied(changed.join("; "))),
            }
        })
        .collect();
    ingestions.store(models).await?;
    calibrations.store(models).await?;
    Ok(results)
}

/// The objects of kind `M` behind a batch's requests, changed in memory, then stored.
struct Requesters<M: Model> {
    objects: Vec<Obj<M>>,
    by_request: std::collections::HashMap<i64, Vec<usize>>,
    changed: Vec<bool>,
    request: fn(&mut M::Status) -> &mut RequestStatus,
}

impl<M: Model> Requesters<M> {
    /// The objects behind a batch's requests, indexed by request id.
    fn new(mut objects: Vec<Obj<M>>, request: fn(&mut M::Status) -> &mut RequestStatus) -> Self {
        let mut by_request: std::collections::HashMap<i64, Vec<usize>> = Default::default();
        for (i, obj) in objects.iter_mut().enumerate() {
            if let Some(id) = request(&mut obj.status).request_id {
                by_request.entry(id).or_default().push(i);
            }
        }
        let changed = vec![false; objects.len()];
        Self {
            objects,
            by_request,
            changed,
            request,
        }
    }

    /// Applies `msg` to every object that made request `id`, describing each change in
    /// `changed`; returns how many objects matched.
    fn apply(&mut self, id: i64, msg: &StatusMessage, changed: &mut Vec<String>) -> usize {
        let Some(indices) = self.by_request.get(&id) else {
            return 0;
        };
        for &i in indices {
            let obj = &mut self.objects[i];
            if apply((self.request)(&mut obj.status), msg) {
                self.changed[i] = true;
                changed.push(format!(
                    "{} {} request {id} is {}",
                    M::KIND,
                    obj.key,
                    msg.state
                ));
            }
        }
        indices.len()
    }

    /// Writes the changed statuses in one statement and asks for their re-sync. An object
    /// changed by someone else since the batch read it (a sync step's outcome) is not
    /// overwritten: the batch fails and comes again, and then reads it as it is.
    async fn store(&self, models: &Models) -> anyhow::Result<()> {
        let changed: Vec<&Obj<M>> = self
            .objects
            .iter()
            .zip(&self.changed)
            .filter(|(_, changed)| **changed)
            .map(|(obj, _)| obj)
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let written = models.set_statuses::<M>(&changed, true).await?;
        if written < changed.len() as u64 {
            bail!(
                "{} of {} {} changed while their status messages were applied; applying again",
                changed.len() as u64 - written,
                changed.len(),
                M::KIND
            );
        }
        Ok(())
    }
}

/// `{"application": "ingestion", "type": "ingestion-complete", "instrument", "name", …}`.
#[derive(Debug, Deserialize)]
struct ArchiveEvent {
    #[serde(rename = "type")]
    kind: ArchiveEventKind,
    instrument: Option<String>,
    name: Option<String>,
}

/// What an archive event says happened; other types are kept as said, to be named.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ArchiveEventKind {
    IngestionComplete,
    #[serde(untagged)]
    Other(String),
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
        if let ArchiveEventKind::Other(kind) = &msg.kind {
            return Ok(EventOutcome::Unchanged(format!(
                "archive event {kind:?} is not for thalamus"
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
        // It is about the request in flight: while a newer generation waits behind one made
        // for an older generation, that older generation is what completed.
        let generation = obj
            .status
            .request
            .served_generation()
            .unwrap_or(obj.generation);
        if obj.status.request.completed_generation >= Some(generation) {
            return Ok(EventOutcome::Unchanged(format!(
                "Ingestion {key} already complete"
            )));
        }
        obj.status.request.completed_generation = Some(generation);
        obj.status.request.state = Some(RequestState::Complete);
        // Written (and re-synced) only if nobody changed it since it was read; otherwise the
        // message comes again and finds it as it is.
        if models.set_statuses(&[&obj], true).await? == 0 {
            return Err(EventError::Transient(anyhow!(
                "Ingestion {key} changed while ingestion-complete was applied; applying again"
            )));
        }
        Ok(EventOutcome::Applied(format!(
            "Ingestion {key} generation {generation} complete"
        )))
    }
}

/// Registers the event steps.
pub fn register(registry: &mut Registry, _settings: &Settings) -> anyhow::Result<()> {
    registry.event(RequestStatusFeed).event(IngestionComplete);
    Ok(())
}
