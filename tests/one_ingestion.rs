//! One ingestion of an observation at a time. An SDM is ingested once it is complete: every
//! BDF its Main.xml references has arrived and settled, or the wait for missing ones
//! (`sources.vla.missing_bdf_wait_seconds`) has passed, and then the missing ones are named.
//! An object never has two Workspaces requests in flight: a newer generation waits for the
//! request of an older one (or, with `on_new_generation: cancel`, cancels it first), and only
//! the latest generation is requested; a deletion does the same. Real directories, the
//! shipped steps, a Workspaces stand-in that checks every create against the requests still
//! running, and a manual clock: no sleeps.

mod common;

use std::sync::Arc;

use common::brokers::eventually;
use common::gate::Gate;
use common::workspaces_stub::{Fault, Route, Stub};
use common::{Backend, TestDb, T0};
use serde_json::{json, Value};
use thalamus::clock::{Clock, ManualClock};
use thalamus::config::Settings;
use thalamus::engine::{Engine, EventReport};
use thalamus::graph::DepGraph;
use thalamus::step::{Event, Transport};
use thalamus::steps::models::{DataFile, Instrument, Observation, Product};
use thalamus::steps::workspaces::{OnNewGeneration, Target};
use thalamus::store::ObjectRow;

/// Every shipped step (sources on temporary directories), Workspaces and the archive on a
/// stand-in, on a manual clock.
struct World {
    engine: Engine,
    clock: ManualClock,
    stub: Stub,
    dir: tempfile::TempDir,
    _db: TestDb,
}

impl World {
    async fn new(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        let stub = Stub::start().await;
        let dir = tempfile::tempdir().unwrap();
        for d in ["sdm", "bdf"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let db = TestDb::new(backend).await;
        let mut s = common::settings(&db.url);
        s.sources.vla.path = dir.path().join("sdm");
        s.sources.vla.bdf_path = Some(dir.path().join("bdf"));
        s.sources.vla.settle_seconds = 10;
        s.sources.vlba.enabled = false;
        s.workspaces.url = stub.workspaces_url();
        s.workspaces.timeout_seconds = 5;
        s.archive.url = stub.archive_url();
        tweak(&mut s);
        let clock = ManualClock::at(T0);
        let registry = thalamus::app::registry(&s).unwrap();
        let graph = DepGraph::parse(
            "model-deps.json",
            include_str!("../model-deps.json"),
            &registry.sync_kinds(),
        )
        .unwrap();
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
            dir,
            _db: db,
        }
    }

    async fn once(&self) -> thalamus::engine::OnceReport {
        self.engine.run_once().await.unwrap()
    }

    /// Runs the engine `seconds` later.
    async fn later(&self, seconds: i64) -> thalamus::engine::OnceReport {
        self.clock.advance(seconds * 1000);
        self.once().await
    }

    /// Runs the engine once `kind key` is due again (after its backoff or deferral).
    async fn when_due(&self, kind: &str, key: &str) -> thalamus::engine::OnceReport {
        let due = self
            .row(kind, key)
            .await
            .next_attempt_at
            .expect("scheduled");
        self.clock.set(due.max(self.clock.now_ms()));
        self.once().await
    }

    fn write(&self, rel: &str, content: &[u8]) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// An SDM whose Main.xml references `uid:///evla/bdf/<n>` for each of `bdfs`.
    fn sdm(&self, name: &str, bdfs: &[u64]) {
        let refs: String = bdfs
            .iter()
            .map(|n| format!("<DataUID><EntityRef entityId=\"uid:///evla/bdf/{n}\"/></DataUID>"))
            .collect();
        self.write(
            &format!("sdm/{name}/Main.xml"),
            format!("<MainTable>{refs}</MainTable>").as_bytes(),
        );
        self.write(&format!("sdm/{name}/Scan.xml"), b"<ScanTable/>");
    }

    fn bdf(&self, n: u64) {
        self.write(&format!("bdf/uid____evla_bdf_{n}"), &[7u8; 100]);
    }

    fn bdf_path(&self, n: u64) -> String {
        self.dir
            .path()
            .join(format!("bdf/uid____evla_bdf_{n}"))
            .to_string_lossy()
            .into_owned()
    }

