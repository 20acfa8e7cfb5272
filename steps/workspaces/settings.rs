//! `workspaces.*`: where Workspaces is, how patiently and how fast to call it, and which
//! capability or workflow does each kind of work.

use crate::steps::prelude::*;

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

/// What does one kind of work in Workspaces: `{capability: NAME}` or `{workflow: NAME}`, and
/// what a newer generation of an object does while a request of an older one is in flight
/// (`on_new_generation`, `wait` by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TargetFields", into = "TargetFields")]
pub struct Target {
    service: Service,
    name: String,
    /// Whether a newer generation (or a deletion) waits for the request in flight or cancels it.
    pub on_new_generation: OnNewGeneration,
}

/// What a newer generation of an object (or its deletion) does while Workspaces still runs a
/// request made for an older one. Either way only one request per object is ever in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNewGeneration {
    /// Let the request in flight finish, then request the newest generation (or delete).
    #[default]
    Wait,
    /// Cancel the request in flight (retried with backoff until Workspaces takes it), then
    /// request the newest generation (or delete) once it has ended.
    Cancel,
}

impl OnNewGeneration {
    /// The setting as written in `config.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnNewGeneration::Wait => "wait",
            OnNewGeneration::Cancel => "cancel",
        }
    }
}

/// A [`Target`] as `config.yaml` writes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workflow: Option<String>,
    #[serde(default)]
    on_new_generation: OnNewGeneration,
}

impl TryFrom<TargetFields> for Target {
    type Error = String;

    fn try_from(fields: TargetFields) -> Result<Self, String> {
        let (service, name) = match (fields.capability, fields.workflow) {
            (Some(name), None) => (Service::Capability, name),
            (None, Some(name)) => (Service::Workflow, name),
            _ => return Err("give one of `capability` or `workflow` (with its name)".into()),
        };
        Ok(Self {
            service,
            name,
            on_new_generation: fields.on_new_generation,
        })
    }
}

impl From<Target> for TargetFields {
    fn from(target: Target) -> Self {
        let (capability, workflow) = match target.service {
            Service::Capability => (Some(target.name), None),
            Service::Workflow => (None, Some(target.name)),
        };
        Self {
            capability,
            workflow,
            on_new_generation: target.on_new_generation,
        }
    }
}

impl Target {
    /// The capability `name`, waiting for a request in flight.
    pub fn capability(name: &str) -> Self {
        Self {
            service: Service::Capability,
            name: name.into(),
            on_new_generation: OnNewGeneration::Wait,
        }
    }

    /// The workflow `name`, waiting for a request in flight.
    pub fn workflow(name: &str) -> Self {
        Self {
            service: Service::Workflow,
            name: name.into(),
            on_new_generation: OnNewGeneration::Wait,
        }
    }

    /// The same target, doing `on_new_generation` to a request in flight.
    pub fn with_on_new_generation(mut self, on_new_generation: OnNewGeneration) -> Self {
        self.on_new_generation = on_new_generation;
        self
    }

    /// The capability's or workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which of the two services runs it.
    pub fn service(&self) -> Service {
        self.service
    }
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

/// The capability or workflow configured at `key`, or a permanent error telling the operator
/// to set it (`work` says what it would do, e.g. "ingests VLBA data").
pub fn configured<'a>(
    target: &'a Option<Target>,
    key: &str,
    work: &str,
) -> Result<&'a Target, StepError> {
    target.as_ref().ok_or_else(|| {
        StepError::permanent(format!(
            "no Workspaces capability or workflow {work}; set `{key}`"
        ))
    })
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
    Some(Target::capability(name))
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
    /// What the client needs of these settings.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.url.clone(),
            token: self.token.clone(),
            timeout_seconds: self.timeout_seconds,
            requests_per_second: self.requests_per_second,
        }
    }

    /// Checks what the steps cannot work without; the error names the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.poll_seconds == 0 {
            return Err(("workspaces.poll_seconds", "must be at least 1"));
        }
        self.endpoint().validate(&EndpointKeys {
            url: "workspaces.url",
            token: "workspaces.token",
            timeout_seconds: "workspaces.timeout_seconds",
            requests_per_second: "workspaces.requests_per_second",
        })?;
        let i = &self.ingestion;
        check_target("workspaces.ingestion.vla", &i.vla)?;
        check_target("workspaces.ingestion.alma", &i.alma)?;
        check_target("workspaces.ingestion.alma_calibration", &i.alma_calibration)?;
        check_target("workspaces.ingestion.vlba", &i.vlba)?;
        check_target("workspaces.calibration.vla", &self.calibration.vla)?;
        check_target("workspaces.calibration.alma", &self.calibration.alma)
    }
}
