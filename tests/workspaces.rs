//! The Workspaces and archive sync steps against a stand-in server, on SQLite and PostgreSQL,
//! driven on the manual clock: one request per generation however the calls fail (lost
//! answers, timeouts, 5xx, 409), 4xx as permanent errors quoting the answer, requests followed
//! across polls to Complete, Failed (a new request after the backoff) or Cancelled; the
//! archive mark; and the settings that configure all of it.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::brokers::eventually;
use common::gate::Gate;
use common::workspaces_stub::{Fault, Route, Stub};
use common::{Backend, TestDb, T0};
use serde_json::{json, Value};
use thalamus::clock::ManualClock;
use thalamus::config::Settings;
use thalamus::engine::{Engine, EventReport};
use thalamus::graph::DepGraph;
use thalamus::step::{Event, Registry, Transport};
use thalamus::steps::archive::CalibrationMark;
use thalamus::steps::models::{DataFile, Instrument, Observation, Product};
use thalamus::steps::workspaces::Target;
use thalamus::store::ObjectRow;
use thalamus::workspaces::Secret;

const DOMAIN_DEPS: &str = r#"{ "Ingestion":   [["Observation", "observation", "ingestions"]],
                               "Calibration": [["Ingestion",   "ingestion",   "calibrations"]] }"#;

const TOKEN: &str = "ws-s3cret-token";
const ARCHIVE_TOKEN: &str = "archive-s3cret";

/// The engine with the shipped models, policies, Workspaces and archive steps, pointed at a
/// stand-in server.
struct World {
    engine: Engine,
    clock: ManualClock,
    stub: Stub,
    settings: Settings,
    db: TestDb,
}

impl World {
    async fn new(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        let stub = Stub::start().await;
        let db = TestDb::new(backend).await;
        let mut s = common::settings(&db.url);
        s.workspaces.url = stub.workspaces_url();
        s.workspaces.token = Some(Secret::new(TOKEN));
        s.workspaces.timeout_seconds = 1;
        s.archive.url = stub.archive_url();
        s.archive.token = Some(Secret::new(ARCHIVE_TOKEN));
        tweak(&mut s);
        let clock = ManualClock::at(T0);
        let engine = engine(&db, &s, &clock).await;
        Self {
            engine,
            clock,
            stub,
            settings: s,
            db,
        }
    }

    /// A new process on the same database, as after a crash.
    async fn restart(&self) -> Engine {
        engine(&self.db, &self.settings, &self.clock).await
    }

    async fn once(&self) -> thalamus::engine::OnceReport {
        self.engine.run_once().await.unwrap()
    }

