//! Clients for the services sync steps act on: Workspaces (capability and workflow requests,
//! with the create → submit → track cycle steps share) and the archive's REST API. Both share
//! one HTTP layer: timeouts and a bearer token from config, an outbound rate limit, and 5xx or
//! timeouts as transient failures but other 4xx as permanent ones that quote the answer.

mod archive;
mod client;
mod http;
mod request;
mod settings;

pub use archive::ArchiveClient;
pub use client::{configured, WorkspacesClient, WorkspacesRequest};
pub use http::CallError;
pub use request::{RequestState, RequestStatus};
pub use settings::{
    ArchiveSettings, CalibrationTargets, IngestionTargets, Secret, Target, WorkspacesSettings,
};
