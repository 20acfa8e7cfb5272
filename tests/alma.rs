//! The ALMA source end to end, against real PostgreSQL as the metadata database and a
//! Workspaces and archive stand-in: its three duties (reingest ASDMs, reingest calibrations,
//! mark ASDMs not calibratable) work independently of each other; calibratability is not
//! part of an Observation (no new ingestion, a Calibration that ran is kept); unmarking tells
//! the archive; one bad row or one broken query never stops the rest.

mod common;

use std::sync::Arc;

use common::workspaces_stub::Stub;
use common::{Backend, TestDb, T0};
use serde_json::{json, Value};
use thalamus::clock::ManualClock;
use thalamus::config::Settings;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::step::Registry;

const X1: &str = "uid://A002/Xc7111c/X3979";
const X2: &str = "uid://A002/Xc7111c/X2a2b";
const X9: &str = "uid://A002/Xd0f0f0/X11";

/// The metadata schema of the README, except that `asdm_uid` may be NULL (the bad rows).
const SCHEMA: &[&str] = &[
    "CREATE TABLE reingestion_requests (asdm_uid TEXT, what TEXT NOT NULL, \
     requested_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE asdm_calibration (asdm_uid TEXT, calibratable BOOLEAN NOT NULL, reason TEXT)",
];

const ASDM_QUERY: &str = "SELECT asdm_uid AS uid, requested_at::text AS requested_at \
     FROM reingestion_requests WHERE what = 'asdm' ORDER BY requested_at";
const CALIBRATION_QUERY: &str = "SELECT asdm_uid AS uid, requested_at::text AS requested_at \
     FROM reingestion_requests WHERE what = 'calibration' ORDER BY requested_at";
const NOT_CALIBRATABLE_QUERY: &str =
    "SELECT asdm_uid AS uid, reason FROM asdm_calibration WHERE NOT calibratable ORDER BY asdm_uid";

struct World {
    engine: Engine,
    clock: ManualClock,
    stub: Stub,
    /// The metadata database.
    alma: sqlx::PgPool,
    _alma_db: TestDb,
    _db: TestDb,
    settings: Settings,
}

impl World {
    async fn new(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        let alma_db = TestDb::new(Backend::Postgres).await;
        let alma = sqlx::PgPool::connect(&alma_db.url).await.unwrap();
        for sql in SCHEMA {
            sqlx::query(sql).execute(&alma).await.unwrap();
        }
        let stub = Stub::start().await;
        stub.auto_complete(true);
        let db = TestDb::new(backend).await;
        let mut s = common::settings(&db.url);
        s.sources.vla.enabled = false;
        s.sources.vlba.enabled = false;
        s.sources.alma.enabled = true;
        s.sources.alma.poll_seconds = 2;
        s.sources.alma.database_url = Some(alma_db.url.clone());
        s.sources.alma.asdm_query = Some(ASDM_QUERY.into());
        s.sources.alma.calibration_query = Some(CALIBRATION_QUERY.into());
        s.sources.alma.not_calibratable_query = Some(NOT_CALIBRATABLE_QUERY.into());
        s.workspaces.url = stub.workspaces_url();
        s.workspaces.timeout_seconds = 2;
        s.archive.url = stub.archive_url();
        tweak(&mut s);
        let clock = ManualClock::at(T0);
        let registry: Registry = thalamus::app::registry(&s).unwrap();
        let settings = s.clone();
        let deps = include_str!("../model-deps.json");
        let graph = DepGraph::parse("model-deps.json", deps, &registry.sync_kinds()).unwrap();
        let engine = Engine::new(
            db.store().await,
            registry,
            graph,
            s.engine(),
            Arc::new(clock.clone()),
        );
        Self {
            engine,
            clock,
            stub,
            alma,
            _alma_db: alma_db,
            _db: db,
            settings,
        }
    }

    /// How long the engine waits before polling the ALMA source again.
    fn engine_pull_delay(&self) -> std::time::Duration {
        let step = thalamus::steps::alma::AlmaSource::new(&self.settings.sources.alma).unwrap();
        self.engine.pull_delay(&step)
    }

    async fn sql(&self, sql: &str) {
        sqlx::query(sql).execute(&self.alma).await.unwrap();
    }