    async fn row(&self, kind: &str, key: &str) -> ObjectRow {
        self.engine
            .store()
            .get(kind, key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{kind} {key} missing"))
    }

    async fn status(&self, kind: &str, key: &str) -> Value {
        serde_json::from_str(&self.row(kind, key).await.status).unwrap()
    }

    /// Upserts a VLA observation; the policy makes its Ingestion (same key).
    async fn observe(&self, name: &str) -> String {
        self.observe_as(Instrument::VLA, Product::Sdm, name).await
    }

    async fn observe_as(&self, instrument: Instrument, product: Product, name: &str) -> String {
        let o = observation(instrument, product, name);
        let key = o.key();
        self.engine.models().upsert(&key, &o).await.unwrap();
        key
    }

    /// Runs the engine when the object is due again (after its backoff or deferral).
    async fn when_due(&self, kind: &str, key: &str) -> thalamus::engine::OnceReport {
        let due = self
            .row(kind, key)
            .await
            .next_attempt_at
            .expect("scheduled");
        self.clock.set(due);
        self.once().await
    }

    /// Runs the engine after the poll interval (or a backoff of up to that) has passed.
    async fn later(&self, seconds: i64) -> thalamus::engine::OnceReport {
        self.clock.advance(seconds * 1000);
        self.once().await
    }
}

async fn engine(db: &TestDb, s: &Settings, clock: &ManualClock) -> Engine {
    let mut registry = Registry::new();
    use thalamus::steps::{archive, events, models, policies, workspaces};
    for register in [
        models::register,
        policies::register,
        workspaces::register,
        archive::register,
        events::register,
    ] {
        register(&mut registry, s).unwrap();
    }
    // The shipped rules (the Calibration of a completed ingestion is one).
    thalamus::rules::register(&mut registry, &Default::default()).unwrap();
    let graph = DepGraph::parse("deps", DOMAIN_DEPS, &registry.sync_kinds()).unwrap();
    Engine::new(
        db.store().await,
        registry,
        graph,
        s.engine(),
        Arc::new(clock.clone()),
    )
}

fn observation(instrument: Instrument, product: Product, name: &str) -> Observation {
    Observation {
        instrument,
        product,
        name: name.into(),
        location: format!("/lustre/{}/{name}", instrument.as_str().to_lowercase()),
        files: vec![DataFile {
            path: "Main.xml".into(),
            size: 2048,
            mtime_ns: 1_700_000_000_000_000_000,
        }],
        requested_at: None,
        missing_files: vec![],
    }
}

/// The create body the ingestion step must send for `observation(VLA, Sdm, name)`.
fn ingest_body(name: &str, generation: i64) -> Value {
    json!({
        "parameters": {
            "location": format!("/lustre/vla/{name}"),
            "files": [{"path": "Main.xml", "size": 2048, "mtime_ns": 1_700_000_000_000_000_000i64}],
            "name": name,
            "instrument": "VLA",
            "product": "sdm",
        },
        "external_id": format!("Ingestion/VLA/{name}@{generation}"),
    })
}

fn creates(stub: &Stub) -> Vec<Value> {
    stub.received()
        .into_iter()
        .filter(|r| r.raw.ends_with("/request/create"))
        .map(|r| r.body.unwrap())
        .collect()
}

const LIST_EB1: &str =
    "GET /workspaces/capability/requests?external_id=Ingestion/VLA/24A-001.sb1.eb1@1";
const CREATE_VLA: &str = "POST /workspaces/capability/ingest_vla/request/create";

async fn vla_observation_yields_one_ingestion_then_one_calibration(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    assert_eq!(
        w.stub.lines(),
        [
            LIST_EB1,
            CREATE_VLA,
            "POST /workspaces/capability/request/1/submit"
        ]
    );
    assert_eq!(creates(&w.stub), [ingest_body("24A-001.sb1.eb1", 1)]);
    let row = w.row("Ingestion", &key).await;
    assert_eq!((row.enacted, row.attempts, row.backend_code), (0, 0, 0));
    assert_eq!(
        row.backend_status,
        "capability request 1 (ingest_vla) is Submitted"
    );
    assert_eq!(row.next_attempt_at, Some(T0 + 60_000), "poll_seconds");
    let status = w.status("Ingestion", &key).await;
    assert_eq!(
        (
            &status["request_id"],
            &status["state"],
            &status["external_id"]
        ),
        (
            &json!(1),
            &json!("Submitted"),
            &json!("Ingestion/VLA/24A-001.sb1.eb1@1")
        )
    );
    // Not due before the poll interval: nothing is called.
    w.clock.advance(59_999);
    assert_eq!(w.once().await.sync.attempted(), 0);
    assert_eq!(w.stub.received().len(), 3);

    w.stub.set_state(1, "Executing", None);
    w.later(1).await;
    assert_eq!(
        w.stub.lines_after(3),
        ["GET /workspaces/capability/request/1"]
    );
    assert_eq!(
        w.row("Ingestion", &key).await.backend_status,
        "capability request 1 (ingest_vla) is Executing"
    );

    // Complete: enacted, and the policy asks for a calibration, requested in the same run.
    w.stub.set_state(1, "Complete", Some("ingested 1 file"));
    w.later(60).await;
    assert_eq!(
        w.stub.lines_after(4),
        [
            "GET /workspaces/capability/request/1",
            "GET /workspaces/capability/requests?external_id=Calibration/VLA/24A-001.sb1.eb1@1",
            "POST /workspaces/capability/std_calibration/request/create",
            "POST /workspaces/capability/request/2/submit",
        ]
    );
    let row = w.row("Ingestion", &key).await;
    assert_eq!((row.enacted, row.backend_code), (1, 1));
    let status = w.status("Ingestion", &key).await;
    assert_eq!(status["completed_generation"], json!(1));
    assert_eq!(status["message"], json!("ingested 1 file"));
    assert_eq!(
        creates(&w.stub)[1],
        json!({
            "parameters": {"name": "24A-001.sb1.eb1", "instrument": "VLA"},
            "external_id": "Calibration/VLA/24A-001.sb1.eb1@1",
        })
    );

    w.stub.set_state(2, "Complete", None);
    w.later(60).await;
    let row = w.row("Calibration", &key).await;
    assert_eq!((row.enacted, row.backend_code), (1, 1));
    // Settled: however long we wait, nothing more is asked of Workspaces.
    w.later(86_400).await;
    assert_eq!(w.stub.received().len(), 9);
    assert_eq!(w.stub.requests().len(), 2, "one ingestion, one calibration");
    for call in w.stub.received() {
        assert_eq!(
            call.authorization.as_deref(),
            Some("Bearer ws-s3cret-token"),
            "{}",
            call.line()
        );
    }
}

/// The server creates the request but the answer never arrives; the next attempt finds the
/// request by its external id and submits it instead of creating a second.
async fn lost_create_is_found_not_repeated(w: World, expected_error: &str) {
    let key = w.observe("24A-001.sb1.eb1").await;
    let r = w.once().await;
    assert_eq!(r.sync.failed, 1);
    let row = w.row("Ingestion", &key).await;
    assert_eq!(row.attempts, 1);
    assert_eq!(row.next_attempt_at, Some(T0 + 10_000), "backoff");
    assert_eq!(row.last_error.as_deref(), Some(expected_error));
    assert_eq!(w.stub.lines(), [LIST_EB1, CREATE_VLA]);
    // A new process picks it up after the backoff.
    let restarted = w.restart().await;
    w.clock.advance(10_000);
    restarted.run_once().await.unwrap();
    assert_eq!(
        w.stub.lines_after(2),
        [LIST_EB1, "POST /workspaces/capability/request/1/submit"]
    );
    assert_eq!(w.stub.requests().len(), 1, "no second request");
    assert_eq!(w.stub.requests()[0].state, "Submitted");
    let row = w.row("Ingestion", &key).await;
    assert_eq!(
        (row.backend_code, row.next_attempt_at),
        (0, Some(T0 + 70_000)),
        "in progress: looked at again after poll_seconds"
    );
    assert_eq!(
        row.backend_status,
        "capability request 1 (ingest_vla) is Submitted"
    );
}

async fn create_answered_with_500_after_creating(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.stub.fault(Route::Create, Fault::Lost(500));
    let url = w.stub.workspaces_url();
    let error = format!(
        "Workspaces answered 500 Internal Server Error to POST {url}/capability/ingest_vla/request/create: lost"
    );
    lost_create_is_found_not_repeated(w, &error).await;
}

async fn create_answered_after_the_timeout(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.stub
        .fault(Route::Create, Fault::Slow(Duration::from_secs(3)));
    let url = w.stub.workspaces_url();
    let error = format!(
        "Workspaces did not answer POST {url}/capability/ingest_vla/request/create within 1s"
    );
    lost_create_is_found_not_repeated(w, &error).await;
}

async fn server_errors_back_off_without_creating(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.stub
        .fault(Route::List, Fault::Fail(503, "down for maintenance\n"));
    w.stub
        .fault(Route::List, Fault::Slow(Duration::from_secs(3)));
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    let row = w.row("Ingestion", &key).await;
    let url = w.stub.workspaces_url();
    assert_eq!(
        row.last_error.unwrap(),
        format!("Workspaces answered 503 Service Unavailable to GET {url}/capability/requests?external_id=Ingestion%2FVLA%2F24A-001.sb1.eb1%401: down for maintenance")
    );
    w.later(10).await;
    let row = w.row("Ingestion", &key).await;
    assert_eq!(
        row.last_error.unwrap(),
        format!("Workspaces did not answer GET {url}/capability/requests?external_id=Ingestion%2FVLA%2F24A-001.sb1.eb1%401 within 1s")
    );
    assert_eq!(row.attempts, 2);
    assert_eq!(w.stub.lines(), [LIST_EB1, LIST_EB1], "nothing created yet");
    // After the second backoff (20 s) it works; a 500 while polling is another backoff.
    w.stub.fault(Route::Get, Fault::Fail(500, ""));
    w.later(20).await;
    assert_eq!(creates(&w.stub).len(), 1);
    w.later(60).await;
    let row = w.row("Ingestion", &key).await;
    assert_eq!(
        row.last_error.unwrap(),
        format!("Workspaces answered 500 Internal Server Error to GET {url}/capability/request/1")
    );
    w.stub.set_state(1, "Complete", None);
    w.when_due("Ingestion", &key).await;
    assert_eq!(w.row("Ingestion", &key).await.enacted, 1);
    assert_eq!(
        w.stub.requests().len(),
        2,
        "one ingestion and its calibration"
    );
    assert_eq!(creates(&w.stub).len(), 2);
}

async fn bad_request_is_permanent_and_quotes_the_body(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.stub.fault(
        Route::Create,
        Fault::Fail(400, "  unknown parameter: product\n"),
    );
    let key = w.observe("24A-001.sb1.eb1").await;
    let r = w.once().await;
    assert_eq!(r.sync.permanent, 1);
    let row = w.row("Ingestion", &key).await;
    let url = w.stub.workspaces_url();
    let expected = format!(
        "Workspaces answered 400 Bad Request to POST {url}/capability/ingest_vla/request/create: unknown parameter: product"
    );
    assert_eq!(row.backend_status, expected);
    assert_eq!(row.last_error.as_deref(), Some(expected.as_str()));
    assert_eq!(row.next_attempt_at, None);
    w.later(86_400).await;
    assert_eq!(
        w.stub.lines(),
        [LIST_EB1, CREATE_VLA],
        "no retry, no submit"
    );
}

async fn failed_request_is_replaced_after_the_backoff(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    w.stub.set_state(1, "Executing", None);
    w.later(60).await;
    w.stub.set_state(1, "Failed", Some("disk full"));
    let r = w.later(60).await;
    assert_eq!(r.sync.failed, 1);
    let row = w.row("Ingestion", &key).await;
    assert_eq!(
        row.last_error.as_deref(),
        Some("capability request 1 (ingest_vla) failed: disk full; a new request follows after the backoff")
    );
    assert_eq!(row.next_attempt_at, Some(w_now(&w) + 10_000));
    let status = w.status("Ingestion", &key).await;
    assert_eq!(
        (&status["state"], &status["failure_reported"]),
        (&json!("Failed"), &json!(1))
    );
    assert_eq!(w.stub.received().len(), 5);
    // After the backoff only a Failed request exists for the external id: a new one is made.
    w.later(10).await;
    assert_eq!(
        w.stub.lines_after(5),
        [
            LIST_EB1,
            CREATE_VLA,
            "POST /workspaces/capability/request/2/submit"
        ]
    );
    assert_eq!(
        creates(&w.stub),
        [
            ingest_body("24A-001.sb1.eb1", 1),
            ingest_body("24A-001.sb1.eb1", 1)
        ]
    );
    w.stub.set_state(2, "Complete", None);
    w.later(60).await;
    let row = w.row("Ingestion", &key).await;
    assert_eq!((row.enacted, row.attempts), (1, 0));
    assert_eq!(w.status("Ingestion", &key).await["request_id"], json!(2));
}

fn w_now(w: &World) -> i64 {
    use thalamus::clock::Clock;
    w.clock.now_ms()
}

async fn cancelled_is_permanent_until_retried(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    w.stub
        .set_state(1, "Cancelled", Some("cancelled by operator jdoe"));
    let r = w.later(60).await;
    assert_eq!(r.sync.permanent, 1);
    let row = w.row("Ingestion", &key).await;
    assert_eq!(
        row.last_error.as_deref(),
        Some("capability request 1 (ingest_vla) was cancelled: cancelled by operator jdoe; retry to make a new request")
    );
    w.later(86_400).await;
    assert_eq!(w.stub.received().len(), 4, "no retry by itself");
    // An operator retry asks for a new request.
    w.engine
        .store()
        .retry("Ingestion", &key, w_now(&w))
        .await
        .unwrap();
    w.once().await;
    assert_eq!(
        w.stub.lines_after(4),
        [
            LIST_EB1,
            CREATE_VLA,
            "POST /workspaces/capability/request/2/submit"
        ]
    );
}

/// A process killed right after its create call left a request behind; a new process adopts
/// the live one (and never an older Failed one) instead of making another.
async fn restart_adopts_the_request_a_crash_left(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let ext = "Ingestion/VLA/24A-001.sb1.eb1@1";
    w.stub.seed("capability", "ingest_vla", ext, "Failed");
    w.stub.seed("capability", "ingest_vla", ext, "Created");
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    assert_eq!(
        w.stub.lines(),
        [LIST_EB1, "POST /workspaces/capability/request/2/submit"]
    );
    let status = w.status("Ingestion", &key).await;
    assert_eq!(status["request_id"], json!(2));
    // Another observation whose request was already running: adopted without a submit.
    let ext2 = "Ingestion/VLA/24A-002.sb1.eb1@1";
    let id = w.stub.seed("capability", "ingest_vla", ext2, "Executing");
    let key2 = w.observe("24A-002.sb1.eb1").await;
    w.once().await;
    assert_eq!(
        w.stub.lines_after(2),
        ["GET /workspaces/capability/requests?external_id=Ingestion/VLA/24A-002.sb1.eb1@1"]
    );
    assert_eq!(
        w.row("Ingestion", &key2).await.backend_status,
        format!("capability request {id} (ingest_vla) is Executing")
    );
    assert!(creates(&w.stub).is_empty());
}

/// The listing did not show the request yet, so a create was tried and refused with 409: the
/// step looks again and adopts the existing request.
async fn conflict_on_create_adopts_the_existing_request(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let id = w.stub.seed(
        "capability",
        "ingest_vla",
        "Ingestion/VLA/24A-001.sb1.eb1@1",
        "Executing",
    );
    w.stub.fault(Route::List, Fault::StaleList);
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    assert_eq!(w.stub.lines(), [LIST_EB1, CREATE_VLA, LIST_EB1]);
    let row = w.row("Ingestion", &key).await;
    assert_eq!((row.backend_code, row.attempts), (0, 0));
    assert_eq!(
        row.backend_status,
        format!("capability request {id} (ingest_vla) is Executing")
    );
    assert_eq!(w.stub.requests().len(), 1);
}

/// A kind mapped to a workflow uses the workflow endpoints and sends `argument`; a kind with no
/// capability configured fails permanently naming the key, without calling anyone.
async fn workflows_and_missing_targets(backend: Backend) {
    let w = World::new(backend, |s| {
        s.workspaces.ingestion.vla = Some(Target::workflow("vla_ingest_wf"));
        s.workspaces.ingestion.vlba = None;
    })
    .await;
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    w.stub.set_state(1, "Complete", None);
    w.later(60).await;
    let lines = w.stub.lines();
    assert_eq!(
        lines[..4],
        [
            "GET /workspaces/workflow/requests?external_id=Ingestion/VLA/24A-001.sb1.eb1@1",
            "POST /workspaces/workflow/vla_ingest_wf/request/create",
            "POST /workspaces/workflow/request/1/submit",
            "GET /workspaces/workflow/request/1",
        ]
    );
    let mut expected = ingest_body("24A-001.sb1.eb1", 1);
    let parameters = expected["parameters"].take();
    expected = json!({"argument": parameters, "external_id": expected["external_id"]});
    assert_eq!(w.stub.received()[1].body.as_ref(), Some(&expected));
    assert_eq!(w.row("Ingestion", &key).await.enacted, 1);

    let before = w.stub.received().len();
    let vlba = w
        .observe_as(Instrument::VLBA, Product::CorrelatorOutput, "bl300a")
        .await;
    let r = w.once().await;
    assert_eq!(r.sync.permanent, 1);
    assert_eq!(
        w.row("Ingestion", &vlba).await.last_error.as_deref(),
        Some("no Workspaces capability or workflow ingests VLBA data; set `workspaces.ingestion.vlba`")
    );
    assert_eq!(w.stub.received().len(), before);
}

/// ALMA calibration products use their own capability.
async fn alma_calibration_products_use_their_capability(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let key = w
        .observe_as(Instrument::ALMA, Product::Calibration, "uid://A002/X1/X2")
        .await;
    w.once().await;
    assert_eq!(
        w.stub.lines(),
        [
            "GET /workspaces/capability/requests?external_id=Ingestion/ALMA/calibration/uid://A002/X1/X2@1",
            "POST /workspaces/capability/ingest_alma_calibration/request/create",
            "POST /workspaces/capability/request/1/submit",
        ]
    );
    assert_eq!(
        w.stub.requests()[0].external_id,
        format!("Ingestion/{key}@1")
    );
}

async fn asdm_is_marked_not_calibratable(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let uid = "uid://A002/Xc2c6b9/X1a5b";
    let put = "/archive/alma/asdm/uid:%2F%2FA002%2FXc2c6b9%2FX1a5b/calibration-status";
    w.stub
        .fault(Route::Archive, Fault::Fail(502, "bad gateway"));
    let mark = CalibrationMark::not_calibratable(uid, "no phase calibrator");
    let key = CalibrationMark::key(uid);
    w.engine.models().upsert(&key, &mark).await.unwrap();
    w.once().await;
    let row = w.row("CalibrationMark", &key).await;
    assert_eq!(
        row.last_error.unwrap(),
        format!(
            "the archive answered 502 Bad Gateway to PUT {}{put}: bad gateway",
            w.stub.archive_url().trim_end_matches("/archive")
        )
    );
    w.later(10).await;
    let row = w.row("CalibrationMark", &key).await;
    assert_eq!((row.enacted, row.backend_code), (1, 1));
    assert_eq!(
        w.status("CalibrationMark", &key).await,
        json!({"marked_generation": 1})
    );
    let calls = w.stub.received();
    assert_eq!(calls.len(), 2, "the failed PUT, then the one that worked");
    for call in &calls {
        assert_eq!((call.method.as_str(), call.raw.as_str()), ("PUT", put));
        assert_eq!(
            call.body,
            Some(json!({"calibratable": false, "reason": "no phase calibrator"}))
        );
        assert_eq!(call.authorization.as_deref(), Some("Bearer archive-s3cret"));
    }
    assert_eq!(
        w.stub.mark(uid),
        Some(json!({"calibratable": false, "reason": "no phase calibrator"}))
    );
    // In sync: nothing more. A new reason is put again.
    w.later(3600).await;
    assert_eq!(w.stub.received().len(), 2);
    let mark = CalibrationMark {
        reason: Some("no bandpass calibrator".into()),
        ..mark
    };
    w.engine.models().upsert(&key, &mark).await.unwrap();
    w.once().await;
    assert_eq!(w.stub.received().len(), 3);
    assert_eq!(
        w.stub.mark(uid).unwrap()["reason"],
        json!("no bandpass calibrator")
    );
}

/// Workspaces publishes a request's status just as the poll of the same request is in
/// flight, and both say Complete. The status the event wrote and the one the poll found must
/// both count: the ingestion is complete at its generation, so its calibration is asked for.
async fn status_event_racing_the_poll_of_its_request(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    assert_eq!(w.stub.requests()[0].state, "Submitted");
    let gate = Gate::new();
    w.stub.fault(Route::Get, Fault::Hold(gate.clone()));
    w.stub.set_state(1, "Complete", Some("ingested 1 file"));
    w.clock.advance(60_000);
    let engine = w.engine.clone();
    let pass = tokio::spawn(async move { engine.sync_pass().await });
    eventually("the poll of request 1", || async {
        w.stub
            .lines()
            .contains(&"GET /workspaces/capability/request/1".to_string())
    })
    .await;
    let event = Event {
        transport: Transport::Direct,
        topic: "workspaces.capability-status".into(),
        routing_key: None,
        payload: br#"{"type":"capability-status","capability_request_id":1,"state":"Complete",
                      "timestamp":"2026-01-01T00:01:00Z"}"#
            .to_vec(),
        headers: vec![],
        position: "test".into(),
    };
    let applied = w.engine.apply_event(&event).await.unwrap();
    assert!(matches!(applied, EventReport::Applied(_)), "{applied:?}");
    gate.open();
    pass.await.unwrap().unwrap();
    w.once().await;
    let row = w.row("Ingestion", &key).await;
    assert_eq!(row.enacted, 1);
    let status = w.status("Ingestion", &key).await;
    assert_eq!(status["completed_generation"], json!(1), "{status}");
    assert!(
        w.engine
            .store()
            .get("Calibration", &key)
            .await
            .unwrap()
            .is_some(),
        "the completed ingestion asks for its calibration"
    );
    assert_eq!(creates(&w.stub).len(), 2, "one ingestion, one calibration");
}

