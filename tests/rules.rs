//! Rules as data (issue 19): the checks refuse what is wrong naming file, rule and line; every
//! StackStorm criteria operator has its CEL form; the shipped rules and an operator's rule work
//! end to end against real RabbitMQ; a reload keeps the running rules when a file is bad; and
//! `thalamus check` / `rules list` / `rules test` say so from the command line.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::brokers::*;
use common::status_world::{FakeCalibrate, FakeIngest};
use common::{Backend, TestDb, T0};
use thalamus::clock::ManualClock;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::rules::condition::{Expr, Vars};
use thalamus::rules::{Kinds, RuleSet, Rules, RulesSettings};
use thalamus::steps::archive::CalibrationMark;
use thalamus::steps::models::Calibration;
use thalamus::steps::prelude::*;

/// The kinds the shipped steps name.
fn kinds() -> Kinds {
    let mut registry = Registry::new();
    thalamus::steps::register(&mut registry, &Default::default()).unwrap();
    registry.kinds()
}

/// What the checks say of one rules file `ops.yaml`.
fn refusal(text: &str) -> String {
    match RuleSet::compile(&[(Path::new("ops.yaml"), text)], &kinds()) {
        Ok(set) => panic!("accepted {} rule(s):\n{text}", set.rules.len()),
        Err(e) => e.to_string(),
    }
}

/// The operator's rule of the issue: a capability-status Failed for std_calibration whose
/// message says "no calibrator" marks the ASDM not calibratable.
const NO_CALIBRATOR: &str = r#"rules:
  - name: no-calibrator
    event:
      message:
        topic: workspaces.capability-status
        type: capability-status
        find:
          kind: Calibration
          request_id: message.capability_request_id
    condition: >-
      message.state == 'Failed' && message.capability == 'std_calibration'
      && message.message.contains('no calibrator')
    responses:
      - upsert:
          kind: CalibrationMark
          key: "'ALMA/' + found.spec.name"
          spec:
            uid: found.spec.name
            reason: message.message
            by: "'rule:no-calibrator'"
"#;

#[test]
fn the_shipped_rules_and_the_operators_rule_pass_the_checks() {
    let files: Vec<PathBuf> = RulesSettings::default().files().unwrap();
    let set = RuleSet::load(&files, &kinds()).unwrap();
    let names: Vec<&str> = set.rules.iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        [
            "new-file",
            "capability-status-of-workflow",
            "calibrate-ingested"
        ]
    );
    RuleSet::compile(&[(Path::new("ops.yaml"), NO_CALIBRATOR)], &kinds()).unwrap();
}

#[test]
fn check_refuses_an_unknown_field_naming_file_rule_and_line() {
    let e = refusal(
        "rules:\n  - name: typo\n    event: {message: {topic: t}}\n    condtion: 'true'\n    responses: [{retry: {kind: Ingestion, key: \"'k'\"}}]\n",
    );
    assert!(
        e.contains("ops.yaml:4: rule typo: unknown field \"condtion\""),
        "{e}"
    );
}

#[test]
fn check_refuses_a_transition_to_an_unknown_state_or_to_the_state_it_left() {
    let rule = |transition: &str| {
        format!(
            "rules:\n  - name: t\n    event:\n      model:\n        kind: Ingestion\n{transition}\n    responses:\n      - retry: {{kind: Ingestion, key: model.key}}\n"
        )
    };
    let why = refusal(&rule("        to: done"));
    assert!(why.contains(":6: rule t: to takes ok, pending"), "{why}");
    let why = refusal(&rule("        from: ok\n        to: ok"));
    assert!(why.contains(":7: rule t: from and to are both ok"), "{why}");
    let ok = rule("        from: [pending, backoff]\n        to: error");
    let set = RuleSet::compile(&[(Path::new("t.yaml"), ok.as_str())], &kinds());
    assert!(set.is_ok(), "{:?}", set.err());
}

