//! Operating thalamus from the shell (issue 16): closed pipes never hang or crash it, exit
//! codes tell cron what happened, relative paths in a config file mean the file's directory,
//! and the operator commands do what a new user expects. Every test runs the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child as Process;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use thalamus::clock::Clock as _;

fn bin(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_thalamus"));
    c.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("THALAMUS_CONFIG")
        .env_remove("THALAMUS_OVERLAY");
    c
}

fn thalamus(dir: &Path, args: &[&str]) -> Output {
    bin(dir).args(args).output().expect("run thalamus")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The write end of a pipe whose read end is already closed: every write fails with EPIPE,
/// as a `| head -1` that has exited, or a log shipper that died.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// A working directory holding the repository's shipped config.yaml and model-deps.json.
fn shipped_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["config.yaml", "model-deps.json"] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    // The rules ship beside config.yaml too.
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    for rule in std::fs::read_dir(root.join("rules")).unwrap() {
        let rule = rule.unwrap().path();
        std::fs::copy(
            &rule,
            dir.path().join("rules").join(rule.file_name().unwrap()),
        )
        .unwrap();
    }
    dir
}

/// Waits for `child` to exit; a generous bound only so that a hang fails the test instead of
/// hanging it (the child is killed then).
fn exits_within(child: &mut Process, bound: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Process, name: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap()
        .success());
}

/// Starts `thalamus run` with stderr a pipe, waits until it says it runs, then closes the
/// pipe's read end (the reader went away) and sends `sig`.
fn run_then_close_stderr_and_signal(sig: &str) -> Option<ExitStatus> {
    let dir = shipped_dir();
    let mut child = bin(dir.path())
        .args(["run"])
        .env("RUST_LOG", "info")
        .env("THALAMUS__SYNC__SHUTDOWN_GRACE_SECONDS", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("controller running")));
    drop(lines);
    signal(&child, sig);
    exits_within(&mut child, Duration::from_secs(60))
}

