//! `model-deps.json` loading: the XOS format, and errors that name the culprit.

use thalamus::graph::{DepGraph, GraphError};

const KINDS: &[&str] = &["Calibration", "Ingestion", "Observation"];

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
