//! Tells the archive what thalamus learned about its data: a `CalibrationMark` is "this ASDM
//! cannot be calibrated", enacted by `PUT {archive}/alma/asdm/{uid}/calibration-status`.
//! A policy upserts one when the ALMA source or an operator says so. The archive is found
//! where `archive.*` says.

use crate::steps::prelude::*;

/// `archive.*`: the archive's REST service, which is told about ASDMs that cannot be
/// calibrated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSettings {
    /// Base URL; `/alma/asdm/{uid}/calibration-status` is appended.
    pub url: String,
    /// Bearer token sent in `Authorization`, if the archive wants one.
    pub token: Option<Secret>,
    /// Connect and whole-request timeout of each call.
    pub timeout_seconds: u64,
    /// Outbound calls per second from this process.
    pub requests_per_second: f64,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8082/archive".into(),
            token: None,
            timeout_seconds: 30,
            requests_per_second: 20.0,
        }
    }
}

impl ArchiveSettings {
    /// What the client needs of these settings.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.url.clone(),
            token: self.token.clone(),
            timeout_seconds: self.timeout_seconds,
            requests_per_second: self.requests_per_second,
        }
    }

    /// Checks what the archive client cannot work without; the error names the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.endpoint().validate(&EndpointKeys {
            url: "archive.url",
            token: "archive.token",
            timeout_seconds: "archive.timeout_seconds",
            requests_per_second: "archive.requests_per_second",
        })
    }
}

/// "The archive must record that ASDM `uid` is not calibratable, and why." Key: the uid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationMark {
    /// The ASDM's uid, e.g. `uid://A002/Xc2c6b9/X1a5b`.
    pub uid: String,
    /// Why it cannot be calibrated, as the archive will show it.
    pub reason: String,
}

/// Observed state of a mark: which generation the archive accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationMarkStatus {
    /// The generation (uid and reason) the archive last accepted.
    pub marked_generation: Option<i64>,
}

impl Model for CalibrationMark {
    const KIND: &'static str = "CalibrationMark";
    type Status = CalibrationMarkStatus;
}

/// Puts the mark in the archive; a PUT of the same state, so repeating it is harmless. A
/// deleted mark is left in the archive: nothing says the ASDM became calibratable.
pub struct MarkNotCalibratable {
    client: ArchiveClient,
}

#[async_trait]
impl SyncStep for MarkNotCalibratable {
    type Model = CalibrationMark;

    async fn sync(&self, obj: &mut Obj<CalibrationMark>, _ctx: &StepContext) -> StepResult {
        self.client
            .mark_not_calibratable(&obj.spec.uid, &obj.spec.reason)
            .await?;
        info!(uid = %obj.spec.uid, "archive: ASDM {} marked not calibratable", obj.spec.uid);
        obj.status.marked_generation = Some(obj.generation);
        Ok(Progress::Done)
    }
}

/// Registers the CalibrationMark sync step, talking to `archive.url`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    registry.sync(MarkNotCalibratable {
        client: ArchiveClient::new(&settings.archive.endpoint())?,
    })?;
    Ok(())
}
