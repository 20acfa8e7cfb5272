//! `workspaces.*` and `archive.*` settings: where the services are, how long to wait for them,
//! how fast to call them, and which capability or workflow does each kind of work.

use serde::{Deserialize, Serialize, Serializer};

/// A credential from config or a `THALAMUS__…` variable; `Debug` and `Serialize` show `***`,
/// so settings can be logged or printed without leaking it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// What does one kind of work in Workspaces: `{capability: NAME}` or `{workflow: NAME}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Capability(String),
    Workflow(String),
}

impl Target {
    /// The capability's or workflow's name.
    pub fn name(&self) -> &str {
        match self {
            Target::Capability(name) | Target::Workflow(name) => name,
        }
    }
}

/// The Workspaces REST service (see "Domain contracts" in the design).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspacesSettings {
    /// Base URL; `/capability/…` and `/workflow/…` are appended.
    pub url: String,
    /// Bearer token sent in `Authorization`, if the service wants one.
    pub token: Option<Secret>,
    /// How soon a submitted or executing request is looked at again.
    pub poll_seconds: u64,
    /// Connect and whole-request timeout of each call.
    pub timeout_seconds: u64,
    /// Outbound calls per second from this process, so a backlog never floods Workspaces.
    pub requests_per_second: f64,
    /// The capability or workflow that ingests each instrument's data.
    pub ingestion: IngestionTargets,
    /// The capability or workflow that calibrates each instrument's data.
    pub calibration: CalibrationTargets,
}

/// Ingestion capability or workflow per instrument; a missing one makes such ingestions fail
/// permanently, naming the key to set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestionTargets {
    /// VLA SDMs with their BDFs.
    pub vla: Option<Target>,
    /// ALMA ASDMs.
    pub alma: Option<Target>,
    /// ALMA pipeline calibration products to (re)ingest.
    pub alma_calibration: Option<Target>,
    /// VLBA correlator output.
    pub vlba: Option<Target>,
}

/// Calibration capability or workflow per instrument (VLBA data is not calibrated).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrationTargets {
    /// Standard calibration of VLA SDMs.
    pub vla: Option<Target>,
    /// Standard calibration of ALMA ASDMs.
    pub alma: Option<Target>,
}

/// The archive's REST service, which is told about ASDMs that cannot be calibrated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSettings {
    /// Base URL; `/alma/asdm/{uid}/calibration-status` is appended.
    pub url: String,
    /// Bearer token sent in `Authorization`, if the archive wants one.
    pub token: Option<Secret>,
    /// Connect and whole-request timeout of each call.
    pub timeout_seconds: u64,
    /// Outbound calls per second from this process.
    pub requests_per_second: f64,
}

impl Default for WorkspacesSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081/workspaces".into(),
            token: None,
            poll_seconds: 60,
            timeout_seconds: 30,
            requests_per_second: 20.0,
            ingestion: IngestionTargets::default(),
            calibration: CalibrationTargets::default(),
        }
    }
}

fn capability(name: &str) -> Option<Target> {
    Some(Target::Capability(name.into()))
}

impl Default for IngestionTargets {
    fn default() -> Self {
        Self {
            vla: capability("ingest_vla"),
            alma: capability("ingest_alma"),
            alma_calibration: capability("ingest_alma_calibration"),
            vlba: capability("ingest_vlba"),
        }
    }
}

impl Default for CalibrationTargets {
    fn default() -> Self {
        Self {
            vla: capability("std_calibration"),
            alma: capability("std_calibration"),
        }
    }
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8082/archive".into(),
            token: None,
            timeout_seconds: 30,
            requests_per_second: 20.0,
        }
    }
}

type Invalid = (&'static str, &'static str);

fn check_url(key: &'static str, url: &str) -> Result<(), Invalid> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => Ok(()),
        _ => Err((key, "must be an http:// or https:// URL")),
    }
}

fn check_token(key: &'static str, token: &Option<Secret>) -> Result<(), Invalid> {
    match token {
        Some(t) if t.0.is_empty() || t.0.chars().any(|c| c.is_control()) => {
            Err((key, "must be non-empty text without control characters"))
        }
        _ => Ok(()),
    }
}

/// The slowest and fastest call rates a client accepts.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;

fn check_common(
    keys: [&'static str; 3],
    timeout_seconds: u64,
    requests_per_second: f64,
    token: &Option<Secret>,
) -> Result<(), Invalid> {
    if timeout_seconds == 0 {
        return Err((keys[0], "must be at least 1"));
    }
    // Below one call in 1000 s the limiter's interval stops being a usable duration.
    if !(MIN_RATE..=MAX_RATE).contains(&requests_per_second) {
        return Err((keys[1], "must be a number from 0.001 to 1000000"));
    }
    check_token(keys[2], token)
}

fn check_target(key: &'static str, target: &Option<Target>) -> Result<(), Invalid> {
    match target {
        Some(t) if t.name().trim().is_empty() || t.name().contains('/') => Err((
            key,
            "must name a capability or workflow (non-empty, without `/`)",
        )),
        _ => Ok(()),
    }
}

impl WorkspacesSettings {
    /// Checks what the clients cannot work without; the error names the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_url("workspaces.url", &self.url)?;
        if self.poll_seconds == 0 {
            return Err(("workspaces.poll_seconds", "must be at least 1"));
        }
        check_common(
            [
                "workspaces.timeout_seconds",
                "workspaces.requests_per_second",
                "workspaces.token",
            ],
            self.timeout_seconds,
            self.requests_per_second,
            &self.token,
        )?;
        let i = &self.ingestion;
        check_target("workspaces.ingestion.vla", &i.vla)?;
        check_target("workspaces.ingestion.alma", &i.alma)?;
        check_target("workspaces.ingestion.alma_calibration", &i.alma_calibration)?;
        check_target("workspaces.ingestion.vlba", &i.vlba)?;
        check_target("workspaces.calibration.vla", &self.calibration.vla)?;
        check_target("workspaces.calibration.alma", &self.calibration.alma)
    }
}

impl ArchiveSettings {
    /// Checks what the archive client cannot work without; the error names the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_url("archive.url", &self.url)?;
        check_common(
            [
                "archive.timeout_seconds",
                "archive.requests_per_second",
                "archive.token",
            ],
            self.timeout_seconds,
            self.requests_per_second,
            &self.token,
        )
    }
}