#[test]
fn check_refuses_a_type_error_in_a_condition() {
    let e = refusal(
        "rules:\n  - name: typed\n    event: {message: {topic: t, type: capability-status}}\n    condition: message.state > 3\n    responses: [{retry: {kind: Ingestion, key: \"'k'\"}}]\n",
    );
    assert!(e.contains("ops.yaml:4: rule typed: condition"), "{e}");
    assert!(e.contains("type error"), "{e}");
}

#[test]
fn check_refuses_a_condition_that_is_not_a_bool_or_names_an_unknown_variable() {
    let e = refusal(
        "rules:\n  - name: text\n    event: {message: {topic: t, type: capability-status}}\n    condition: message.state\n    responses: [{retry: {kind: Ingestion, key: \"'k'\"}}]\n",
    );
    assert!(
        e.contains("ops.yaml:4: rule text: condition") && e.contains("not a bool"),
        "{e}"
    );
    let e = refusal(
        "rules:\n  - name: typo\n    event: {message: {topic: t}}\n    condition: mesage.state == 'Failed'\n    responses: [{retry: {kind: Ingestion, key: \"'k'\"}}]\n",
    );
    assert!(
        e.contains("ops.yaml:4: rule typo:") && e.contains("unknown variable \"mesage\""),
        "{e}"
    );
}

#[test]
fn check_refuses_an_unknown_function_and_accepts_the_standard_ones() {
    let e = refusal(
        "rules:\n  - name: fn\n    event: {message: {topic: t}}\n    condition: message.message.contians('x')\n    responses: [{retry: {kind: Ingestion, key: \"'k'\"}}]\n",
    );
    assert!(
        e.contains("ops.yaml:4: rule fn:") && e.contains("unknown function \"contians\""),
        "{e}"
    );
    let fine = "size(message.files) > 0 && message.files.all(f, f.size > 0) \
        && message.files.exists(f, f.path.endsWith('.xml')) && int('3') == 3 \
        && string(message.n) == '1' && message.files.map(f, f.size).size() == 1 \
        && message.files.filter(f, f.size > 0).size() == 1 && !(message.n in [2, 3])";
    let expr = Expr::compile(fine).unwrap();
    let mut vars = Vars::default();
    vars.set(
        "message",
        serde_json::json!({"n": 1, "files": [{"path": "Main.xml", "size": 3}]}),
    );
    assert_eq!(expr.test(&vars), Ok(true));
}

#[test]
fn check_refuses_a_bad_regex() {
    let e = refusal(
        "rules:\n  - name: re\n    event: {message: {topic: t}}\n    condition: message.message.matches('(no calibrator')\n    responses: [{retry: {kind: Ingestion, key: \"'k'\"}}]\n",
    );
    assert!(
        e.contains("ops.yaml:4: rule re:") && e.contains("bad regex"),
        "{e}"
    );
}

#[test]
fn check_refuses_a_kind_that_does_not_exist_and_a_spec_that_is_not_one() {
    let e = refusal(
        "rules:\n  - name: kind\n    event: {message: {topic: t}}\n    responses:\n      - upsert:\n          kind: Calibrashun\n          key: \"'k'\"\n",
    );
    assert!(
        e.contains("ops.yaml:6: rule kind: no kind \"Calibrashun\""),
        "{e}"
    );
    let e = refusal(
        "rules:\n  - name: spec\n    event: {message: {topic: t}}\n    responses:\n      - upsert:\n          kind: CalibrationMark\n          key: \"'k'\"\n          spec: {reason: \"'no uid'\"}\n",
    );
    assert!(
        e.contains("ops.yaml:5: rule spec: upsert.spec is not a CalibrationMark"),
        "{e}"
    );
}

