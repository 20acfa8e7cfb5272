//! The step contract: the traits developers implement in `steps/` and the [`prelude`] they
//! import. Sync steps converge the world to a model's spec; pull steps upsert desired state
//! from sources; policies derive models from models; event steps absorb feedback.

mod context;
mod model;
mod registry;
mod traits;

pub use context::{Models, StepContext, Undecodable};
pub use model::{Link, Model, Obj};
pub use registry::{Registry, StepModule, SyncKind};
pub use traits::{
    handle_each, Event, EventError, EventOutcome, EventStep, ModelPolicy, Progress, PullReport,
    PullStep, StepError, StepResult, SyncStep, Transport,
};

pub(crate) use registry::Op;

/// Which policy hook runs (`PolicyHook`), under the name the engine's policy loop still uses;
/// the alias goes once the engine says `PolicyHook`.
pub(crate) use registry::PolicyHook as PolicyEvent;

/// Everything a step module needs: `use crate::step::prelude::*;`.
pub mod prelude {
    pub use super::{
        handle_each, Event, EventError, EventOutcome, EventStep, Link, Model, ModelPolicy, Models,
        Obj, Progress, PullReport, PullStep, Registry, StepContext, StepError, StepResult,
        SyncStep, Transport, Undecodable,
    };
    pub use crate::config::Settings;
    pub use crate::sources::{scan_root, AlmaSettings, DatasetScan, Hint, SettleChanges, Settler};
    pub use crate::store::Change;
    pub use crate::workspaces::{
        configured, ArchiveClient, CalibrationTargets, IngestionTargets, RequestState,
        RequestStatus, Target, WorkspacesClient,
    };
    pub use anyhow::{anyhow, bail, Context as _};
    pub use async_trait::async_trait;
    pub use serde::{Deserialize, Serialize};
    pub use std::time::Duration;
}