    async fn row(&self, kind: &str, key: &str) -> ObjectRow {
        self.engine
            .store()
            .get(kind, key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{kind} {key} missing"))
    }

    async fn exists(&self, kind: &str, key: &str) -> bool {
        self.engine.store().get(kind, key).await.unwrap().is_some()
    }

    async fn status(&self, kind: &str, key: &str) -> Value {
        serde_json::from_str(&self.row(kind, key).await.status).unwrap()
    }

    async fn spec(&self, kind: &str, key: &str) -> Value {
        serde_json::from_str(&self.row(kind, key).await.spec).unwrap()
    }

    /// Upserts VLA observation `name` as it stands with `files` data files: each file more
    /// is a late BDF, and a new generation.
    async fn observe(&self, name: &str, files: usize) -> String {
        let o = Observation {
            instrument: Instrument::VLA,
            product: Product::Sdm,
            name: name.into(),
            location: format!("/lustre/vla/{name}"),
            files: (0..files)
                .map(|i| DataFile {
                    path: format!("uid____evla_bdf_{i}"),
                    size: 1000,
                    mtime_ns: 1_700_000_000_000_000_000,
                })
                .collect(),
            requested_at: None,
            missing_files: vec![],
        };
        let key = o.key();
        self.engine.models().upsert(&key, &o).await.unwrap();
        key
    }

    /// The external ids of the create calls of `kind`, in order.
    fn creates(&self, kind: &str) -> Vec<String> {
        self.stub
            .received()
            .into_iter()
            .filter(|r| r.raw.ends_with("/request/create"))
            .filter_map(|r| r.body.unwrap()["external_id"].as_str().map(String::from))
            .filter(|id| id.starts_with(&format!("{kind}/")))
            .collect()
    }

    /// The files named in the create call for `external_id`.
    fn created_files(&self, external_id: &str) -> Vec<String> {
        let body = self
            .stub
            .received()
            .into_iter()
            .filter_map(|r| r.body)
            .find(|b| b["external_id"] == json!(external_id))
            .unwrap_or_else(|| panic!("no create for {external_id}"));
        body["parameters"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let path = f["path"].as_str().unwrap();
                path.rsplit('/').next().unwrap().to_string()
            })
            .collect()
    }

    /// A capability-status message for request `id`, fed in as if from the broker.
    async fn status_message(&self, id: i64, state: &str, message: &str, at: &str) -> EventReport {
        let payload = json!({"type": "capability-status", "capability_request_id": id,
            "state": state, "message": message, "timestamp": at});
        self.event("workspaces.capability-status", payload).await
    }

    async fn event(&self, topic: &str, payload: Value) -> EventReport {
        let event = Event {
            transport: Transport::Direct,
            topic: topic.into(),
            routing_key: None,
            payload: serde_json::to_vec(&payload).unwrap(),
            headers: vec![],
            position: "test".into(),
        };
        self.engine.apply_event(&event).await.unwrap()
    }

    /// The audit trail of `kind key`, oldest first, as `outcome: detail` lines.
    async fn history(&self, kind: &str, key: &str) -> Vec<String> {
        let mut rows = self.engine.store().history(kind, key, 100).await.unwrap();
        rows.reverse();
        rows.into_iter()
            .map(|e| format!("{} {}: {}", e.step, e.outcome, e.error.unwrap_or_default()))
            .collect()
    }

    /// Fails the test if any object ever had two requests in flight at once.
    fn assert_one_in_flight(&self) {
        assert_eq!(
            self.stub.overlaps(),
            Vec::<String>::new(),
            "an object had two requests in flight at once"
        );
    }
}

fn cancelling(name: &str) -> Option<Target> {
    Some(Target::capability(name).with_on_new_generation(OnNewGeneration::Cancel))
}

const SDM: &str = "24A-010.sb1.eb1";
const KEY: &str = "VLA/24A-010.sb1.eb1";

