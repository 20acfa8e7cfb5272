//! Settings: defaults in code, then `config.yaml` (or `--config FILE`), an optional overlay
//! file, then `THALAMUS__SECTION__KEY` environment variables. Unknown keys are errors.
//! The step modules' sections (`sources`, `workspaces`, …) are declared in `steps/` and sit
//! at the top level of the file beside the controller's own.

use std::ops::{Deref, DerefMut};
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
/// The fields here are the controller's sections; `steps` holds the step modules' sections,
/// which [`Settings::load`] reads from the top level of the file, and which read that way
/// here too (`settings.sources` is `settings.steps.sources`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: crate::store::DatabaseSettings,
    /// Path of the XOS-format dependency file; relative to the config file's directory.
    pub model_deps: PathBuf,
    pub sync: crate::engine::SyncSettings,
    pub policy: crate::engine::PolicySettings,
    pub pull: crate::engine::PullSettings,
    pub executions: crate::engine::ExecutionSettings,
    pub log: crate::telemetry::LogSettings,
    pub events: crate::bus::EventsSettings,
    pub outbox: crate::outbox::OutboxSettings,
    pub api: crate::api::ApiSettings,
    /// `rules.*`: where the rules files are.
    pub rules: crate::rules::RulesSettings,
    /// The sections the step modules in `steps/` declare and read.
    #[serde(flatten, skip_deserializing)]
    pub steps: crate::steps::Settings,
}

/// The step modules' sections are top-level sections of the file; they read as such.
impl Deref for Settings {
    type Target = crate::steps::Settings;

    fn deref(&self) -> &Self::Target {
        &self.steps
    }
}

impl DerefMut for Settings {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.steps
    }
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
            events: crate::bus::EventsSettings::default(),
            outbox: Default::default(),
            api: Default::default(),
            rules: Default::default(),
            steps: crate::steps::Settings::default(),
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
            outbox: self.outbox.clone(),
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
        let names: Vec<String> = env.keys().cloned().collect();
        builder = builder.add_source(
            config::Environment::with_prefix("THALAMUS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let top = builder
            .build()
            .and_then(|c| c.cache.into_table())
            .map_err(|e| ConfigError::Invalid(e.to_string()));
        let mut settings = top
            .and_then(Self::from_sections)
            .map_err(|e| blame_environment(e, &names))?;
        settings.validate()?;
        // Relative paths follow the main config file (the overlay only overrides values): the
        // one given, else `config.yaml` here, else the overlay when it is the only file.
        let default = Path::new(DEFAULT_CONFIG_FILE);
        let file = match file {
            Some(path) => Some(path),
            None if default.exists() || overlay.is_none() => Some(default),
            None => overlay,
        };
        if let Some(dir) = file
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty())
        {
            settings.resolve_paths(&std::path::absolute(dir).unwrap_or_else(|_| dir.into()));
        }
        Ok(settings)
    }

    /// Makes relative paths (`model_deps`, `rules.paths`, a SQLite file, the sources'
    /// directories) relative
    /// to `base`, the config file's directory, not to wherever the command runs.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.model_deps = base.join(&self.model_deps);
        for path in &mut self.rules.paths {
            *path = base.join(&*path);
        }
        self.database.resolve_path(base);
        self.steps.resolve_paths(base);
    }

    /// Reads the file's top-level sections: the controller's into these fields, the step
    /// modules' into `steps`. Each part is read from the values as loaded, so an error still
    /// names the key and where it was set.
    fn from_sections(top: config::Map<String, config::Value>) -> Result<Self, ConfigError> {
        let invalid = |e: config::ConfigError| ConfigError::Invalid(e.to_string());
        let (mut own, mut steps) = (config::Map::new(), config::Map::new());
        let own_keys = field_names::<Settings>();
        let step_keys = field_names::<crate::steps::Settings>();
        for (key, value) in top {
            if own_keys.contains(&key.as_str()) {
                own.insert(key, value);
            } else if step_keys.contains(&key.as_str()) {
                steps.insert(key, value);
            } else {
                let expected = own_keys.iter().chain(step_keys);
                let expected: Vec<String> = expected.map(|k| format!("`{k}`")).collect();
                return Err(ConfigError::Invalid(format!(
                    "unknown field `{key}`, expected one of {}",
                    expected.join(", ")
                )));
            }
        }
        let table = |t| config::Value::new(None, config::ValueKind::Table(t));
        let mut settings: Settings = table(own).try_deserialize().map_err(invalid)?;
        settings.steps = table(steps).try_deserialize().map_err(invalid)?;
        Ok(settings)
    }

    /// Each section checks itself; the first problem found is reported with its key.
    fn validate(&self) -> Result<(), ConfigError> {
        let owned = |(key, problem): (&'static str, &str)| (key, problem.to_string());
        let checks = [
            self.database.validate(),
            self.engine().validate(),
            self.log.validate(),
            self.events.validate().map_err(owned),
            self.outbox.validate(),
            self.api.validate(),
            self.steps.validate().map_err(owned),
        ];
        for check in checks {
            if let Err((key, problem)) = check {
                return Err(ConfigError::Key { key, problem });
            }
        }
        Ok(())
    }
}

/// The top-level keys a section struct's derived `Deserialize` reads (fields it skips are not
/// among them): asks it to deserialize from a stand-in that only records the names.
fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Error as _, Visitor};

    struct Names(&'static [&'static str]);

    impl<'de> Deserializer<'de> for &mut Names {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("only struct field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(Self::Error::custom("only struct field names are read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut names = Names(&[]);
    let _ = T::deserialize(&mut names);
    names.0
}

/// An unknown key set by an environment variable says which variable set it (the loader
/// only names the section it landed in).
fn blame_environment(e: ConfigError, names: &[String]) -> ConfigError {
    let ConfigError::Invalid(text) = &e else {
        return e;
    };
    let Some(field) = text
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field)
    else {
        return e;
    };
    let mut from_env = names.iter().filter(|n| {
        n.rsplit("__")
            .next()
            .is_some_and(|last| last.eq_ignore_ascii_case(field))
    });
    match from_env.next() {
        Some(name) => {
            ConfigError::Invalid(format!("{text} (set by the environment variable {name})"))
        }
        None => e,
    }
}

fn yaml_file(path: &Path) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path).format(config::FileFormat::Yaml)
}
