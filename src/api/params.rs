//! Query parameters, checked by name: an unknown or malformed one is a 400 that names it.

use axum::http::Uri;

use super::error::ApiError;
use crate::store::State;

/// The query parameters of one request, each known to the endpoint.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the query of `uri`, refusing any parameter not in `allowed`. Empty values (an
    /// HTML form's untouched field) count as absent.
    pub fn parse(uri: &Uri, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
                .map_err(|e| ApiError::new(axum::http::StatusCode::BAD_REQUEST, e.body_text()))?
                .0;
        for (name, _) in &pairs {
            if !allowed.contains(&name.as_str()) {
                let expected: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                return Err(ApiError::bad_param(
                    name,
                    format!("is not known here (expected {})", expected.join(", ")),
                ));
            }
        }
        Ok(Self(
            pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
        ))
    }

    /// The value of `name`, the last one if given twice.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name` as an integer in `min..=max`, or `default`.
    pub fn int(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_param(
                name,
                format!("must be a whole number from {min} to {max}, not {text:?}"),
            )),
        }
    }

    /// The `state` parameter.
    pub fn state(&self) -> Result<Option<State>, ApiError> {
        match self.get("state") {
            None => Ok(None),
            Some(s) => State::parse(s).map(Some).ok_or_else(|| {
                ApiError::bad_param(
                    "state",
                    format!(
                        "must be one of ok, pending, backoff, error, waiting, deleting, not {s:?}"
                    ),
                )
            }),
        }
    }
}
