//! The worked example in `steps/README.md` (a module with a model, its links, a settings
//! section, a policy and a sync step) compiles, reads its section, agrees with its
//! `model-deps.json` entry and runs. The module is compiled from
//! `tests/steps/manifests.rs`, which must be the README's text, so the two cannot drift.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Backend, TestDb, T0};
use thalamus::clock::ManualClock;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::step::Registry;
use thalamus::steps::models::{DataFile, Instrument, Observation, Product};

/// `crate::steps` as the example sees it from inside `steps/`: the prelude, the shipped models,
/// the example itself, and the aggregate with the example's section added.
mod steps {
    pub mod prelude {
        pub use super::Settings;
        pub use thalamus::steps::prelude::*;
    }
    pub use thalamus::steps::models;

    /// `tests/steps/manifests.rs`, where `steps/manifests.rs` would be.
    pub mod manifests;

    /// `steps::Settings` with the field the example adds to it.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct Settings {
        pub manifests: manifests::ManifestSettings,
    }
}

use steps::manifests::{self, Manifest};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced block that follows `<!-- worked example: NAME -->` in `steps/README.md`.
fn readme_block(name: &str) -> String {
    let readme = std::fs::read_to_string(root().join("steps/README.md")).unwrap();
    let marker = format!("<!-- worked example: {name} -->");
    let (_, after) = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("steps/README.md has no {marker}"));
    let (_fence, body) = after.trim_start().split_once('\n').unwrap();
    let (block, _) = body
        .split_once("\n```")
        .unwrap_or_else(|| panic!("the block after {marker} is not closed"));
    format!("{block}\n")
}

#[test]
fn the_readme_shows_the_code_this_test_compiles() {
    let compiled = std::fs::read_to_string(root().join("tests/steps/manifests.rs")).unwrap();
    assert_eq!(
        readme_block("steps/manifests.rs"),
        compiled,
        "steps/README.md and tests/steps/manifests.rs differ: change both"
    );
}

/// Settings read as `config.yaml` would give them (the steps' part of the file).
fn settings(yaml: &str) -> Result<steps::Settings, String> {
    config::Config::builder()
        .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| e.to_string())
}

#[test]
fn its_section_reads_from_config_yaml_and_refuses_unknown_keys() {
    let s = settings(&readme_block("config.yaml")).unwrap();
    assert_eq!(s.manifests.path, Path::new("data/manifests"));
    let err = settings("manifests:\n  pth: /tmp\n").unwrap_err();
    assert!(err.contains("unknown field `pth`"), "{err}");
    assert!(err.contains("manifests"), "{err}");
}

/// `deps` (a `model-deps.json`) with the README's entry for the example added.
fn with_example(deps: &str) -> String {
    let mut deps: serde_json::Value = serde_json::from_str(deps).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&readme_block("model-deps.json")).unwrap();
    for (kind, links) in entry.as_object().unwrap() {
        deps[kind] = links.clone();
    }
    deps.to_string()
}

#[test]
fn its_links_agree_with_its_model_deps_entry() {
    let mut registry = Registry::new();
    thalamus::steps::register(&mut registry, &Default::default()).unwrap();
    manifests::register(&mut registry, &steps::Settings::default()).unwrap();
    let shipped = std::fs::read_to_string(root().join("model-deps.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model-deps.json");
    std::fs::write(&path, with_example(&shipped)).unwrap();
    let graph = DepGraph::load(&path, &registry.sync_kinds()).unwrap();
    assert!(graph.sync_order().iter().any(|k| k == "Manifest"));
}

fn observation(files: &[&str]) -> Observation {
    Observation {
        instrument: Instrument::VLA,
        product: Product::Sdm,
        name: "24A-001.sb1.eb1".into(),
        location: "/data/24A-001.sb1.eb1".into(),
        files: files
            .iter()
            .map(|f| DataFile {
                path: f.to_string(),
                size: 1,
                mtime_ns: 0,
            })
            .collect(),
        requested_at: None,
        missing_files: vec![],
    }
}

/// The paths a manifest lists.
fn listed(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let files: Vec<DataFile> = serde_json::from_str(&text).unwrap();
    files.into_iter().map(|f| f.path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observation_gets_a_manifest_that_follows_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let out = tempfile::tempdir().unwrap();
    let mut s = steps::Settings::default();
    s.manifests.path = out.path().join("manifests");
    let mut registry = Registry::new();
    thalamus::steps::models::register(&mut registry, &Default::default()).unwrap();
    manifests::register(&mut registry, &s).unwrap();
    let deps = with_example(r#"{"Observation": []}"#);
    let graph = DepGraph::parse("model-deps.json", &deps, &registry.sync_kinds()).unwrap();
    let engine = Engine::new(
        db.store().await,
        registry,
        graph,
        common::settings(&db.url).engine(),
        Arc::new(ManualClock::at(T0)),
    );
    let obs = observation(&["ASDM.xml"]);
    let key = obs.key();
    let file: PathBuf = s.manifests.path.join("VLA_24A-001.sb1.eb1.json");

    engine.models().upsert(&key, &obs).await.unwrap();
    engine.run_once().await.unwrap();
    assert_eq!(listed(&file), ["ASDM.xml"]);

    engine
        .models()
        .upsert(&key, &observation(&["ASDM.xml", "Main.xml"]))
        .await
        .unwrap();
    engine.run_once().await.unwrap();
    assert_eq!(listed(&file), ["ASDM.xml", "Main.xml"]);
    let manifest = engine.models().get::<Manifest>(&key).await.unwrap();
    assert_eq!(
        manifest.unwrap().enacted,
        2,
        "the new generation rewrote it"
    );

    engine.models().delete::<Observation>(&key).await.unwrap();
    engine.run_once().await.unwrap();
    assert!(!file.exists(), "deleting the observation removed it");
}
