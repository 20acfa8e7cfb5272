//! RabbitMQ restarted mid-stream: the consumer reconnects by itself and nothing published
//! (persistently) before, during or after the restart is lost. Its own test binary, because it
//! restarts the broker that other tests use.

mod common;

use std::process::Command;

use common::archive::*;
use common::brokers::*;
use common::{Backend, TestDb};
use thalamus::bus::AmqpSession;

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_loses_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut events = events("restart");
    events.kafka.enabled = false;
    let engine = archive_world(&db, events.clone(), 100).await;
    drop(AmqpSession::connect(&events).await.unwrap());
    let exchange = actual(&events, ARCHIVE);
    let run = {
        let (e, events) = (engine.clone(), events.clone());
        tokio::spawn(async move {
            thalamus::app::run_with_transports(&e, &events)
                .await
                .unwrap()
        })
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
    expect_all_applied(&engine, run, 100).await;
    cleanup_amqp(&events).await;
}
