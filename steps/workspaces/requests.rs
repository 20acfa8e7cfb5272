//! The create → submit → track cycle every sync step asking Workspaces for work shares: one
//! request per generation of an object, found again after a crash, followed until it ends;
//! and never two in flight for one object. A newer generation (or a deletion) meets a request
//! of an older one that may still run: it waits for it, or cancels it first, as the target's
//! `on_new_generation` says, and only then is the newest generation requested. Generations
//! that arrive meanwhile coalesce: only the latest is requested.

use reqwest::StatusCode;
use serde_json::Value;

use super::settings::{OnNewGeneration, Target, WorkspacesSettings};
use crate::steps::models::RequestStatus;
use crate::steps::prelude::*;

/// Asks Workspaces for work and follows it; cheap to clone, every clone sharing one rate limit.
#[derive(Clone)]
pub struct Requests {
    client: WorkspacesClient,
    /// How soon a submitted or executing request is looked at again.
    poll: Duration,
}

/// How soon a request is looked at again after Workspaces took its cancel.
const AFTER_CANCEL: Duration = Duration::from_secs(1);

/// What waits behind a request in flight.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// This newer generation of the object.
    Generation(i64),
    /// The object's deletion.
    Deletion,
}

/// Whether a request in this state has ended: it will not run (again). A state thalamus does
/// not know has not, as far as it can tell.
fn has_ended(state: &RequestState) -> bool {
    matches!(
        state,
        RequestState::Complete | RequestState::Failed | RequestState::Cancelled
    )
}

/// The `external_id` a request for one generation of one object carries, so the request can be
/// found again after a crash: `<kind>/<key>@<generation>`.
fn external_id(kind: &str, key: &str, generation: i64) -> String {
    format!("{kind}/{key}@{generation}")
}

impl Requests {
    /// Requests to the service `workspaces.*` configures.
    pub fn new(settings: &WorkspacesSettings) -> anyhow::Result<Self> {
        Ok(Self {
            client: WorkspacesClient::new(&settings.endpoint())?,
            poll: Duration::from_secs(settings.poll_seconds),
        })
    }

    /// Makes sure one request for this generation of `obj` (external id
    /// `<kind>/<key>@<generation>`) runs `target` with `input`, and reports how far it got,
    /// recording it in the part of `obj.status` that `request` picks:
    /// - while a request made for an earlier generation may still run, none is made: the
    ///   object waits for it, or cancels it (`on_new_generation`), and keeps tracking it, so
    ///   its status messages still apply; the newest generation is requested once it ended;
    /// - a request this object already tracks is looked at again;
    /// - otherwise an existing request for `external_id` is adopted (the newest that is not
    ///   Failed and newer than any failure already reported), so a crash between create and
    ///   record never makes a second one; only when there is none is a request created;
    /// - Created is submitted; Submitted/Executing defer by `workspaces.poll_seconds`;
    ///   Complete sets `completed_generation` and is done; Failed is a transient error (the
    ///   next attempt, after the backoff, makes a new request); Cancelled is permanent.
    pub async fn reconcile<M: Model>(
        &self,
        target: &Target,
        input: &Value,
        obj: &mut Obj<M>,
        request: fn(&mut M::Status) -> &mut RequestStatus,
    ) -> StepResult {
        let external_id = &external_id(M::KIND, &obj.key, obj.generation);
        let generation = obj.generation;
        let status = request(&mut obj.status);
        // Known done for this generation (the archive said `ingestion-complete`, say, while
        // Workspaces could not be reached): nothing is asked of Workspaces again.
        if status.completed_generation == Some(generation) {
            return Ok(Progress::Done);
        }
        let service = target.service();
        let mut follows = None;
        if status.external_id.as_deref() != Some(external_id) {
            // A new generation: the request of an earlier one must have ended first.
            if let Some(running) = self.in_flight(service, status).await? {
                status.waiting_generation = Some(generation);
                return self
                    .supersede(target, running, status, Next::Generation(generation))
                    .await;
            }
            follows = follows_note(service, status);
            let completed = match status.state {
                Some(RequestState::Complete) => status.served_generation(),
                _ => None,
            };
            *status = RequestStatus {
                external_id: Some(external_id.to_string()),
                generation: Some(generation),
                completed_generation: status.completed_generation.max(completed),
                ..RequestStatus::default()
            };
        }
        let tracked = status
            .request_id
            .filter(|id| status.failure_reported != Some(*id));
        let request = match tracked {
            Some(id) => self.client.get(service, id).await?,
            None => match self.adoptable(service, external_id, status).await? {
                Some(request) => request,
                None => self.create(target, input, external_id, status).await?,
            },
        };
        match (
            self.advance(target, request, generation, status).await,
            follows,
        ) {
            (Ok(Progress::Deferred { after, reason }), Some(note)) => {
                Ok(Progress::deferred(after, format!("{reason}; {note}")))
            }
            (result, _) => result,
        }
    }

