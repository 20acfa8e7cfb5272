//! `thalamus sources`: the datasets the filesystem sources have seen but not yet taken as
//! Observations, with how long until each settles, and the BDFs a VLA dataset's `Main.xml`
//! names that have not arrived.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::output::{clip, out, outln, print_json, Format, Table};
use crate::clock::{format_ms, Clock, SystemClock};
use crate::config::Settings;
use crate::sources::DatasetScan;
use crate::store::{ListFilter, Open};

/// One dataset seen and not yet settled.
#[derive(Debug, Serialize)]
struct Unsettled {
    source: &'static str,
    dataset: String,
    /// The Observation it will become.
    key: String,
    #[serde(serialize_with = "crate::clock::rfc3339::ms")]
    unchanged_since: i64,
    #[serde(serialize_with = "crate::clock::rfc3339::ms")]
    settles_at: i64,
    /// Seconds until its window ends; 0 once it has (taken at the source's next poll).
    settles_in_seconds: i64,
    /// BDFs its `Main.xml` references that are not in `sources.vla.bdf_path`.
    missing_bdfs: Vec<String>,
}

/// A filesystem source as `sources` needs it.
struct Source<'a> {
    name: &'static str,
    instrument: &'static str,
    root: &'a Path,
    settle_seconds: u64,
    marker: Option<&'a str>,
    bdf_path: Option<&'a Path>,
}

/// `thalamus sources [-o json]`.
pub async fn sources(settings: &Settings, format: Format) -> anyhow::Result<()> {
    let store = crate::app::store(settings, Open::Existing).await?;
    store.ensure_migrated().await?;
    let now = SystemClock.now_ms();
    let (vla, vlba) = (&settings.sources.vla, &settings.sources.vlba);
    let mut sources = Vec::new();
    if vla.enabled {
        sources.push(Source {
            name: "vla",
            instrument: "VLA",
            root: &vla.path,
            settle_seconds: vla.settle_seconds,
            marker: vla.marker_file.as_deref(),
            bdf_path: vla.bdf_path.as_deref(),
        });
    }
    if vlba.enabled {
        sources.push(Source {
            name: "vlba",
            instrument: "VLBA",
            root: &vlba.path,
            settle_seconds: vlba.settle_seconds,
            marker: vlba.marker_file.as_deref(),
            bdf_path: None,
        });
    }
    let observed: HashSet<String> = store
        .list(&ListFilter {
            kind: "Observation".into(),
            keys: Vec::new(),
            state: None,
            limit: i64::MAX,
        })
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut unsettled = Vec::new();
    for source in &sources {
        for record in store.settle_state(source.name).await? {
            let dir = source.root.join(&record.name);
            let marked = source.marker.is_some_and(|m| dir.join(m).exists());
            let settles_at = record.since_ms + (source.settle_seconds as i64) * 1000;
            let key = format!("{}/{}", source.instrument, record.name);
            // Settled: its window has passed (or its marker is there) and it is an
            // Observation. A dataset that changed after it was taken settles again.
            if (marked || settles_at <= now) && observed.contains(&key) {
                continue;
            }
            unsettled.push(Unsettled {
                source: source.name,
                missing_bdfs: source
                    .bdf_path
                    .map(|bdfs| missing_bdfs(&record.name, &dir, bdfs))
                    .unwrap_or_default(),
                dataset: record.name,
                key,
                unchanged_since: record.since_ms,
                settles_at,
                settles_in_seconds: ((settles_at - now).max(0) + 999) / 1000,
            });
        }
    }
    store.close().await;
    if format == Format::Json {
        return print_json(&unsettled);
    }
    if unsettled.is_empty() {
        outln!("no datasets waiting to settle");
        return Ok(());
    }
    let mut table = Table::new(vec![
        "SOURCE",
        "DATASET",
        "UNCHANGED SINCE",
        "SETTLES",
        "MISSING BDFS",
    ]);
    for u in &unsettled {
        let settles = if u.settles_in_seconds > 0 {
            format!("in {}s ({})", u.settles_in_seconds, format_ms(u.settles_at))
        } else {
            "at the next poll".into()
        };
        let missing = if u.missing_bdfs.is_empty() {
            "-".to_string()
        } else {
            clip(&u.missing_bdfs.join(", "), 100)
        };
        table.row(vec![
            u.source.into(),
            u.dataset.clone(),
            format_ms(u.unchanged_since),
            settles,
            missing,
        ]);
    }
    out!("{}", table.render());
    Ok(())
}

/// The BDFs `Main.xml` in `dir` references that are not in `bdfs` (none if it cannot be read).
fn missing_bdfs(name: &str, dir: &Path, bdfs: &Path) -> Vec<String> {
    let scan = DatasetScan {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        files: Vec::new(),
        marked: false,
        missing: Vec::new(),
        not_utf8: None,
    };
    crate::steps::filesystem::referenced_bdfs(&scan, bdfs)
        .unwrap_or_default()
        .into_iter()
        .filter(|bdf: &PathBuf| !bdf.exists())
        .filter_map(|bdf| bdf.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}