/// Three BDFs, one 30 s late (settle window 10 s): nothing is ingested while it is missing,
/// then one ingestion with all three.
async fn an_sdm_is_ingested_once_every_bdf_has_arrived(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.sdm(SDM, &[1, 2, 3]);
    w.bdf(1);
    w.bdf(2);
    w.once().await;
    w.later(10).await;
    assert!(
        !w.exists("Observation", KEY).await,
        "settled, but BDF 3 is missing: not ready"
    );
    assert!(w.creates("Ingestion").is_empty());
    w.later(20).await;
    w.bdf(3); // 30 s late
    w.once().await;
    assert!(w.creates("Ingestion").is_empty(), "BDF 3 must settle first");
    w.later(10).await;
    assert_eq!(w.creates("Ingestion"), [format!("Ingestion/{KEY}@1")]);
    assert_eq!(
        w.created_files(&format!("Ingestion/{KEY}@1")),
        [
            "uid____evla_bdf_1",
            "uid____evla_bdf_2",
            "uid____evla_bdf_3",
            "Main.xml",
            "Scan.xml"
        ]
    );
    assert_eq!(w.spec("Observation", KEY).await.get("missing_files"), None);
    // It completes and is calibrated; nothing is ever ingested again.
    w.stub.set_state(1, "Complete", None);
    w.later(60).await;
    w.later(3600).await;
    assert_eq!(w.creates("Ingestion").len(), 1, "one ingestion");
    assert_eq!(w.creates("Calibration").len(), 1);
    w.assert_one_in_flight();
}

/// The wait for missing BDFs passes: the SDM is ingested without BDF 3, naming it; when it
/// lands it is ingested once more.
async fn past_the_wait_an_sdm_is_ingested_naming_what_is_missing(backend: Backend) {
    common::logs::capture();
    let w = World::new(backend, |s| s.sources.vla.missing_bdf_wait_seconds = 20).await;
    w.sdm(SDM, &[1, 2, 3]);
    w.bdf(1);
    w.bdf(2);
    w.once().await;
    w.later(10).await;
    assert!(w.creates("Ingestion").is_empty(), "still waiting for BDF 3");
    w.later(10).await;
    assert_eq!(w.creates("Ingestion"), [format!("Ingestion/{KEY}@1")]);
    let missing = json!([w.bdf_path(3)]);
    assert_eq!(w.spec("Observation", KEY).await["missing_files"], missing);
    assert_eq!(w.status("Ingestion", KEY).await["missing_files"], missing);
    let row = w.row("Ingestion", KEY).await;
    assert_eq!(
        row.backend_status,
        format!(
            "capability request 1 (ingest_vla) is Submitted; without 1 missing file: {}",
            w.bdf_path(3)
        )
    );
    let dir = w.dir.path().to_string_lossy().into_owned();
    let logged = common::logs::lines_with(&["missing", &dir, "uid____evla_bdf_3"]);
    assert_eq!(logged.len(), 1, "{logged:?}");
    w.stub.set_state(1, "Complete", None);
    w.later(60).await;
    // BDF 3 lands: one more ingestion, with it.
    w.bdf(3);
    w.later(1).await;
    w.later(10).await;
    assert_eq!(
        w.creates("Ingestion"),
        [format!("Ingestion/{KEY}@1"), format!("Ingestion/{KEY}@2")]
    );
    assert!(w
        .created_files(&format!("Ingestion/{KEY}@2"))
        .contains(&"uid____evla_bdf_3".to_string()));
    assert_eq!(w.spec("Observation", KEY).await.get("missing_files"), None);
    assert_eq!(w.status("Ingestion", KEY).await.get("missing_files"), None);
    w.assert_one_in_flight();
}

/// A marker means "complete", whatever is missing: no wait, the missing BDF named.
async fn a_marker_means_complete_whatever_is_missing(backend: Backend) {
    let w = World::new(backend, |s| {
        s.sources.vla.marker_file = Some("DONE".into());
        s.sources.vla.missing_bdf_wait_seconds = 3600;
    })
    .await;
    w.sdm(SDM, &[1, 2]);
    w.bdf(1);
    w.write(&format!("sdm/{SDM}/DONE"), b"");
    w.once().await;
    assert_eq!(w.creates("Ingestion"), [format!("Ingestion/{KEY}@1")]);
    assert_eq!(
        w.spec("Observation", KEY).await["missing_files"],
        json!([w.bdf_path(2)])
    );
}

