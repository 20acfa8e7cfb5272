//! Tells the archive what thalamus learned about its data: a `CalibrationMark` is "this ASDM
//! cannot be calibrated", enacted by `PUT {archive}/alma/asdm/{uid}/calibration-status`.
//! A policy upserts one when the ALMA source or an operator says so.

use crate::step::prelude::*;

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
        obj.status.marked_generation = Some(obj.generation);
        Ok(Progress::Done)
    }
}

/// Registers the CalibrationMark sync step, talking to `archive.url`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    registry.sync(MarkNotCalibratable {
        client: ArchiveClient::new(&settings.archive)?,
    })?;
    Ok(())
}
