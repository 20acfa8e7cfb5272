//! What a REST client needs to know: where the service is, its token, how long to wait for
//! it and how fast to call it. The sections operators write (`workspaces.*`, `archive.*`)
//! belong to the step modules that call the services; they hand their clients an [`Endpoint`].

use crate::secret::Secret;

/// Where a REST service is and how to call it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Base URL; paths are appended to it.
    pub url: String,
    /// Bearer token sent in `Authorization`, if the service wants one.
    pub token: Option<Secret>,
    /// Connect and whole-request timeout of each call.
    pub timeout_seconds: u64,
    /// Outbound calls per second from this process.
    pub requests_per_second: f64,
}

/// The keys an endpoint's settings are read from, so a bad value is reported by its key.
#[derive(Debug, Clone, Copy)]
pub struct EndpointKeys {
    /// Where [`Endpoint::url`] is set, e.g. `workspaces.url`.
    pub url: &'static str,
    /// Where [`Endpoint::token`] is set.
    pub token: &'static str,
    /// Where [`Endpoint::timeout_seconds`] is set.
    pub timeout_seconds: &'static str,
    /// Where [`Endpoint::requests_per_second`] is set.
    pub requests_per_second: &'static str,
}

/// The slowest and fastest call rates a client accepts.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;

impl Endpoint {
    /// Checks what a client cannot work without; the error is the key (from `keys`) and what
    /// is wrong with its value.
    pub fn validate(&self, keys: &EndpointKeys) -> Result<(), (&'static str, &'static str)> {
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => {}
            _ => return Err((keys.url, "must be an http:// or https:// URL")),
        }
        if self.timeout_seconds == 0 {
            return Err((keys.timeout_seconds, "must be at least 1"));
        }
        // Below one call in 1000 s the limiter's interval stops being a usable duration.
        if !(MIN_RATE..=MAX_RATE).contains(&self.requests_per_second) {
            return Err((
                keys.requests_per_second,
                "must be a number from 0.001 to 1000000",
            ));
        }
        match &self.token {
            Some(t) if t.expose().is_empty() || t.expose().chars().any(|c| c.is_control()) => {
                Err((
                    keys.token,
                    "must be non-empty text without control characters",
                ))
            }
            _ => Ok(()),
        }
    }
}