    /// Makes sure no request of `obj` still runs before it is deleted: waits for the one in
    /// flight to end, or cancels it, as `target`'s `on_new_generation` says. With no target
    /// configured nothing can be asked of Workspaces, so there is nothing to wait for.
    pub async fn release<M: Model>(
        &self,
        target: Option<&Target>,
        obj: &mut Obj<M>,
        request: fn(&mut M::Status) -> &mut RequestStatus,
    ) -> StepResult {
        let status = request(&mut obj.status);
        let Some(target) = target else {
            return Ok(Progress::Done);
        };
        match self.in_flight(target.service(), status).await? {
            Some(running) => {
                self.supersede(target, running, status, Next::Deletion)
                    .await
            }
            None => Ok(Progress::Done),
        }
    }

    /// The request of this object that may still run, as Workspaces reports it now (and
    /// recorded in `status`): the tracked one unless it is known to have ended; or, if no id
    /// was recorded for the tracked external id (a create whose answer was lost), the live
    /// request made for it.
    async fn in_flight(
        &self,
        service: Service,
        status: &mut RequestStatus,
    ) -> Result<Option<WorkspacesRequest>, CallError> {
        let request = match status.request_id {
            Some(id) if status.failure_reported == Some(id) => return Ok(None),
            Some(_) if status.state.as_ref().is_some_and(has_ended) => return Ok(None),
            Some(id) => match self.client.get(service, id).await {
                Ok(request) => request,
                // Workspaces no longer knows it: nothing of it can run.
                Err(CallError::Rejected {
                    status: StatusCode::NOT_FOUND,
                    ..
                }) => return Ok(None),
                Err(e) => return Err(e),
            },
            None => {
                let Some(tracked) = status.external_id.clone() else {
                    return Ok(None);
                };
                match self.adoptable(service, &tracked, status).await? {
                    Some(request) => request,
                    None => return Ok(None),
                }
            }
        };
        record(status, &request);
        Ok((!has_ended(&request.state)).then_some(request))
    }

    /// A newer generation, or the deletion, meets `running`, a request still in flight: as
    /// the target's `on_new_generation` says, waits for it (a Created one is submitted, as it
    /// would have been) or cancels it, then looks again. A cancel that fails, or that
    /// Workspaces refuses while the request still runs, is a transient error: retried with
    /// backoff, never skipped.
    async fn supersede(
        &self,
        target: &Target,
        mut running: WorkspacesRequest,
        status: &mut RequestStatus,
        next: Next,
    ) -> StepResult {
        let service = target.service();
        let of = match status.served_generation() {
            Some(g) => format!("generation {g}"),
            None => "an earlier generation".into(),
        };
        let what = format!(
            "{} request {} ({}) of {of}",
            service.path(),
            running.id,
            target.name()
        );
        let setting = format!("on_new_generation: {}", target.on_new_generation.as_str());
        if target.on_new_generation == OnNewGeneration::Wait {
            if running.state == RequestState::Created {
                running = self.client.submit(service, running.id).await?;
                record(status, &running);
            }
            let reason = match next {
                Next::Generation(g) => format!(
                    "waiting for {what} to finish; generation {g} is requested next ({setting})"
                ),
                Next::Deletion => format!("deleting once {what} has finished ({setting})"),
            };
            return Ok(Progress::deferred(self.poll, reason));
        }
        let cancelling = || format!("cancelling {what} ({setting})");
        let cancelled = match self.client.cancel(service, running.id).await {
            Ok(answer) => {
                if let Some(answer) = answer.filter(|a| a.id == running.id) {
                    record(status, &answer);
                }
                status.cancel_requested = Some(running.id);
                true
            }
            Err(CallError::Transient(e)) => {
                return Err(StepError::Transient(e.context(cancelling())))
            }
            Err(CallError::Rejected { message, .. }) => {
                // Refused: it may have ended meanwhile (a 409). If it still runs, try again.
                let now = self.client.get(service, running.id).await?;
                record(status, &now);
                if !has_ended(&now.state) {
                    return Err(StepError::Transient(
                        anyhow!(
                            "{message}; it is still {}, so the cancel is retried with backoff",
                            now.state
                        )
                        .context(cancelling()),
                    ));
                }
                false
            }
        };
        let ended = status.state.as_ref().is_some_and(has_ended);
        let done = if cancelled {
            format!("cancelled {what}")
        } else {
            format!("{what} ended {} before it was cancelled", now_state(status))
        };
        let reason = match next {
            Next::Generation(g) => format!("{done}; generation {g} is requested next ({setting})"),
            Next::Deletion => format!("deleting: {done} ({setting})"),
        };
        let after = if ended { AFTER_CANCEL } else { self.poll };
        Ok(Progress::deferred(after, reason))
    }

