//! What thalamus announces downstream when a model changes (see the README's "Announcements"):
//! a Workspaces request of an Ingestion or Calibration reaching its end (`ingestion-complete`,
//! `calibration-complete`, `request-failed`: the semantic change), each written to the outbox
//! with the change, in one transaction. The protocol change (`new-file`) and the level change
//! (workflow status re-said as capability status) are rules: `rules/announcements.yaml`.

use super::models::{Calibration, Ingestion, Instrument, RequestStatus};
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

/// A model whose Workspaces request's end is announced.
trait Requested: Model {
    /// The message type of its request completing.
    const COMPLETE: &'static str;
    /// The observation's name, and its instrument.
    fn what(&self) -> (&str, Instrument);
    /// The request its status tracks.
    fn request(status: &Self::Status) -> &RequestStatus;
}

impl Requested for Ingestion {
    const COMPLETE: &'static str = "ingestion-complete";
    fn what(&self) -> (&str, Instrument) {
        (&self.name, self.instrument)
    }
    fn request(status: &Self::Status) -> &RequestStatus {
        &status.request
    }
}

impl Requested for Calibration {
    const COMPLETE: &'static str = "calibration-complete";
    fn what(&self) -> (&str, Instrument) {
        (&self.name, self.instrument)
    }
    fn request(status: &Self::Status) -> &RequestStatus {
        &status.request
    }
}

/// The request of an Ingestion (ingested: calibrate it) or a Calibration ended, or failed.
struct RequestEnded<M>(std::marker::PhantomData<fn() -> M>);

impl<M: Requested> Announcer for RequestEnded<M> {
    type Model = M;

    fn on_status(
        &self,
        key: &str,
        spec: &M,
        before: &M::Status,
        after: &M::Status,
    ) -> Vec<Announcement> {
        let (name, instrument) = spec.what();
        let request = M::request(after);
        ended(M::request(before), request)
            .map(|state| request_ended(M::KIND, M::COMPLETE, key, name, instrument, request, state))
            .into_iter()
            .collect()
    }
}

/// Registers the announcers (they say nothing unless `outbox.*` enables a transport).
pub fn register(registry: &mut Registry, _settings: &Settings) -> anyhow::Result<()> {
    registry
        .announcer(RequestEnded::<Ingestion>(Default::default()))
        .announcer(RequestEnded::<Calibration>(Default::default()));
    Ok(())
}
