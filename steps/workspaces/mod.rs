//! What Workspaces is asked to do: ingest an observation, with the capability or workflow
//! `workspaces.ingestion` names for its instrument, and calibrate an ingested dataset, with
//! the one `workspaces.calibration` names; each exactly once per generation, followed until
//! the request is Complete; never two requests in flight for one object (see `requests.rs`).

mod requests;
mod settings;

pub use requests::Requests;
pub use settings::{
    configured, CalibrationTargets, IngestionTargets, OnNewGeneration, Target, WorkspacesSettings,
};

use super::models::{Calibration, Ingestion, Instrument, Observation, Product};
use crate::steps::prelude::*;

/// Creates, submits and tracks the Workspaces request that ingests one observation.
pub struct RequestIngestion {
    requests: Requests,
    targets: IngestionTargets,
}

impl RequestIngestion {
    /// The configured capability or workflow for this data, or a permanent error naming the
    /// key to set.
    fn target(&self, instrument: Instrument, product: Product) -> Result<&Target, StepError> {
        let t = &self.targets;
        let (target, key) = match (instrument, product) {
            (Instrument::ALMA, Product::Calibration) => {
                (&t.alma_calibration, "workspaces.ingestion.alma_calibration")
            }
            (Instrument::VLA, _) => (&t.vla, "workspaces.ingestion.vla"),
            (Instrument::ALMA, _) => (&t.alma, "workspaces.ingestion.alma"),
            (Instrument::VLBA, _) => (&t.vlba, "workspaces.ingestion.vlba"),
        };
        configured(
            target,
            key,
            &format!("ingests {} data", instrument.as_str()),
        )
    }
}

#[async_trait]
impl SyncStep for RequestIngestion {
    type Model = Ingestion;

    async fn sync(&self, obj: &mut Obj<Ingestion>, ctx: &StepContext) -> StepResult {
        let target = self.target(obj.spec.instrument, obj.spec.product)?;
        let observation = ctx
            .get::<Observation>(&obj.spec.observation)
            .await?
            .ok_or_else(|| anyhow!("Observation {} does not exist", obj.spec.observation))?
            .spec;
        let parameters = serde_json::json!({
            "location": observation.location,
            "files": observation.files,
            "name": observation.name,
            "instrument": observation.instrument,
            "product": observation.product,
        });
        let result = self
            .requests
            .reconcile(target, &parameters, obj, |s| &mut s.request)
            .await;
        // What the request of this generation ingests without, once it is the one tracked.
        if obj.status.request.served_generation() != Some(obj.generation) {
            return result;
        }
        obj.status.missing_files = observation.missing_files;
        match result {
            Ok(Progress::Deferred { after, reason }) if !obj.status.missing_files.is_empty() => {
                let missing = &obj.status.missing_files;
                let files = if missing.len() == 1 { "file" } else { "files" };
                Ok(Progress::deferred(
                    after,
                    format!(
                        "{reason}; without {} missing {files}: {}",
                        missing.len(),
                        missing.join(", ")
                    ),
                ))
            }
            result => result,
        }
    }

    /// A request in flight is waited for or cancelled (`on_new_generation`) before the
    /// ingestion is forgotten.
    async fn delete(&self, obj: &mut Obj<Ingestion>, _ctx: &StepContext) -> StepResult {
        let target = self.target(obj.spec.instrument, obj.spec.product).ok();
        self.requests.release(target, obj, |s| &mut s.request).await
    }
}

/// Creates, submits and tracks the Workspaces request that calibrates one dataset.
pub struct RequestCalibration {
    requests: Requests,
    targets: CalibrationTargets,
}

impl RequestCalibration {
    /// The configured capability or workflow for this data, or a permanent error naming the
    /// key to set.
    fn target(&self, instrument: Instrument) -> Result<&Target, StepError> {
        let (target, key) = match instrument {
            Instrument::VLA => (&self.targets.vla, "workspaces.calibration.vla"),
            Instrument::ALMA => (&self.targets.alma, "workspaces.calibration.alma"),
            Instrument::VLBA => (&None, "workspaces.calibration"),
        };
        let work = format!("calibrates {} data", instrument.as_str());
        configured(target, key, &work)
    }
}

#[async_trait]
impl SyncStep for RequestCalibration {
    type Model = Calibration;

    async fn sync(&self, obj: &mut Obj<Calibration>, _ctx: &StepContext) -> StepResult {
        let instrument = obj.spec.instrument;
        let target = self.target(instrument)?;
        let parameters = serde_json::json!({
            "name": obj.spec.name,
            "instrument": instrument,
        });
        self.requests
            .reconcile(target, &parameters, obj, |s| &mut s.request)
            .await
    }

    /// A request in flight is waited for or cancelled (`on_new_generation`) before the
    /// calibration is forgotten.
    async fn delete(&self, obj: &mut Obj<Calibration>, _ctx: &StepContext) -> StepResult {
        let target = self.target(obj.spec.instrument).ok();
        self.requests.release(target, obj, |s| &mut s.request).await
    }
}

/// Registers the Ingestion and Calibration sync steps, talking to `workspaces.url`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    let workspaces = &settings.workspaces;
    let requests = Requests::new(workspaces)?;
    registry.sync(RequestIngestion {
        requests: requests.clone(),
        targets: workspaces.ingestion.clone(),
    })?;
    registry.sync(RequestCalibration {
        requests,
        targets: workspaces.calibration.clone(),
    })?;
    Ok(())
}