#[test]
fn check_refuses_two_rules_whose_responses_contradict() {
    let e = refusal(
        r#"rules:
  - name: mark
    event: {message: {topic: t, type: capability-status}}
    responses:
      - upsert: {kind: CalibrationMark, key: "'k'", spec: {uid: "'k'", reason: "'a'"}}
  - name: unmark
    event: {message: {topic: t}}
    responses:
      - delete: {kind: CalibrationMark, key: "'k'"}
"#,
    );
    assert!(
        e.contains(
            "ops.yaml:9: rule unmark: contradicts rule mark (ops.yaml:2) for CalibrationMark 'k'"
        ),
        "{e}"
    );
    let e = refusal(
        r#"rules:
  - name: one
    event: {message: {topic: t}}
    responses:
      - set_status: {kind: Ingestion, key: "'k'", status: {calibration_skipped: "'a'"}}
  - name: two
    event: {message: {topic: t}}
    responses:
      - set_status: {kind: Ingestion, key: "'k'", status: {calibration_skipped: "'b'"}}
"#,
    );
    assert!(
        e.contains("rule two: contradicts rule one")
            && e.contains("both set status.calibration_skipped"),
        "{e}"
    );
}

#[test]
fn check_refuses_an_unknown_response_and_an_event_of_two_kinds() {
    let e = refusal(
        "rules:\n  - name: verb\n    event: {message: {topic: t}}\n    responses:\n      - launch: {kind: Ingestion}\n",
    );
    assert!(
        e.contains("ops.yaml:5: rule verb: unknown field \"launch\""),
        "{e}"
    );
}

/// The README's example for each StackStorm criteria operator, over one message.
#[test]
fn every_stackstorm_operator_has_a_cel_form() {
    let mut vars = Vars::default();
    vars.set(
        "message",
        serde_json::json!({"type": "capability-status", "capability_request_id": 42,
            "capability": "std_calibration", "state": "Failed",
            "message": "no calibrator found", "timestamp": "2026-01-01T00:00:00Z"}),
    );
    vars.set("now", (T0 / 1000 + 600).into());
    let examples = [
        ("equals", "message.state == 'Failed'"),
        ("iequals", "lower(message.state) == 'failed'"),
        ("contains", "message.message.contains('no calibrator')"),
        ("startswith", "message.capability.startsWith('std_')"),
        ("endswith", "message.capability.endsWith('_calibration')"),
        ("lessthan", "message.capability_request_id < 100"),
        ("greaterthan", "message.capability_request_id > 10"),
        (
            "regex",
            "message.message.matches('^no calibrator( found)?$')",
        ),
        ("exists", "has(message.timestamp)"),
        ("nexists", "!has(message.workflow_request_id)"),
        ("inside", "message.state in ['Failed', 'Cancelled']"),
        ("timediff", "now - epoch(message.timestamp) < 3600"),
        (
            "all",
            "message.state == 'Failed' && has(message.capability)",
        ),
        (
            "any",
            "message.state == 'Complete' || message.state == 'Failed'",
        ),
        ("not", "!(message.state == 'Complete')"),
    ];
    for (operator, text) in examples {
        let expr = Expr::compile(text).unwrap_or_else(|e| panic!("{operator}: {e}"));
        assert_eq!(expr.test(&vars), Ok(true), "{operator}: {text}");
    }
    // And they say no when the message says otherwise.
    vars.set("now", (T0 / 1000 + 7200).into());
    let timediff = Expr::compile("now - epoch(message.timestamp) < 3600").unwrap();
    assert_eq!(timediff.test(&vars), Ok(false));
}

/// A CalibrationMark sync step that records nothing outside.
struct FakeMark;

#[async_trait]
impl SyncStep for FakeMark {
    type Model = CalibrationMark;
    async fn sync(&self, _obj: &mut Obj<CalibrationMark>, _ctx: &StepContext) -> StepResult {
        Ok(Progress::Done)
    }
}

const DEPS: &str = r#"{ "Ingestion":   [["Observation", "observation", "ingestions"]],
                        "Calibration": [["Ingestion",   "ingestion",   "calibrations"]],
                        "CalibrationMark": [] }"#;