/// Workspaces unreachable, the Ingestion in backoff; the archive says the observation is
/// ingested. When the backoff ends the step asks Workspaces nothing: the ingestion is done,
/// and its calibration follows.
async fn an_ingestion_the_archive_completed_during_a_backoff_is_not_requested(backend: Backend) {
    let w = World::new(backend, |_| {}).await;
    w.stub.fault(Route::List, Fault::Fail(503, "down\n"));
    let key = w.observe("24A-001.sb1.eb1").await;
    w.once().await;
    assert!(w.row("Ingestion", &key).await.last_error.is_some());
    let event = Event {
        transport: Transport::Direct,
        topic: "archive.events".into(),
        routing_key: None,
        payload: br#"{"application":"ingestion","type":"ingestion-complete","instrument":"VLA","name":"24A-001.sb1.eb1"}"#
            .to_vec(),
        headers: vec![],
        position: "test".into(),
    };
    let applied = w.engine.apply_event(&event).await.unwrap();
    assert!(matches!(applied, EventReport::Applied(_)), "{applied:?}");
    w.when_due("Ingestion", &key).await;
    assert_eq!(w.row("Ingestion", &key).await.enacted, 1);
    let ingestions: Vec<_> = creates(&w.stub)
        .into_iter()
        .filter(|c| c.to_string().contains("Ingestion/"))
        .collect();
    assert!(
        ingestions.is_empty(),
        "nothing ingested twice: {ingestions:?}"
    );
    assert!(w
        .engine
        .store()
        .get("Calibration", &key)
        .await
        .unwrap()
        .is_some());
}