/// A late BDF while the first ingestion runs: no second request until the first ends, then
/// exactly one, for the latest generation (three late BDFs: still one more request). Status
/// messages for the old request still apply while it runs.
async fn a_new_generation_waits_for_the_request_in_flight(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let key = w.observe(SDM, 1).await;
    w.once().await;
    w.stub.set_state(1, "Executing", None);
    w.later(60).await;
    let first = w.stub.received().len();
    w.observe(SDM, 2).await;
    w.once().await;
    assert_eq!(
        w.creates("Ingestion").len(),
        1,
        "no second request while the first runs"
    );
    assert_eq!(
        w.stub.lines_after(first),
        ["GET /workspaces/capability/request/1"]
    );
    let row = w.row("Ingestion", &key).await;
    assert_eq!((row.generation, row.enacted, row.backend_code), (2, 0, 0));
    assert_eq!(
        row.backend_status,
        "waiting for capability request 1 (ingest_vla) of generation 1 to finish; \
         generation 2 is requested next (on_new_generation: wait)"
    );
    let status = w.status("Ingestion", &key).await;
    assert_eq!(
        (
            &status["request_id"],
            &status["state"],
            &status["generation"],
            &status["waiting_generation"]
        ),
        (&json!(1), &json!("Executing"), &json!(1), &json!(2))
    );
    // Two more late BDFs: they coalesce behind the one in flight.
    w.observe(SDM, 3).await;
    w.once().await;
    w.observe(SDM, 4).await;
    w.once().await;
    assert_eq!(w.creates("Ingestion").len(), 1);
    assert_eq!(
        w.status("Ingestion", &key).await["waiting_generation"],
        json!(4)
    );
    // The old request's status messages still find it.
    let applied = w
        .status_message(1, "Executing", "copying 80%", "2026-01-01T00:05:00Z")
        .await;
    assert!(matches!(applied, EventReport::Applied(_)), "{applied:?}");
    assert_eq!(
        w.status("Ingestion", &key).await["message"],
        json!("copying 80%")
    );
    w.once().await;
    assert_eq!(w.creates("Ingestion").len(), 1);
    // It ends: exactly one request follows, for the latest generation.
    w.stub.set_state(1, "Complete", Some("ingested"));
    let applied = w
        .status_message(1, "Complete", "ingested", "2026-01-01T00:06:00Z")
        .await;
    assert!(matches!(applied, EventReport::Applied(_)), "{applied:?}");
    w.once().await;
    assert_eq!(
        w.creates("Ingestion"),
        [format!("Ingestion/{key}@1"), format!("Ingestion/{key}@4")]
    );
    assert_eq!(w.created_files(&format!("Ingestion/{key}@4")).len(), 4);
    let status = w.status("Ingestion", &key).await;
    assert_eq!(
        (
            &status["request_id"],
            &status["generation"],
            status.get("waiting_generation")
        ),
        (&json!(2), &json!(4), None)
    );
    assert!(
        !w.exists("Calibration", &key).await,
        "generation 1 completed, but it is not the latest: nothing to calibrate yet"
    );
    w.stub.set_state(2, "Complete", None);
    w.later(60).await;
    assert_eq!(w.row("Ingestion", &key).await.enacted, 4);
    assert_eq!(w.creates("Calibration").len(), 1);
    w.later(3600).await;
    assert_eq!(w.creates("Ingestion").len(), 2);
    // The audit trail records the wait.
    let history = w.history("Ingestion", &key).await;
    assert!(
        history
            .iter()
            .any(|h| h.contains("waiting for capability request 1 (ingest_vla) of generation 1")),
        "{history:#?}"
    );
    w.assert_one_in_flight();
}

