//! The real binary killed with SIGKILL right after Workspaces recorded its create call: the
//! restarted controller finds the request by external_id and never creates a second one.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::brokers::eventually;
use common::workspaces_stub::{Fault, Route, Stub};

fn config(dir: &Path, stub: &Stub) -> String {
    format!(
        "model_deps: {deps}\nrules:\n  paths: [{rules}]\ndatabase:\n  url: sqlite://{db}\n\
         sources:\n  vla:\n    path: {sdm}\n    bdf_path: null\n    marker_file: DONE\n    poll_seconds: 1\n    settle_seconds: 1\n  vlba:\n    enabled: false\n\
         workspaces:\n  url: {ws}\n  timeout_seconds: 120\n  poll_seconds: 60\n\
         archive:\n  url: {ar}\n\
         api:\n  listen: 127.0.0.1:0\n",
        deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("model-deps.json").display(),
        rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").display(),
        db = dir.join("thalamus.db").display(),
        sdm = dir.join("sdm").display(),
        ws = stub.workspaces_url(),
        ar = stub.archive_url(),
    )
}

/// Whether the controller is still running (its log has no fatal error line).
fn first_alive(log: &Path) -> bool {
    !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("error:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_create_never_duplicates_the_request() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sdm = dir.path().join("sdm/24A-100.sb1.eb1");
    std::fs::create_dir_all(&sdm).unwrap();
    std::fs::write(sdm.join("Main.xml"), "<MainTable/>").unwrap();
    std::fs::write(sdm.join("DONE"), "").unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, config(dir.path(), &stub)).unwrap();
    // The create is recorded, then its answer never comes: the worst moment to die.
    stub.fault(Route::Create, Fault::Slow(Duration::from_secs(300)));
    let bin = env!("CARGO_BIN_EXE_thalamus");
    let mut first = Command::new(bin)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("first.log")).unwrap())
        .spawn()
        .unwrap();
    let log = dir.path().join("first.log");
    eventually("the create call", || async {
        let running = first_alive(&log);
        assert!(
            running,
            "the controller exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        stub.requests().len() == 1
    })
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    let cfg2 = cfg.clone();
    let dir2 = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["--config", cfg2.to_str().unwrap(), "run", "--once"])
            .current_dir(dir2)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "exactly one request: {requests:?}");
    assert_eq!(requests[0].external_id, "Ingestion/VLA/24A-100.sb1.eb1@1");
    let creates = stub
        .lines()
        .iter()
        .filter(|l| l.starts_with("POST") && l.ends_with("/request/create"))
        .count();
    assert_eq!(creates, 1);
    assert_eq!(
        requests[0].state, "Submitted",
        "the adopted request was submitted after the restart"
    );

    let cfg3 = cfg.clone();
    let dir3 = dir.path().to_path_buf();
    let described = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args([
                "--config",
                cfg3.to_str().unwrap(),
                "describe",
                "Ingestion",
                "VLA/24A-100.sb1.eb1",
                "-o",
                "json",
            ])
            .current_dir(dir3)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(doc["status"]["request_id"], requests[0].id);
    assert_eq!(doc["status"]["state"], "Submitted");
    assert_eq!(doc["state"], "pending");
}

/// Runs `thalamus run` (or `run --once`, waiting for it) on `cfg` in `dir`, logging to `log`.
fn start(cfg: &Path, dir: &Path, log: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_thalamus"))
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for `what` while the controller logging to `log` still runs.
async fn while_alive(what: &str, log: &Path, condition: impl Fn() -> bool) {
    eventually(what, || async {
        assert!(
            first_alive(log),
            "the controller exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        condition()
    })
    .await;
}

/// With `on_new_generation: cancel`, a late file gives the observation a new generation while
/// its first ingestion runs. The controller is killed after Workspaces cancelled the first
/// request but before the answer arrived, and the next one after Workspaces created the second
/// request but before the answer arrived. The cancel is neither lost nor repeated, the second
/// request is created once, and no two requests of the observation ever run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_cancel_and_create_neither_loses_the_cancel_nor_creates_twice() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sdm = dir.path().join("sdm/24A-200.sb1.eb1");
    std::fs::create_dir_all(&sdm).unwrap();
    std::fs::write(sdm.join("Main.xml"), "<MainTable/>").unwrap();
    std::fs::write(sdm.join("DONE"), "").unwrap();
    let cfg = dir.path().join("config.yaml");
    let text = config(dir.path(), &stub).replace(
        "  poll_seconds: 60\n",
        "  poll_seconds: 60\n  ingestion:\n    vla: {capability: ingest_vla, on_new_generation: cancel}\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut first = start(&cfg, dir.path(), "first.log");
    let log = dir.path().join("first.log");
    while_alive("the first request, submitted", &log, || {
        stub.requests()
            .first()
            .is_some_and(|r| r.state == "Submitted")
    })
    .await;
    // A late file: generation 2. Workspaces cancels request 1, but its answer never comes.
    stub.hold(Route::Cancel);
    std::fs::write(sdm.join("Scan.xml"), "<ScanTable/>").unwrap();
    while_alive("the cancel call", &log, || stub.held(Route::Cancel) == 1).await;
    assert_eq!(stub.requests()[0].state, "Cancelled");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    stub.release(Route::Cancel);

    // The next process creates request 2; that answer never comes either.
    stub.fault(Route::Create, Fault::Slow(Duration::from_secs(300)));
    let mut second = start(&cfg, dir.path(), "second.log");
    let log = dir.path().join("second.log");
    while_alive("the second create", &log, || stub.requests().len() == 2).await;
    second.kill().unwrap(); // SIGKILL
    second.wait().unwrap();

    let (cfg2, dir2) = (cfg.clone(), dir.path().to_path_buf());
    let bin = env!("CARGO_BIN_EXE_thalamus");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["--config", cfg2.to_str().unwrap(), "run", "--once"])
            .current_dir(dir2)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let requests = stub.requests();
    let states: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.external_id.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("Ingestion/VLA/24A-200.sb1.eb1@1", "Cancelled"),
            ("Ingestion/VLA/24A-200.sb1.eb1@2", "Submitted"),
        ]
    );
    assert_eq!(stub.duplicate_creates(), Default::default());
    assert_eq!(stub.overlaps(), Vec::<String>::new());
    let cancels = stub
        .lines()
        .iter()
        .filter(|l| l.ends_with("/cancel"))
        .count();
    assert_eq!(cancels, 1, "cancelled once: {:?}", stub.lines());

    let (cfg3, dir3) = (cfg.clone(), dir.path().to_path_buf());
    let described = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args([
                "--config",
                cfg3.to_str().unwrap(),
                "describe",
                "Ingestion",
                "VLA/24A-200.sb1.eb1",
                "-o",
                "json",
            ])
            .current_dir(dir3)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(doc["status"]["request_id"], requests[1].id);
    assert_eq!(doc["status"]["generation"], 2);
    assert_eq!(doc["generation"], 2);
    // The audit trail says what became of request 1.
    let trail = doc["executions"].to_string();
    assert!(
        trail.contains(&format!(
            "it follows capability request {} of generation 1, which ended Cancelled",
            requests[0].id
        )),
        "{trail}"
    );
}