    /// Polls once and runs passes until nothing is runnable; then lets a minute pass and
    /// does it again a few times, so Workspaces requests (complete at once) are seen done.
    async fn settle(&self) {
        for _ in 0..4 {
            self.engine.run_once().await.unwrap();
            self.clock.advance(61_000);
        }
    }

    /// The archive PUTs received, as `uid body`, in order.
    fn puts(&self) -> Vec<String> {
        self.stub
            .received()
            .iter()
            .filter(|r| r.method == "PUT")
            .map(|r| {
                let line = r.line();
                let uid = line
                    .trim_start_matches("PUT /archive/alma/asdm/")
                    .trim_end_matches("/calibration-status")
                    .to_string();
                format!("{uid} {}", r.body.clone().unwrap_or(Value::Null))
            })
            .collect()
    }

    /// The create calls Workspaces received, as external ids.
    fn creates(&self) -> Vec<String> {
        self.stub.creates_per_external_id().into_keys().collect()
    }

    async fn row(&self, kind: &str, key: &str) -> Option<thalamus::store::ObjectRow> {
        self.engine.store().get(kind, key).await.unwrap()
    }

    async fn status(&self, kind: &str, key: &str) -> Value {
        let row = self.row(kind, key).await.expect("exists");
        serde_json::from_str(&row.status).unwrap()
    }

    /// The error the last poll of the ALMA source recorded, if any.
    async fn poll_errors(&self) -> Vec<String> {
        let history = self
            .engine
            .store()
            .history("pull", "alma", 10)
            .await
            .unwrap();
        history.into_iter().filter_map(|e| e.error).collect()
    }
}

fn not_calibratable(reason: &str) -> Value {
    json!({"calibratable": false, "reason": reason})
}

/// Defect 1: a mark for an ASDM that nobody asked to reingest still reaches the archive, once.
async fn a_mark_for_an_asdm_never_reingested_is_put_once(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.sql(&format!(
        "INSERT INTO asdm_calibration VALUES ('{X9}', false, 'no phase calibrator')"
    ))
    .await;
    w.settle().await;
    assert_eq!(
        w.puts(),
        [format!("{X9} {}", not_calibratable("no phase calibrator"))]
    );
    assert!(
        w.creates().is_empty(),
        "nothing to ingest: {:?}",
        w.creates()
    );
    let mark = w.row("CalibrationMark", &format!("ALMA/{X9}")).await;
    assert!(
        mark.is_some(),
        "one key scheme for every ALMA kind: ALMA/<uid>"
    );
    w.settle().await;
    assert_eq!(w.puts().len(), 1, "in sync: put once");
}

/// A mark someone else made (a rule names itself in `by`) is theirs: the source, whose query
/// does not list that ASDM, leaves it marked; the archive is told once.
async fn a_mark_made_by_a_rule_is_not_lifted_by_the_source(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let mark = thalamus::steps::archive::CalibrationMark {
        by: Some("rule:no-calibrator".into()),
        ..thalamus::steps::archive::CalibrationMark::not_calibratable(X9, "no calibrator")
    };
    let key = format!("ALMA/{X9}");
    w.engine.models().upsert(&key, &mark).await.unwrap();
    w.settle().await;
    w.settle().await;
    assert_eq!(
        w.puts(),
        [format!("{X9} {}", not_calibratable("no calibrator"))]
    );
    let stored = w.row("CalibrationMark", &key).await.expect("the mark");
    assert!(
        !stored.spec.contains("calibratable\":true"),
        "{}",
        stored.spec
    );
}

