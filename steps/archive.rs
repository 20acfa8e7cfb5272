//! Tells the archive what thalamus learned about its data: a `CalibrationMark` is "this ASDM
//! cannot be calibrated" (or, once no longer marked, "it can"), enacted by
//! `PUT {archive}/alma/asdm/{uid}/calibration-status`. The ALMA source upserts them from its
//! `not_calibratable_query`, independently of reingestion. The archive is found where
//! `archive.*` says.

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

/// "The archive must record whether ASDM `uid` can be calibrated, and if not, why." Key:
/// `ALMA/<uid>`, the key of the ASDM's Observation, Ingestion and Calibration (see
/// [`CalibrationMark::key`]). Its own desired state, not the data's: a change moves only the
/// mark, never the Observation (no new ingestion).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationMark {
    /// The ASDM's uid, e.g. `uid://A002/Xc2c6b9/X1a5b`.
    pub uid: String,
    /// `false` (the default, left out of the stored spec): not calibratable. `true`: it was
    /// marked and no longer is, so the archive is told it may be calibrated after all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub calibratable: bool,
    /// Why it cannot be calibrated, as the archive will show it (none when calibratable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who marked it, when not the ALMA source (e.g. `rule:no-calibrator`). The ALMA source
    /// owns the marks without one: it unmarks those its query no longer lists, and leaves
    /// the others to whoever made them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl CalibrationMark {
    /// The store key of the mark of ASDM `uid`: `ALMA/<uid>`, as its Observation's.
    pub fn key(uid: &str) -> String {
        format!("ALMA/{uid}")
    }

    /// "ASDM `uid` cannot be calibrated, because `reason`."
    pub fn not_calibratable(uid: &str, reason: &str) -> Self {
        Self {
            uid: uid.to_string(),
            calibratable: false,
            reason: Some(reason.to_string()),
            by: None,
        }
    }

    /// "ASDM `uid`, once marked, may be calibrated after all."
    pub fn calibratable(uid: &str) -> Self {
        Self {
            uid: uid.to_string(),
            calibratable: true,
            reason: None,
            by: None,
        }
    }

    /// The reason shown for a mark without one.
    pub fn reason_text(&self) -> &str {
        self.reason.as_deref().unwrap_or(NO_REASON)
    }
}

/// The reason given when the source gives none (a NULL `reason`).
pub const NO_REASON: &str = "marked not calibratable";

/// Observed state of a mark: which generation the archive accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationMarkStatus {
    /// The generation (calibratable or not, and why) the archive last accepted.
    pub marked_generation: Option<i64>,
}

impl Model for CalibrationMark {
    const KIND: &'static str = "CalibrationMark";
    type Status = CalibrationMarkStatus;
}

/// Puts the mark in the archive: `calibratable: false` with the reason, or `calibratable:
/// true` once the ASDM is no longer marked. A PUT of the same state, so repeating it is
/// harmless. A deleted mark (only an operator deletes one) is left in the archive.
pub struct PutCalibrationMark {
    client: ArchiveClient,
}

#[async_trait]
impl SyncStep for PutCalibrationMark {
    type Model = CalibrationMark;

    async fn sync(&self, obj: &mut Obj<CalibrationMark>, _ctx: &StepContext) -> StepResult {
        let mark = &obj.spec;
        if mark.calibratable {
            self.client.mark_calibratable(&mark.uid).await?;
            info!(uid = %mark.uid, "archive: ASDM {} marked calibratable again", mark.uid);
        } else {
            self.client
                .mark_not_calibratable(&mark.uid, mark.reason_text())
                .await?;
            info!(uid = %mark.uid, "archive: ASDM {} marked not calibratable", mark.uid);
        }
        obj.status.marked_generation = Some(obj.generation);
        Ok(Progress::Done)
    }
}

/// Registers the CalibrationMark sync step, talking to `archive.url`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    registry.sync(PutCalibrationMark {
        client: ArchiveClient::new(&settings.archive.endpoint())?,
    })?;
    Ok(())
}
