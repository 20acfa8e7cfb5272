//! A world for broker tests driven by the archive's `ingestion-complete`: VLA observations
//! `obs<n>` whose ingestions complete only when the archive says so.

use std::sync::Arc;

use thalamus::bus::EventsSettings;
use thalamus::clock::ManualClock;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::steps::models::{Ingestion, Instrument, Observation, Product};
use thalamus::steps::prelude::*;
use thalamus::store::{ListFilter, State};

use super::{TestDb, T0};

/// Ingestions complete only when the archive says so.
pub struct WaitForArchive;

#[async_trait]
impl SyncStep for WaitForArchive {
    type Model = Ingestion;
    async fn sync(&self, obj: &mut Obj<Ingestion>, _ctx: &StepContext) -> StepResult {
        if obj.status.completed(obj.generation) {
            Ok(Progress::Done)
        } else {
            Ok(Progress::deferred(
                Duration::from_secs(600),
                "waiting for the archive",
            ))
        }
    }
}

/// The VLA observation `obs<n>`.
pub fn observation(n: impl std::fmt::Display) -> Observation {
    Observation {
        instrument: Instrument::VLA,
        product: Product::Sdm,
        name: format!("obs{n}"),
        location: format!("/data/obs{n}"),
        files: vec![],
        requested_at: None,
        missing_files: vec![],
    }
}

/// The archive's `ingestion-complete` for `obs<n>`.
pub fn complete(n: usize) -> Vec<u8> {
    format!(r#"{{"application":"ingestion","type":"ingestion-complete","instrument":"VLA","name":"obs{n}"}}"#)
        .into_bytes()
}

/// An engine with the shipped models, policies and event steps, `WaitForArchive` for
/// ingestions, and observations `obs0..obs<count>` already waiting for the archive.
pub async fn archive_world(db: &TestDb, events: EventsSettings, count: usize) -> Engine {
    let mut s = super::settings(&db.url);
    s.events = events;
    let mut registry = Registry::new();
    thalamus::steps::models::register(&mut registry, &s).unwrap();
    thalamus::steps::policies::register(&mut registry, &s).unwrap();
    thalamus::steps::events::register(&mut registry, &s).unwrap();
    registry.sync(WaitForArchive).unwrap();
    let deps = r#"{"Ingestion": [["Observation", "observation", "ingestions"]]}"#;
    let graph = DepGraph::parse("deps", deps, &registry.sync_kinds()).unwrap();
    let engine = Engine::new(
        db.store().await,
        registry,
        graph,
        s.engine(),
        Arc::new(ManualClock::at(T0)),
    );
    for n in 0..count {
        let obs = observation(n);
        engine.models().upsert(&obs.key(), &obs).await.unwrap();
    }
    engine.run_once().await.unwrap();
    engine
}

/// How many ingestions are enacted.
pub async fn ingestions_ok(engine: &Engine) -> usize {
    let filter = ListFilter {
        kind: "Ingestion".into(),
        keys: vec![],
        state: Some(State::Ok),
        limit: 100_000,
    };
    engine.store().list(&filter).await.unwrap().len()
}

/// After a broker restart: waits until all `total` messages are applied and every ingestion
/// is enacted, stops the running engine, and asserts nothing was dead-lettered.
pub async fn expect_all_applied(engine: &Engine, run: tokio::task::JoinHandle<()>, total: u64) {
    let metrics = engine.event_metrics();
    super::brokers::eventually("the second half after the restart", || async {
        metrics.snapshot().applied == total
    })
    .await;
    super::brokers::eventually("every ingestion enacted", || async {
        ingestions_ok(engine).await as u64 == total
    })
    .await;
    engine.shutdown_token().cancel();
    run.await.unwrap();
    assert_eq!(metrics.snapshot().dead_lettered, 0);
}