#[test]
fn run_stops_on_sigint_after_its_log_pipe_closed() {
    let status = run_then_close_stderr_and_signal("INT").expect("exits after SIGINT");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn run_stops_on_sigterm_after_its_log_pipe_closed() {
    let status = run_then_close_stderr_and_signal("TERM").expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn run_once_with_a_closed_log_pipe_does_not_panic() {
    let dir = shipped_dir();
    let out = bin(dir.path())
        .args(["run", "--once"])
        .env("RUST_LOG", "info")
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// Builds a SQLite store with objects in every state, and a config file pointing at it.
async fn populated() -> (Harness, tempfile::TempDir) {
    let h = Harness::new(Backend::Sqlite).await;
    h.script.set("bad", Act::Permanent);
    h.script.set("bad2", Act::Permanent);
    h.script.set("flaky", Act::Fail);
    let m = h.models();
    for key in ["good", "bad", "bad2", "flaky"] {
        m.upsert(key, &Parent { value: 1 }).await.unwrap();
    }
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
async fn every_command_exits_0_quietly_on_a_closed_stdout() {
    let (_h, dir) = populated().await;
    let d = dir.path();
    let commands: &[&[&str]] = &[
        &["describe", "Parent", "bad"],
        &["describe", "Parent", "bad", "-o", "json"],
        &["status"],
        &["get", "Parent"],
        &["history", "Parent", "bad"],
        &["dead-letters", "list"],
        &["--help"],
    ];
    for args in commands {
        let out = bin(d).args(*args).stdout(closed_pipe()).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    let shipped = shipped_dir();
    for args in [&["graph"][..], &["check"], &["graph", "--dot"]] {
        let out = bin(shipped.path())
            .args(args)
            .stdout(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

#[tokio::test]
async fn an_error_with_a_closed_stderr_still_exits_1() {
    let (_h, dir) = populated().await;
    let out = bin(dir.path())
        .args(["get", "Parnet"])
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn logs_are_coloured_only_on_a_terminal() {
    let dir = shipped_dir();
    let out = bin(dir.path())
        .args(["run", "--once"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("thalamus starting"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains('\u{1b}'),
        "no ANSI codes in a pipe: {:?}",
        stderr(&out)
    );
}

#[test]
fn a_missing_model_deps_file_is_bad_configuration() {
    let dir = shipped_dir();
    std::fs::remove_file(dir.path().join("model-deps.json")).unwrap();
    let out = thalamus(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("model_deps"), "names the key: {err}");
    assert!(
        err.contains(&dir.path().join("model-deps.json").display().to_string()),
        "names the path: {err}"
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "says it once: {err}"
    );
}

#[test]
fn an_unknown_log_level_or_format_is_bad_configuration() {
    let dir = shipped_dir();
    let out = bin(dir.path())
        .args(["check"])
        .env("THALAMUS__LOG__LEVEL", "loud")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`log.level`"), "{}", stderr(&out));
    std::fs::write(dir.path().join("x.yaml"), "log:\n  format: xml\n").unwrap();
    let out = thalamus(dir.path(), &["--config", "x.yaml", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`log.format` must be text or json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_environment_variable_is_named() {
    let dir = shipped_dir();
    let out = bin(dir.path())
        .args(["check"])
        .env("THALAMUS__SYNC__CONCURENCY", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("environment variable THALAMUS__SYNC__CONCURENCY"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_once_exits_3_when_objects_end_in_error() {
    let dir = shipped_dir();
    let d = dir.path();
    let sdm = d.join("data/vla/sdm/24A-001.sb1.eb1");
    std::fs::create_dir_all(&sdm).unwrap();
    std::fs::create_dir_all(d.join("data/vla/bdf")).unwrap();
    std::fs::write(sdm.join("Main.xml"), "<MainTable/>").unwrap();
    std::fs::write(sdm.join("SDM_COMPLETE"), "").unwrap();
    // Nothing listens on port 9: every Workspaces call is refused, so the ingestion fails.
    let out = bin(d)
        .args(["run", "--once"])
        .env("THALAMUS__SOURCES__VLA__MARKER_FILE", "SDM_COMPLETE")
        .env("THALAMUS__WORKSPACES__URL", "http://127.0.0.1:9/workspaces")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("run --once:"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("1 object(s) in error or backoff"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn relative_paths_in_a_config_file_mean_its_directory() {
    let home = shipped_dir();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = home.path().join("config.yaml");
    let config = config.to_str().unwrap();
    let out = thalamus(elsewhere.path(), &["--config", config, "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(home.path().join("thalamus.db").exists());
    assert!(!elsewhere.path().join("thalamus.db").exists());
    let out = thalamus(elsewhere.path(), &["--config", config, "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no objects yet\n");
    let out = thalamus(elsewhere.path(), &["--config", config, "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&home.path().join("model-deps.json").display().to_string()),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("rules: 2 file(s) OK"),
        "{}",
        stdout(&out)
    );
    // An overlay elsewhere overrides values; the paths still follow the main file.
    let overlay = elsewhere.path().join("overlay.yaml");
    std::fs::write(&overlay, "log:\n  level: warn\n").unwrap();
    let overlay = overlay.to_str().unwrap();
    let out = thalamus(
        elsewhere.path(),
        &["--config", config, "--overlay", overlay, "status"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no objects yet\n");
    let out = thalamus(home.path(), &["--overlay", overlay, "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no objects yet\n");
}

#[tokio::test]
async fn retry_a_whole_kind_by_state_or_all() {
    let (h, dir) = populated().await;
    let d = dir.path();
    let out = thalamus(d, &["retry", "Parent", "bad"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Parent bad: permanent failure cleared; it runs at the next pass\n"
    );
    let out = thalamus(d, &["retry", "Parent", "flaky"]);
    assert_eq!(
        stdout(&out),
        "Parent flaky: backoff cleared; it runs at the next pass\n"
    );
    let out = thalamus(d, &["retry", "Parent", "--state", "error"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Parent: 1 object(s) in state error scheduled to run at the next pass\n"
    );
    assert_eq!(h.row("Parent", "bad2").await.backend_code, 0);
    let out = thalamus(d, &["retry", "Parent", "--all"]);
    assert_eq!(
        stdout(&out),
        "Parent: 3 object(s) not in sync scheduled to run at the next pass\n"
    );
    let out = thalamus(d, &["retry", "Parent"]);
    assert_eq!(out.status.code(), Some(2), "a key, --state or --all");
}

#[tokio::test]
async fn get_of_a_known_kind_without_objects_is_empty_not_an_error() {
    let (_h, dir) = populated().await;
    let d = dir.path();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("model-deps.json"),
        d.join("model-deps.json"),
    )
    .unwrap();
    let out = thalamus(d, &["get", "CalibrationMark"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no CalibrationMark objects\n");
    let out = thalamus(d, &["get", "CalibrationMark", "-o", "json"]);
    assert_eq!(stdout(&out), "[]\n");
    // A key asked for by name that does not exist is an error, after the others print.
    let out = thalamus(d, &["get", "Parent", "good", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("good"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Parent not found: nosuch"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn describe_hints_at_the_key_or_kind_meant() {
    let (h, dir) = populated().await;
    let d = dir.path();
    h.models()
        .upsert("VLA/24A-001.sb1.eb1", &Parent { value: 1 })
        .await
        .unwrap();
    let out = thalamus(d, &["describe", "Parent", "24A-001.sb1.eb1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("did you mean Parent VLA/24A-001.sb1.eb1?"),
        "{}",
        stderr(&out)
    );
    let out = thalamus(d, &["describe", "Foo", "bar"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Foo is not a kind"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn graph_and_check_print_json() {
    let dir = shipped_dir();
    let out = thalamus(dir.path(), &["graph", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["sync_order"][0], "Observation");
    assert!(doc["edges"].is_array(), "{doc}");
    let out = thalamus(dir.path(), &["check", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["sync_steps"].is_array(), "{doc}");
    assert!(doc["warnings"].is_array(), "{doc}");
}

#[test]
fn check_warns_of_what_run_would_trip_over() {
    let dir = shipped_dir();
    let out = bin(dir.path())
        .args(["check"])
        .env(
            "THALAMUS__DATABASE__URL",
            "postgres://nobody@127.0.0.1:9/nothing",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("warning: database"), "{text}");
    assert!(text.contains("warning: sources.vla.path"), "{text}");
    let out = bin(dir.path())
        .args(["check", "--strict"])
        .env(
            "THALAMUS__DATABASE__URL",
            "postgres://nobody@127.0.0.1:9/nothing",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[tokio::test]
async fn purge_asks_for_a_filter_and_status_counts_dead_letters() {
    let (h, dir) = populated().await;
    let d = dir.path();
    let letter = thalamus::store::NewDeadLetter {
        transport: "amqp".into(),
        topic: "archive.events".into(),
        routing_key: None,
        position: "1".into(),
        headers: "{}".into(),
        payload: b"not json".to_vec(),
        reason: "not JSON".into(),
        received_at: 0,
    };
    h.store().add_dead_letters(&[letter]).await.unwrap();
    let out = thalamus(d, &["status", "-o", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["dead_letters"], 1, "{doc}");
    assert!(stdout(&thalamus(d, &["status"])).contains("dead letters: 1"));
    let out = thalamus(d, &["dead-letters", "purge"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(h.store().dead_letters(None).await.unwrap().len(), 1);
    let out = thalamus(d, &["dead-letters", "purge", "--all"]);
    assert_eq!(stdout(&out), "purged 1 dead letter(s)\n");
}

#[tokio::test]
async fn run_prunes_dead_letters_past_their_retention() {
    let h = Harness::new(Backend::Sqlite).await;
    let now = h.clock.now_ms();
    let letter = |age_days: i64| thalamus::store::NewDeadLetter {
        transport: "amqp".into(),
        topic: "archive.events".into(),
        routing_key: None,
        position: format!("{age_days}"),
        headers: "[]".into(),
        payload: b"not json".to_vec(),
        reason: "not JSON".into(),
        received_at: now - age_days * 86_400_000,
    };
    h.store()
        .add_dead_letters(&[letter(31), letter(29)])
        .await
        .unwrap();
    h.engine.prune(now).await;
    let left = h.store().dead_letters(None).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.position.as_str()).collect::<Vec<_>>(),
        ["29"],
        "the default retention is 30 days"
    );
}

#[test]
fn an_unreachable_kafka_is_said_at_once_and_does_not_hold_up_shutdown() {
    let dir = shipped_dir();
    let mut child = bin(dir.path())
        .args(["run"])
        .env("RUST_LOG", "info")
        .env("THALAMUS__EVENTS__KAFKA__ENABLED", "true")
        // Nothing listens on port 9.
        .env("THALAMUS__EVENTS__KAFKA__BROKERS", "127.0.0.1:9")
        .env("THALAMUS__SYNC__SHUTDOWN_GRACE_SECONDS", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let said = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("Kafka unreachable") => break Some(line),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    let Some(said) = said else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("says that Kafka is unreachable before librdkafka gives up");
    };
    assert!(said.contains("127.0.0.1:9"), "{said}");
    signal(&child, "TERM");
    let status = exits_within(&mut child, Duration::from_secs(30)).expect("stops within the grace");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Every Parent gets a Child `<key>-child` whose value follows the parent's.
struct ChildPerParent;

#[thalamus::steps::prelude::async_trait]
impl thalamus::step::ModelPolicy for ChildPerParent {
    type Model = Parent;

    fn name(&self) -> &str {
        "child-per-parent"
    }

    async fn handle_update(
        &self,
        obj: &thalamus::step::Obj<Parent>,
        models: &thalamus::step::Models,
    ) -> anyhow::Result<()> {
        let child = Child {
            parent: obj.key.clone(),
            value: obj.spec.value,
        };
        models.upsert(&format!("{}-child", obj.key), &child).await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_policy_pass_that_changes_nothing_leaves_no_audit_row() {
    let h = Harness::with(
        Backend::Sqlite,
        |_| {},
        |r, _| {
            r.policy(ChildPerParent);
        },
    )
    .await;
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    h.engine.run_once().await.unwrap();
    let policy_rows = |h: &Harness| {
        let store = h.store().clone();
        async move {
            let history = store.history("Parent", "p", 100).await.unwrap();
            history
                .iter()
                .filter(|e| e.step.starts_with("policy:"))
                .count()
        }
    };
    assert_eq!(policy_rows(&h).await, 1, "the create that made the child");
    // The status moves (as a Workspaces recheck writes it): the policy runs and finds its
    // child as it should be.
    let status = h.row("Parent", "p").await.status;
    let mut status: Value = serde_json::from_str(&status).unwrap();
    status["runs"] = Value::from(99);
    h.store()
        .set_status("Parent", "p", &status, h.clock.now_ms())
        .await
        .unwrap();
    let report = h.engine.policy_pass().await.unwrap();
    assert!(report.handled >= 1);
    assert_eq!(
        policy_rows(&h).await,
        1,
        "no row for a pass that changed nothing"
    );
    h.models().upsert("p", &Parent { value: 2 }).await.unwrap();
    h.engine.policy_pass().await.unwrap();
    assert_eq!(
        policy_rows(&h).await,
        2,
        "a pass that changed the child is recorded"
    );
}

#[test]
fn sources_lists_datasets_waiting_to_settle_and_missing_bdfs() {
    let dir = shipped_dir();
    let d = dir.path();
    let sdm = d.join("data/vla/sdm/24A-001.sb1.eb1");
    std::fs::create_dir_all(&sdm).unwrap();
    std::fs::create_dir_all(d.join("data/vla/bdf")).unwrap();
    std::fs::create_dir_all(d.join("data/vlba")).unwrap();
    std::fs::write(
        sdm.join("Main.xml"),
        r#"<MainTable><EntityRef entityId="uid:///evla/bdf/1"/><EntityRef entityId="uid:///evla/bdf/2"/></MainTable>"#,
    )
    .unwrap();
    std::fs::write(d.join("data/vla/bdf/uid____evla_bdf_1"), "bdf").unwrap();
    let out = thalamus(d, &["run", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = thalamus(d, &["sources", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let waiting = &doc[0];
    assert_eq!(waiting["dataset"], "24A-001.sb1.eb1", "{doc}");
    assert_eq!(waiting["key"], "VLA/24A-001.sb1.eb1");
    let left = waiting["settles_in_seconds"].as_i64().unwrap();
    assert!(left > 0 && left <= 60, "{doc}");
    assert_eq!(
        waiting["missing_bdfs"],
        serde_json::json!(["uid____evla_bdf_2"])
    );
    let table = stdout(&thalamus(d, &["sources"]));
    assert!(table.starts_with("SOURCE  DATASET"), "{table}");
    assert!(table.contains("uid____evla_bdf_2"), "{table}");
}

#[tokio::test]
async fn describe_says_which_replica_runs_an_object() {
    let h = Harness::new(Backend::Postgres).await;
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    let now = thalamus::clock::SystemClock.now_ms();
    let claimed = h
        .store()
        .claim_due("Parent", now, now, 10, "replica-a", now + 600_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path())
        .args(["describe", "Parent", "p"])
        .env("THALAMUS__DATABASE__URL", &h.db.url)
        .env("THALAMUS__API__LISTEN", "127.0.0.1:9") // no controller's API answers here
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("state:           pending, claimed by replica replica-a"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_unreachable_database_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path())
        .args(["status"])
        .env(
            "THALAMUS__DATABASE__URL",
            "postgres://thalamus@nohost.invalid/archive",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("nohost.invalid"), "{err}");
    assert_eq!(
        err.matches("failed to lookup address information").count(),
        1,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workspaces_call_that_changes_the_world_is_logged_with_its_id() {
    let stub = workspaces_stub::Stub::start().await;
    // Each request ends at once: a deletion with a request in flight waits for it (see
    // tests/one_ingestion.rs); this test is about what a finished deletion means.
    stub.auto_complete(true);
    let dir = shipped_dir();
    let d = dir.path().to_path_buf();
    let sdm = d.join("data/vla/sdm/24A-001.sb1.eb1");
    std::fs::create_dir_all(&sdm).unwrap();
    std::fs::create_dir_all(d.join("data/vla/bdf")).unwrap();
    std::fs::write(sdm.join("Main.xml"), "<MainTable/>").unwrap();
    std::fs::write(sdm.join("SDM_COMPLETE"), "").unwrap();
    let url = stub.workspaces_url();
    let out = tokio::task::spawn_blocking(move || {
        bin(&d)
            .args(["run", "--once"])
            .env("RUST_LOG", "info")
            .env("THALAMUS__SOURCES__VLA__MARKER_FILE", "SDM_COMPLETE")
            .env("THALAMUS__WORKSPACES__URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    let id = stub.requests()[0].id;
    for said in [
        format!("Workspaces capability request {id} (ingest_vla) created"),
        format!("Workspaces capability request {id} (ingest_vla) submitted"),
    ] {
        assert!(log.contains(&said), "{said:?} in {log}");
    }
    assert!(
        log.contains(r#"external_id="Ingestion/VLA/24A-001.sb1.eb1@1""#),
        "{log}"
    );
}

#[test]
fn bench_skips_a_missing_kafka_with_one_line_and_measures_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let out = thalamus(
        dir.path(),
        &[
            "bench",
            "--only",
            "events,latency",
            "--messages",
            "100",
            "--kafka",
            "127.0.0.1:9",
            "--no-postgres",
            "--scratch",
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let kafka: Vec<&str> = err.lines().filter(|l| l.contains("Kafka")).collect();
    assert_eq!(kafka.len(), 1, "{err}");
    assert!(
        kafka[0].starts_with("events via Kafka: skipped, no broker answers at 127.0.0.1:9"),
        "{err}"
    );
    let table = stdout(&out);
    assert!(table.contains("events via AMQP"), "{table}");
    assert!(table.contains("latency file → request"), "{table}");
}

/// What the README says `delete` means for an Observation whose data is still there: the
/// next poll brings it back (level-triggered) at a new generation, and its Ingestion asks
/// Workspaces again under that generation's external id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_observation_whose_data_remains_comes_back_and_is_ingested_again() {
    let stub = workspaces_stub::Stub::start().await;
    // Each request ends at once: a deletion with a request in flight waits for it (see
    // tests/one_ingestion.rs); this test is about what a finished deletion means.
    stub.auto_complete(true);
    let dir = shipped_dir();
    let d = dir.path().to_path_buf();
    let sdm = d.join("data/vla/sdm/24A-001.sb1.eb1");
    std::fs::create_dir_all(&sdm).unwrap();
    std::fs::create_dir_all(d.join("data/vla/bdf")).unwrap();
    std::fs::write(sdm.join("Main.xml"), "<MainTable/>").unwrap();
    std::fs::write(sdm.join("SDM_COMPLETE"), "").unwrap();
    let url = stub.workspaces_url();
    let run = move |args: &'static [&'static str]| {
        let (d, url) = (d.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            bin(&d)
                .args(args)
                .env("THALAMUS__SOURCES__VLA__MARKER_FILE", "SDM_COMPLETE")
                .env("THALAMUS__WORKSPACES__URL", url)
                .output()
                .unwrap()
        })
    };
    let out = run(&["run", "--once"]).await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["delete", "Observation", "VLA/24A-001.sb1.eb1"])
        .await
        .unwrap();
    assert_eq!(
        stdout(&out),
        "Observation VLA/24A-001.sb1.eb1: marked 2 object(s) for deletion (dependents first)\n"
    );
    // The deletion runs, and the next poll brings the Observation back.
    for _ in 0..2 {
        let out = run(&["run", "--once"]).await.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(&["get", "Ingestion", "-o", "json"]).await.unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["key"], "VLA/24A-001.sb1.eb1", "{rows}");
    assert_ne!(rows[0]["state"], "deleting", "{rows}");
    assert_eq!(rows[0]["generation"], 2, "{rows}");
    let creates: Vec<(String, usize)> = stub.creates_per_external_id().into_iter().collect();
    assert_eq!(
        creates,
        [
            ("Ingestion/VLA/24A-001.sb1.eb1@1".to_string(), 1),
            ("Ingestion/VLA/24A-001.sb1.eb1@2".to_string(), 1)
        ],
        "{:?}",
        stub.lines()
    );
    // Deleting the Ingestion leaves its Observation ok, without one until it changes.
    let out = run(&["delete", "Ingestion", "VLA/24A-001.sb1.eb1"])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..2 {
        let out = run(&["run", "--once"]).await.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(&["get", "Ingestion", "-o", "json"]).await.unwrap();
    assert_eq!(stdout(&out), "[]\n");
    let out = run(&["get", "Observation", "-o", "json"]).await.unwrap();
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["state"], "ok", "{rows}");
}

#[test]
fn a_refused_database_connection_says_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path())
        .args(["status"])
        .env(
            "THALAMUS__DATABASE__URL",
            "postgres://thalamus@127.0.0.1:9/archive",
        )
        .env("THALAMUS__DATABASE__TIMEOUT_SECONDS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );
}

/// A step holds shutdown for its grace; a second signal ends the process at once (exit 130),
/// even when nobody reads its stderr any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_the_log_pipe_closed() {
    let stub = workspaces_stub::Stub::start().await;
    stub.hold(workspaces_stub::Route::List);
    let dir = shipped_dir();
    let d = dir.path();
    let sdm = d.join("data/vla/sdm/24A-001.sb1.eb1");
    std::fs::create_dir_all(&sdm).unwrap();
    std::fs::create_dir_all(d.join("data/vla/bdf")).unwrap();
    std::fs::write(sdm.join("Main.xml"), "<MainTable/>").unwrap();
    std::fs::write(sdm.join("SDM_COMPLETE"), "").unwrap();
    let mut child = bin(d)
        .args(["run"])
        .env("RUST_LOG", "info")
        .env("THALAMUS__SOURCES__VLA__MARKER_FILE", "SDM_COMPLETE")
        .env("THALAMUS__WORKSPACES__URL", stub.workspaces_url())
        .env("THALAMUS__SYNC__SHUTDOWN_GRACE_SECONDS", "600")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Reads stderr until a line says `what`; hands the reader back to be read on or dropped.
    type Lines = std::io::Lines<BufReader<std::process::ChildStderr>>;
    let read_until = |mut lines: Lines, what: &'static str| {
        tokio::task::spawn_blocking(move || {
            let seen = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains(what));
            (lines, seen)
        })
    };
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (lines, running) = read_until(lines, "controller running").await.unwrap();
    // The Ingestion's step waits on Workspaces, held by the stand-in.
    let start = Instant::now();
    while running
        && stub.held(workspaces_stub::Route::List) == 0
        && start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "TERM");
    let (lines, asked) = read_until(lines, "shutdown requested").await.unwrap();
    drop(lines); // nobody reads stderr any more
    signal(&child, "TERM");
    let status = exits_within(&mut child, Duration::from_secs(30));
    stub.release(workspaces_stub::Route::List);
    assert!(asked, "the first signal was taken");
    assert_eq!(status.and_then(|s| s.code()), Some(130), "{status:?}");
}