/// An engine with the shipped steps' policies and event steps, stand-in sync steps, and the
/// rules of `dir` (a copy of the shipped ones), listening on this test's AMQP queue.
async fn world(
    db: &TestDb,
    dir: &Path,
    test: &str,
    announce: bool,
) -> (Engine, Rules, thalamus::bus::EventsSettings) {
    for file in ["announcements.yaml", "calibration.yaml"] {
        std::fs::copy(Path::new("rules").join(file), dir.join(file)).unwrap();
    }
    let mut s = common::settings(&db.url);
    s.events = events(test);
    s.events.kafka.enabled = false;
    s.outbox.amqp.enabled = announce;
    let mut registry = Registry::new();
    thalamus::steps::models::register(&mut registry, &s).unwrap();
    thalamus::steps::policies::register(&mut registry, &s).unwrap();
    thalamus::steps::events::register(&mut registry, &s).unwrap();
    registry.sync(FakeIngest).unwrap();
    registry.sync(FakeCalibrate).unwrap();
    registry.sync(FakeMark).unwrap();
    let settings = RulesSettings {
        paths: vec![dir.to_path_buf()],
    };
    let rules = thalamus::rules::register(&mut registry, &settings)
        .unwrap()
        .unwrap();
    let graph = DepGraph::parse("deps", DEPS, &registry.sync_kinds()).unwrap();
    let engine = Engine::new(
        db.store().await,
        registry,
        graph,
        s.engine(),
        Arc::new(ManualClock::at(T0)),
    );
    (engine, rules, s.events)
}

fn direct(topic: &str, payload: &[u8]) -> Event {
    Event {
        transport: Transport::Direct,
        topic: topic.into(),
        routing_key: None,
        payload: payload.to_vec(),
        headers: Vec::new(),
        position: "test".into(),
    }
}

/// The issue's "done when": the shipped rule makes the Calibration of a completed ingestion;
/// an operator adds the no-calibrator rule (a bad file first, refused, the running rules
/// staying); after the reload a capability-status published on RabbitMQ marks the ASDM not
/// calibratable, and the audit trail says which rule did it for which message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_rule_reloaded_acts_on_a_message_from_rabbitmq() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, rules, events) = world(&db, dir.path(), "rules-e2e", false).await;
    // obs5's ingestion is request 5; it completes: the rule calibrate-ingested calibrates it.
    let obs = common::archive::observation(5);
    engine.models().upsert(&obs.key(), &obs).await.unwrap();
    engine.run_once().await.unwrap();
    let complete = common::status_world::status(5, "Complete", "2026-01-01T00:01:00Z");
    engine
        .apply_event(&direct(STATUS, &complete))
        .await
        .unwrap();
    engine.run_once().await.unwrap();
    let mut calibration = engine
        .models()
        .get::<Calibration>("VLA/obs5")
        .await
        .unwrap()
        .expect("the Calibration the shipped rule makes");
    assert_eq!(calibration.spec.ingestion, "VLA/obs5");
    let history = engine
        .store()
        .history("Calibration", "VLA/obs5", 10)
        .await
        .unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.step == "rule:calibrate-ingested" && h.cause.contains("Ingestion/VLA/obs5")),
        "{history:?}"
    );
    // Its std_calibration request is 77 (as the Workspaces step would record it).
    calibration.status.request.request_id = Some(77);
    engine
        .models()
        .set_statuses(&[&calibration], false)
        .await
        .unwrap();

    // A bad file is refused whole; the running rules stay.
    let operator = dir.path().join("operator.yaml");
    std::fs::write(
        &operator,
        NO_CALIBRATOR.replace("kind: CalibrationMark", "kind: Mark"),
    )
    .unwrap();
    let refused = rules.reload().unwrap_err().to_string();
    assert!(
        refused.contains("operator.yaml:15: rule no-calibrator: no kind \"Mark\""),
        "{refused}"
    );
    assert_eq!(rules.current().rules.len(), 3);
    // Fixed, it is taken.
    std::fs::write(&operator, NO_CALIBRATOR).unwrap();
    rules.reload().unwrap();
    assert_eq!(rules.current().rules.len(), 4);

    let topic = actual(&events, STATUS);
    drop(thalamus::bus::AmqpSession::connect(&events).await.unwrap()); // queue and bindings
    let failed = br#"{"type":"capability-status","capability_request_id":77,"capability":"std_calibration","state":"Failed","message":"no calibrator in the field","timestamp":"2026-01-01T00:02:00Z"}"#;
    publish_amqp(&topic, "workspaces.status", &[failed.to_vec()]).await;
    let token = engine.shutdown_token();
    let (e, ev) = (engine.clone(), events.clone());
    let running =
        tokio::spawn(async move { thalamus::app::run_with_transports(&e, &ev).await.unwrap() });
    eventually("the ASDM marked not calibratable", || async {
        engine
            .models()
            .get::<CalibrationMark>("ALMA/obs5")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    token.cancel();
    running.await.unwrap();
    let mark = engine
        .models()
        .get::<CalibrationMark>("ALMA/obs5")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        mark.spec.reason.as_deref(),
        Some("no calibrator in the field")
    );
    assert_eq!(mark.spec.by.as_deref(), Some("rule:no-calibrator"));
    let history = engine
        .store()
        .history("CalibrationMark", "ALMA/obs5", 10)
        .await
        .unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.step == "rule:no-calibrator" && h.cause.starts_with("message ")),
        "{history:?}"
    );
    // The same counters reach /metrics through the engine.
    let exported = engine.rule_counts();
    assert!(
        exported
            .iter()
            .any(|(rule, c)| rule == "no-calibrator" && c[1] == 1),
        "{exported:?}"
    );
    let counts = rules.counts();
    assert_eq!(
        (
            counts["no-calibrator"].matched,
            counts["no-calibrator"].fired
        ),
        (1, 1)
    );
    cleanup_amqp(&events).await;
}