/// Defect 2: marking an ASDM that is already ingested and calibrated makes no new ingestion
/// and keeps its Calibration; its status says the ASDM is now marked. Editing the reason, or
/// a NULL reason, only tells the archive again.
async fn marking_a_calibrated_asdm_keeps_its_calibration(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.sql(&format!(
        "INSERT INTO reingestion_requests VALUES ('{X1}', 'asdm', '2026-01-01T00:00:00Z')"
    ))
    .await;
    w.settle().await;
    let key = format!("ALMA/{X1}");
    assert_eq!(
        w.creates(),
        [format!("Calibration/{key}@1"), format!("Ingestion/{key}@1")]
    );
    let calibration = w.row("Calibration", &key).await.unwrap();
    assert_eq!(calibration.enacted, 1, "calibrated");

    w.sql(&format!(
        "INSERT INTO asdm_calibration VALUES ('{X1}', false, 'solar observation')"
    ))
    .await;
    w.settle().await;
    assert_eq!(
        w.creates(),
        [format!("Calibration/{key}@1"), format!("Ingestion/{key}@1")],
        "no second ingestion, no second calibration"
    );
    let observation = w.row("Observation", &key).await.unwrap();
    assert_eq!(
        observation.generation, 1,
        "calibratability is not the data's spec"
    );
    let calibration = w.row("Calibration", &key).await.unwrap();
    assert!(
        calibration.deleted_at.is_none() && calibration.enacted == 1,
        "the Calibration that ran is kept"
    );
    assert_eq!(
        w.status("Calibration", &key).await["not_calibratable"],
        json!("solar observation"),
        "its status says the ASDM is now marked"
    );
    assert_eq!(
        w.puts(),
        [format!("{X1} {}", not_calibratable("solar observation"))]
    );

    w.sql("UPDATE asdm_calibration SET reason = 'solar observation (Sun in the beam)'")
        .await;
    w.settle().await;
    w.sql("UPDATE asdm_calibration SET reason = NULL").await;
    w.settle().await;
    assert_eq!(w.row("Observation", &key).await.unwrap().generation, 1);
    assert_eq!(w.creates().len(), 2, "still one ingestion, one calibration");
    assert!(w
        .row("Calibration", &key)
        .await
        .unwrap()
        .deleted_at
        .is_none());
    assert_eq!(w.puts().len(), 3, "each reason told to the archive");
    assert_eq!(
        w.stub.mark(X1).unwrap()["calibratable"],
        json!(false),
        "{:?}",
        w.puts()
    );
}

/// Defect 3: when the not-calibratable row goes, the archive is told `calibratable: true`
/// and then, since none ran, a Calibration is made.
async fn unmarking_tells_the_archive_then_calibrates(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.sql(&format!(
        "INSERT INTO reingestion_requests VALUES ('{X2}', 'asdm', '2026-01-01T00:00:00Z')"
    ))
    .await;
    w.sql(&format!(
        "INSERT INTO asdm_calibration VALUES ('{X2}', false, 'no bandpass calibrator')"
    ))
    .await;
    w.settle().await;
    let key = format!("ALMA/{X2}");
    assert_eq!(
        w.creates(),
        [format!("Ingestion/{key}@1")],
        "no calibration"
    );
    assert_eq!(
        w.status("Ingestion", &key).await["calibration_skipped"],
        json!("not calibratable: no bandpass calibrator")
    );

    w.sql("DELETE FROM asdm_calibration").await;
    w.settle().await;
    assert_eq!(
        w.puts(),
        [
            format!("{X2} {}", not_calibratable("no bandpass calibrator")),
            format!("{X2} {}", json!({"calibratable": true})),
        ]
    );
    assert_eq!(
        w.creates(),
        [format!("Calibration/{key}@1"), format!("Ingestion/{key}@1")],
        "calibrated once the archive knows"
    );
    assert_eq!(
        w.status("Ingestion", &key).await["calibration_skipped"],
        Value::Null
    );
    w.settle().await;
    assert_eq!(w.puts().len(), 2, "told once");
}

/// A Calibration not yet asked of Workspaces (its create failed and waits for the backoff)
/// is not wanted once the ASDM is marked: it is withdrawn, and never requested. Unmarked, the
/// ASDM is calibrated after all.
async fn marking_withdraws_a_calibration_never_requested(backend: Backend) {
    use common::workspaces_stub::{Fault, Route};
    let w = World::new(backend, |_| {}).await;
    w.sql(&format!(
        "INSERT INTO reingestion_requests VALUES ('{X1}', 'asdm', '2026-01-01T00:00:00Z')"
    ))
    .await;
    let key = format!("ALMA/{X1}");
    w.engine.run_once().await.unwrap(); // the ingestion is requested (and completes at once)
    w.stub.fault(Route::Create, Fault::Fail(503, "busy"));
    w.clock.advance(61_000);
    w.engine.run_once().await.unwrap(); // complete: its Calibration's create fails
    let calibration = w.row("Calibration", &key).await.expect("derived");
    assert_eq!(
        (calibration.enacted, calibration.backend_code),
        (0, 2),
        "in backoff"
    );

    w.sql(&format!(
        "INSERT INTO asdm_calibration VALUES ('{X1}', false, 'solar observation')"
    ))
    .await;
    w.settle().await;
    let left = w.row("Calibration", &key).await;
    assert!(left.is_none(), "withdrawn and gone: {left:?}");
    let made: Vec<String> = w
        .stub
        .requests()
        .into_iter()
        .map(|r| r.external_id)
        .collect();
    assert_eq!(made, [format!("Ingestion/{key}@1")], "never requested");
    assert_eq!(w.row("Observation", &key).await.unwrap().generation, 1);

    w.sql("DELETE FROM asdm_calibration").await;
    w.settle().await;
    let made: Vec<String> = w
        .stub
        .requests()
        .into_iter()
        .map(|r| r.external_id)
        .collect();
    assert_eq!(
        made,
        [format!("Ingestion/{key}@1"), format!("Calibration/{key}@1")],
        "unmarked: calibrated after all"
    );
}

