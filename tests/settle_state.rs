//! The settle windows of the filesystem sources survive a restart: a controller that comes
//! back (or `thalamus run --once` from cron) resumes each dataset's window where the last one
//! left it, and an idle poll over settled datasets writes nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::source_world::World;
use common::workspaces_stub::Stub;
use common::Backend;
use thalamus::sources::ScannedFile;
use thalamus::steps::prelude::*;
use thalamus::store::{Db, Store};

/// What the settle-state table holds: `name fingerprint since` per source and dataset.
async fn settle_rows(store: &Store) -> Vec<String> {
    let sql = "SELECT source || ' ' || name FROM settle_state ORDER BY source, name";
    match store.db() {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
    }
    .unwrap()
}

/// Something that moves whenever the store writes: SQLite's count of rows changed on its one
/// connection; on PostgreSQL, each settle-state row's version (`xmin`).
async fn write_marker(store: &Store) -> String {
    match store.db() {
        Db::Sqlite(pool) => sqlx::query_scalar::<_, i64>("SELECT total_changes()")
            .fetch_one(pool)
            .await
            .map(|n| n.to_string()),
        Db::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT coalesce(string_agg(name || ':' || xmin::text, ',' ORDER BY name), '') \
             FROM settle_state",
            )
            .fetch_one(pool)
            .await
        }
    }
    .unwrap()
}

async fn a_restart_resumes_settle_windows(backend: Backend) {
    let mut w = World::new(backend, |_, _| {}).await;
    for name in ["still", "touched", "gone"] {
        w.sdm(name, &[]);
    }
    assert_eq!(w.once().await.pull.created, 0, "just seen: not settled");
    // Down for the whole window; meanwhile one dataset is written to and one vanishes.
    w.clock.advance(60_000);
    w.append("sdm/touched/Scan.xml", b"<more/>");
    std::fs::remove_dir_all(w.path("sdm/gone")).unwrap();
    w.engine = w.restarted().await;
    w.once().await;
    assert_eq!(
        w.keys("Observation").await,
        ["VLA/still"],
        "the restarted engine's first poll settles what stayed still; a write restarts the window"
    );
    assert_eq!(
        settle_rows(w.engine.store()).await,
        ["vla still", "vla touched"],
        "a vanished dataset is forgotten"
    );
    w.clock.advance(60_000);
    w.once().await;
    assert_eq!(w.keys("Observation").await, ["VLA/still", "VLA/touched"]);
}

async fn an_idle_poll_writes_nothing(backend: Backend) {
    let w = World::new(backend, |_, _| {}).await;
    for n in 0..300 {
        w.sdm(&format!("d{n:03}"), &[]);
    }
    w.once().await;
    w.clock.advance(60_000);
    assert_eq!(w.once().await.pull.created, 300);
    let before = write_marker(w.engine.store()).await;
    for _ in 0..3 {
        w.clock.advance(60_000);
        let r = w.engine.pull_once().await;
        assert_eq!((r.seen, r.created, r.updated, r.failed), (300, 0, 0, 0));
    }
    assert_eq!(write_marker(w.engine.store()).await, before);
    assert_eq!(settle_rows(w.engine.store()).await.len(), 300);
}

both_backends!(
    a_restart_resumes_settle_windows,
    an_idle_poll_writes_nothing
);