/// The two shipped announcements that are rules: new-file once per generation, and the level
/// change once per message, however often it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_announcements_are_written_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, _rules, _) = world(&db, dir.path(), "rules-announce", true).await;
    let obs = common::archive::observation(1);
    engine.models().upsert(&obs.key(), &obs).await.unwrap();
    engine.run_once().await.unwrap();
    engine.run_once().await.unwrap();
    let rows = engine.store().outbox(false, 50).await.unwrap();
    let types: Vec<&str> = rows.iter().map(|r| r.message_type.as_str()).collect();
    assert_eq!(types, ["new-file"], "{rows:?}");
    let body: serde_json::Value = serde_json::from_str(&rows[0].payload).unwrap();
    assert_eq!(
        (body["name"].as_str(), body["key"].as_str()),
        (Some("obs1"), Some("VLA/obs1"))
    );
    let workflow = br#"{"type":"workflow-status","workflow_request_id":9,"capability_request_id":1,"state":"Executing"}"#;
    for _ in 0..2 {
        engine.apply_event(&direct(STATUS, workflow)).await.unwrap();
    }
    let rows = engine.store().outbox(false, 50).await.unwrap();
    let levels: Vec<_> = rows
        .iter()
        .filter(|r| r.message_type == "capability-status")
        .collect();
    assert_eq!(levels.len(), 1, "{rows:?}");
    let body: serde_json::Value = serde_json::from_str(&levels[0].payload).unwrap();
    assert_eq!(
        (
            body["capability_request_id"].as_i64(),
            body["workflow_request_id"].as_i64()
        ),
        (Some(1), Some(9))
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `thalamus check` refuses a bad rules file naming file, rule and line; `rules list` lists;
/// `rules test` shows the match and what it would do, with the store untouched.
#[test]
fn the_command_line_checks_lists_and_tests_rules() {
    let dir = tempfile::tempdir().unwrap();
    let deps = std::fs::canonicalize("model-deps.json").unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        &NO_CALIBRATOR.replace("condition:", "conditon:"),
    );
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "database: {{url: \"sqlite://{}/never.db\"}}\nmodel_deps: {}\nrules: {{paths: [{}]}}\n",
            dir.path().display(),
            deps.display(),
            bad.display()
        ),
    );
    let thalamus = |args: &[&str]| {
        std::process::Command::new(common::controller::bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = thalamus(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "{}:10: rule no-calibrator: unknown field \"conditon\"",
            bad.display()
        )),
        "{err}"
    );
    let good = write(dir.path(), "good.yaml", NO_CALIBRATOR);
    let good = good.to_str().unwrap();
    let out = thalamus(&["rules", "list", "--rules", good]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("no-calibrator (") && listed.contains("1 rule(s) in 1 file(s)"),
        "{listed}"
    );
    let message = write(
        dir.path(),
        "message.json",
        r#"{"type":"capability-status","capability_request_id":77,"capability":"std_calibration","state":"Failed","message":"no calibrator"}"#,
    );
    let found = write(
        dir.path(),
        "found.json",
        r#"{"kind":"Calibration","key":"ALMA/uid___A002_X1","spec":{"name":"uid://A002/X1"},"status":{}}"#,
    );
    let out = thalamus(&[
        "rules",
        "test",
        message.to_str().unwrap(),
        "--rules",
        good,
        "--found",
        found.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("rule no-calibrator") && said.contains("matches and fires"),
        "{said}"
    );
    assert!(
        said.contains(r#"would upsert CalibrationMark ALMA/uid://A002/X1 spec {"by":"rule:no-calibrator","reason":"no calibrator","uid":"uid://A002/X1"}"#),
        "{said}"
    );
    assert!(
        !dir.path().join("never.db").exists(),
        "the store was not touched"
    );
}

/// `thalamus run` reloads its rules on SIGHUP: a bad file is refused (logged, the process and
/// its rules running on), a good one is taken, and a message then published on RabbitMQ has
/// the new rule's effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules_of_a_running_controller() {
    use common::controller::{run_to_end, settings, write_config, Controller};
    let stub = common::workspaces_stub::Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    for file in ["announcements.yaml", "calibration.yaml"] {
        std::fs::copy(Path::new("rules").join(file), rules_dir.join(file)).unwrap();
    }
    let db = format!("sqlite://{}", dir.path().join("thalamus.db").display());
    let mut s = settings(dir.path(), &db, &stub);
    s.events = events("rules-hup");
    s.events.kafka.enabled = false;
    s.rules.paths = vec![rules_dir.clone()];
    let config = write_config(dir.path(), "config", &s);
    drop(
        thalamus::bus::AmqpSession::connect(&s.events)
            .await
            .unwrap(),
    ); // queue and bindings
    let mut controller = Controller::spawn(&config, dir.path(), "hup", &[]);
    eventually("the controller to start", || async {
        controller.log().contains("thalamus starting")
    })
    .await;
    let hangup = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let rule = r#"rules:
  - name: mark-from-status
    event:
      message:
        topic: workspaces.capability-status
        type: capability-status
    condition: message.state == 'Failed' && message.message.contains('no calibrator')
    responses:
      - upsert:
          kind: CalibrationMark
          key: message.uid
          spec: {uid: message.uid, reason: message.message}
"#;
    let operator = rules_dir.join("operator.yaml");
    std::fs::write(
        &operator,
        rule.replace("message.contains", "message.contians"),
    )
    .unwrap();
    hangup(controller.pid());
    eventually("the bad file refused", || async {
        controller
            .log()
            .contains("rules refused, the running rules stay")
    })
    .await;
    assert!(controller.alive(), "{}", controller.tail(20));
    assert!(
        controller
            .log()
            .contains("operator.yaml:7: rule mark-from-status"),
        "{}",
        controller.tail(5)
    );
    std::fs::write(&operator, rule).unwrap();
    hangup(controller.pid());
    eventually("the good file taken", || async {
        controller.log().contains("rules reloaded: 4 rule(s)")
    })
    .await;
    let message = br#"{"type":"capability-status","capability_request_id":5,"state":"Failed","message":"no calibrator","uid":"uid://A002/X9"}"#;
    publish_amqp(
        &actual(&s.events, STATUS),
        "workspaces.status",
        &[message.to_vec()],
    )
    .await;
    eventually("the rule's CalibrationMark", || async {
        let out = run_to_end(
            &config,
            dir.path(),
            &["get", "CalibrationMark", "-o", "json"],
        );
        out.contains("uid://A002/X9")
    })
    .await;
    assert!(controller.alive(), "{}", controller.tail(20));
    cleanup_amqp(&s.events).await;
}

