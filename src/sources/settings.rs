//! `sources.*` settings: where each source is and how long its files must be still.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every source; each can be switched off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesSettings {
    pub vla: VlaSettings,
    pub vlba: DirectorySettings,
    pub alma: AlmaSettings,
}

/// A directory whose immediate subdirectories are datasets (VLBA correlator output).
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

/// VLA: SDM directories under `path`, BDF files under `bdf_path`, referenced from Main.xml.
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
}

/// ALMA: rows from the archive's metadata database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlmaSettings {
    pub enabled: bool,
    /// `postgres://…` of the metadata database (secret: never printed).
    pub database_url: Option<String>,
    pub poll_seconds: u64,
    /// Returns text columns `uid` and `requested_at` (nullable): ASDMs to (re)ingest.
    pub asdm_query: Option<String>,
    /// Returns text columns `uid` and `requested_at`: calibrations to (re)ingest.
    pub calibration_query: Option<String>,
    /// Returns text columns `uid` and `reason`: ASDMs known not to be calibratable.
    pub not_calibratable_query: Option<String>,
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

impl Default for VlaSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "data/vla/sdm".into(),
            bdf_path: Some("data/vla/bdf".into()),
            poll_seconds: 30,
            settle_seconds: 60,
            marker_file: None,
        }
    }
}

impl Default for AlmaSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            database_url: None,
            poll_seconds: 300,
            asdm_query: None,
            calibration_query: None,
            not_calibratable_query: None,
        }
    }
}

impl SourcesSettings {
    /// Checks the values a source cannot run without; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.vla.enabled && self.vla.poll_seconds == 0 {
            return Err(("sources.vla.poll_seconds", "must be at least 1"));
        }
        if self.vlba.enabled && self.vlba.poll_seconds == 0 {
            return Err(("sources.vlba.poll_seconds", "must be at least 1"));
        }
        let a = &self.alma;
        if a.enabled {
            if a.poll_seconds == 0 {
                return Err(("sources.alma.poll_seconds", "must be at least 1"));
            }
            if !a
                .database_url
                .as_deref()
                .is_some_and(|u| u.starts_with("postgres"))
            {
                return Err((
                    "sources.alma.database_url",
                    "must be a postgres:// URL when sources.alma.enabled",
                ));
            }
            if a.asdm_query.is_none() && a.calibration_query.is_none() {
                return Err((
                    "sources.alma.asdm_query",
                    "or sources.alma.calibration_query must be set when sources.alma.enabled",
                ));
            }
        }
        Ok(())
    }
}
