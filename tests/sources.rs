//! The domain sources end to end: real directories written across polls, the settle window,
//! markers, BDFs arriving late, VLBA, ALMA rows in PostgreSQL, and the observation →
//! ingestion → calibration policies. Workspaces is stood in for by steps that complete at once.

mod common;

use std::io::Write as _;
use std::path::Path;

use common::source_world::World;
use common::{Backend, TestDb};
use thalamus::clock::Clock;
use thalamus::steps::models::{Calibration, CalibrationStatus, IngestionStatus, Observation};
use thalamus::steps::prelude::*;
use thalamus::store::{ListFilter, State};

fn file_names(obs: &Obj<Observation>) -> Vec<String> {
    obs.spec
        .files
        .iter()
        .map(|f| {
            Path::new(&f.path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

async fn growing_sdm_appears_only_after_settling(backend: Backend) {
    let w = World::new(backend, |_, _| {}).await;
    w.sdm("24A-001.sb1.eb1", &[1]);
    w.bdf(1, 1000);
    assert_eq!(w.once().await.pull.seen, 0, "just written: not settled");
    w.clock.advance(59_000);
    w.append("bdf/uid____evla_bdf_1", &[1; 500]); // still growing
    assert_eq!(w.once().await.pull.seen, 0);
    w.clock.advance(59_000);
    assert_eq!(
        w.once().await.pull.seen,
        0,
        "the window restarted when the file grew"
    );
    assert!(
        w.keys("Observation").await.is_empty() && w.keys("Ingestion").await.is_empty(),
        "nothing while growing"
    );
    w.clock.advance(1_000);
    let r = w.once().await;
    assert_eq!((r.pull.seen, r.pull.created), (1, 1));
    let obs = w.observation("VLA/24A-001.sb1.eb1").await;
    assert_eq!(
        file_names(&obs),
        ["uid____evla_bdf_1", "Main.xml", "Scan.xml"],
        "sorted by full path"
    );
    assert_eq!(
        obs.spec
            .files
            .iter()
            .find(|f| f.path.ends_with("bdf_1"))
            .unwrap()
            .size,
        1500
    );
    assert_eq!(w.keys("Ingestion").await, ["VLA/24A-001.sb1.eb1"]);
    assert_eq!(
        w.keys("Calibration").await,
        ["VLA/24A-001.sb1.eb1"],
        "VLA ingestion complete → calibration"
    );
    // Polling an unchanged tree changes nothing.
    w.clock.advance(60_000);
    let r = w.once().await;
    assert_eq!(
        (r.pull.created, r.pull.updated, r.sync.attempted()),
        (0, 0, 0)
    );
}

async fn late_bdfs_update_the_same_observation(backend: Backend) {
    // The wait for missing BDFs is the settle window: the SDM is taken without BDF 11.
    let w = World::new(backend, |s, _| s.sources.vla.missing_bdf_wait_seconds = 60).await;
    w.sdm("24A-002.sb1.eb1", &[10, 11]);
    w.bdf(10, 100);
    w.once().await;
    w.clock.advance(60_000);
    w.once().await;
    let key = "VLA/24A-002.sb1.eb1";
    assert_eq!(
        file_names(&w.observation(key).await).len(),
        3,
        "BDF 11 has not arrived yet"
    );
    assert_eq!(w.ingestion(key).await.spec.observation_generation, 1);
    w.bdf(11, 100);
    w.once().await;
    assert_eq!(
        w.observation(key).await.generation,
        1,
        "the new BDF must settle first"
    );
    w.clock.advance(60_000);
    w.once().await;
    let obs = w.observation(key).await;
    assert_eq!((obs.generation, file_names(&obs).len()), (2, 4));
    let ing = w.ingestion(key).await;
    assert_eq!(
        (ing.spec.observation_generation, ing.generation, ing.enacted),
        (2, 2, 2),
        "ingestion re-ran"
    );
    let cal = w
        .engine
        .models()
        .get::<Calibration>(key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cal.spec.ingestion_generation, cal.enacted),
        (2, 2),
        "calibration follows the re-ingestion"
    );
}

async fn vanishing_and_replaced_files(backend: Backend) {
    let w = World::new(backend, |_, _| {}).await;
    w.sdm("gone", &[]);
    w.sdm("kept", &[]);
    w.once().await;
    std::fs::remove_dir_all(w.path("sdm/gone")).unwrap();
    w.clock.advance(60_000);
    w.once().await;
    assert_eq!(
        w.keys("Observation").await,
        ["VLA/kept"],
        "a dataset that vanished before settling produced nothing"
    );
    // Replace a file with one of the same size: the mtime moves, so the spec does too.
    let before = w.observation("VLA/kept").await;
    let scan = w.path("sdm/kept/Scan.xml");
    std::fs::remove_file(&scan).unwrap();
    std::fs::write(&scan, b"<ScanTabl2>").unwrap();
    let old = filetime_of(&before, "Scan.xml");
    set_mtime(&scan, old + 5);
    w.clock.advance(1_000);
    w.once().await;
    w.clock.advance(60_000);
    w.once().await;
    assert_eq!(w.observation("VLA/kept").await.generation, 2);
}

fn filetime_of(obs: &Obj<Observation>, name: &str) -> i64 {
    obs.spec
        .files
        .iter()
        .find(|f| f.path.ends_with(name))
        .unwrap()
        .mtime_ns
        / 1_000_000_000
}

fn set_mtime(path: &Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

async fn marker_file_skips_the_wait(backend: Backend) {
    let w = World::new(backend, |s, _| {
        s.sources.vla.marker_file = Some("SDM_COMPLETE".into())
    })
    .await;
    w.sdm("marked", &[]);
    w.sdm("unmarked", &[]);
    w.write("sdm/marked/SDM_COMPLETE", b"");
    let r = w.once().await;
    assert_eq!(r.pull.created, 1);
    assert_eq!(w.keys("Observation").await, ["VLA/marked"]);
    assert_eq!(
        file_names(&w.observation("VLA/marked").await),
        ["Main.xml", "Scan.xml"],
        "the marker is not data"
    );
}

/// A file that lands in a dataset after its marker is settled by the window like any change:
/// the marker vouched for the files as they were, not for a file still being written. The
/// poll between `std::fs::write`'s create and its write (the one the inotify hint of the
/// create makes likely) is forced here.
async fn a_late_file_after_the_marker_moves_the_generation_once(backend: Backend) {
    let w = World::new(backend, |s, _| {
        s.sources.vla.marker_file = Some("DONE".into())
    })
    .await;
    w.write("sdm/24A-200.sb1.eb1/Main.xml", b"<MainTable/>");
    w.write("sdm/24A-200.sb1.eb1/DONE", b"");
    w.once().await;
    assert_eq!(
        w.observation("VLA/24A-200.sb1.eb1").await.generation,
        1,
        "the marker: taken at once"
    );

    // `std::fs::write` as two steps, with a poll in between: the file exists, empty.
    let mut scan = std::fs::File::create(w.path("sdm/24A-200.sb1.eb1/Scan.xml")).unwrap();
    w.once().await;
    scan.write_all(b"<ScanTable/>").unwrap();
    drop(scan);
    w.once().await;
    w.clock.advance(60_000); // the settle window
    w.once().await;

    let obs = w.observation("VLA/24A-200.sb1.eb1").await;
    let sizes: Vec<u64> = obs.spec.files.iter().map(|f| f.size).collect();
    assert_eq!(sizes, [12, 12], "Main.xml and the whole Scan.xml");
    assert_eq!(
        obs.generation, 2,
        "one new generation for the late file, not one per state of it"
    );
    let ingestion = w.ingestion("VLA/24A-200.sb1.eb1").await;
    assert_eq!(
        (ingestion.generation, ingestion.spec.observation_generation),
        (2, 2)
    );
}

async fn thousands_of_files_in_one_poll(backend: Backend) {
    let w = World::new(backend, |_, _| {}).await;
    for d in 0..40 {
        for f in 0..100 {
            w.write(&format!("vlba/job{d:02}/scan{}/out{f}.difx", f % 4), b"x");
        }
    }
    w.once().await;
    w.clock.advance(60_000);
    let r = w.once().await;
    assert_eq!((r.pull.seen, r.pull.created), (40, 40));
    let obs = w.observation("VLBA/job07").await;
    assert_eq!(obs.spec.files.len(), 100);
    assert_eq!(w.keys("Ingestion").await.len(), 40);
    assert!(
        w.keys("Calibration").await.is_empty(),
        "no calibration follows VLBA"
    );
    let filter = ListFilter {
        kind: "Ingestion".into(),
        keys: vec![],
        state: Some(State::Ok),
        limit: 100,
    };
    assert_eq!(w.engine.store().list(&filter).await.unwrap().len(), 40);
}

async fn missing_source_directory_is_not_fatal(backend: Backend) {
    let w = World::new(backend, |s, root| {
        s.sources.vla.path = root.join("not-mounted")
    })
    .await;
    let r = w.once().await;
    assert_eq!(
        r.pull.failed, 0,
        "a missing directory is logged, not a failed poll"
    );
    std::fs::create_dir_all(w.path("not-mounted/late")).unwrap();
    w.write("not-mounted/late/Main.xml", b"<MainTable/>");
    w.once().await;
    w.clock.advance(60_000);
    assert_eq!(
        w.once().await.pull.created,
        1,
        "picked up once the directory appears"
    );
}

async fn deleting_an_observation_deletes_dependents_first(backend: Backend) {
    let w = World::new(backend, |s, _| {
        s.sources.vla.marker_file = Some("DONE".into())
    })
    .await;
    w.sdm("del", &[]);
    w.write("sdm/del/DONE", b"");
    w.once().await;
    assert_eq!(w.keys("Calibration").await, ["VLA/del"]);
    std::fs::remove_dir_all(w.path("sdm/del")).unwrap();
    w.engine
        .store()
        .delete("Observation", "VLA/del", w.clock.now_ms())
        .await
        .unwrap();
    let r = w.once().await;
    assert_eq!(r.sync.reaped, 3);
    for kind in ["Observation", "Ingestion", "Calibration"] {
        assert!(w.keys(kind).await.is_empty(), "{kind} reaped");
    }
    let mut last = Vec::new();
    for kind in ["Calibration", "Ingestion", "Observation"] {
        last.push(w.engine.store().history(kind, "VLA/del", 1).await.unwrap()[0].id);
    }
    assert!(
        last[0] < last[1] && last[1] < last[2],
        "reverse dependency order: {last:?}"
    );
}

/// An ALMA-like metadata schema in a fresh PostgreSQL schema; returns its URL.
async fn alma_database() -> (TestDb, sqlx::PgPool) {
    let db = TestDb::new(Backend::Postgres).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for sql in [
        "CREATE TABLE reingestion_requests (asdm_uid TEXT NOT NULL, what TEXT NOT NULL, requested_at TIMESTAMPTZ)",
        "CREATE TABLE asdm_calibration (asdm_uid TEXT NOT NULL, calibratable BOOLEAN NOT NULL, reason TEXT)",
        "INSERT INTO reingestion_requests VALUES ('uid://A002/X1/X1', 'asdm', '2026-01-01T00:00:00Z'), \
         ('uid://A002/X2/X2', 'asdm', NULL), ('uid://A002/X3/X3', 'calibration', '2026-01-02T00:00:00Z')",
        "INSERT INTO asdm_calibration VALUES ('uid://A002/X2/X2', false, 'solar observation')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    (db, pool)
}

async fn alma_rows_become_observations_and_reingestion_reruns(backend: Backend) {
    let (alma, pool) = alma_database().await;
    let url = alma.url.clone();
    let w = World::new(backend, move |s, _| {
        s.sources.alma.enabled = true;
        s.sources.alma.database_url = Some(url);
        s.sources.alma.asdm_query = Some(
            "SELECT asdm_uid AS uid, requested_at::text AS requested_at FROM reingestion_requests WHERE what = 'asdm'".into(),
        );
        s.sources.alma.calibration_query = Some(
            "SELECT asdm_uid AS uid, requested_at::text AS requested_at FROM reingestion_requests WHERE what = 'calibration'"
                .into(),
        );
        s.sources.alma.not_calibratable_query =
            Some("SELECT asdm_uid AS uid, reason FROM asdm_calibration WHERE NOT calibratable".into());
    })
    .await;
    let r = w.once().await;
    assert_eq!(
        r.pull.created, 4,
        "three Observations and a CalibrationMark"
    );
    assert_eq!(
        w.keys("Observation").await,
        [
            "ALMA/calibration/uid://A002/X3/X3",
            "ALMA/uid://A002/X1/X1",
            "ALMA/uid://A002/X2/X2"
        ]
    );
    assert_eq!(
        w.keys("Calibration").await,
        ["ALMA/uid://A002/X1/X1"],
        "not for the uncalibratable ASDM nor calibration products"
    );
    let skipped: IngestionStatus = w.ingestion("ALMA/uid://A002/X2/X2").await.status;
    assert_eq!(
        skipped.calibration_skipped.as_deref(),
        Some("not calibratable: solar observation")
    );
    let mark = w
        .engine
        .store()
        .get("CalibrationMark", "ALMA/uid://A002/X2/X2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        mark.spec, r#"{"reason":"solar observation","uid":"uid://A002/X2/X2"}"#,
        "the archive is told too"
    );
    // The same rows again: nothing moves.
    assert_eq!(w.once().await.sync.attempted(), 0);
    // A newer reingestion request bumps the generation and the ingestion runs again.
    sqlx::query("INSERT INTO reingestion_requests VALUES ('uid://A002/X1/X1', 'asdm', '2026-03-01T00:00:00Z')")
        .execute(&pool).await.unwrap();
    let r = w.once().await;
    assert_eq!(r.pull.updated, 1);
    let obs = w.observation("ALMA/uid://A002/X1/X1").await;
    assert_eq!(
        (obs.generation, obs.spec.requested_at.as_deref()),
        (2, Some("2026-03-01 00:00:00+00"))
    );
    let ing = w.ingestion("ALMA/uid://A002/X1/X1").await;
    assert_eq!((ing.generation, ing.enacted), (2, 2));
    let cal: Obj<Calibration> = w
        .engine
        .models()
        .get("ALMA/uid://A002/X1/X1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cal.spec.ingestion_generation, 2);
    let _: CalibrationStatus = cal.status;
}

async fn alma_query_errors_are_failed_polls_not_crashes(backend: Backend) {
    let (alma, _pool) = alma_database().await;
    let url = alma.url.clone();
    let w = World::new(backend, move |s, _| {
        s.sources.alma.enabled = true;
        s.sources.alma.database_url = Some(url);
        s.sources.alma.asdm_query = Some("SELECT asdm_uid FROM reingestion_requests".into());
    })
    .await;
    let r = w.once().await;
    assert_eq!(r.pull.failed, 1);
    let history = w.engine.store().history("pull", "alma", 1).await.unwrap();
    let error = history[0].error.clone().unwrap();
    assert!(
        error.starts_with(
            "sources.alma.asdm_query must return columns `uid` and `requested_at` (name them with AS); it returns asdm_uid"
        ),
        "{error}"
    );
}

both_backends!(
    growing_sdm_appears_only_after_settling,
    late_bdfs_update_the_same_observation,
    vanishing_and_replaced_files,
    marker_file_skips_the_wait,
    a_late_file_after_the_marker_moves_the_generation_once,
    thousands_of_files_in_one_poll,
    missing_source_directory_is_not_fatal,
    deleting_an_observation_deletes_dependents_first,
    alma_rows_become_observations_and_reingestion_reruns,
    alma_query_errors_are_failed_polls_not_crashes,
);
