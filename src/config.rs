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
    pub database: DatabaseSettings,
    /// Path of the XOS-format dependency file, relative to the working directory.
    pub model_deps: PathBuf,
    pub sync: SyncSettings,
    pub policy: PolicySettings,
    pub pull: PullSettings,
    pub executions: ExecutionSettings,
    pub log: LogSettings,
    pub events: crate::bus::EventsSettings,
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

/// Where models live: `sqlite://FILE` (embedded default) or `postgres://…` (production).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a connection, or one of the sync loop's calls, may take before it counts
    /// as failed (a database that stops answering is an outage too).
    pub timeout_seconds: u64,
}

/// How the sync loop claims and runs work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Steps running at once in one process.
    pub concurrency: usize,
    /// Dirty objects claimed per round; bounds memory, not the number of models.
    pub page_size: usize,
    /// How often `run` looks for due work when nothing wakes it sooner.
    pub interval_ms: u64,
    /// A step running longer than this is cancelled and counted as a failure.
    pub step_timeout_seconds: u64,
    /// How long a claim is held; must exceed the step timeout.
    pub lease_seconds: u64,
    /// Safety-net recheck for objects waiting on a dependency (they are also woken directly).
    pub wait_recheck_seconds: u64,
    /// Time running steps get to finish after SIGTERM before they are abandoned.
    pub shutdown_grace_seconds: u64,
    /// Identity written into leases and executions; defaults to the host name. One live
    /// process per id: a restart under the same id takes its predecessor's leases over.
    pub holder_id: Option<String>,
    /// How long a process's heartbeat (PostgreSQL) vouches for it: a restart after a crash
    /// waits at most this long before it takes its predecessor's work over.
    pub heartbeat_seconds: u64,
    pub backoff: BackoffSettings,
}

/// Exponential backoff: `min(max, base · factor^(attempts-1))`, spread by ±jitter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffSettings {
    pub base_seconds: f64,
    pub factor: f64,
    pub max_seconds: f64,
    /// Fraction (0..=1) by which each delay is spread, so failures do not retry in lockstep.
    pub jitter: f64,
}

/// How the policy loop pages through changed objects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    pub page_size: usize,
}

/// Defaults for pull steps that do not set their own interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullSettings {
    pub enabled: bool,
    /// A failing source is polled at its interval, then twice that, and so on up to this.
    pub max_backoff_seconds: u64,
}

/// Retention of the executions audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionSettings {
    /// Rows older than this are pruned by `run`; 0 keeps everything.
    pub retain_days: u64,
}

/// Log level and format (`text` for people, `json` for collectors).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database: DatabaseSettings::default(),
            model_deps: PathBuf::from("model-deps.json"),
            sync: SyncSettings::default(),
            policy: PolicySettings::default(),
            pull: PullSettings::default(),
            executions: ExecutionSettings::default(),
            log: LogSettings::default(),
            events: crate::bus::EventsSettings::default(),
            steps: crate::steps::Settings::default(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://thalamus.db".into(),
            max_connections: 8,
            timeout_seconds: 30,
        }
    }
}

impl SyncSettings {
    /// `step_timeout_seconds` in milliseconds (validation keeps it far from overflowing).
    pub fn step_timeout_ms(&self) -> i64 {
        i64::try_from(self.step_timeout_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }

    /// `lease_seconds` in milliseconds (validation keeps it far from overflowing).
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            page_size: 500,
            interval_ms: 1000,
            step_timeout_seconds: 300,
            lease_seconds: 600,
            wait_recheck_seconds: 60,
            shutdown_grace_seconds: 30,
            holder_id: None,
            heartbeat_seconds: 10,
            backoff: BackoffSettings::default(),
        }
    }
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            base_seconds: 10.0,
            factor: 2.0,
            max_seconds: 3600.0,
            jitter: 0.2,
        }
    }
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self { page_size: 500 }
    }
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_backoff_seconds: 300,
        }
    }
}

impl Default for ExecutionSettings {
    fn default() -> Self {
        Self { retain_days: 30 }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The longest lease (and dependency recheck) accepted: a week.
const MAX_LEASE_SECONDS: u64 = 7 * 86_400;
/// The longest shutdown grace and pass interval accepted: a day.
const MAX_WAIT_SECONDS: u64 = 86_400;

/// The file read when `--config` is not given; its absence is not an error.
pub const DEFAULT_CONFIG_FILE: &str = "config.yaml";

impl Settings {
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
        let top = builder
            .build()
            .and_then(|c| c.cache.into_table())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let settings = Self::from_sections(top)?;
        settings.validate()?;
        Ok(settings)
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

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, problem: &str| {
            Err(ConfigError::Key {
                key,
                problem: problem.into(),
            })
        };
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return bad("database.url", "must start with sqlite:// or postgres://");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1");
        }
        if !(1..=MAX_WAIT_SECONDS).contains(&self.database.timeout_seconds) {
            return bad("database.timeout_seconds", "must be from 1 to 86400");
        }
        let s = &self.sync;
        if s.concurrency == 0 {
            return bad("sync.concurrency", "must be at least 1");
        }
        if s.page_size == 0 {
            return bad("sync.page_size", "must be at least 1");
        }
        if s.step_timeout_seconds == 0 {
            return bad("sync.step_timeout_seconds", "must be at least 1");
        }
        if s.lease_seconds > MAX_LEASE_SECONDS {
            return bad("sync.lease_seconds", "must be at most 604800 (a week)");
        }
        if s.shutdown_grace_seconds > MAX_WAIT_SECONDS {
            return bad(
                "sync.shutdown_grace_seconds",
                "must be at most 86400 (a day)",
            );
        }
        if s.wait_recheck_seconds > MAX_LEASE_SECONDS {
            return bad(
                "sync.wait_recheck_seconds",
                "must be at most 604800 (a week)",
            );
        }
        if s.interval_ms > MAX_WAIT_SECONDS * 1000 {
            return bad("sync.interval_ms", "must be at most 86400000 (a day)");
        }
        if !(1..=3600).contains(&s.heartbeat_seconds) {
            return bad("sync.heartbeat_seconds", "must be from 1 to 3600");
        }
        if s.holder_id.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return bad("sync.holder_id", "must not be empty");
        }
        if s.lease_seconds <= s.step_timeout_seconds {
            return bad(
                "sync.lease_seconds",
                "must be greater than sync.step_timeout_seconds",
            );
        }
        let b = &s.backoff;
        if !(b.base_seconds.is_finite() && b.base_seconds > 0.0) {
            return bad("sync.backoff.base_seconds", "must be a positive number");
        }
        if !(b.factor.is_finite() && b.factor >= 1.0) {
            return bad("sync.backoff.factor", "must be a number of at least 1");
        }
        if !(b.max_seconds.is_finite() && b.max_seconds >= b.base_seconds) {
            return bad(
                "sync.backoff.max_seconds",
                "must be at least sync.backoff.base_seconds",
            );
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return bad("sync.backoff.jitter", "must be between 0 and 1");
        }
        if self.pull.max_backoff_seconds == 0 {
            return bad("pull.max_backoff_seconds", "must be at least 1");
        }
        if self.policy.page_size == 0 {
            return bad("policy.page_size", "must be at least 1");
        }
        if let Err((key, problem)) = self.events.validate() {
            return bad(key, problem);
        }
        if let Err((key, problem)) = self.steps.validate() {
            return bad(key, problem);
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

fn yaml_file(path: &Path) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path).format(config::FileFormat::Yaml)
}

/// Masks the password of a `scheme://user:password@host/…` URL so it can be logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((creds, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}
