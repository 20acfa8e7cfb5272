//! `model-deps.json` loading: the XOS format, the links the models declare, and errors that
//! name the culprit.

use thalamus::graph::{DepGraph, GraphError};
use thalamus::step::SyncKind;
use thalamus::steps::models::{Calibration, Ingestion, Observation};

const KINDS: &[SyncKind] = &[
    SyncKind::named("Calibration"),
    SyncKind::named("Ingestion"),
    SyncKind::named("Observation"),
];

/// The shipped models, with the links they declare.
const MODELS: &[SyncKind] = &[
    SyncKind::of::<Calibration>(),
    SyncKind::of::<Ingestion>(),
    SyncKind::of::<Observation>(),
];

/// `deps` checked against the shipped models' links, as [`DepGraph::load`] does.
fn load(deps: &str) -> Result<DepGraph, GraphError> {
    let graph = DepGraph::parse("model-deps.json", deps, MODELS)?;
    graph.check_links("model-deps.json", MODELS)?;
    Ok(graph)
}

#[test]
fn the_file_must_declare_the_links_the_models_declare() {
    let agreed = r#"{ "Observation": [],
                      "Ingestion":   [["Observation", "observation", "ingestions"]],
                      "Calibration": [["Ingestion",   "ingestion",   "calibrations"]] }"#;
    load(agreed).unwrap();
    // Another field than the model's.
    let err = load(
        r#"{ "Ingestion":   [["Observation", "obs", "ingestions"]],
             "Calibration": [["Ingestion",   "ingestion",   "calibrations"]] }"#,
    )
    .unwrap_err();
    assert!(matches!(err, GraphError::Links { .. }));
    assert_eq!(
        err.to_string(),
        "model-deps.json and the Ingestion model disagree on its links: \
         the file says [[\"Observation\", \"obs\", \"ingestions\"]], \
         the model (`LINKS` of its `impl Model` in steps/) says \
         [[\"Observation\", \"observation\", \"ingestions\"]]"
    );
    // A link the file leaves out, and one the model does not declare.
    let err = load(r#"{ "Ingestion": [["Observation", "observation", "ingestions"]] }"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the Calibration model disagree on its links: the file says [],"),
        "{err}"
    );
    let err = load(
        r#"{ "Ingestion":   [["Observation", "observation", "ingestions"]],
             "Calibration": [["Ingestion", "ingestion", "calibrations"],
                             ["Observation", "observation", "calibrations"]] }"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("the Calibration model disagree"), "{err}");
    assert!(
        err.contains("says [[\"Ingestion\", \"ingestion\", \"calibrations\"]]"),
        "{err}"
    );
}

#[test]
fn shipped_format_loads_in_dependency_order() {
    let deps = r#"{ "Ingestion":   [["Observation", "observation", "ingestions"]],
                    "Calibration": [["Ingestion",   "ingestion",   "calibrations"]] }"#;
    let g = DepGraph::parse("model-deps.json", deps, KINDS).unwrap();
    assert_eq!(g.sync_order(), ["Observation", "Ingestion", "Calibration"]);
    assert_eq!(
        g.link_fields()["Calibration"],
        [("ingestion".to_string(), "Ingestion".to_string())]
    );
    assert!(g
        .to_dot()
        .contains("\"Observation\" -> \"Ingestion\" [label=\"observation\"]"));
    assert!(g
        .to_text()
        .contains("Calibration [level 2] depends on Ingestion (via ingestion)"));
}

#[test]
fn a_cycle_names_its_kinds() {
    let deps = r#"{ "Ingestion": [["Calibration", "calibration", "x"]],
                    "Calibration": [["Ingestion", "ingestion", "y"]] }"#;
    let err = DepGraph::parse("model-deps.json", deps, KINDS).unwrap_err();
    assert!(matches!(err, GraphError::Cycle { .. }));
    assert_eq!(
        err.to_string(),
        "model-deps.json: dependency cycle Calibration → Ingestion → Calibration"
    );
}

#[test]
fn a_kind_without_a_sync_step_is_named() {
    let deps = r#"{ "Ingestion": [["Observaton", "observation", "ingestions"]] }"#;
    let err = DepGraph::parse("model-deps.json", deps, KINDS)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "model-deps.json: kind `Observaton` (a dependency of Ingestion) has no sync step registered in steps/ \
         (known kinds: Calibration, Ingestion, Observation)"
    );
    let err = DepGraph::parse("model-deps.json", r#"{"Imaging": []}"#, KINDS)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kind `Imaging` (a model in the file) has no sync step"),
        "{err}"
    );
}

#[test]
fn malformed_files_say_what_was_expected() {
    let err = DepGraph::parse(
        "model-deps.json",
        r#"{"Ingestion": [["Observation"]]}"#,
        KINDS,
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("model-deps.json is not valid:"), "{err}");
    assert!(
        err.contains("expected {\"Kind\": [[\"DependsOnKind\", \"src_field\", \"dst_field\"]"),
        "{err}"
    );
    let err = DepGraph::load(std::path::Path::new("/nonexistent/model-deps.json"), KINDS)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot read /nonexistent/model-deps.json"),
        "{err}"
    );
}

#[test]
fn loading_the_file_checks_the_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model-deps.json");
    let deps = r#"{ "Ingestion":   [["Observation", "obs", "ingestions"]],
                    "Calibration": [["Ingestion", "ingestion", "calibrations"]] }"#;
    std::fs::write(&path, deps).unwrap();
    let err = DepGraph::load(&path, MODELS).unwrap_err().to_string();
    assert!(
        err.contains("model-deps.json and the Ingestion model disagree on its links"),
        "{err}"
    );
    // Parsing alone checks the kinds only: tests and the bench build graphs of their own.
    DepGraph::parse("model-deps.json", deps, MODELS).unwrap();
}
