//! The model policies: an observation needs an ingestion that follows its generation; a
//! completed VLA or ALMA ingestion needs a calibration, unless the ASDM is marked not
//! calibratable (a `CalibrationMark`, its own desired state: marking or unmarking decides
//! only whether a calibration is wanted). Deleting an observation deletes its dependents
//! (the store cascades).

use super::archive::CalibrationMark;
use super::models::{Calibration, Ingestion, Instrument, Observation, Product};
use crate::steps::prelude::*;

/// Observation created or updated → its Ingestion exists and follows its generation.
pub struct DeriveIngestion;

#[async_trait]
impl ModelPolicy for DeriveIngestion {
    type Model = Observation;

    fn name(&self) -> &str {
        "ingest-observation"
    }

    async fn handle_update(&self, obj: &Obj<Observation>, models: &Models) -> anyhow::Result<()> {
        let ingestion = Ingestion {
            observation: obj.key.clone(),
            instrument: obj.spec.instrument,
            product: obj.spec.product,
            name: obj.spec.name.clone(),
            observation_generation: obj.generation,
        };
        models.upsert(&obj.key, &ingestion).await?;
        Ok(())
    }
}

/// Ingestion of ALMA science data completed → a Calibration exists, following the
/// ingestion's generation, unless the ASDM is marked not calibratable (see [`decide`]). VLA's
/// is the rule `calibrate-ingested` (`rules/calibration.yaml`); ALMA's stays Rust because it
/// reads the CalibrationMarks and may keep, note or withdraw a Calibration made before: a
/// decision with else branches that a rule's response cannot hold.
pub struct DeriveCalibration;

#[async_trait]
impl ModelPolicy for DeriveCalibration {
    type Model = Ingestion;

    fn name(&self) -> &str {
        "calibrate-ingestion"
    }

    async fn handle_update(&self, obj: &Obj<Ingestion>, models: &Models) -> anyhow::Result<()> {
        decide(obj, models).await
    }
}

/// A CalibrationMark made, changed or accepted by the archive → the calibration of the same
/// ASDM (same key) is decided again: a mark never touches the Observation or its ingestion.
pub struct FollowCalibrationMark;

#[async_trait]
impl ModelPolicy for FollowCalibrationMark {
    type Model = CalibrationMark;

    fn name(&self) -> &str {
        "follow-calibration-mark"
    }

    async fn handle_update(
        &self,
        obj: &Obj<CalibrationMark>,
        models: &Models,
    ) -> anyhow::Result<()> {
        match models.get::<Ingestion>(&obj.key).await? {
            Some(ingestion) if !ingestion.deleted => decide(&ingestion, models).await,
            _ => Ok(()),
        }
    }

    async fn handle_delete(
        &self,
        obj: &Obj<CalibrationMark>,
        models: &Models,
    ) -> anyhow::Result<()> {
        self.handle_update(obj, models).await
    }
}

/// What the archive says (or is about to say) of an ASDM's calibratability.
enum Calibratability {
    /// No mark, or the archive has been told it is calibratable again.
    Calibratable,
    /// Marked not calibratable, for this reason.
    Marked(String),
    /// No longer marked, but the archive has not been told yet: calibrating waits for it.
    Unmarking,
}

async fn calibratability(key: &str, models: &Models) -> anyhow::Result<Calibratability> {
    Ok(match models.get::<CalibrationMark>(key).await? {
        Some(m) if m.deleted => Calibratability::Calibratable,
        Some(m) if !m.spec.calibratable => Calibratability::Marked(m.spec.reason_text().into()),
        Some(m) if m.enacted < m.generation => Calibratability::Unmarking,
        _ => Calibratability::Calibratable,
    })
}

/// Decides the calibration of a VLA or ALMA ingestion. Calibratable (unmarked, or unmarked
/// and the archive told so): once the ingestion is complete its Calibration exists and
/// follows its generation. Marked not calibratable: no Calibration is made and the
/// ingestion's status says why; a Calibration already asked of Workspaces is kept (its
/// product exists or is being made) and its status says the ASDM is now marked; one never
/// asked for is withdrawn. A mark changes nothing else.
async fn decide(obj: &Obj<Ingestion>, models: &Models) -> anyhow::Result<()> {
    let spec = &obj.spec;
    // VLA's Calibration is the rule `calibrate-ingested`; VLBA data is not calibrated.
    if spec.instrument != Instrument::ALMA || spec.product != Product::Sdm {
        return Ok(());
    }
    let mark = calibratability(&obj.key, models).await?;
    let calibration = models
        .get::<Calibration>(&obj.key)
        .await?
        .filter(|c| !c.deleted);
    if let Some(c) = &calibration {
        let note = match &mark {
            Calibratability::Marked(reason) => Some(reason.clone()),
            _ => None,
        };
        if c.status.not_calibratable != note {
            let mut noted = c.clone();
            noted.status.not_calibratable = note;
            write_status(&noted, models).await?;
        }
    }
    if !obj.status.completed(obj.generation) {
        return Ok(());
    }
    let skipped = match &mark {
        Calibratability::Marked(reason) => Some(format!("not calibratable: {reason}")),
        Calibratability::Unmarking => obj.status.calibration_skipped.clone(),
        Calibratability::Calibratable => None,
    };
    if obj.status.calibration_skipped != skipped {
        let mut noted = obj.clone();
        noted.status.calibration_skipped = skipped;
        write_status(&noted, models).await?;
    }
    match mark {
        Calibratability::Marked(_) => {
            if let Some(c) = calibration.filter(|c| !ran(c)) {
                models.delete::<Calibration>(&c.key).await?;
            }
        }
        Calibratability::Unmarking => {}
        Calibratability::Calibratable => {
            let calibration = Calibration {
                ingestion: obj.key.clone(),
                instrument: spec.instrument,
                name: spec.name.clone(),
                ingestion_generation: obj.generation,
            };
            models.upsert(&obj.key, &calibration).await?;
        }
    }
    Ok(())
}

/// Writes a status read a moment ago, only if nobody changed the object since (an event
/// step writes request states into the same status): otherwise it fails, and the policy runs
/// again on the object as it is now, so no event's status is lost.
async fn write_status<M: Model>(obj: &Obj<M>, models: &Models) -> anyhow::Result<()> {
    if models.set_statuses(&[obj], false).await? == 0 {
        bail!(
            "{} {} changed while its calibration was decided; deciding again",
            M::KIND,
            obj.key
        );
    }
    Ok(())
}

/// Whether Workspaces is known to have a request for this calibration (or it completed
/// once). An `external_id` alone is only what the step will look for: if a crash left a
/// request behind, the delete step finds it by that id and waits for it or cancels it.
fn ran(c: &Obj<Calibration>) -> bool {
    let r = &c.status.request;
    c.enacted > 0 || r.request_id.is_some() || r.completed_generation.is_some()
}

/// Registers the policies.
pub fn register(registry: &mut Registry, _settings: &Settings) -> anyhow::Result<()> {
    registry
        .policy(DeriveIngestion)
        .policy(DeriveCalibration)
        .policy(FollowCalibrationMark);
    Ok(())
}
