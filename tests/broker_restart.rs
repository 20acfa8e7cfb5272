//! RabbitMQ restarted mid-stream: the consumer reconnects by itself and nothing published
//! (persistently) before, during or after the restart is lost. Its own test binary, because it
//! restarts the broker that other tests use.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::brokers::*;
use common::{Backend, TestDb, T0};
use thalamus::bus::AmqpSession;
use thalamus::clock::ManualClock;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::step::prelude::*;
use thalamus::steps::models::{Ingestion, Instrument, Observation, Product};

/// Ingestions complete only when the archive says so.
struct WaitForArchive;

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

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

fn complete(n: usize) -> Vec<u8> {
    format!(r#"{{"application":"ingestion","type":"ingestion-complete","instrument":"VLA","name":"obs{n}"}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_loses_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut s = common::settings(&db.url);
    s.events = events("restart");
    s.events.kafka.enabled = false;
    let mut registry = Registry::new();
    thalamus::steps::models::register(&mut registry, &s).unwrap();
    thalamus::steps::policies::register(&mut registry, &s).unwrap();
    thalamus::steps::events::register(&mut registry, &s).unwrap();
    registry.sync(WaitForArchive).unwrap();
    let graph = DepGraph::parse(
        "deps",
        r#"{"Ingestion": [["Observation", "observation", "ingestions"]]}"#,
        &registry.sync_kinds(),
    )
    .unwrap();
    let engine = Engine::new(
        db.store().await,
        registry,
        graph,
        s.clone(),
        Arc::new(ManualClock::at(T0)),
    );
    for n in 0..100 {
        let obs = Observation {
            instrument: Instrument::VLA,
            product: Product::Sdm,
            name: format!("obs{n}"),
            location: "/data".into(),
            files: vec![],
            requested_at: None,
            not_calibratable: None,
        };
        engine.models().upsert(&obs.key(), &obs).await.unwrap();
    }
    engine.run_once().await.unwrap();
    drop(AmqpSession::connect(&s.events).await.unwrap());
    let exchange = actual(&s.events, ARCHIVE);
    let run = {
        let e = engine.clone();
        tokio::spawn(async move { e.run().await.unwrap() })
    };
    let metrics = engine.event_metrics();
    publish_amqp(
        &exchange,
        "ingestion.event",
        &(0..50).map(complete).collect::<Vec<_>>(),
    )
    .await;
    eventually("the first half", || async {
        metrics.snapshot().applied == 50
    })
    .await;
    rabbitmqctl(&["stop_app"]);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    publish_amqp(
        &exchange,
        "ingestion.event",
        &(50..100).map(complete).collect::<Vec<_>>(),
    )
    .await;
    eventually("the second half after the restart", || async {
        metrics.snapshot().applied == 100
    })
    .await;
    eventually("every ingestion enacted", || async {
        let filter = thalamus::store::ListFilter {
            kind: "Ingestion".into(),
            keys: vec![],
            state: Some(thalamus::store::State::Ok),
            limit: 1000,
        };
        engine.store().list(&filter).await.unwrap().len() == 100
    })
    .await;
    engine.shutdown_token().cancel();
    run.await.unwrap();
    assert_eq!(metrics.snapshot().dead_lettered, 0);
    cleanup_amqp(&s.events).await;
}