/// Defect 4: a NULL uid is skipped and reported with its query and row; the row after it
/// and the other queries go on.
async fn a_null_row_is_skipped_while_the_rest_proceed(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.sql(&format!(
        "INSERT INTO reingestion_requests VALUES \
         ('{X1}', 'asdm', '2026-01-01T00:00:00Z'), \
         (NULL, 'asdm', '2026-01-02T00:00:00Z'), \
         ('{X2}', 'asdm', '2026-01-03T00:00:00Z'), \
         ('{X9}', 'calibration', '2026-01-04T00:00:00Z')"
    ))
    .await;
    w.sql(&format!(
        "INSERT INTO asdm_calibration VALUES (NULL, false, 'x'), ('{X9}', false, 'no data')"
    ))
    .await;
    w.settle().await;
    let mut keys: Vec<String> = Vec::new();
    for kind in ["Observation", "CalibrationMark"] {
        let filter = thalamus::store::ListFilter {
            kind: kind.into(),
            keys: vec![],
            state: None,
            limit: 100,
        };
        for r in w.engine.store().list(&filter).await.unwrap() {
            keys.push(format!("{kind} {}", r.key));
        }
    }
    keys.sort();
    let mut expected = vec![
        format!("CalibrationMark ALMA/{X9}"),
        format!("Observation ALMA/calibration/{X9}"),
        format!("Observation ALMA/{X1}"),
        format!("Observation ALMA/{X2}"),
    ];
    expected.sort();
    assert_eq!(keys, expected, "every good row made its object");
    assert_eq!(
        w.poll_errors().await,
        [
            "sources.alma.asdm_query row 2 (requested_at 2026-01-02 00:00:00+00): `uid` is NULL; \
          skipped; sources.alma.not_calibratable_query row 2 (reason x): `uid` is NULL; skipped"
        ],
        "each bad row named by query and position (NULLs sort last), recorded once"
    );
}

/// A table full of bad rows makes one readable report: the first ten are named, the rest
/// counted; every one is counted as skipped.
async fn many_bad_rows_are_named_ten_then_counted(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.sql(&format!(
        "INSERT INTO reingestion_requests VALUES ('{X1}', 'asdm', '2026-01-01T00:00:00Z')"
    ))
    .await;
    w.sql(
        "INSERT INTO reingestion_requests SELECT NULL, 'asdm', '2026-01-01T00:00:00Z' \
         FROM generate_series(1, 25)",
    )
    .await;
    let r = w.engine.run_once().await.unwrap();
    assert_eq!((r.pull.seen, r.pull.created, r.pull.skipped), (1, 1, 25));
    let errors = w.poll_errors().await;
    let said = &errors[0];
    assert_eq!(said.matches("`uid` is NULL; skipped").count(), 10, "{said}");
    assert!(
        said.ends_with("; sources.alma.asdm_query: 15 more rows skipped"),
        "{said}"
    );
}

