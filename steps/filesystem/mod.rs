//! Filesystem pull steps: VLA SDMs (with their BDFs) and VLBA correlator output, each a
//! directory of dataset directories, configured by `sources.vla` and `sources.vlba`.

mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::models::{Instrument, Product};
use crate::steps::prelude::*;
use source::{DirectorySource, ExtraFiles, Layout};

/// `sources.vla`: SDM directories under `path`, BDF files under `bdf_path`, referenced from
/// Main.xml. An SDM is taken once complete: every BDF it references has arrived and settled,
/// or `missing_bdf_wait_seconds` has passed without a change (or its marker file exists), and
/// then the missing ones are named.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VlaSettings {
    pub enabled: bool,
    pub path: PathBuf,
    /// Where the correlator backend writes BDFs; none means BDFs are not tracked.
    pub bdf_path: Option<PathBuf>,
    pub poll_seconds: u64,
    pub settle_seconds: u64,
    pub marker_file: Option<String>,
    /// How long an SDM whose Main.xml references BDFs that have not arrived waits for them
    /// (counted from its last change) before it is ingested without them, naming them. A
    /// marker file means "complete" at once, whatever is missing.
    pub missing_bdf_wait_seconds: u64,
}

/// `sources.vlba`: a directory whose immediate subdirectories are datasets (VLBA correlator
/// output).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectorySettings {
    pub enabled: bool,
    pub path: PathBuf,
    pub poll_seconds: u64,
    /// Files must keep size and mtime this long before a dataset is taken (NFS attribute
    /// caches hold stale attributes for up to a minute by default).
    pub settle_seconds: u64,
    /// A file whose presence in a dataset directory means "complete" without waiting.
    pub marker_file: Option<String>,
}

impl Default for VlaSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "data/vla/sdm".into(),
            bdf_path: Some("data/vla/bdf".into()),
            poll_seconds: 30,
            settle_seconds: 60,
            marker_file: None,
            missing_bdf_wait_seconds: 600,
        }
    }
}

impl Default for DirectorySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "data/vlba".into(),
            poll_seconds: 30,
            settle_seconds: 60,
            marker_file: None,
        }
    }
}

impl VlaSettings {
    /// Checks what the VLA source cannot run without; the error names the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.enabled && self.poll_seconds == 0 {
            return Err(("sources.vla.poll_seconds", "must be at least 1"));
        }
        Ok(())
    }
}

impl DirectorySettings {
    /// Checks what the source cannot run without; `poll_key` is where its interval is set.
    pub fn validate(&self, poll_key: &'static str) -> Result<(), Invalid> {
        if self.enabled && self.poll_seconds == 0 {
            return Err((poll_key, "must be at least 1"));
        }
        Ok(())
    }
}

/// The BDF files an SDM references in its Main.xml (`uid:///evla/bdf/N` is stored as
/// `uid____evla_bdf_N` under the BDF directory).
pub fn referenced_bdfs(sdm: &DatasetScan, bdf_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    // No Main.xml yet: the SDM is still being written; its tables are all we know.
    let Some(main) = sdm.read("Main.xml")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut rest = main.as_str();
    while let Some(at) = rest.find("uid://") {
        let uid: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '_' | '.' | '-'))
            .collect();
        rest = &rest[at + uid.len().max(1)..];
        if uid.contains("/bdf/") {
            out.push(bdf_dir.join(uid.replace([':', '/'], "_")));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Registers the VLA and VLBA directory sources that are enabled.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    let vla = &settings.sources.vla;
    if vla.enabled {
        let bdf_dir = vla.bdf_path.clone();
        let extra: Arc<ExtraFiles> = Arc::new(move |scan: &DatasetScan| match &bdf_dir {
            Some(dir) => referenced_bdfs(scan, dir),
            None => Ok(Vec::new()),
        });
        let mut watch = vec![vla.path.clone()];
        watch.extend(vla.bdf_path.clone());
        let layout = Layout {
            root: vla.path.clone(),
            watch,
            marker: vla.marker_file.clone(),
            poll_seconds: vla.poll_seconds,
            settle_seconds: vla.settle_seconds,
            missing_wait_seconds: vla.missing_bdf_wait_seconds,
        };
        registry.pull(DirectorySource::new(
            "vla",
            Instrument::VLA,
            Product::Sdm,
            layout,
            extra,
        ));
    }
    let vlba = &settings.sources.vlba;
    if vlba.enabled {
        let layout = Layout {
            root: vlba.path.clone(),
            watch: vec![vlba.path.clone()],
            marker: vlba.marker_file.clone(),
            poll_seconds: vlba.poll_seconds,
            settle_seconds: vlba.settle_seconds,
            missing_wait_seconds: 0,
        };
        let no_extra: Arc<ExtraFiles> = Arc::new(|_: &DatasetScan| Ok(Vec::new()));
        registry.pull(DirectorySource::new(
            "vlba",
            Instrument::VLBA,
            Product::CorrelatorOutput,
            layout,
            no_extra,
        ));
    }
    Ok(())
}
