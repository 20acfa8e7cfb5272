//! Ingestion sync: asks Workspaces to ingest an observation, with the capability or workflow
//! `workspaces.ingestion` names for its instrument, exactly once per generation, and follows
//! the request until it is Complete.

use super::models::{Ingestion, Instrument, Observation, Product};
use crate::step::prelude::*;

/// Creates, submits and tracks the Workspaces request that ingests one observation.
pub struct RequestIngestion {
    client: WorkspacesClient,
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
        self.client
            .reconcile(target, &parameters, obj, |s| &mut s.request)
            .await
    }
}

/// Registers the Ingestion sync step, talking to `workspaces.url`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    registry.sync(RequestIngestion {
        client: WorkspacesClient::new(&settings.workspaces)?,
        targets: settings.workspaces.ingestion.clone(),
    })?;
    Ok(())
}