/// Defect 4: a broken query (its table dropped) is reported, said once, while the other
/// two go on.
async fn a_broken_query_does_not_block_the_others(backend: Backend) {
    let w = World::new(backend, |s| {
        s.sources.alma.calibration_query =
            Some("SELECT uid, requested_at FROM calibration_requests".into());
    })
    .await;
    w.sql(&format!(
        "INSERT INTO reingestion_requests VALUES ('{X1}', 'asdm', '2026-01-01T00:00:00Z')"
    ))
    .await;
    w.sql(&format!(
        "INSERT INTO asdm_calibration VALUES ('{X9}', false, 'no data')"
    ))
    .await;
    w.settle().await;
    assert!(w.row("Observation", &format!("ALMA/{X1}")).await.is_some());
    assert_eq!(w.puts(), [format!("{X9} {}", not_calibratable("no data"))]);
    let errors = w.poll_errors().await;
    let error = errors.first().expect("the broken query is reported");
    assert!(
        error.contains("sources.alma.calibration_query")
            && error.matches("does not exist").count() == 1,
        "named, and said once: {error}"
    );
}

/// The source's health is in `thalamus status` (table and JSON): a working poll that skipped
/// a row is "degraded", names the row, counts it; then a source that cannot be reached is
/// "failing" and names the host, keeping its last success.
async fn the_sources_health_appears_in_status(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.sql(&format!(
        "INSERT INTO reingestion_requests VALUES ('{X1}', 'asdm', '2026-01-01T00:00:00Z'), \
         (NULL, 'asdm', '2026-01-02T00:00:00Z')"
    ))
    .await;
    w.engine.run_once().await.unwrap();
    let status = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_thalamus"))
            .args(["status", "-o", format])
            .current_dir(std::env::temp_dir())
            .env("THALAMUS__DATABASE__URL", &w._db.url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&status("json")).unwrap();
    let alma = &json["sources"][0];
    assert_eq!(
        (
            &alma["source"],
            &alma["state"],
            &alma["seen"],
            &alma["skipped"]
        ),
        (&json!("alma"), &json!("degraded"), &json!(1), &json!(1)),
        "{json}"
    );
    assert_eq!(
        alma["last_error"],
        json!("sources.alma.asdm_query row 2 (requested_at 2026-01-02 00:00:00+00): `uid` is NULL; skipped")
    );
    assert!(alma["last_success_at"].is_string(), "{alma}");
    let table = status("table");
    assert!(
        table.contains("alma") && table.contains("degraded") && table.contains("row 2"),
        "{table}"
    );

    sqlx::query("DROP TABLE reingestion_requests, asdm_calibration")
        .execute(&w.alma)
        .await
        .unwrap();
    w.clock.advance(2_000);
    assert_eq!(w.engine.pull_once().await.failed, 1, "no query worked");
    let json: Value = serde_json::from_str(&status("json")).unwrap();
    let alma = &json["sources"][0];
    assert_eq!(
        (&alma["state"], &alma["failures"]),
        (&json!("failing"), &json!(1))
    );
    assert!(alma["last_success_at"].is_string(), "kept: {alma}");
    let error = alma["last_error"].as_str().unwrap();
    assert_eq!(
        error,
        "sources.alma.asdm_query: relation \"reingestion_requests\" does not exist; \
         sources.alma.calibration_query: relation \"reingestion_requests\" does not exist; \
         sources.alma.not_calibratable_query: relation \"asdm_calibration\" does not exist"
    );
}

/// Timestamps are read natively (no `::text` needed), and as `::text` prints them in a UTC
/// session, so switching a query between the two changes no stored request.
async fn timestamps_are_read_natively(backend: Backend) {
    let w = World::new(backend, |s| {
        // Even asking for another zone: thalamus's sessions are in UTC (sqlx sets it on
        // connecting), and native times are read as instants (binary) anyway.
        let url = s.sources.alma.database_url.take().unwrap();
        s.sources.alma.database_url =
            Some(url.replacen("options=", "options=-c%20TimeZone%3DAmerica%2FDenver%20", 1));
        s.sources.alma.asdm_query = Some(
            "SELECT asdm_uid AS uid, requested_at FROM reingestion_requests WHERE what = 'asdm'"
                .into(),
        );
        s.sources.alma.calibration_query = Some(
            "SELECT asdm_uid AS uid, requested_at::date AS requested_at \
             FROM reingestion_requests WHERE what = 'calibration'"
                .into(),
        );
    })
    .await;
    w.sql(&format!(
        "INSERT INTO reingestion_requests VALUES ('{X1}', 'asdm', '2026-03-01T00:00:00.25Z'), \
         ('{X2}', 'calibration', '2026-03-01T12:34:56Z')"
    ))
    .await;
    w.engine.run_once().await.unwrap();
    let w = &w;
    let requested = |key: String| async move {
        let row = w.row("Observation", &key).await.expect(&key);
        let spec: Value = serde_json::from_str(&row.spec).unwrap();
        spec["requested_at"].clone()
    };
    let as_text: String = sqlx::query_scalar(
        "SELECT requested_at::text FROM reingestion_requests WHERE what = 'asdm'",
    )
    .fetch_one(&w.alma)
    .await
    .unwrap();
    assert_eq!(as_text, "2026-03-01 00:00:00.25+00");
    assert_eq!(requested(format!("ALMA/{X1}")).await, json!(as_text));
    assert_eq!(
        requested(format!("ALMA/calibration/{X2}")).await,
        json!("2026-03-01"),
        "a date"
    );
}

