//! The Workspaces REST client, and the create → submit → track cycle that every sync step
//! asking Workspaces for work shares.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::http::{CallError, Http};
use super::request::{RequestState, RequestStatus};
use super::settings::{Target, WorkspacesSettings};
use crate::step::{Model, Obj, Progress, StepError, StepResult};

/// A capability request or a workflow request, as Workspaces reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkspacesRequest {
    /// The request id, used in the submit and status paths.
    pub id: i64,
    pub state: RequestState,
    /// `<kind>/<key>@<generation>` of the object that asked for it.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Why it failed or was cancelled, or progress notes.
    #[serde(default)]
    pub message: Option<String>,
}

/// The `external_id` a request for one generation of one object carries, so the request can be
/// found again after a crash: `<kind>/<key>@<generation>`.
fn external_id(kind: &str, key: &str, generation: i64) -> String {
    format!("{kind}/{key}@{generation}")
}

/// The capability or workflow configured at `key`, or a permanent error telling the operator
/// to set it (`work` says what it would do, e.g. "ingests VLBA data").
pub fn configured<'a>(
    target: &'a Option<Target>,
    key: &str,
    work: &str,
) -> Result<&'a Target, StepError> {
    target.as_ref().ok_or_else(|| {
        StepError::permanent(format!(
            "no Workspaces capability or workflow {work}; set `{key}`"
        ))
    })
}

/// Capabilities and workflows differ only in their paths and the name of the input field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Capability,
    Workflow,
}

impl Service {
    fn of(target: &Target) -> Self {
        match target {
            Target::Capability(_) => Service::Capability,
            Target::Workflow(_) => Service::Workflow,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Service::Capability => "capability",
            Service::Workflow => "workflow",
        }
    }

    fn input_field(self) -> &'static str {
        match self {
            Service::Capability => "parameters",
            Service::Workflow => "argument",
        }
    }
}

/// Talks to Workspaces; cheap to clone, and every clone shares one rate limit.
#[derive(Clone)]
pub struct WorkspacesClient {
    http: Arc<Http>,
    poll: Duration,
}

impl WorkspacesClient {
    /// A client configured from `workspaces.*`.
    pub fn new(settings: &WorkspacesSettings) -> anyhow::Result<Self> {
        Ok(Self {
            http: Arc::new(Http::new(
                "Workspaces",
                &settings.url,
                settings.token.as_ref(),
                settings.timeout_seconds,
                settings.requests_per_second,
            )?),
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
        let service = Service::of(target);
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
            Some(id) => self.get(service, id).await?,
            None => match self.adoptable(service, external_id, status).await? {
                Some(request) => request,
                None => self.create(target, input, external_id, status).await?,
            },
        };
        self.advance(service, target, request, generation, status)
            .await
    }

    /// Records `request` in `status` and moves it on: submits it if Created, then says where
    /// it stands.
    async fn advance(
        &self,
        service: Service,
        target: &Target,
        mut request: WorkspacesRequest,
        generation: i64,
        status: &mut RequestStatus,
    ) -> StepResult {
        record(status, &request);
        if request.state == RequestState::Created {
            request = self.submit(service, request.id).await?;
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
            .find(service, external_id)
            .await?
            .into_iter()
            .filter(|r| r.external_id.as_deref().is_none_or(|e| e == external_id))
            .filter(|r| r.state != RequestState::Failed && r.id > superseded)
            .max_by_key(|r| r.id))
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
        let service = Service::of(target);
        let url = self
            .http
            .url(&[service.path(), target.name(), "request", "create"]);
        let mut body = Map::new();
        body.insert(service.input_field().into(), input.clone());
        body.insert("external_id".into(), external_id.into());
        match self
            .http
            .call(Method::POST, url, Some(&Value::Object(body)))
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
            other => other,
        }
    }

    async fn submit(&self, service: Service, id: i64) -> Result<WorkspacesRequest, CallError> {
        let id = id.to_string();
        let url = self
            .http
            .url(&[service.path(), "request", id.as_str(), "submit"]);
        self.http.call(Method::POST, url, None).await
    }

    async fn get(&self, service: Service, id: i64) -> Result<WorkspacesRequest, CallError> {
        let id = id.to_string();
        let url = self.http.url(&[service.path(), "request", id.as_str()]);
        self.http.call(Method::GET, url, None).await
    }

    async fn find(
        &self,
        service: Service,
        external_id: &str,
    ) -> Result<Vec<WorkspacesRequest>, CallError> {
        let mut url = self.http.url(&[service.path(), "requests"]);
        url.query_pairs_mut()
            .append_pair("external_id", external_id);
        self.http.call(Method::GET, url, None).await
    }
}

fn record(status: &mut RequestStatus, request: &WorkspacesRequest) {
    status.request_id = Some(request.id);
    status.state = Some(request.state.clone());
    status.message = request.message.clone();
}