/// The old request's Complete arrives as a status message while the waiting step's own look
/// at that request (which still says Executing) is in flight: the message wins, and the newest
/// generation is requested at once, not a poll interval later.
async fn the_old_requests_completion_racing_the_waiting_step_is_not_lost(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let key = w.observe(SDM, 1).await;
    w.once().await;
    w.stub.set_state(1, "Executing", None);
    w.observe(SDM, 2).await;
    w.once().await;
    assert_eq!(w.creates("Ingestion").len(), 1);
    let gate = Gate::new();
    w.stub.fault(Route::Get, Fault::Hold(gate.clone()));
    w.clock.advance(60_000);
    let engine = w.engine.clone();
    let pass = tokio::spawn(async move { engine.sync_pass().await });
    let polls = |w: &World| {
        w.stub
            .lines()
            .iter()
            .filter(|l| *l == "GET /workspaces/capability/request/1")
            .count()
    };
    eventually("the held look at request 1", || async { polls(&w) == 2 }).await;
    w.stub.set_state(1, "Complete", None);
    let applied = w
        .status_message(1, "Complete", "ingested", "2026-01-01T00:02:00Z")
        .await;
    assert!(matches!(applied, EventReport::Applied(_)), "{applied:?}");
    gate.open();
    pass.await.unwrap().unwrap();
    w.once().await;
    assert_eq!(
        w.creates("Ingestion"),
        [format!("Ingestion/{key}@1"), format!("Ingestion/{key}@2")],
        "requested in the same minute the old one completed"
    );
    assert_eq!(polls(&w), 2, "the message said it: no need to look again");
    w.assert_one_in_flight();
}

/// The archive's ingestion-complete for an observation whose newer generation waits completes
/// the request in flight (its generation), not the generation waiting behind it.
async fn ingestion_complete_completes_the_request_in_flight(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let key = w.observe(SDM, 1).await;
    w.once().await;
    w.observe(SDM, 2).await;
    w.once().await;
    assert_eq!(w.creates("Ingestion").len(), 1);
    w.stub.set_state(1, "Complete", None);
    let applied = w
        .event(
            "archive.events",
            json!({"application": "ingestion", "type": "ingestion-complete",
                   "instrument": "VLA", "name": SDM}),
        )
        .await;
    assert!(matches!(applied, EventReport::Applied(_)), "{applied:?}");
    assert!(
        !w.exists("Calibration", &key).await,
        "generation 2 is not ingested yet"
    );
    w.once().await;
    assert_eq!(
        w.creates("Ingestion"),
        [format!("Ingestion/{key}@1"), format!("Ingestion/{key}@2")]
    );
    assert!(!w.exists("Calibration", &key).await);
    w.assert_one_in_flight();
}

/// With `on_new_generation: cancel` the request in flight is cancelled, and only once it has
/// ended is the new generation requested.
async fn cancel_supersedes_the_request_in_flight(backend: Backend) {
    let w = World::new(backend, |s| {
        s.workspaces.ingestion.vla = cancelling("ingest_vla")
    })
    .await;
    let key = w.observe(SDM, 1).await;
    w.once().await;
    w.stub.set_state(1, "Executing", None);
    let first = w.stub.received().len();
    w.observe(SDM, 2).await;
    w.once().await;
    assert_eq!(
        w.stub.lines_after(first),
        [
            "GET /workspaces/capability/request/1",
            "POST /workspaces/capability/request/1/cancel"
        ]
    );
    assert_eq!(w.stub.requests()[0].state, "Cancelled");
    let row = w.row("Ingestion", &key).await;
    assert_eq!(
        row.backend_status,
        "cancelled capability request 1 (ingest_vla) of generation 1; \
         generation 2 is requested next (on_new_generation: cancel)"
    );
    w.when_due("Ingestion", &key).await;
    assert_eq!(
        w.stub.lines_after(first + 2),
        [
            "GET /workspaces/capability/requests?external_id=Ingestion/VLA/24A-010.sb1.eb1@2",
            "POST /workspaces/capability/ingest_vla/request/create",
            "POST /workspaces/capability/request/2/submit"
        ]
    );
    assert_eq!(
        w.row("Ingestion", &key).await.backend_status,
        "capability request 2 (ingest_vla) is Submitted; it follows capability request 1 \
         of generation 1, which ended Cancelled"
    );
    let history = w.history("Ingestion", &key).await;
    assert!(
        history
            .iter()
            .any(|h| h.contains("cancelled capability request 1 (ingest_vla) of generation 1")),
        "{history:#?}"
    );
    w.assert_one_in_flight();
}