/// A transition rule: an Ingestion that became enacted, and a Calibration that did, each said
/// once, with the states it left and entered; a later change that leaves the state as it was
/// (an event rewriting the status of an enacted Ingestion) fires nothing.
const TRANSITIONS: &str = r#"rules:
  - name: ingestion-enacted
    event:
      model:
        kind: Ingestion
        from: [pending, backoff, waiting]
        to: ok
    responses:
      - publish:
          type: ingestion-enacted
          topic: archive.events
          routing_key: thalamus.event
          payload:
            key: model.key
            from: event.from
            to: event.to
            state: model.state
  - name: calibration-enacted
    event:
      model:
        kind: Calibration
        to: ok
    responses:
      - publish:
          type: calibration-enacted
          topic: archive.events
          routing_key: thalamus.event
          payload:
            key: model.key
            from: event.from
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_rule_fires_once_when_a_model_enters_the_state() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "transitions.yaml", TRANSITIONS);
        let (engine, _rules, _) = world(&db, dir.path(), "rules-transition", true).await;
        let obs = common::archive::observation(6);
        engine.models().upsert(&obs.key(), &obs).await.unwrap();
        engine.run_once().await.unwrap();
        engine.run_once().await.unwrap();
        let said = |rows: &[thalamus::store::OutboxRow], t: &str| {
            rows.iter()
                .filter(|r| r.message_type == t)
                .map(|r| serde_json::from_str::<serde_json::Value>(&r.payload).unwrap())
                .collect::<Vec<_>>()
        };
        let rows = engine.store().outbox(false, 50).await.unwrap();
        assert!(said(&rows, "ingestion-enacted").is_empty(), "{rows:?}");

        let complete = common::status_world::status(6, "Complete", "2026-01-01T00:01:00Z");
        engine
            .apply_event(&direct(STATUS, &complete))
            .await
            .unwrap();
        for _ in 0..4 {
            engine.run_once().await.unwrap();
        }
        let rows = engine.store().outbox(false, 50).await.unwrap();
        let ingested = said(&rows, "ingestion-enacted");
        assert_eq!(ingested.len(), 1, "{backend:?}: {rows:?}");
        assert_eq!(
            (
                &ingested[0]["from"],
                &ingested[0]["to"],
                &ingested[0]["state"]
            ),
            (&"pending".into(), &"ok".into(), &"ok".into())
        );
        // The Calibration's step changes no status: its settle alone moved it to ok.
        let calibrated = said(&rows, "calibration-enacted");
        assert_eq!(calibrated.len(), 1, "{backend:?}: {rows:?}");
        assert_eq!(calibrated[0]["key"], "VLA/obs6");
        assert_eq!(calibrated[0]["from"], "pending");

        // The same status said again, and a later pass: the Ingestion stays ok, nothing fires.
        engine
            .apply_event(&direct(STATUS, &complete))
            .await
            .unwrap();
        for _ in 0..2 {
            engine.run_once().await.unwrap();
        }
        let rows = engine.store().outbox(false, 50).await.unwrap();
        assert_eq!(said(&rows, "ingestion-enacted").len(), 1, "{rows:?}");
        assert_eq!(said(&rows, "calibration-enacted").len(), 1, "{rows:?}");

        // The audit trail says which rule fired, why, at which generation and on which replica.
        let history = engine
            .store()
            .history("Calibration", "VLA/obs6", 20)
            .await
            .unwrap();
        let firing = history
            .iter()
            .find(|h| h.step == "rule:calibration-enacted")
            .unwrap_or_else(|| panic!("{history:?}"));
        assert!(firing.cause.contains("pending → ok"), "{firing:?}");
        assert_eq!(firing.generation, 1);
        assert_eq!(firing.holder, engine.holder());
    }
}
