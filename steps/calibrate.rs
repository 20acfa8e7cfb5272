//! Calibration sync: asks Workspaces to calibrate an ingested dataset, with the capability or
//! workflow `workspaces.calibration` names for its instrument, exactly once per generation,
//! and follows the request until it is Complete.

use super::models::{Calibration, Instrument};
use crate::step::prelude::*;

/// Creates, submits and tracks the Workspaces request that calibrates one dataset.
pub struct RequestCalibration {
    client: WorkspacesClient,
    targets: CalibrationTargets,
}

#[async_trait]
impl SyncStep for RequestCalibration {
    type Model = Calibration;

    async fn sync(&self, obj: &mut Obj<Calibration>, _ctx: &StepContext) -> StepResult {
        let instrument = obj.spec.instrument;
        let (target, key) = match instrument {
            Instrument::VLA => (&self.targets.vla, "workspaces.calibration.vla"),
            Instrument::ALMA => (&self.targets.alma, "workspaces.calibration.alma"),
            Instrument::VLBA => (&None, "workspaces.calibration"),
        };
        let work = format!("calibrates {} data", instrument.as_str());
        let target = configured(target, key, &work)?;
        let parameters = serde_json::json!({
            "name": obj.spec.name,
            "instrument": instrument,
        });
        self.client
            .reconcile(target, &parameters, obj, |s| &mut s.request)
            .await
    }
}

/// Registers the Calibration sync step, talking to `workspaces.url`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    registry.sync(RequestCalibration {
        client: WorkspacesClient::new(&settings.workspaces)?,
        targets: settings.workspaces.calibration.clone(),
    })?;
    Ok(())
}
