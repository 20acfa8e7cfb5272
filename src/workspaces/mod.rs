//! Clients for the REST services sync steps act on: Workspaces (capability and workflow
//! requests) and the archive. Both share one HTTP layer: timeouts and a bearer token from an
//! [`Endpoint`], an outbound rate limit, and 5xx or timeouts as transient failures but other
//! 4xx as refusals that quote the answer. What to ask for, and when, is the steps' business.

mod archive;
mod client;
mod http;
mod metrics;
mod request;
mod settings;

pub use crate::secret::Secret;
pub use archive::ArchiveClient;
pub use client::{Service, WorkspacesClient};
pub use http::CallError;
pub use metrics::{call_metrics, CallMetrics};
pub use request::{RequestState, WorkspacesRequest};
pub use settings::{Endpoint, EndpointKeys};
