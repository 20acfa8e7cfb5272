//! Messages that arrive together are applied as one batch: in their order, one outcome per
//! message, and acknowledged (AMQP) or committed (Kafka) only when the whole batch is stored.

mod common;

use std::time::Duration;

use common::brokers::*;
use common::status_world::*;
use common::Backend;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use thalamus::bus::AmqpSession;
use thalamus::engine::Delivery;
use thalamus::steps::models::Ingestion;
use thalamus::steps::prelude::*;
use tokio_util::sync::CancellationToken;

fn message(payload: Vec<u8>, i: usize) -> Event {
    Event {
        transport: Transport::Direct,
        topic: STATUS.into(),
        routing_key: None,
        payload,
        headers: vec![],
        position: format!("test@{i}"),
    }
}

fn batch(payloads: Vec<Vec<u8>>) -> Vec<Event> {
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| message(p, i))
        .collect()
}

async fn a_batch_is_applied_in_order_one_outcome_per_message(backend: Backend) {
    let w = World::new(backend, "batch-order").await;
    w.executing(1..=2).await;
    let events = batch(vec![
        status(1, "Executing", "2026-01-01T00:00:01Z"),
        status(1, "Complete", "2026-01-01T00:00:02Z"),
        b"{not json".to_vec(),
        status(99, "Complete", "2026-01-01T00:00:02Z"), // no such request
        status(2, "Complete", "2026-01-01T00:00:05Z"),
        status(2, "Executing", "2026-01-01T00:00:04Z"), // older than what came before it
    ]);
    let shutdown = CancellationToken::new();
    let first = w.engine.deliver_batch(&events, &shutdown).await.unwrap();
    let kinds: Vec<&str> = first.iter().map(kind).collect();
    assert_eq!(
        kinds,
        ["applied", "applied", "dead", "dead", "applied", "unchanged"]
    );
    for n in [1, 2] {
        let ing = w.ingestion(n).await;
        assert_eq!(
            ing.status.request.state,
            Some(RequestState::Complete),
            "obs{n}"
        );
    }
    assert_eq!(
        w.ingestion(2).await.status.request.updated_at.as_deref(),
        Some("2026-01-01T00:00:05Z")
    );
    // The clock is frozen: only the batch's re-sync can make them run now.
    w.engine.run_once().await.unwrap();
    for n in [1, 2] {
        let ing = w.ingestion(n).await;
        assert_eq!(ing.enacted, ing.generation, "obs{n} enacted");
    }
    // The same batch again (a redelivery) changes nothing and dead-letters the same two.
    let again = w.engine.deliver_batch(&events, &shutdown).await.unwrap();
    let kinds: Vec<&str> = again.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "unchanged",
            "unchanged",
            "dead",
            "dead",
            "unchanged",
            "unchanged"
        ]
    );
    assert_eq!(w.dead_letters().await, 4);
    let m = w.engine.event_metrics().snapshot();
    assert_eq!((m.applied, m.unchanged, m.dead_lettered), (3, 5, 4));
}

fn kind(d: &Delivery) -> &'static str {
    match d {
        Delivery::Applied => "applied",
        Delivery::Unchanged => "unchanged",
        Delivery::DeadLettered(_) => "dead",
        Delivery::Abandoned => "abandoned",
    }
}

both_backends!(a_batch_is_applied_in_order_one_outcome_per_message);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_decode_rejects_only_its_messages() {
    let w = World::new(Backend::Sqlite, "batch-undecodable").await;
    w.executing([1]).await;
    let store = w.engine.store();
    let broken = serde_json::json!({"written_by": "an older version"});
    store
        .upsert("Ingestion", "VLA/broken", &broken, 0)
        .await
        .unwrap();
    let status77 = serde_json::json!({"request_id": 77});
    store
        .set_status("Ingestion", "VLA/broken", &status77, 0)
        .await
        .unwrap();
    let events = batch(vec![
        status(77, "Complete", "2026-01-01T00:00:01Z"),
        status(1, "Complete", "2026-01-01T00:00:01Z"),
    ]);
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        w.engine.deliver_batch(&events, &CancellationToken::new()),
    )
    .await
    .expect("a poison model must not make the consumer retry forever")
    .unwrap();
    assert_eq!(
        outcome.iter().map(kind).collect::<Vec<_>>(),
        ["dead", "applied"]
    );
    assert_eq!(
        w.ingestion(1).await.status.request.state,
        Some(RequestState::Complete)
    );
}

