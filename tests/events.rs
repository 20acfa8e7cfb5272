//! Event steps over real brokers: Kafka (tansu on 127.0.0.1:19092) and RabbitMQ
//! (127.0.0.1:5672). At least once, dead letters for what cannot be applied, duplicates and
//! stale states change nothing, and a crash between store and ack redelivers without harm.

mod common;

use common::brokers::*;
use common::status_world::*;
use common::{Backend, T0};
use thalamus::bus::{AmqpSession, KafkaSource};
use thalamus::engine::Delivery;
use thalamus::steps::models::Calibration;
use thalamus::steps::prelude::*;
use tokio_util::sync::CancellationToken;

async fn complete_message_enacts_without_waiting_for_the_poll(backend: Backend, transport: &str) {
    let w = World::new(backend, &format!("happy-{transport}")).await;
    w.executing([7]).await;
    let ing = w.ingestion(7).await;
    assert_eq!(
        (ing.enacted, ing.status.request.state),
        (0, Some(RequestState::Executing))
    );
    // The manual clock never moves: the ingestion's next poll (in 600 s) never comes, so only
    // the event can finish it.
    let topic = actual(&w.events, STATUS);
    let msg = vec![status(7, "Complete", "2026-01-01T00:05:00Z")];
    match transport {
        "amqp" => {
            drop(AmqpSession::connect(&w.events).await.unwrap()); // declare queue and bindings
            publish_amqp(&topic, "workspaces.status", &msg).await;
        }
        _ => produce_kafka(&topic, &msg).await,
    }
    let (stop, running) = run(&w);
    eventually("the ingestion to be enacted", || async {
        w.ingestion(7).await.enacted == 1
    })
    .await;
    eventually("the calibration the policy derives", || async {
        w.engine
            .models()
            .get::<Calibration>("VLA/obs7")
            .await
            .unwrap()
            .is_some_and(|c| c.enacted == 1)
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    let m = w.engine.event_metrics().snapshot();
    assert_eq!((m.consumed, m.applied, m.dead_lettered), (1, 1, 0));
    cleanup_amqp(&w.events).await;
}

async fn happy_path_amqp(backend: Backend) {
    complete_message_enacts_without_waiting_for_the_poll(backend, "amqp").await
}

async fn happy_path_kafka(backend: Backend) {
    complete_message_enacts_without_waiting_for_the_poll(backend, "kafka").await
}

both_backends!(happy_path_amqp, happy_path_kafka);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_stale_states_change_nothing() {
    let w = World::new(Backend::Sqlite, "order").await;
    w.executing([3]).await;
    let topic = actual(&w.events, STATUS);
    // One partition keeps the order: Executing at :02, a late Submitted from :01, Complete, and
    // Complete again.
    let source = KafkaSource::connect(&w.events, w.engine.event_metrics(), None)
        .await
        .unwrap();
    produce_kafka(
        &topic,
        &[
            status(3, "Executing", "2026-01-01T00:00:02Z"),
            status(3, "Submitted", "2026-01-01T00:00:01Z"),
            status(3, "Complete", "2026-01-01T00:00:03Z"),
            status(3, "Complete", "2026-01-01T00:00:03Z"),
        ],
    )
    .await;
    let shutdown = CancellationToken::new();
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let received = source.recv().await.unwrap();
        outcomes.push(w.engine.deliver(&received.event, &shutdown).await);
        source.commit(std::slice::from_ref(&received)).unwrap();
    }
    assert_eq!(
        outcomes,
        [
            Delivery::Applied,
            Delivery::Unchanged,
            Delivery::Applied,
            Delivery::Unchanged
        ]
    );
    let ing = w.ingestion(3).await;
    assert_eq!(ing.status.request.state, Some(RequestState::Complete));
    assert_eq!(
        ing.status.request.updated_at.as_deref(),
        Some("2026-01-01T00:00:03Z")
    );
}

async fn poison_messages_never_stop_the_consumer(transport: &str) {
    let w = World::new(Backend::Sqlite, &format!("poison-{transport}")).await;
    w.executing(1..=10).await;
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for i in 0..1000 {
        payloads.push(match i % 4 {
            0 => b"\xff\xfe not json".to_vec(),
            1 => br#"{"type":"capability-status","state":"Complete"}"#.to_vec(),
            2 => status(100_000 + i, "Complete", "2026-01-01T00:00:00Z"), // matches nothing
            _ => br#"{"type":"capability-status","capability_request_id":1,"state":"Exploded"}"#
                .to_vec(),
        });
        if i % 100 == 50 {
            payloads.push(status((i / 100) + 1, "Complete", "2026-01-01T00:09:00Z"));
        }
    }
    assert_eq!(payloads.len(), 1010);
    let topic = actual(&w.events, STATUS);
    match transport {
        "amqp" => {
            drop(AmqpSession::connect(&w.events).await.unwrap());
            publish_amqp(&topic, "x", &payloads).await;
        }
        _ => produce_kafka(&topic, &payloads).await,
    }
    let (stop, running) = run(&w);
    let metrics = w.engine.event_metrics();
    eventually("all 1010 messages stored", || async {
        let m = metrics.snapshot();
        m.applied + m.dead_lettered == 1010
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    let m = metrics.snapshot();
    assert_eq!((m.applied, m.dead_lettered), (10, 1000));
    assert_eq!(w.dead_letters().await, 1000);
    for n in 1..=10 {
        assert_eq!(
            w.ingestion(n).await.status.request.state,
            Some(RequestState::Complete),
            "obs{n}"
        );
    }
    let reasons: std::collections::BTreeSet<String> = w
        .engine
        .store()
        .dead_letters(None)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.reason.split(':').next().unwrap().to_string())
        .collect();
    assert!(reasons.contains("request-status"), "{reasons:?}");
    cleanup_amqp(&w.events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_amqp() {
    poison_messages_never_stop_the_consumer("amqp").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_kafka() {
    poison_messages_never_stop_the_consumer("kafka").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_store_and_commit_redelivers_once_applied_kafka() {
    let w = World::new(Backend::Sqlite, "crash-kafka").await;
    w.executing([5]).await;
    let topic = actual(&w.events, STATUS);
    produce_kafka(&topic, &[status(5, "Complete", "2026-01-01T00:00:05Z")]).await;
    let shutdown = CancellationToken::new();
    let first = KafkaSource::connect(&w.events, w.engine.event_metrics(), None)
        .await
        .unwrap();
    let received = first.recv().await.unwrap();
    assert_eq!(
        w.engine.deliver(&received.event, &shutdown).await,
        Delivery::Applied
    );
    drop(first); // killed before committing
    let second = KafkaSource::connect(&w.events, w.engine.event_metrics(), None)
        .await
        .unwrap();
    let again = second.recv().await.unwrap();
    assert_eq!(
        again.event.position, received.event.position,
        "the same message comes again"
    );
    assert_eq!(
        w.engine.deliver(&again.event, &shutdown).await,
        Delivery::Unchanged,
        "applied once"
    );
    second.commit(std::slice::from_ref(&again)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_store_and_ack_redelivers_once_applied_amqp() {
    let w = World::new(Backend::Sqlite, "crash-amqp").await;
    w.executing([6]).await;
    let shutdown = CancellationToken::new();
    let mut first = AmqpSession::connect(&w.events).await.unwrap();
    publish_amqp(&actual(&w.events, ARCHIVE), "ingestion.event", &[
        br#"{"application":"ingestion","type":"ingestion-complete","instrument":"VLA","name":"obs6"}"#.to_vec(),
    ])
    .await;
    let (event, _acker) = first.recv(&shutdown).await.unwrap().unwrap();
    assert_eq!(w.engine.deliver(&event, &shutdown).await, Delivery::Applied);
    drop(first); // killed before acknowledging
    let mut second = AmqpSession::connect(&w.events).await.unwrap();
    let (again, acker) = second.recv(&shutdown).await.unwrap().unwrap();
    assert!(
        again.position.ends_with("(redelivered)"),
        "{}",
        again.position
    );
    assert_eq!(
        w.engine.deliver(&again, &shutdown).await,
        Delivery::Unchanged,
        "applied once"
    );
    acker.ack(Default::default()).await.unwrap();
    assert!(w.ingestion(6).await.status.completed(1));
    cleanup_amqp(&w.events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_replayed_once_their_model_exists() {
    let w = World::new(Backend::Sqlite, "replay").await;
    let shutdown = CancellationToken::new();
    let event = Event {
        transport: Transport::Direct,
        topic: ARCHIVE.into(),
        routing_key: Some("ingestion.event".into()),
        payload: br#"{"application":"ingestion","type":"ingestion-complete","instrument":"VLA","name":"obs9"}"#.to_vec(),
        headers: vec![("origin".into(), "test".into())],
        position: "p1".into(),
    };
    let Delivery::DeadLettered(id) = w.engine.deliver(&event, &shutdown).await else {
        panic!("not dead-lettered")
    };
    let letter = w.engine.store().dead_letter(id).await.unwrap().unwrap();
    assert_eq!(letter.reason, "ingestion-complete: no Ingestion VLA/obs9");
    assert_eq!(letter.payload, event.payload);
    assert_eq!(letter.headers, r#"[["origin","test"]]"#);
    // Once the observation exists, the same message applies.
    w.executing([9]).await;
    let replay = Event {
        payload: letter.payload.clone(),
        ..event
    };
    assert_eq!(
        w.engine.deliver(&replay, &shutdown).await,
        Delivery::Applied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_decode_dead_letters_instead_of_blocking() {
    let w = World::new(Backend::Sqlite, "undecodable").await;
    let store = w.engine.store();
    store
        .upsert(
            "Ingestion",
            "VLA/broken",
            &serde_json::json!({"written_by": "an older version"}),
            T0,
        )
        .await
        .unwrap();
    store
        .set_status(
            "Ingestion",
            "VLA/broken",
            &serde_json::json!({"request_id": 77}),
            T0,
        )
        .await
        .unwrap();
    let event = Event {
        transport: Transport::Direct,
        topic: STATUS.into(),
        routing_key: None,
        payload: status(77, "Complete", "2026-01-01T00:00:01Z"),
        headers: vec![],
        position: "p".into(),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        w.engine.deliver(&event, &CancellationToken::new()),
    )
    .await
    .expect("a poison model must not make the consumer retry forever");
    let Delivery::DeadLettered(id) = outcome else {
        panic!("{outcome:?}")
    };
    let reason = w
        .engine
        .store()
        .dead_letter(id)
        .await
        .unwrap()
        .unwrap()
        .reason;
    assert!(
        reason.contains("the spec of Ingestion VLA/broken is not a valid Ingestion"),
        "{reason}"
    );
}