/// A cancel that fails is retried with backoff, never skipped: no new request before the old
/// one is cancelled.
async fn a_failing_cancel_is_retried_never_skipped(backend: Backend) {
    let w = World::new(backend, |s| {
        s.workspaces.ingestion.vla = cancelling("ingest_vla")
    })
    .await;
    let key = w.observe(SDM, 1).await;
    w.once().await;
    w.stub
        .fault(Route::Cancel, Fault::Fail(503, "cancel unavailable"));
    w.stub
        .fault(Route::Cancel, Fault::Fail(409, "busy, try later"));
    w.observe(SDM, 2).await;
    let r = w.once().await;
    assert_eq!(r.sync.failed, 1);
    let row = w.row("Ingestion", &key).await;
    assert_eq!((row.attempts, row.next_attempt_at), (1, Some(T0 + 10_000)));
    assert!(
        row.last_error.as_deref().unwrap().starts_with(
            "cancelling capability request 1 (ingest_vla) of generation 1 \
             (on_new_generation: cancel): Workspaces answered 503"
        ),
        "{:?}",
        row.last_error
    );
    // Refused while still running: a failure too, backed off; it is not taken as ended.
    w.when_due("Ingestion", &key).await;
    let row = w.row("Ingestion", &key).await;
    assert_eq!(row.attempts, 2);
    assert!(
        row.last_error
            .as_deref()
            .unwrap()
            .contains("busy, try later"),
        "{:?}",
        row.last_error
    );
    assert_eq!(w.creates("Ingestion").len(), 1, "never skipped");
    w.when_due("Ingestion", &key).await;
    assert_eq!(w.stub.requests()[0].state, "Cancelled");
    w.when_due("Ingestion", &key).await;
    assert_eq!(w.creates("Ingestion").len(), 2);
    assert_eq!(w.stub.cancels(), [1, 1, 1]);
    w.assert_one_in_flight();
}

/// A deletion waits for the request in flight (`wait`) or cancels it (`cancel`), then
/// finishes; either way it says which.
async fn a_deletion_waits_for_or_cancels_the_request_in_flight(backend: Backend) {
    for cancel in [false, true] {
        let w = World::new(backend, |s| {
            if cancel {
                s.workspaces.ingestion.vla = cancelling("ingest_vla");
            }
        })
        .await;
        let key = w.observe(SDM, 1).await;
        w.once().await;
        let now = w.clock.now_ms();
        w.engine
            .store()
            .delete("Observation", &key, now)
            .await
            .unwrap();
        w.once().await;
        assert!(
            w.exists("Ingestion", &key).await,
            "cancel {cancel}: not deleted while its request may run"
        );
        let row = w.row("Ingestion", &key).await;
        if cancel {
            assert_eq!(
                row.backend_status,
                "deleting: cancelled capability request 1 (ingest_vla) of generation 1 \
                 (on_new_generation: cancel)"
            );
            assert_eq!(w.stub.requests()[0].state, "Cancelled");
        } else {
            assert_eq!(
                row.backend_status,
                "deleting once capability request 1 (ingest_vla) of generation 1 has \
                 finished (on_new_generation: wait)"
            );
            w.later(3600).await;
            assert!(w.exists("Ingestion", &key).await, "still running");
            w.stub.set_state(1, "Complete", None);
        }
        w.when_due("Ingestion", &key).await;
        assert!(!w.exists("Ingestion", &key).await, "cancel {cancel}");
        assert!(!w.exists("Observation", &key).await, "cancel {cancel}");
        assert_eq!(w.stub.cancels().len(), usize::from(cancel));
    }
}

/// The answer to the first create was lost (the request exists, Created, but its id was never
/// recorded) and a newer generation arrives: the lost request is found by its external id and
/// waited for (submitted first, as it was meant to run), never left beside a second one.
async fn a_request_whose_create_answer_was_lost_is_still_waited_for(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.stub.fault(Route::Create, Fault::Lost(500));
    let key = w.observe(SDM, 1).await;
    let r = w.once().await;
    assert_eq!(r.sync.failed, 1);
    assert_eq!(w.stub.requests()[0].state, "Created");
    w.observe(SDM, 2).await;
    w.when_due("Ingestion", &key).await;
    assert_eq!(w.creates("Ingestion").len(), 1);
    assert_eq!(w.stub.requests()[0].state, "Submitted");
    assert_eq!(
        w.row("Ingestion", &key).await.backend_status,
        "waiting for capability request 1 (ingest_vla) of generation 1 to finish; \
         generation 2 is requested next (on_new_generation: wait)"
    );
    w.stub.set_state(1, "Complete", None);
    w.later(60).await;
    assert_eq!(
        w.creates("Ingestion"),
        [format!("Ingestion/{key}@1"), format!("Ingestion/{key}@2")]
    );
    w.assert_one_in_flight();
}