    /// Records `request` in `status` and moves it on: submits it if Created, then says where
    /// it stands.
    async fn advance(
        &self,
        target: &Target,
        mut request: WorkspacesRequest,
        generation: i64,
        status: &mut RequestStatus,
    ) -> StepResult {
        let service = target.service();
        record(status, &request);
        if request.state == RequestState::Created {
            request = self.client.submit(service, request.id).await?;
            info!(
                request = request.id,
                external_id = status.external_id.as_deref().unwrap_or_default(),
                state = %request.state,
                "Workspaces {} request {} ({}) submitted",
                service.path(),
                request.id,
                target.name()
            );
            record(status, &request);
        }
        let what = format!(
            "{} request {} ({})",
            service.path(),
            request.id,
            target.name()
        );
        let message = request
            .message
            .as_deref()
            .filter(|m| !m.trim().is_empty())
            .unwrap_or("no reason given");
        match &request.state {
            RequestState::Created | RequestState::Submitted | RequestState::Executing => Ok(
                Progress::deferred(self.poll, format!("{what} is {}", request.state)),
            ),
            RequestState::Complete => {
                status.completed_generation = Some(generation);
                Ok(Progress::Done)
            }
            RequestState::Failed => {
                status.failure_reported = Some(request.id);
                Err(StepError::Transient(anyhow!(
                    "{what} failed: {message}; a new request follows after the backoff"
                )))
            }
            RequestState::Cancelled => {
                status.failure_reported = Some(request.id);
                Err(StepError::permanent(format!(
                    "{what} was cancelled: {message}; retry to make a new request"
                )))
            }
            RequestState::Other(other) => Err(StepError::Transient(anyhow!(
                "{what} is in a state thalamus does not know: {other:?}"
            ))),
        }
    }

    /// The newest request for `external_id` that may be adopted: not Failed, and newer than a
    /// Failed or Cancelled request this object already reported.
    async fn adoptable(
        &self,
        service: Service,
        external_id: &str,
        status: &RequestStatus,
    ) -> Result<Option<WorkspacesRequest>, CallError> {
        let superseded = status.failure_reported.unwrap_or(i64::MIN);
        Ok(self
            .client
            .find(service, external_id)
            .await?
            .into_iter()
            .filter(|r| r.external_id.as_deref().is_none_or(|e| e == external_id))
            .filter(|r| r.state != RequestState::Failed && r.id > superseded)
            .max_by_key(|r| r.id)
            .inspect(|r| {
                if status.request_id != Some(r.id) {
                    info!(
                        request = r.id,
                        external_id,
                        state = %r.state,
                        "Workspaces {} request {} found for {external_id}: adopted, not created again",
                        service.path(),
                        r.id
                    );
                }
            }))
    }

    /// Creates a request; a 409 means one exists already (another replica, or an answer that
    /// was lost), so it is looked up instead.
    async fn create(
        &self,
        target: &Target,
        input: &Value,
        external_id: &str,
        status: &RequestStatus,
    ) -> Result<WorkspacesRequest, CallError> {
        let service = target.service();
        match self
            .client
            .create(service, target.name(), input, external_id)
            .await
        {
            Err(CallError::Rejected {
                status: StatusCode::CONFLICT,
                message,
            }) => self
                .adoptable(service, external_id, status)
                .await?
                .ok_or_else(|| {
                    CallError::Transient(anyhow!(
                        "{message}; yet no live request for {external_id} is listed"
                    ))
                }),
            Ok(request) => {
                info!(
                    request = request.id,
                    external_id,
                    "Workspaces {} request {} ({}) created",
                    service.path(),
                    request.id,
                    target.name()
                );
                Ok(request)
            }
            other => other,
        }
    }
}

/// For the first attempt at a new generation, what became of the request before it, when that
/// is news: a generation waited for it, or it did not complete.
fn follows_note(service: Service, status: &RequestStatus) -> Option<String> {
    let (id, state) = (status.request_id?, status.state.as_ref()?);
    if status.waiting_generation.is_none() && *state == RequestState::Complete {
        return None;
    }
    let generation = status.served_generation()?;
    Some(format!(
        "it follows {} request {id} of generation {generation}, which ended {state}",
        service.path()
    ))
}

/// The state `status` last recorded, as words.
fn now_state(status: &RequestStatus) -> String {
    status
        .state
        .as_ref()
        .map_or_else(|| "in an unknown state".into(), RequestState::to_string)
}

fn record(status: &mut RequestStatus, request: &WorkspacesRequest) {
    status.request_id = Some(request.id);
    status.state = Some(request.state.clone());
    status.message = request.message.clone();
}
