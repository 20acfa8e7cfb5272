//! The step contract: the traits developers implement in `steps/`, the models they work on
//! and the registry they register with. Sync steps converge the world to a model's spec; pull
//! steps upsert desired state from sources; policies derive models from models; event steps
//! absorb feedback. Steps import it through `crate::steps::prelude`.

mod announce;
mod context;
mod model;
mod registry;
mod traits;

pub use announce::Announcer;
pub(crate) use announce::Announcers;
pub use context::{Models, StepContext, Undecodable};
pub use model::{Link, Model, Obj};
pub(crate) use registry::DynPolicy;
pub use registry::{KindCheck, Registry, SyncKind};
pub use traits::{
    handle_each, Event, EventError, EventOutcome, EventStep, ModelPolicy, Progress, PullReport,
    PullStep, StepError, StepResult, SyncStep, Transport,
};

pub(crate) use registry::Op;

/// Which policy hook runs for a changed object (create, update or delete).
pub(crate) use registry::PolicyHook;
