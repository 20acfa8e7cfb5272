//! `api.*` settings: where the operator surface listens and the token mutations need.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The operator surface served by `thalamus run`: web page, JSON API, metrics, health.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Serve it at all (on by default).
    pub enabled: bool,
    /// Address and port to listen on; `127.0.0.1:0` picks a free port.
    pub listen: String,
    /// Bearer token that mutations (retry, delete, dead-letter replay and purge) need; better
    /// set as `THALAMUS__API__TOKEN`. Without one, mutations are refused.
    pub token: Option<Secret>,
    /// How often the web page reloads itself (0: never).
    pub refresh_seconds: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            token: None,
            refresh_seconds: 10,
        }
    }
}

impl ApiSettings {
    /// Checks the values the server cannot work with; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err((
                "api.listen",
                format!(
                    "must be an address and port such as 127.0.0.1:8080, not {:?}",
                    self.listen
                ),
            ));
        }
        if self
            .token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err((
                "api.token",
                "must not be empty (omit it to refuse mutations)".into(),
            ));
        }
        Ok(())
    }
}