/// An unreachable metadata database is said at once, naming the host (not "pool timed out"
/// half a minute later), the source backs off, and shutdown does not wait for a connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_named_at_once_and_shutdown_does_not_wait() {
    // A port nobody listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let w = World::new(Backend::Sqlite, |s| {
        s.sources.alma.database_url = Some(format!(
            "postgres://reader:s3cret@127.0.0.1:{port}/metadata"
        ));
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(w.engine.pull_once().await.failed, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let errors = w.poll_errors().await;
    let error = &errors[0];
    assert!(
        error.starts_with(&format!(
            "cannot reach the ALMA metadata database at 127.0.0.1:{port}/metadata: "
        )) && !error.contains("s3cret"),
        "{error}"
    );
    let step = w.engine_pull_delay();
    assert_eq!(
        step,
        std::time::Duration::from_secs(2),
        "first failure: the interval"
    );
    w.engine.pull_once().await;
    assert_eq!(
        w.engine_pull_delay(),
        std::time::Duration::from_secs(4),
        "then backs off"
    );

    // A host that accepts and never answers: shutdown must not wait for the connect timeout.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = blackhole.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            held.push(socket);
            let _ = accepted_tx.send(());
        }
    });
    let w = World::new(Backend::Sqlite, |s| {
        s.sources.alma.database_url = Some(format!("postgres://reader@{addr}/metadata"));
        s.sources.alma.connect_timeout_seconds = 600;
        s.sync.shutdown_grace_seconds = 30;
    })
    .await;
    let engine = w.engine.clone();
    let run = tokio::spawn(async move { engine.run().await });
    accepted.recv().await.expect("the poll connects");
    let asked = std::time::Instant::now();
    w.engine.shutdown_token().cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), run)
        .await
        .expect("run returns without waiting for the connect")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() < std::time::Duration::from_secs(5));
}

/// `thalamus check` asks the metadata database about each query's columns: a wrong type is
/// an error naming the query, timestamps pass, and an unreachable database is a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_the_queries_columns() {
    let w = World::new(Backend::Sqlite, |_| {}).await;
    let config = tempfile::NamedTempFile::new().unwrap();
    // Relative paths in a config file are relative to its directory: name the shipped graph.
    let deps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model-deps.json");
    std::fs::write(
        config.path(),
        format!(
            "log:\n  level: warn\nmodel_deps: {}\nrules:\n  paths: [{}]\n",
            deps.display(),
            deps.with_file_name("rules").display()
        ),
    )
    .unwrap();
    let check = |url: &str, asdm_query: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_thalamus"))
            .arg("check")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("THALAMUS_CONFIG", config.path())
            .env("THALAMUS__SOURCES__ALMA__ENABLED", "true")
            .env("THALAMUS__SOURCES__ALMA__DATABASE_URL", url)
            .env("THALAMUS__SOURCES__ALMA__ASDM_QUERY", asdm_query)
            .env(
                "THALAMUS__SOURCES__ALMA__NOT_CALIBRATABLE_QUERY",
                NOT_CALIBRATABLE_QUERY,
            )
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let url = w._alma_db.url.clone();
    let (ok, text) = check(
        &url,
        "SELECT asdm_uid AS uid, requested_at FROM reingestion_requests",
    );
    assert!(ok, "{text}");
    assert!(text.contains("alma: sources.alma.asdm_query OK"), "{text}");
    let (ok, text) = check(
        &url,
        "SELECT asdm_uid AS uid, length(what) AS requested_at FROM reingestion_requests",
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("sources.alma.asdm_query: column `requested_at` is int4; it must be timestamptz, timestamp, date or text"),
        "{text}"
    );
    let (ok, text) = check(
        "postgres://reader@127.0.0.1:1/metadata",
        "SELECT asdm_uid AS uid, requested_at FROM reingestion_requests",
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: cannot reach the ALMA metadata database at 127.0.0.1:1/metadata"),
        "{text}"
    );
}