both_backends!(
    an_ingestion_the_archive_completed_during_a_backoff_is_not_requested,
    status_event_racing_the_poll_of_its_request,
    vla_observation_yields_one_ingestion_then_one_calibration,
    create_answered_with_500_after_creating,
    create_answered_after_the_timeout,
    server_errors_back_off_without_creating,
    bad_request_is_permanent_and_quotes_the_body,
    failed_request_is_replaced_after_the_backoff,
    cancelled_is_permanent_until_retried,
    restart_adopts_the_request_a_crash_left,
    conflict_on_create_adopts_the_existing_request,
    workflows_and_missing_targets,
    alma_calibration_products_use_their_capability,
    asdm_is_marked_not_calibratable,
);

// Settings: defaults, overrides, and bad values that name their key.

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, String> {
    let f = file(text);
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::load_with_env(Some(f.path()), None, env).map_err(|e| e.to_string())
}

#[test]
fn workspaces_defaults_and_overrides() {
    let s = load("", &[]).unwrap();
    let ws = &s.workspaces;
    assert_eq!(
        (ws.poll_seconds, ws.timeout_seconds, ws.requests_per_second),
        (60, 30, 20.0)
    );
    assert_eq!(ws.ingestion.vla, Some(Target::capability("ingest_vla")));
    assert_eq!(
        ws.ingestion.alma_calibration,
        Some(Target::capability("ingest_alma_calibration"))
    );
    assert_eq!(
        ws.calibration.alma,
        Some(Target::capability("std_calibration"))
    );
    let s = load(
        "workspaces:\n  url: https://ws.example/workspaces\n  calibration:\n    vla:\n      workflow: std_cal_wf\n",
        &[
            ("THALAMUS__WORKSPACES__TOKEN", "from-env-s3cret"),
            ("THALAMUS__WORKSPACES__POLL_SECONDS", "15"),
            ("THALAMUS__ARCHIVE__URL", "https://archive.example/api"),
        ],
    )
    .unwrap();
    assert_eq!(
        s.workspaces.calibration.vla,
        Some(Target::workflow("std_cal_wf"))
    );
    assert_eq!(s.workspaces.poll_seconds, 15);
    assert_eq!(s.archive.url, "https://archive.example/api");
    assert_eq!(
        s.workspaces.token.as_ref().map(Secret::expose),
        Some("from-env-s3cret")
    );
    // Secrets never show in Debug or serialised settings.
    let shown = format!("{s:?} {}", serde_json::to_string(&s).unwrap());
    assert!(!shown.contains("from-env-s3cret"), "{shown}");
    assert!(shown.contains("***"));
}

