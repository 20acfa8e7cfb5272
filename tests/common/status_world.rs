//! A world for status-message tests: VLA observations `obs<n>` whose ingestions are
//! Workspaces request n, Executing until a status message says Complete.

use std::sync::Arc;

use thalamus::bus::EventsSettings;
use thalamus::clock::ManualClock;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::steps::models::{Calibration, Ingestion};
use thalamus::steps::prelude::*;
use tokio_util::sync::CancellationToken;

use super::brokers::{ensure_kafka, events};
use super::{Backend, TestDb, T0};

const DEPS: &str = r#"{ "Ingestion":   [["Observation", "observation", "ingestions"]],
                        "Calibration": [["Ingestion",   "ingestion",   "calibrations"]] }"#;

/// Stands in for the Workspaces step: an ingestion of `VLA/obsN` is request N; it is
/// Executing until its status says Complete (as an event will).
pub struct FakeIngest;

#[async_trait]
impl SyncStep for FakeIngest {
    type Model = Ingestion;
    async fn sync(&self, obj: &mut Obj<Ingestion>, _ctx: &StepContext) -> StepResult {
        let id: i64 = obj
            .key
            .trim_start_matches("VLA/obs")
            .parse()
            .context("test keys are VLA/obsN")?;
        let r = &mut obj.status.request;
        if r.state == Some(RequestState::Complete) {
            r.completed_generation = Some(obj.generation);
            return Ok(Progress::Done);
        }
        r.request_id = Some(id);
        r.state.get_or_insert_with(|| "Executing".into());
        Ok(Progress::deferred(
            Duration::from_secs(600),
            format!("request {id} is Executing"),
        ))
    }
}

/// Calibrations complete at once.
pub struct FakeCalibrate;

#[async_trait]
impl SyncStep for FakeCalibrate {
    type Model = Calibration;
    async fn sync(&self, _obj: &mut Obj<Calibration>, _ctx: &StepContext) -> StepResult {
        Ok(Progress::Done)
    }
}

/// An engine with the real event steps and policies, and stand-in sync steps.
pub struct World {
    pub engine: Engine,
    pub events: EventsSettings,
    _db: TestDb,
}

impl World {
    /// A fresh database and engine; `test` names the brokers' topics and queue.
    pub async fn new(backend: Backend, test: &str) -> Self {
        ensure_kafka();
        let db = TestDb::new(backend).await;
        let mut s = super::settings(&db.url);
        s.events = events(test);
        let mut registry = Registry::new();
        thalamus::steps::models::register(&mut registry, &s).unwrap();
        thalamus::steps::policies::register(&mut registry, &s).unwrap();
        thalamus::steps::events::register(&mut registry, &s).unwrap();
        registry.sync(FakeIngest).unwrap();
        registry.sync(FakeCalibrate).unwrap();
        // The shipped rules (the Calibration of a completed ingestion is one).
        thalamus::rules::register(&mut registry, &Default::default()).unwrap();
        let graph = DepGraph::parse("deps", DEPS, &registry.sync_kinds()).unwrap();
        let engine = Engine::new(
            db.store().await,
            registry,
            graph,
            s.engine(),
            Arc::new(ManualClock::at(T0)),
        );
        Self {
            engine,
            events: s.events,
            _db: db,
        }
    }

    /// Observations `VLA/obs<n>` whose ingestions are now Executing request n.
    pub async fn executing(&self, ns: impl IntoIterator<Item = i64>) {
        for n in ns {
            let obs = super::archive::observation(n);
            self.engine.models().upsert(&obs.key(), &obs).await.unwrap();
        }
        self.engine.run_once().await.unwrap();
    }

    /// The Ingestion of `VLA/obs<n>`.
    pub async fn ingestion(&self, n: i64) -> Obj<Ingestion> {
        self.engine
            .models()
            .get::<Ingestion>(&format!("VLA/obs{n}"))
            .await
            .unwrap()
            .unwrap()
    }

    /// How many dead letters are stored.
    pub async fn dead_letters(&self) -> usize {
        self.engine.store().dead_letters(None).await.unwrap().len()
    }
}

/// A capability-status message for request `id`.
pub fn status(id: i64, state: &str, ts: &str) -> Vec<u8> {
    format!(
        r#"{{"type":"capability-status","capability_request_id":{id},"capability":"ingest_vla","state":"{state}","message":"m","timestamp":"{ts}","extra":1}}"#
    )
    .into_bytes()
}

/// Runs the controller (consumers and sync loop) until the returned token is cancelled.
pub fn run(w: &World) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let (e, events) = (w.engine.clone(), w.events.clone());
    let token = w.engine.shutdown_token();
    let run = async move {
        thalamus::app::run_with_transports(&e, &events)
            .await
            .unwrap()
    };
    (token, tokio::spawn(run))
}
