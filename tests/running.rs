//! `describe` says which replica runs an object's step and since when, on SQLite too (where
//! leases live only in the controller's memory): it asks the controller's API.

mod common;

use common::brokers::eventually;
use common::controller::{add_dataset, settings, write_config, Controller};
use common::workspaces_stub::{Route, Stub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_the_running_step_and_since_when_on_sqlite() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = format!("sqlite://{}", d.join("thalamus.db").display());
    let mut s = settings(d, &db, &stub);
    s.sync.holder_id = Some("replica-sqlite".into());
    let config = write_config(d, "config", &s);
    // The Ingestion's create call is held: its step runs until the test releases it.
    stub.hold(Route::Create);
    let mut controller = Controller::spawn(&config, d, "run", &[]);
    add_dataset(d, "24A-300.sb1.eb1");
    eventually("the held create", || async {
        stub.held(Route::Create) == 1
    })
    .await;
    let log = controller.log();
    let addr = log
        .split("operator surface at http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the API's address in the log")
        .to_string();
    let describe = |format: &'static [&'static str]| {
        let (config, addr) = (config.clone(), addr.clone());
        std::process::Command::new(common::controller::bin())
            .arg("--config")
            .arg(config)
            .args(["describe", "Ingestion", "VLA/24A-300.sb1.eb1"])
            .args(format)
            .env("THALAMUS__API__LISTEN", addr)
            .output()
            .unwrap()
    };
    let out = describe(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("running since ") && text.contains(" on replica replica-sqlite"),
        "{text}"
    );
    let out = describe(&["-o", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["running"]["replica"], "replica-sqlite", "{doc}");
    assert!(doc["running"]["since"].is_string(), "{doc}");
    // Once the step has finished, nothing runs.
    stub.release(Route::Create);
    eventually("the step finished", || async {
        let out = describe(&["-o", "json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["running"].is_null()
    })
    .await;
    controller.kill();
}
