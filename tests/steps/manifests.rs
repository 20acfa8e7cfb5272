//! Manifests: every observation gets a JSON file listing its data files, written under
//! `manifests.path`, rewritten when the observation changes, removed when it goes.

use std::path::PathBuf;

use super::models::Observation;
use crate::steps::prelude::*;

/// `manifests.*`: where manifests are written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestSettings {
    /// The directory manifests are written to.
    pub path: PathBuf,
}

impl Default for ManifestSettings {
    fn default() -> Self {
        Self {
            path: "data/manifests".into(),
        }
    }
}

/// "Observation `observation` has a manifest." Key: the observation's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Link to the Observation.
    pub observation: String,
    /// The observation generation it lists: new files move it, so the manifest is rewritten.
    pub observation_generation: i64,
}

impl Model for Manifest {
    const KIND: &'static str = "Manifest";
    const LINKS: &'static [Link] = &[Link::to::<Observation>("observation", "manifests")];
    type Status = ();
}

/// Observation created or updated → its Manifest exists and follows its generation.
pub struct DeriveManifest;

#[async_trait]
impl ModelPolicy for DeriveManifest {
    type Model = Observation;

    fn name(&self) -> &str {
        "derive-manifest"
    }

    async fn handle_update(&self, obj: &Obj<Observation>, models: &Models) -> anyhow::Result<()> {
        let manifest = Manifest {
            observation: obj.key.clone(),
            observation_generation: obj.generation,
        };
        models.upsert(&obj.key, &manifest).await?;
        Ok(())
    }
}

/// Writes `<path>/<key>.json` (a `/` in the key becomes `_`); deleting removes it.
pub struct WriteManifest {
    dir: PathBuf,
}

impl WriteManifest {
    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.json", key.replace('/', "_")))
    }
}

#[async_trait]
impl SyncStep for WriteManifest {
    type Model = Manifest;

    async fn sync(&self, obj: &mut Obj<Manifest>, ctx: &StepContext) -> StepResult {
        let observation = ctx
            .get::<Observation>(&obj.spec.observation)
            .await?
            .ok_or_else(|| anyhow!("Observation {} does not exist", obj.spec.observation))?;
        let text = serde_json::to_vec_pretty(&observation.spec.files)
            .context("serialising the manifest")?;
        let file = self.file(&obj.key);
        tokio::fs::create_dir_all(&self.dir)
            .await
            .with_context(|| format!("creating {}", self.dir.display()))?;
        tokio::fs::write(&file, text)
            .await
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(Progress::Done)
    }

    async fn delete(&self, obj: &mut Obj<Manifest>, _ctx: &StepContext) -> StepResult {
        let file = self.file(&obj.key);
        match tokio::fs::remove_file(&file).await {
            Ok(()) => Ok(Progress::Done),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Progress::Done),
            Err(e) => Err(anyhow!(e)
                .context(format!("removing {}", file.display()))
                .into()),
        }
    }
}

/// Registers the manifest policy and sync step, writing under `manifests.path`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    registry.policy(DeriveManifest);
    registry.sync(WriteManifest {
        dir: settings.manifests.path.clone(),
    })?;
    Ok(())
}
