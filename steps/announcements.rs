//! What thalamus announces downstream when a model changes (see the README's "Announcements"):
//! a Workspaces request of an Ingestion or Calibration reaching its end (`ingestion-complete`,
//! `calibration-complete`, `request-failed`: the semantic change), each written to the outbox
//! with the change, in one transaction. The protocol change (`new-file`) and the level change
//! (workflow status re-said as capability status) are rules: `rules/announcements.yaml`.

use super::models::{Calibration, Ingestion, RequestStatus};
use crate::steps::prelude::*;

/// The archive's event exchange, where thalamus says what it learned.
pub const EXCHANGE: &str = "archive.events";
/// The `application` of thalamus's messages; their routing key is `thalamus.event`.
pub const APPLICATION: &str = "thalamus";

fn routing_key() -> String {
    format!("{APPLICATION}.event")
}

/// Whether `after` ended a request: a terminal state that `before` did not hold for it.
fn ended<'a>(before: &RequestStatus, after: &'a RequestStatus) -> Option<&'a RequestState> {
    let state = after.state.as_ref()?;
    let terminal = matches!(
        state,
        RequestState::Complete | RequestState::Failed | RequestState::Cancelled
    );
    let news = before.request_id != after.request_id || before.state.as_ref() != Some(state);
    (terminal && news).then_some(state)
}

/// The announcement that a request of `kind` `key` ended in `state`.
fn request_ended(
    kind: &str,
    complete: &'static str,
    key: &str,
    name: &str,
    instrument: impl Serialize,
    request: &RequestStatus,
    state: &RequestState,
) -> Announcement {
    let message_type = match state {
        RequestState::Complete => complete,
        _ => "request-failed",
    };
    Announcement {
        message_type,
        topic: EXCHANGE.into(),
        routing_key: routing_key(),
        payload: serde_json::json!({
            "application": APPLICATION,
            "kind": kind,
            "key": key,
            "instrument": instrument,
            "name": name,
            "request_id": request.request_id,
            "external_id": request.external_id,
            "state": state.as_str(),
            "message": request.message,
        }),
    }
}

/// An Ingestion's request ended: ingested (calibrate it), or failed.
struct IngestionEnded;

impl Announcer for IngestionEnded {
    type Model = Ingestion;

    fn on_status(
        &self,
        key: &str,
        spec: &Ingestion,
        before: &<Ingestion as Model>::Status,
        after: &<Ingestion as Model>::Status,
    ) -> Vec<Announcement> {
        ended(&before.request, &after.request)
            .map(|state| {
                let kind = Ingestion::KIND;
                let (name, instrument) = (&spec.name, spec.instrument);
                request_ended(
                    kind,
                    "ingestion-complete",
                    key,
                    name,
                    instrument,
                    &after.request,
                    state,
                )
            })
            .into_iter()
            .collect()
    }
}

/// A Calibration's request ended: calibrated, or failed.
struct CalibrationEnded;

impl Announcer for CalibrationEnded {
    type Model = Calibration;

    fn on_status(
        &self,
        key: &str,
        spec: &Calibration,
        before: &<Calibration as Model>::Status,
        after: &<Calibration as Model>::Status,
    ) -> Vec<Announcement> {
        ended(&before.request, &after.request)
            .map(|state| {
                let kind = Calibration::KIND;
                let (name, instrument) = (&spec.name, spec.instrument);
                request_ended(
                    kind,
                    "calibration-complete",
                    key,
                    name,
                    instrument,
                    &after.request,
                    state,
                )
            })
            .into_iter()
            .collect()
    }
}

/// Registers the announcers (they say nothing unless `outbox.*` enables a transport).
pub fn register(registry: &mut Registry, _settings: &Settings) -> anyhow::Result<()> {
    registry
        .announcer(IngestionEnded)
        .announcer(CalibrationEnded);
    Ok(())
}
