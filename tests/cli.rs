//! The `thalamus` binary as operators use it: run --once on the shipped config, the status
//! tables (text and JSON), retry, exit codes, signals, and the SQLite single-process guard.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;
use thalamus::clock::Clock;

fn thalamus(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thalamus"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("THALAMUS__API__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run thalamus")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A working directory holding the repository's shipped config.yaml, model-deps.json and
/// rules.
fn shipped_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["config.yaml", "model-deps.json"] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    for rules in std::fs::read_dir(root.join("rules")).unwrap() {
        let rules = rules.unwrap().path();
        std::fs::copy(
            &rules,
            dir.path().join("rules").join(rules.file_name().unwrap()),
        )
        .unwrap();
    }
    dir
}

#[test]
fn run_once_on_the_shipped_config_exits_0() {
    let dir = shipped_dir();
    let out = thalamus(dir.path(), &["run", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("run --once:"), "{}", stdout(&out));
    assert!(
        dir.path().join("thalamus.db").exists(),
        "SQLite file created in the working directory"
    );
    let out = thalamus(dir.path(), &["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("model-deps.json OK: sync order"),
        "{}",
        stdout(&out)
    );
    let out = thalamus(dir.path(), &["status", "-o", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["kinds"].is_array());
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = shipped_dir();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "sync:\n  backoff:\n    factor: 0.5\n",
    )
    .unwrap();
    let out = thalamus(dir.path(), &["--config", "bad.yaml", "run", "--once"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "error: invalid configuration: `sync.backoff.factor` must be a number of at least 1"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_thalamus"))
        .args(["check"])
        .current_dir(dir.path())
        .env("THALAMUS__SYNC__CONCURRENCY", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("sync.concurrency"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_model_deps_fails_at_start_naming_the_kind() {
    let dir = shipped_dir();
    std::fs::write(
        dir.path().join("model-deps.json"),
        r#"{"Transfer": [["Observation", "observation", "transfers"]]}"#,
    )
    .unwrap();
    let out = thalamus(dir.path(), &["run", "--once"]);
    assert_eq!(out.status.code(), Some(2), "bad configuration");
    assert!(
        stderr(&out).contains("kind `Transfer` (a model in the file) has no sync step"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_names_both_sides_when_model_deps_disagrees_with_a_model() {
    let dir = shipped_dir();
    let path = dir.path().join("model-deps.json");
    let deps = std::fs::read_to_string(&path).unwrap().replace(
        r#"["Observation", "observation", "ingestions"]"#,
        r#"["Observation", "obs", "ingestions"]"#,
    );
    std::fs::write(&path, deps).unwrap();
    let out = thalamus(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            r#"model-deps.json and the Ingestion model disagree on its links: the file says [["Observation", "obs", "ingestions"]], the model (`LINKS` of its `impl Model` in steps/) says [["Observation", "observation", "ingestions"]]"#
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn read_commands_on_a_missing_database_say_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = thalamus(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("run `thalamus migrate` (or `thalamus run`) first"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("thalamus.db").exists(),
        "a read command does not create the database"
    );
}

/// Builds a SQLite store with objects in every state, and a config file pointing at it.
async fn populated() -> (Harness, tempfile::TempDir) {
    let h = Harness::new(Backend::Sqlite).await;
    h.script.set("bad", Act::Permanent);
    h.script.set("flaky", Act::Fail);
    let m = h.models();
    m.upsert("good", &Parent { value: 1 }).await.unwrap();
    m.upsert("bad", &Parent { value: 1 }).await.unwrap();
    m.upsert("flaky", &Parent { value: 1 }).await.unwrap();
    m.upsert(
        "c",
        &Child {
            parent: "flaky".into(),
            value: 1,
        },
    )
    .await
    .unwrap();
    h.engine.run_once().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        format!("database:\n  url: {}\n", h.db.url),
    )
    .unwrap();
    (h, dir)
}

#[tokio::test]
async fn status_get_describe_history_retry() {
    let (h, dir) = populated().await;
    let d = dir.path();

    let out = thalamus(d, &["status", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let parent = doc["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "Parent")
        .unwrap();
    assert_eq!(
        (
            parent["ok"].as_i64(),
            parent["error"].as_i64(),
            parent["backoff"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(doc["total"], 4);
    let table = stdout(&thalamus(d, &["status"]));
    assert!(
        table.starts_with("KIND    OK  PENDING  BACKOFF  ERROR  WAITING  DELETING  TOTAL\n"),
        "{table}"
    );
    assert!(
        table.contains("Child   0   0        0        0      1        0         1"),
        "{table}"
    );

    let out = thalamus(d, &["get", "Parent", "-o", "json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["bad", "flaky", "good"]);
    let bad = &rows[0];
    assert_eq!(bad["state"], "error");
    assert_eq!(bad["generation"], 1);
    assert_eq!(bad["enacted"], 0);
    assert_eq!(bad["last_error"], "400 Bad Request: no such capability");
    assert_eq!(bad["next_attempt_at"], Value::Null);
    assert_eq!(rows[1]["next_attempt_at"], "2026-01-01T00:00:10.000Z");
    for field in [
        "kind",
        "key",
        "generation",
        "enacted",
        "state",
        "attempts",
        "next_attempt_at",
        "backend_status",
        "last_error",
    ] {
        assert!(bad.get(field).is_some(), "field {field}");
    }

    let table = stdout(&thalamus(d, &["get", "Parent", "--state", "backoff"]));
    assert!(
        table.starts_with("KEY    GENERATION  ENACTED  STATE    ATTEMPTS  NEXT ATTEMPT"),
        "{table}"
    );
    assert!(table.contains("flaky  1           0        backoff  1         2026-01-01T00:00:10.000Z  always broken"), "{table}");
    assert!(!table.contains("good"));

    let out = thalamus(d, &["describe", "Child", "c"]);
    let text = stdout(&out);
    assert!(text.contains("state:           waiting"), "{text}");
    assert!(
        text.contains("backend status:  waiting on Parent flaky: always broken"),
        "{text}"
    );
    assert!(
        text.contains("links:           parent → Parent flaky"),
        "{text}"
    );
    let out = thalamus(d, &["describe", "Parent", "flaky", "-o", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["dependents"][0]["key"], "c");
    assert_eq!(doc["executions"][0]["outcome"], "error");
    assert_eq!(doc["spec"]["value"], 1);

    let out = thalamus(d, &["history", "Parent", "flaky", "-o", "json"]);
    let hist: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hist[0]["step"], "sync");
    assert_eq!(hist[0]["cause"], "new object");
    assert_eq!(hist[0]["error"], "always broken");

    let out = thalamus(d, &["retry", "Parent", "bad"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Parent bad: permanent failure cleared; it runs at the next pass\n"
    );
    let row = h.row("Parent", "bad").await;
    assert_eq!((row.backend_code, row.attempts), (0, 0));
    assert!(row.next_attempt_at.unwrap() >= thalamus::clock::SystemClock.now_ms() - 60_000);
    assert_eq!(
        stdout(&thalamus(d, &["retry", "Parent", "good"])),
        "Parent good is in sync; nothing to retry\n"
    );

    let out = thalamus(d, &["get", "Parnet"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: Parnet is not a kind (kinds: Calibration, CalibrationMark, Child, Ingestion, \
         Observation, Parent)"
    );
    let out = thalamus(d, &["get", "Parent", "--state", "broken"]);
    assert!(
        stderr(&out).contains("unknown state \"broken\""),
        "{}",
        stderr(&out)
    );

    let out = thalamus(d, &["delete", "Parent", "flaky"]);
    assert_eq!(
        stdout(&out),
        "Parent flaky: marked 2 object(s) for deletion (dependents first)\n"
    );
    let rows: Value = serde_json::from_slice(
        &thalamus(d, &["get", "Child", "--state", "deleting", "-o", "json"]).stdout,
    )
    .unwrap();
    assert_eq!(rows[0]["key"], "c");
}

#[tokio::test]
async fn postgres_through_the_environment() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = shipped_dir();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_thalamus"))
            .args(args)
            .current_dir(dir.path())
            .env("THALAMUS__DATABASE__URL", &db.url)
            .output()
            .unwrap()
    };
    let out = run(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("schema up to date at postgres://"),
        "{}",
        stdout(&out)
    );
    let out = run(&["run", "--once", "--no-migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&run(&["status"]));
    assert!(
        status.starts_with("no objects yet\n\nSOURCE  STATE  LAST SUCCESS")
            && status.contains("\nvla     ok "),
        "the sources' health follows: {status}"
    );
    assert!(
        !dir.path().join("thalamus.db").exists(),
        "the env var chose PostgreSQL"
    );
}

#[test]
fn sqlite_allows_one_controller_and_sigterm_stops_it_cleanly() {
    let dir = shipped_dir();
    let mut first = Command::new(env!("CARGO_BIN_EXE_thalamus"))
        .args(["run"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .env("THALAMUS__API__LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    // Wait until the controller says it is running (it then holds the lock).
    assert!(lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("controller running")));
    let second = thalamus(dir.path(), &["run", "--once"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another thalamus process is already running on thalamus.db"),
        "{}",
        stderr(&second)
    );
    // Read commands still work while it runs.
    assert!(thalamus(dir.path(), &["status"]).status.success());
    let pid = first.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = first.wait().unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    assert!(lines
        .map_while(Result::ok)
        .any(|l| l.contains("controller stopped")));
}
