//! Domain steps: the sync steps, pull steps, policies and event steps thalamus runs.
//! Each file here is one module with a `register` function listed in [`MODULES`];
//! `steps/README.md` is the contract for step authors.

pub mod alma;
pub mod archive;
pub mod calibrate;
pub mod events;
pub mod filesystem;
pub mod ingest;
pub mod models;
pub mod policies;

use crate::step::prelude::*;
use crate::step::StepModule;

/// Every step module in this folder. A test fails if a file in `steps/` is missing here.
pub const MODULES: &[StepModule] = &[
    ("models", models::register),
    ("filesystem", filesystem::register),
    ("alma", alma::register),
    ("policies", policies::register),
    ("ingest", ingest::register),
    ("calibrate", calibrate::register),
    ("archive", archive::register),
    ("events", events::register),
];

/// Registers every module's steps, configured from `settings`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    for (name, register) in MODULES {
        register(registry, settings).with_context(|| format!("registering steps/{name}.rs"))?;
    }
    Ok(())
}
