//! Rules as data: Event → Condition → Response, read from `rules/*.yaml`, checked before they
//! run (`thalamus check`), and recorded in the audit trail whenever they fire.
//!
//! - [`file`]: the YAML format, read with lines so refusals name file, rule and line.
//! - [`condition`]: CEL expressions, compiled once.
//! - [`check`]: compiling a rules set against the registered kinds, refusing what is wrong.
//! - [`fire`]: matching an event, evaluating conditions and building effects (pure: what
//!   `thalamus rules test` prints), and applying them through the store and the outbox.
//! - [`step`]: the event step and policy the engine runs them as, and reloading.

pub mod check;
pub mod condition;
pub mod file;
pub mod fire;
pub mod step;
pub mod yaml;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use check::{Kinds, RuleSet};
pub use file::{RuleError, RuleErrors};
pub use fire::{Effect, Verdict};
pub use step::{register, Rules};

/// `rules.*`: where the rules files are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesSettings {
    /// Files, or directories whose `*.yaml` files are read (in name order). A path that does
    /// not exist is an error, as a missing `model-deps.json` is: the shipped rules (the
    /// Calibration of an ingested SDM among them) must never go missing silently.
    pub paths: Vec<PathBuf>,
}

impl Default for RulesSettings {
    fn default() -> Self {
        Self {
            paths: vec![PathBuf::from("rules")],
        }
    }
}

impl RulesSettings {
    /// The rules files these settings name, in order.
    pub fn files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for path in &self.paths {
            if path.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect();
                found.sort();
                files.extend(found);
            } else if path.exists() {
                files.push(path.clone());
            } else {
                anyhow::bail!(
                    "rules path {} does not exist (rules.paths; the shipped rules are the \
                     repository's rules/ directory, installed beside config.yaml)",
                    path.display()
                );
            }
        }
        Ok(files)
    }
}
