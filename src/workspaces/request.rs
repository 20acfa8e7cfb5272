//! A Workspaces request as the service reports it, and the states it goes through.

use std::fmt;

use serde::{Deserialize, Serialize};

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

/// Where a request stands. Read and written as the service spells it; a state this version
/// does not know is kept as said.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum RequestState {
    Created,
    Submitted,
    Executing,
    Complete,
    Failed,
    Cancelled,
    Other(String),
}

impl RequestState {
    /// The state as the service spells it.
    pub fn as_str(&self) -> &str {
        match self {
            RequestState::Created => "Created",
            RequestState::Submitted => "Submitted",
            RequestState::Executing => "Executing",
            RequestState::Complete => "Complete",
            RequestState::Failed => "Failed",
            RequestState::Cancelled => "Cancelled",
            RequestState::Other(state) => state,
        }
    }

    /// How far along a request in this state is (terminal states share the last rank);
    /// `None` for a state this version does not know.
    pub fn rank(&self) -> Option<u8> {
        match self {
            RequestState::Created => Some(0),
            RequestState::Submitted => Some(1),
            RequestState::Executing => Some(2),
            RequestState::Complete | RequestState::Failed | RequestState::Cancelled => Some(3),
            RequestState::Other(_) => None,
        }
    }
}

/// Reads a state as the service spells it.
impl From<&str> for RequestState {
    fn from(state: &str) -> Self {
        match state {
            "Created" => RequestState::Created,
            "Submitted" => RequestState::Submitted,
            "Executing" => RequestState::Executing,
            "Complete" => RequestState::Complete,
            "Failed" => RequestState::Failed,
            "Cancelled" => RequestState::Cancelled,
            other => RequestState::Other(other.to_string()),
        }
    }
}

impl From<String> for RequestState {
    fn from(state: String) -> Self {
        match RequestState::from(state.as_str()) {
            RequestState::Other(_) => RequestState::Other(state),
            known => known,
        }
    }
}

impl From<RequestState> for String {
    fn from(state: RequestState) -> Self {
        match state {
            RequestState::Other(state) => state,
            known => known.as_str().to_string(),
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_and_write_as_the_service_spells_them() {
        let states: Vec<RequestState> =
            serde_json::from_str(r#"["Created", "Complete", "Paused"]"#).unwrap();
        assert_eq!(
            states,
            [
                RequestState::Created,
                RequestState::Complete,
                RequestState::Other("Paused".into())
            ]
        );
        assert_eq!(
            serde_json::to_string(&states).unwrap(),
            r#"["Created","Complete","Paused"]"#
        );
        assert_eq!(states[2].rank(), None);
        assert_eq!(states[1].to_string(), "Complete");
        assert_eq!(RequestState::from("Failed"), RequestState::Failed);
        assert!(serde_json::from_str::<RequestState>("3").is_err());
    }
}
