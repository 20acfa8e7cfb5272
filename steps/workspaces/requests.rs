//! The create → submit → track cycle every sync step asking Workspaces for work shares: one
//! request per generation of an object, found again after a crash, followed until it ends.

use reqwest::StatusCode;
use serde_json::Value;

use super::settings::{Target, WorkspacesSettings};
use crate::steps::models::RequestStatus;
use crate::steps::prelude::*;

/// Asks Workspaces for work and follows it; cheap to clone, every clone sharing one rate limit.
#[derive(Clone)]
pub struct Requests {
    client: WorkspacesClient,
    /// How soon a submitted or executing request is looked at again.
    poll: Duration,
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
        let service = target.service();
        if status.external_id.as_deref() != Some(external_id) {
            // A new generation: the previous generation's request is history.
            *status = RequestStatus {
                external_id: Some(external_id.to_string()),
                completed_generation: status.completed_generation,
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
        self.advance(target, request, generation, status).await
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

fn record(status: &mut RequestStatus, request: &WorkspacesRequest) {
    status.request_id = Some(request.id);
    status.state = Some(request.state.clone());
    status.message = request.message.clone();
}
