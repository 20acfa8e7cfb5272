//! The Workspaces REST client: create, submit, cancel, read and find capability or workflow
//! requests.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Map, Value};

use super::http::{CallError, Http};
use super::request::WorkspacesRequest;
use super::settings::Endpoint;

/// Capabilities and workflows differ only in their paths and the name of the input field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Capability,
    Workflow,
}

impl Service {
    /// The path segment of the service, which also names it in messages.
    pub fn path(self) -> &'static str {
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
}

impl WorkspacesClient {
    /// A client of the Workspaces service at `endpoint`.
    pub fn new(endpoint: &Endpoint) -> anyhow::Result<Self> {
        Ok(Self {
            http: Arc::new(Http::new("Workspaces", endpoint)?),
        })
    }

    /// `POST {base}/{service}/{name}/request/create` with `input` and `external_id`. A
    /// 409 (one exists already) is a [`CallError::Rejected`] with that status.
    pub async fn create(
        &self,
        service: Service,
        name: &str,
        input: &Value,
        external_id: &str,
    ) -> Result<WorkspacesRequest, CallError> {
        let url = self.http.url(&[service.path(), name, "request", "create"]);
        let mut body = Map::new();
        body.insert(service.input_field().into(), input.clone());
        body.insert("external_id".into(), external_id.into());
        self.http
            .call(Method::POST, url, Some(&Value::Object(body)))
            .await
    }

    /// `POST {base}/{service}/request/{id}/submit`.
    pub async fn submit(&self, service: Service, id: i64) -> Result<WorkspacesRequest, CallError> {
        let id = id.to_string();
        let url = self
            .http
            .url(&[service.path(), "request", id.as_str(), "submit"]);
        self.http.call(Method::POST, url, None).await
    }

    /// `POST {base}/{service}/request/{id}/cancel`. The request as the answer reports it, if
    /// the answer reports one (a cancel may also take effect later; look again to know).
    pub async fn cancel(
        &self,
        service: Service,
        id: i64,
    ) -> Result<Option<WorkspacesRequest>, CallError> {
        let id = id.to_string();
        let url = self
            .http
            .url(&[service.path(), "request", id.as_str(), "cancel"]);
        let body = self.http.send(Method::POST, url, None).await?;
        Ok(serde_json::from_slice(&body).ok())
    }

    /// `GET {base}/{service}/request/{id}`.
    pub async fn get(&self, service: Service, id: i64) -> Result<WorkspacesRequest, CallError> {
        let id = id.to_string();
        let url = self.http.url(&[service.path(), "request", id.as_str()]);
        self.http.call(Method::GET, url, None).await
    }

    /// `GET {base}/{service}/requests?external_id=…`: the requests made for one external id.
    pub async fn find(
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