/// 600 statuses of request 1, each newer than the last: more than one batch holds.
fn progress() -> Vec<Vec<u8>> {
    (0..600)
        .map(|i| {
            let state = if i == 599 { "Complete" } else { "Executing" };
            let ts = format!("2026-01-01T00:{:02}:{:02}Z", i / 60, i % 60);
            status(1, state, &ts)
        })
        .collect()
}

/// Waits for all 600 to be stored. One AMQP queue keeps their order, so each is newer than
/// the last and applies; a Kafka topic's partitions may interleave them, and then a message
/// older than one already applied changes nothing. Either way the newest status wins.
async fn all_stored(w: &World, in_order: bool) {
    let metrics = w.engine.event_metrics();
    eventually("600 messages stored", || async {
        let m = metrics.snapshot();
        m.applied + m.unchanged + m.dead_lettered == 600
    })
    .await;
    let m = metrics.snapshot();
    assert_eq!(m.dead_lettered, 0);
    if in_order {
        assert_eq!(m.applied, 600);
    }
    let r = w.ingestion(1).await.status.request;
    assert_eq!(
        (r.state, r.updated_at.as_deref()),
        (Some(RequestState::Complete), Some("2026-01-01T00:09:59Z"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_batches_are_acknowledged_in_full() {
    let w = World::new(Backend::Sqlite, "batch-amqp").await;
    w.executing([1]).await;
    drop(AmqpSession::connect(&w.events).await.unwrap());
    publish_amqp(&actual(&w.events, STATUS), "x", &progress()).await;
    let (stop, running) = run(&w);
    all_stored(&w, true).await;
    stop.cancel();
    running.await.unwrap();
    // The controller's connection is closed: anything it left unacknowledged is back in the
    // queue now.
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare(
            w.events.amqp.queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0, "every message was acknowledged");
    cleanup_amqp(&w.events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_batches_are_committed_in_full() {
    let w = World::new(Backend::Sqlite, "batch-kafka").await;
    w.executing([1]).await;
    let topic = actual(&w.events, STATUS);
    produce_kafka(&topic, &progress()).await;
    let (stop, running) = run(&w);
    all_stored(&w, false).await;
    // Asks the group's committed offsets without joining the group: in each partition the
    // committed offset is the next to read, so together they count the messages committed.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", &w.events.kafka.group_id)
        .create()
        .unwrap();
    let metadata = probe
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        partitions.add_partition(&topic, p.id());
    }
    eventually("every message's offset committed", || {
        let committed = probe.committed_offsets(partitions.clone(), Duration::from_secs(5));
        let total: i64 = committed.map_or(0, |c| {
            c.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(n) => n,
                    _ => 0,
                })
                .sum()
        });
        async move { total == 600 }
    })
    .await;
    stop.cancel();
    running.await.unwrap();
}

async fn a_status_changed_since_it_was_read_is_not_overwritten(backend: Backend) {
    let w = World::new(backend, "batch-stale-write").await;
    w.executing([1]).await;
    let models = w.engine.models();
    let mut read = w.ingestion(1).await;
    // Meanwhile a sync step's outcome records something new.
    let mut newer = read.status.clone();
    newer.request.message = Some("recorded by the sync step".into());
    let newer_json = serde_json::to_value(&newer).unwrap();
    let store = w.engine.store();
    assert!(store
        .set_status("Ingestion", "VLA/obs1", &newer_json, 0)
        .await
        .unwrap());
    read.status.request.state = Some("Complete".into());
    assert_eq!(models.set_statuses(&[&read], true).await.unwrap(), 0);
    let now = w.ingestion(1).await;
    assert_eq!(
        now.status.request.message.as_deref(),
        Some("recorded by the sync step")
    );
    // Read again, the same change is written.
    let mut again = now.clone();
    again.status.request.state = Some("Complete".into());
    assert_eq!(models.set_statuses(&[&again], true).await.unwrap(), 1);
    assert_eq!(
        w.ingestion(1).await.status.request.state,
        Some(RequestState::Complete)
    );
}

both_backends!(a_status_changed_since_it_was_read_is_not_overwritten);

/// The keys of the Ingestions whose status records request `id`.
async fn requesting(w: &World, id: i64) -> Vec<String> {
    let models = w.engine.models();
    let found = models.with_request_ids::<Ingestion>(&[id]).await.unwrap();
    found.into_iter().map(|o| o.key).collect()
}

/// Status messages find their model by the request id stored beside its status: it follows
/// every write (a step's outcome, a batch, a write of another request, one with none).
async fn a_model_is_found_by_the_request_its_status_records_now(backend: Backend) {
    let w = World::new(backend, "batch-request-ids").await;
    w.executing([3]).await; // the step's outcome records request 3
    assert_eq!(requesting(&w, 3).await, ["VLA/obs3"]);
    let models = w.engine.models();
    let mut obj = w.ingestion(3).await;
    obj.status.request.request_id = Some(30); // asked again: a new request
    assert_eq!(models.set_statuses(&[&obj], false).await.unwrap(), 1);
    assert_eq!(requesting(&w, 30).await, ["VLA/obs3"]);
    assert!(
        requesting(&w, 3).await.is_empty(),
        "the old request is not its own any more"
    );
    // A batch that keeps the request id keeps it findable.
    let mut obj = w.ingestion(3).await;
    obj.status.request.state = Some(RequestState::Complete);
    assert_eq!(models.set_statuses(&[&obj], false).await.unwrap(), 1);
    assert_eq!(requesting(&w, 30).await, ["VLA/obs3"]);
    // A status written whole, without a request.
    let store = w.engine.store();
    let none = serde_json::json!({"state": "Complete"});
    assert!(store
        .set_status("Ingestion", "VLA/obs3", &none, 0)
        .await
        .unwrap());
    assert!(requesting(&w, 30).await.is_empty());
}

both_backends!(a_model_is_found_by_the_request_its_status_records_now);

/// A store written before the request id had its own column: its models are found by the
/// integer `request_id` of their status once migrated, and only by that.
async fn statuses_stored_before_the_request_id_column_are_found(backend: Backend) {
    use thalamus::store::{Db, Open, Store};
    let db = common::TestDb::new(backend).await;
    let store = Store::connect(&db.url, 2, Open::Create).await.unwrap();
    let before = |mut m: sqlx::migrate::Migrator| {
        m.migrations = m
            .migrations
            .iter()
            .filter(|m| m.version < 15)
            .cloned()
            .collect();
        m
    };
    let statuses = [
        ("obs5", r#"{"request_id":5,"state":"Executing"}"#),
        ("obs6", r#"{"request_id":"6"}"#),
        ("obs7", r#"{"request_id":7.5}"#),
        ("obs8", r#"{"request":{"request_id":8}}"#),
        ("obs9", "{}"),
        ("obs10", r#"{"request_id":1e3}"#),
    ];
    let insert = "INSERT INTO objects (kind, key, spec, status, created_at, updated_at) \
                  VALUES ('Ingestion', $1, '{}', $2, 0, 0)";
    // The store up to version 14, then its rows, on either backend's pool.
    macro_rules! written_before {
        ($pool:expr, $migrations:literal) => {{
            let migrator = before(sqlx::migrate!($migrations));
            migrator.run($pool).await.unwrap();
            for (key, status) in statuses {
                let row = sqlx::query(insert).bind(key).bind(status);
                row.execute($pool).await.unwrap();
            }
        }};
    }
    match store.db() {
        Db::Sqlite(pool) => written_before!(pool, "migrations/sqlite"),
        Db::Postgres(pool) => written_before!(pool, "migrations/postgres"),
    }
    store.migrate().await.unwrap();
    let found = store
        .find_by_request_ids(&["Ingestion"], &[5, 6, 7, 8, 9, 1000])
        .await
        .unwrap();
    let keys: Vec<&str> = found.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["obs5"]);
}

both_backends!(statuses_stored_before_the_request_id_column_are_found);
