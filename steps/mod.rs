//! Domain steps: the sync steps, pull steps, policies and event steps thalamus runs, sorted by
//! domain. Each file here is one module with a `register` function listed in [`MODULES`], and
//! declares the settings it reads; `steps/README.md` is the contract for step authors.

pub mod alma;
pub mod announcements;
pub mod archive;
pub mod events;
pub mod filesystem;
pub mod models;
pub mod policies;
pub mod workspaces;

use prelude::*;

/// Everything a step module needs: `use crate::steps::prelude::*;`.
pub mod prelude {
    pub use super::{Invalid, Settings};
    pub use crate::outbox::Announcement;
    pub use crate::sources::{scan_root, DatasetScan, Hint, SettleChanges, Settler};
    pub use crate::step::{
        handle_each, Announcer, Event, EventError, EventOutcome, EventStep, Link, Model,
        ModelPolicy, Models, Obj, Progress, PullReport, PullStep, Registry, StepContext, StepError,
        StepResult, SyncStep, Transport, Undecodable,
    };
    pub use crate::store::Change;
    pub use crate::workspaces::{
        ArchiveClient, CallError, Endpoint, EndpointKeys, RequestState, Secret, Service,
        WorkspacesClient, WorkspacesRequest,
    };
    pub use anyhow::{anyhow, bail, Context as _};
    pub use async_trait::async_trait;
    pub use serde::{Deserialize, Serialize};
    pub use std::time::Duration;
    pub use tracing::{info, warn};
}

/// A module in `steps/`: its file name and the function that registers its steps.
pub type Module = (
    &'static str,
    fn(&mut Registry, &Settings) -> anyhow::Result<()>,
);

/// Every step module in this folder. A test fails if a file in `steps/` is missing here.
pub const MODULES: &[Module] = &[
    ("models", models::register),
    ("filesystem", filesystem::register),
    ("alma", alma::register),
    ("policies", policies::register),
    ("workspaces", workspaces::register),
    ("archive", archive::register),
    ("events", events::register),
    ("announcements", announcements::register),
];

/// Registers every module's steps, each configured from its own section of `settings`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    for (name, register) in MODULES {
        register(registry, settings).with_context(|| format!("registering steps/{name}"))?;
    }
    Ok(())
}

/// The sections the step modules declare, as they sit at the top level of `config.yaml`
/// (`config::Settings` reads them there). A module that needs settings adds its section here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `sources.*`: where observations come from.
    pub sources: SourcesSettings,
    /// `workspaces.*`: the Workspaces service and what it is asked to do.
    pub workspaces: workspaces::WorkspacesSettings,
    /// `archive.*`: the archive's REST service.
    pub archive: archive::ArchiveSettings,
}

/// A setting that is not valid: its key, and what is wrong with its value.
pub type Invalid = (&'static str, &'static str);

/// `sources.*`: one section per source, each read by the module that polls it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesSettings {
    /// `sources.vla`: SDM directories and their BDFs (`filesystem/`).
    pub vla: filesystem::VlaSettings,
    /// `sources.vlba`: correlator output directories (`filesystem/`).
    pub vlba: filesystem::DirectorySettings,
    /// `sources.alma`: the ALMA metadata database (`alma.rs`).
    pub alma: alma::AlmaSettings,
}

impl Settings {
    /// Checks every section; the error names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.sources.vla.validate()?;
        self.sources.vlba.validate("sources.vlba.poll_seconds")?;
        self.sources.alma.validate()?;
        self.workspaces.validate()?;
        self.archive.validate()
    }

    /// Makes the sections' relative paths relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let vla = &mut self.sources.vla;
        vla.path = base.join(&vla.path);
        if let Some(bdf) = &mut vla.bdf_path {
            *bdf = base.join(&*bdf);
        }
        self.sources.vlba.path = base.join(&self.sources.vlba.path);
    }

    /// The directories the sources poll, by key, for `thalamus check` to look at.
    pub fn source_paths(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut paths = Vec::new();
        let vla = &self.sources.vla;
        if vla.enabled {
            paths.push(("sources.vla.path", vla.path.as_path()));
            if let Some(bdf) = &vla.bdf_path {
                paths.push(("sources.vla.bdf_path", bdf.as_path()));
            }
        }
        if self.sources.vlba.enabled {
            paths.push(("sources.vlba.path", self.sources.vlba.path.as_path()));
        }
        paths
    }
}

/// A REST call's failure ends a step as what it is: a timeout, connection error or 5xx is
/// transient (retried with backoff), any other refusal permanent (until the spec changes).
impl From<CallError> for StepError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Transient(e) => StepError::Transient(e),
            CallError::Rejected { message, .. } => StepError::Permanent(message),
        }
    }
}
