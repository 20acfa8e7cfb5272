//! The archive REST client: tells the archive which ASDMs cannot be calibrated, and which
//! can again.

use reqwest::Method;
use serde_json::json;

use super::http::{CallError, Http};
use super::settings::Endpoint;

/// Talks to the archive; cheap to clone, and every clone shares one rate limit.
#[derive(Clone)]
pub struct ArchiveClient {
    http: std::sync::Arc<Http>,
}

impl ArchiveClient {
    /// A client of the archive at `endpoint`.
    pub fn new(endpoint: &Endpoint) -> anyhow::Result<Self> {
        Ok(Self {
            http: std::sync::Arc::new(Http::new("the archive", endpoint)?),
        })
    }

    /// `PUT {archive}/alma/asdm/{uid}/calibration-status` with `calibratable: false`: marks an
    /// ASDM not calibratable. A PUT of the same state, so repeating it is harmless.
    pub async fn mark_not_calibratable(&self, uid: &str, reason: &str) -> Result<(), CallError> {
        let url = self.http.url(&["alma", "asdm", uid, "calibration-status"]);
        let body = json!({"calibratable": false, "reason": reason});
        self.http.send(Method::PUT, url, Some(&body)).await?;
        Ok(())
    }

    /// The same PUT with `{"calibratable": true}`: the ASDM may be calibrated after all (it
    /// was marked, and no longer is).
    pub async fn mark_calibratable(&self, uid: &str) -> Result<(), CallError> {
        let url = self.http.url(&["alma", "asdm", uid, "calibration-status"]);
        let body = json!({"calibratable": true});
        self.http.send(Method::PUT, url, Some(&body)).await?;
        Ok(())
    }
}
