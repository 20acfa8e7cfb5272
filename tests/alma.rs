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
        }
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
        let history = self.engine.store().history("pull", "alma", 10).await.unwrap();
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
    assert!(w.creates().is_empty(), "nothing to ingest: {:?}", w.creates());
    let mark = w.row("CalibrationMark", &format!("ALMA/{X9}")).await;
    assert!(
        mark.is_some(),
        "one key scheme for every ALMA kind: ALMA/<uid>"
    );
    w.settle().await;
    assert_eq!(w.puts().len(), 1, "in sync: put once");
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
    assert_eq!(observation.generation, 1, "calibratability is not the data's spec");
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
    assert!(w.row("Calibration", &key).await.unwrap().deleted_at.is_none());
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
    assert_eq!(w.creates(), [format!("Ingestion/{key}@1")], "no calibration");
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
    assert_eq!(w.status("Ingestion", &key).await["calibration_skipped"], Value::Null);
    w.settle().await;
    assert_eq!(w.puts().len(), 2, "told once");
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
    let errors = w.poll_errors().await;
    let said = errors.join("\n");
    assert!(
        said.contains("sources.alma.asdm_query row 2")
            && said.contains("sources.alma.not_calibratable_query row 1"),
        "each bad row named by query and position: {said}"
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

both_backends!(
    a_mark_for_an_asdm_never_reingested_is_put_once,
    marking_a_calibrated_asdm_keeps_its_calibration,
    unmarking_tells_the_archive_then_calibrates,
    a_null_row_is_skipped_while_the_rest_proceed,
    a_broken_query_does_not_block_the_others,
);
