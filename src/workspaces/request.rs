//! The observed state of one Workspaces request, kept in a model's status by the sync steps
//! that make requests and the event steps that hear about them.

use serde::{Deserialize, Serialize};

/// Where a Workspaces request stands, as the sync step and event steps last saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestStatus {
    /// The Workspaces capability (or workflow) request id.
    pub request_id: Option<i64>,
    /// Created, Submitted, Executing, Complete, Failed or Cancelled.
    pub state: Option<String>,
    /// `<kind>/<key>@<generation>`: how the request is found again after a crash.
    pub external_id: Option<String>,
    /// The service's message, if any.
    pub message: Option<String>,
    /// The source timestamp of the last status applied, so stale messages are ignored.
    pub updated_at: Option<String>,
    /// The generation whose request completed.
    pub completed_generation: Option<i64>,
    /// The Failed or Cancelled request already reported as this object's error: the next
    /// attempt (after the backoff, or an operator's retry) makes a new request instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reported: Option<i64>,
}
