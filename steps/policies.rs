//! The model policies: an observation needs an ingestion that follows its generation; a
//! completed VLA or ALMA ingestion needs a calibration, unless the data is known not to be
//! calibratable. Deleting an observation deletes its dependents (the store cascades).

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

/// Ingestion of VLA/ALMA science data completed, of an observation that is not calibratable →
/// no Calibration (an existing one is deleted) and the reason is recorded in the ingestion's
/// status. The Calibration of one that is calibratable is the rule `calibrate-ingested`
/// (`rules/calibration.yaml`): it stays Rust because it reads another model and undoes what
/// was done before, a decision with an else branch that a rule's response cannot hold.
pub struct DeriveCalibration;

#[async_trait]
impl ModelPolicy for DeriveCalibration {
    type Model = Ingestion;

    fn name(&self) -> &str {
        "calibrate-ingestion"
    }

    async fn handle_update(&self, obj: &Obj<Ingestion>, models: &Models) -> anyhow::Result<()> {
        let spec = &obj.spec;
        if !spec.instrument.is_calibrated()
            || spec.product != Product::Sdm
            || !obj.status.completed(obj.generation)
        {
            return Ok(());
        }
        let observation = models.get::<Observation>(&spec.observation).await?;
        if let Some(reason) = observation.and_then(|o| o.spec.not_calibratable) {
            if models
                .get::<Calibration>(&obj.key)
                .await?
                .is_some_and(|c| !c.deleted)
            {
                models.delete::<Calibration>(&obj.key).await?;
            }
            let skipped = format!("not calibratable: {reason}");
            if obj.status.calibration_skipped.as_deref() != Some(skipped.as_str()) {
                let mut status = obj.status.clone();
                status.calibration_skipped = Some(skipped);
                models.set_status::<Ingestion>(&obj.key, &status).await?;
            }
            return Ok(());
        }
        // Otherwise the rule `calibrate-ingested` (rules/calibration.yaml) makes the
        // Calibration.
        Ok(())
    }
}

/// An ALMA ASDM the source says is not calibratable → a CalibrationMark, so the archive
/// records it too (`PUT …/calibration-status`).
pub struct DeriveCalibrationMark;

#[async_trait]
impl ModelPolicy for DeriveCalibrationMark {
    type Model = Observation;

    fn name(&self) -> &str {
        "mark-uncalibratable"
    }

    async fn handle_update(&self, obj: &Obj<Observation>, models: &Models) -> anyhow::Result<()> {
        let spec = &obj.spec;
        if let (Instrument::ALMA, Product::Sdm, Some(reason)) =
            (spec.instrument, spec.product, &spec.not_calibratable)
        {
            let mark = CalibrationMark {
                uid: spec.name.clone(),
                reason: reason.clone(),
            };
            models.upsert(&spec.name, &mark).await?;
        }
        Ok(())
    }
}

/// Registers the policies.
pub fn register(registry: &mut Registry, _settings: &Settings) -> anyhow::Result<()> {
    registry
        .policy(DeriveIngestion)
        .policy(DeriveCalibrationMark)
        .policy(DeriveCalibration);
    Ok(())
}
