//! Every module in `steps/` must be listed in `steps::MODULES`, or its steps would silently
//! never run.

use std::collections::BTreeSet;

#[test]
fn every_file_in_steps_is_registered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("steps");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs") || p.is_dir())
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|name| name != "mod")
        .collect();
    let registered: BTreeSet<String> = thalamus::steps::MODULES
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    let missing: Vec<_> = files.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "steps/ modules not listed in steps::MODULES: {missing:?}"
    );
    let stale: Vec<_> = registered.difference(&files).collect();
    assert!(
        stale.is_empty(),
        "steps::MODULES lists modules with no file in steps/: {stale:?}"
    );
}

#[test]
fn registering_the_shipped_steps_succeeds_with_default_settings() {
    let registry = thalamus::app::registry(&thalamus::config::Settings::default()).unwrap();
    let settings = thalamus::config::Settings::default();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&settings.model_deps);
    thalamus::graph::DepGraph::load(&path, &registry.sync_kinds()).unwrap();
}