#[test]
fn bad_workspaces_and_archive_settings_name_their_key() {
    let cases = [
        (
            "workspaces:\n  url: ftp://ws.example\n",
            "`workspaces.url` must be an http:// or https:// URL",
        ),
        (
            "workspaces:\n  poll_seconds: 0\n",
            "`workspaces.poll_seconds` must be at least 1",
        ),
        (
            "workspaces:\n  timeout_seconds: 0\n",
            "`workspaces.timeout_seconds` must be at least 1",
        ),
        (
            "workspaces:\n  requests_per_second: 0\n",
            "`workspaces.requests_per_second` must be a number from 0.001 to 1000000",
        ),
        (
            "workspaces:\n  ingestion:\n    vla:\n      capability: ''\n",
            "`workspaces.ingestion.vla` must name a capability or workflow",
        ),
        (
            "workspaces:\n  ingestion:\n    vlb: {}\n",
            "unknown field `vlb`",
        ),
        (
            "archive:\n  url: not a url\n",
            "`archive.url` must be an http:// or https:// URL",
        ),
        (
            "archive:\n  requests_per_second: -1\n",
            "`archive.requests_per_second` must be a number from 0.001 to 1000000",
        ),
        (
            // Once panicked: one call per 1e300 s is no duration.
            "workspaces:\n  requests_per_second: 1e-300\n",
            "`workspaces.requests_per_second` must be a number from 0.001 to 1000000",
        ),
    ];
    for (text, expected) in cases {
        let err = load(text, &[]).unwrap_err();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    let err = load("", &[("THALAMUS__WORKSPACES__TOKEN", "")]).unwrap_err();
    assert!(
        err.contains("`workspaces.token` must be non-empty"),
        "{err}"
    );
}

#[test]
fn the_shipped_config_yaml_spells_out_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let s = Settings::load_with_env(Some(&path), None, Vec::new()).unwrap();
    let d = Settings::default();
    assert_eq!(
        serde_json::to_value(&s.workspaces).unwrap(),
        serde_json::to_value(&d.workspaces).unwrap()
    );
    assert_eq!(
        serde_json::to_value(&s.archive).unwrap(),
        serde_json::to_value(&d.archive).unwrap()
    );
}