/// A store written before this change: a CalibrationMark under the bare uid and an
/// Observation whose spec carries `not_calibratable`. Migration 0010 moves the mark to
/// `ALMA/<uid>` (its history too) and strips the field so the spec is, byte for byte, what the
/// source now upserts: unchanged, so the ASDM is not ingested again.
async fn stored_keys_and_specs_are_migrated(backend: Backend) {
    use thalamus::store::Db;
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let uid = "uid://A002/X1/X1";
    let old_spec = format!(
        r#"{{"instrument":"ALMA","location":"{uid}","name":"{uid}","not_calibratable":"solar \"Sun\" \\ é","product":"sdm","requested_at":"2026-01-01 00:00:00+00"}}"#
    );
    let statements = [
        format!(
            "INSERT INTO objects (kind, key, spec, status, generation, enacted, created_at, updated_at) \
             VALUES ('CalibrationMark', '{uid}', '{{\"reason\":\"solar\",\"uid\":\"{uid}\"}}', \
             '{{\"marked_generation\":1}}', 1, 1, 0, 0)"
        ),
        format!(
            "INSERT INTO objects (kind, key, spec, generation, enacted, created_at, updated_at) \
             VALUES ('Observation', 'ALMA/{uid}', '{}', 1, 1, 0, 0)",
            old_spec.replace('\'', "''")
        ),
        format!(
            "INSERT INTO executions (kind, key, step, generation, cause, holder, started_at, duration_ms, outcome) \
             VALUES ('CalibrationMark', '{uid}', 'sync', 1, 'new', 'h', 0, 1, 'ok')"
        ),
        "DELETE FROM _sqlx_migrations WHERE version = 10".to_string(),
    ];
    for sql in &statements {
        match store.db() {
            Db::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
            Db::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        }
        .unwrap();
    }
    store.migrate().await.unwrap();
    assert!(store.get("CalibrationMark", uid).await.unwrap().is_none());
    let mark = store
        .get("CalibrationMark", &format!("ALMA/{uid}"))
        .await
        .unwrap()
        .expect("moved to ALMA/<uid>");
    assert_eq!(
        (mark.generation, mark.enacted),
        (1, 1),
        "nothing to put again"
    );
    assert_eq!(
        store
            .history("CalibrationMark", &format!("ALMA/{uid}"), 5)
            .await
            .unwrap()
            .len(),
        1,
        "its history moved with it"
    );
    let obs = store
        .get("Observation", &format!("ALMA/{uid}"))
        .await
        .unwrap()
        .unwrap();
    let now = thalamus::steps::models::Observation {
        instrument: thalamus::steps::models::Instrument::ALMA,
        product: thalamus::steps::models::Product::Sdm,
        name: uid.into(),
        location: uid.into(),
        files: vec![],
        requested_at: Some("2026-01-01 00:00:00+00".into()),
        missing_files: vec![],
    };
    assert_eq!(
        obs.spec,
        thalamus::store::canonical(&serde_json::to_value(&now).unwrap()),
        "what the source upserts now"
    );
    assert_eq!(obs.generation, 1);
}

both_backends!(
    a_mark_made_by_a_rule_is_not_lifted_by_the_source,
    many_bad_rows_are_named_ten_then_counted,
    marking_withdraws_a_calibration_never_requested,
    stored_keys_and_specs_are_migrated,
    the_sources_health_appears_in_status,
    timestamps_are_read_natively,
    a_mark_for_an_asdm_never_reingested_is_put_once,
    marking_a_calibrated_asdm_keeps_its_calibration,
    unmarking_tells_the_archive_then_calibrates,
    a_null_row_is_skipped_while_the_rest_proceed,
    a_broken_query_does_not_block_the_others,
);
