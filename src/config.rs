//! Settings: defaults in code, then `config.yaml` (or `--config FILE`), an optional overlay
//! file, then `THALAMUS__SECTION__KEY` environment variables. Unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why loading settings failed, naming the offending key so an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: `{key}` {problem}")]
    Key { key: &'static str, problem: String },
}

/// Every setting thalamus reads; each has a default so a file may hold only `database.url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: crate::store::DatabaseSettings,
    /// Path of the XOS-format dependency file, relative to the working directory.
    pub model_deps: PathBuf,
    pub sync: crate::engine::SyncSettings,
    pub policy: crate::engine::PolicySettings,
    pub pull: crate::engine::PullSettings,
    pub executions: crate::engine::ExecutionSettings,
    pub log: crate::telemetry::LogSettings,
    pub sources: crate::sources::SourcesSettings,
    pub workspaces: crate::workspaces::WorkspacesSettings,
    pub archive: crate::workspaces::ArchiveSettings,
    pub events: crate::bus::EventsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database: Default::default(),
            model_deps: PathBuf::from("model-deps.json"),
            sync: Default::default(),
            policy: Default::default(),
            pull: Default::default(),
            executions: Default::default(),
            log: Default::default(),
            sources: crate::sources::SourcesSettings::default(),
            events: crate::bus::EventsSettings::default(),
            workspaces: crate::workspaces::WorkspacesSettings::default(),
            archive: crate::workspaces::ArchiveSettings::default(),
        }
    }
}

/// The file read when `--config` is not given; its absence is not an error.
pub const DEFAULT_CONFIG_FILE: &str = "config.yaml";

impl Settings {
    /// The engine's own settings, taken out of the whole.
    pub fn engine(&self) -> crate::engine::EngineSettings {
        crate::engine::EngineSettings {
            sync: self.sync.clone(),
            policy: self.policy.clone(),
            pull: self.pull.clone(),
            executions: self.executions.clone(),
        }
    }

    /// Loads settings from `file` (must exist when given explicitly), `overlay`, and the
    /// environment, then validates them.
    pub fn load(file: Option<&Path>, overlay: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overlay, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment, so tests do not race on env vars.
    pub fn load_with_env(
        file: Option<&Path>,
        overlay: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::Missing(path.into())),
            Some(path) => builder = builder.add_source(yaml_file(path)),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.exists() {
                    builder = builder.add_source(yaml_file(default));
                }
            }
        }
        if let Some(path) = overlay {
            if !path.exists() {
                return Err(ConfigError::Missing(path.into()));
            }
            builder = builder.add_source(yaml_file(path));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("THALAMUS__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("THALAMUS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Each section checks itself; the first problem found is reported with its key.
    fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            self.database.validate(),
            self.engine().validate(),
            self.sources.validate().map_err(|(k, p)| (k, p.to_string())),
            self.events.validate().map_err(|(k, p)| (k, p.to_string())),
            self.workspaces
                .validate()
                .map_err(|(k, p)| (k, p.to_string())),
            self.archive.validate().map_err(|(k, p)| (k, p.to_string())),
        ];
        for check in checks {
            if let Err((key, problem)) = check {
                return Err(ConfigError::Key { key, problem });
            }
        }
        Ok(())
    }
}

fn yaml_file(path: &Path) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path).format(config::FileFormat::Yaml)
}