/// What a poll hands the store: every dataset the first time, then only what changed
/// (nothing at all when nothing did), and what failed to be stored comes back next time.
#[test]
fn a_poll_reports_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b", "c"] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("data"), b"x").unwrap();
    }
    let mut settler = Settler::new(Duration::from_secs(60));
    let poll = |settler: &mut Settler, now: i64| {
        scan_root(
            dir.path(),
            None,
            settler,
            now,
            &|_| Ok(Vec::new()),
            &mut |_| true,
        )
        .unwrap();
        let changes = settler.take_changes();
        let mut changed: Vec<String> = changes.changed.iter().map(|r| r.name.clone()).collect();
        changed.sort();
        (changed, changes.vanished)
    };
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(poll(&mut settler, 0), (names(&["a", "b", "c"]), vec![]));
    assert_eq!(poll(&mut settler, 1_000), (vec![], vec![]), "idle: nothing");
    assert_eq!(
        poll(&mut settler, 61_000),
        (vec![], vec![]),
        "settling: nothing"
    );
    std::fs::write(dir.path().join("b/data"), b"xy").unwrap();
    std::fs::remove_dir_all(dir.path().join("c")).unwrap();
    assert_eq!(poll(&mut settler, 62_000), (names(&["b"]), names(&["c"])));
    std::fs::write(dir.path().join("a/data"), b"xyz").unwrap();
    scan_root(
        dir.path(),
        None,
        &mut settler,
        63_000,
        &|_| Ok(Vec::new()),
        &mut |_| true,
    )
    .unwrap();
    let unsaved = settler.take_changes();
    settler.requeue(unsaved); // the store was down
    assert_eq!(poll(&mut settler, 64_000), (names(&["a"]), vec![]));
}

/// The stored fingerprint is a fixed function of the listing (64-bit FNV-1a over each file's
/// path bytes, a NUL, size and mtime as little-endian), so every build reads the same value
/// the last one wrote. The expected value is computed independently of the code under test.
#[test]
fn the_fingerprint_is_the_same_in_every_build() {
    let file = |path: &str, size, mtime_ns| ScannedFile {
        path: path.into(),
        size,
        mtime_ns,
    };
    let scan = DatasetScan {
        name: "x".into(),
        dir: "/data/sdm/x".into(),
        files: vec![
            file("/data/sdm/x/Main.xml", 12, 1_767_225_600_000_000_000),
            file("/data/sdm/x/Scan.xml", 7, -5),
        ],
        marked: false,
        missing: vec![],
        not_utf8: None,
    };
    assert_eq!(scan.fingerprint(), 0x5345_9465_a18e_c372);
}

fn config(dir: &Path, stub: &Stub) -> String {
    format!(
        "model_deps: {deps}\nrules:\n  paths: [{rules}]\ndatabase:\n  url: sqlite://{db}\n\
         sources:\n  vla:\n    path: {sdm}\n    bdf_path: null\n    poll_seconds: 1\n    settle_seconds: 1\n  vlba:\n    enabled: false\n\
         workspaces:\n  url: {ws}\n  timeout_seconds: 30\n  poll_seconds: 60\n\
         archive:\n  url: {ar}\n",
        deps = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("model-deps.json")
            .display(),
        rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").display(),
        db = dir.join("thalamus.db").display(),
        sdm = dir.join("sdm").display(),
        ws = stub.workspaces_url(),
        ar = stub.archive_url(),
    )
}

/// `thalamus run --once` in `dir`; returns its stdout.
async fn run_once(dir: &Path) -> String {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let config = dir.join("config.yaml");
        common::controller::run_to_end(&config, &dir, &["run", "--once"])
    })
    .await
    .unwrap()
}

/// Cron style: each `run --once` is a new process. The first sees the dataset; once its
/// window has passed, the second ingests it (no marker needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_twice_ingests_a_dataset_that_stayed_still() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sdm = dir.path().join("sdm/24A-200.sb1.eb1");
    std::fs::create_dir_all(&sdm).unwrap();
    std::fs::write(sdm.join("Main.xml"), "<MainTable/>").unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(dir.path(), &stub)).unwrap();
    let first = run_once(dir.path()).await;
    assert!(first.contains("(0 created"), "{first}");
    // The window (1 s) is wall-clock time for the real binary: let it pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = run_once(dir.path()).await;
    assert!(second.contains("(1 created"), "{second}");
    let ids: Vec<String> = stub.requests().into_iter().map(|r| r.external_id).collect();
    assert_eq!(ids, ["Ingestion/VLA/24A-200.sb1.eb1@1"]);
}