/// Calibrations follow the same rule, and so do workflows.
async fn calibration_workflows_wait_too(backend: Backend) {
    let w = World::new(backend, |s| {
        s.workspaces.calibration.vla = Some(Target::workflow("std_cal_wf"));
    })
    .await;
    let key = w.observe(SDM, 1).await;
    w.once().await;
    w.stub.set_state(1, "Complete", None);
    w.later(60).await;
    assert_eq!(w.creates("Calibration"), [format!("Calibration/{key}@1")]);
    let calibration = w.stub.requests()[1].id;
    // A late BDF: ingested again; its completion asks for a new calibration, which waits.
    w.observe(SDM, 2).await;
    w.once().await;
    let ingestion = w.stub.requests()[2].id;
    w.stub.set_state(ingestion, "Complete", None);
    w.later(60).await;
    assert_eq!(w.row("Ingestion", &key).await.enacted, 2);
    assert_eq!(w.row("Calibration", &key).await.generation, 2);
    assert_eq!(w.creates("Calibration").len(), 1);
    assert_eq!(
        w.row("Calibration", &key).await.backend_status,
        format!(
            "waiting for workflow request {calibration} (std_cal_wf) of generation 1 to finish; \
             generation 2 is requested next (on_new_generation: wait)"
        )
    );
    w.stub
        .set_state(calibration, "Failed", Some("no calibrator"));
    w.when_due("Calibration", &key).await;
    assert_eq!(
        w.creates("Calibration"),
        [
            format!("Calibration/{key}@1"),
            format!("Calibration/{key}@2")
        ]
    );
    w.assert_one_in_flight();
}

both_backends!(
    an_sdm_is_ingested_once_every_bdf_has_arrived,
    past_the_wait_an_sdm_is_ingested_naming_what_is_missing,
    a_marker_means_complete_whatever_is_missing,
    a_new_generation_waits_for_the_request_in_flight,
    the_old_requests_completion_racing_the_waiting_step_is_not_lost,
    ingestion_complete_completes_the_request_in_flight,
    cancel_supersedes_the_request_in_flight,
    a_failing_cancel_is_retried_never_skipped,
    a_deletion_waits_for_or_cancels_the_request_in_flight,
    a_request_whose_create_answer_was_lost_is_still_waited_for,
    calibration_workflows_wait_too,
);

#[test]
fn on_new_generation_is_read_per_target() {
    let f = {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(
            b"workspaces:\n  ingestion:\n    vla: {capability: ingest_vla, on_new_generation: cancel}\n",
        )
        .unwrap();
        f
    };
    let s = Settings::load_with_env(Some(f.path()), None, Vec::new()).unwrap();
    assert_eq!(s.workspaces.ingestion.vla, cancelling("ingest_vla"));
    assert_eq!(
        s.workspaces.ingestion.alma,
        Some(Target::capability("ingest_alma")),
        "wait is the default"
    );
    assert_eq!(
        s.workspaces
            .ingestion
            .alma
            .as_ref()
            .unwrap()
            .on_new_generation,
        OnNewGeneration::Wait
    );
    assert_eq!(s.sources.vla.missing_bdf_wait_seconds, 600);
    let bad = |text: &str| {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Settings::load_with_env(Some(f.path()), None, Vec::new())
            .unwrap_err()
            .to_string()
    };
    let err =
        bad("workspaces:\n  ingestion:\n    vla: {capability: x, on_new_generation: later}\n");
    assert!(err.contains("later"), "{err}");
    let err = bad("workspaces:\n  ingestion:\n    vla: {on_new_generation: cancel}\n");
    assert!(err.contains("`capability` or `workflow`"), "{err}");
}
