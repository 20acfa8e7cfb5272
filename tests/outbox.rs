//! Announcements through the transactional outbox, against the real RabbitMQ and Kafka: every
//! announced change reaches a downstream consumer exactly once in the happy path; a broker
//! cut for a while loses nothing and keeps the order; a relay killed between the broker's
//! confirm and recording it repeats a message under the same id, never loses one; a workflow
//! status is re-said once as capability status and thalamus ignores its own announcements;
//! two replicas' relays publish each row once.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::archive::{complete, observation, WaitForArchive};
use common::brokers::{ensure_kafka, eventually, unique, AMQP, ARCHIVE, KAFKA, STATUS};
use common::gate::Gate;
use common::listener::Listener;
use common::proxy::{Mode, Proxy};
use common::*;
use thalamus::bus::AmqpPublisher;
use thalamus::clock::ManualClock;
use thalamus::engine::{Engine, EventReport};
use thalamus::graph::DepGraph;
use thalamus::outbox::{Publisher, Relay};
use thalamus::step::{Event, Registry, Transport};
use thalamus::store::OutboxRow;

/// An engine with the shipped models, policies, event steps and announcers (ingestions wait
/// for the archive's ingestion-complete), announcing on AMQP at `amqp` to this test's own
/// exchanges; returns it and the exchanges' names (archive, status).
/// The shipped rules file of the announcements (new-file, the level change).
fn announcement_rules() -> thalamus::rules::RulesSettings {
    thalamus::rules::RulesSettings {
        paths: vec!["rules/announcements.yaml".into()],
    }
}

async fn world(db: &TestDb, amqp: &str, holder: &str) -> (Engine, String, String) {
    let id = unique("outbox");
    let (archive, status) = (format!("{ARCHIVE}.{id}"), format!("{STATUS}.{id}"));
    let mut s = settings(&db.url);
    s.sync.holder_id = Some(holder.into());
    s.outbox.amqp.enabled = true;
    s.outbox.amqp.url = amqp.into();
    s.outbox.aliases.insert(ARCHIVE.into(), archive.clone());
    s.outbox.aliases.insert(STATUS.into(), status.clone());
    let mut registry = Registry::new();
    for register in [
        thalamus::steps::models::register,
        thalamus::steps::policies::register,
        thalamus::steps::events::register,
        thalamus::steps::announcements::register,
    ] {
        register(&mut registry, &s).unwrap();
    }
    registry.sync(WaitForArchive).unwrap();
    // The shipped announcements that are rules: new-file, and the level change.
    thalamus::rules::register(&mut registry, &announcement_rules()).unwrap();
    let deps = r#"{"Ingestion": [["Observation", "observation", "ingestions"]]}"#;
    let graph = DepGraph::parse("deps", deps, &registry.sync_kinds()).unwrap();
    let engine = Engine::new(
        db.store().await,
        registry,
        graph,
        s.engine(),
        Arc::new(ManualClock::at(T0)),
    );
    (engine, archive, status)
}

fn direct(topic: &str, payload: Vec<u8>, headers: Vec<(String, String)>) -> Event {
    Event {
        transport: Transport::Direct,
        topic: topic.into(),
        routing_key: None,
        payload,
        headers,
        position: "test".into(),
    }
}

fn relay(engine: &Engine) -> Relay {
    thalamus::app::relay(engine)
        .unwrap()
        .expect("an enabled outbox")
}

/// Observation settled, its ingestion complete: `new-file`, then `ingestion-complete`, each
/// once, with a stable id and thalamus's origin; a second pass sends nothing again.
async fn every_announced_change_arrives_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (engine, archive, _) = world(&db, AMQP, "replica-a").await;
    let listener = Listener::on(&[&archive]).await;
    let obs = observation(1);
    engine.models().upsert(&obs.key(), &obs).await.unwrap();
    engine.run_once().await.unwrap();
    let report = engine
        .apply_event(&direct(ARCHIVE, complete(1), vec![]))
        .await
        .unwrap();
    assert!(matches!(report, EventReport::Applied(_)), "{report:?}");
    let pass = relay(&engine).pass().await.unwrap();
    assert_eq!((pass.sent, pass.failed), (2, None));
    let heard = listener.until(2).await;
    let kinds: Vec<&str> = heard.iter().map(|h| h.kind()).collect();
    assert_eq!(kinds, ["new-file", "ingestion-complete"]);
    assert_eq!(heard[0].body["name"], "obs1");
    assert_eq!(heard[0].routing_key, "thalamus.event");
    assert_eq!(heard[1].body["key"], "VLA/obs1");
    assert_eq!(heard[1].body["state"], "Complete");
    for h in &heard {
        assert!(h
            .message_id
            .as_deref()
            .is_some_and(|id| id.starts_with("thalamus-outbox-")));
        assert_eq!(h.origin.as_deref(), Some("replica-a"));
    }
    assert_ne!(heard[0].message_id, heard[1].message_id);
    assert_eq!(relay(&engine).pass().await.unwrap().sent, 0);
    // The same upsert and the same event again announce nothing: nothing changed.
    engine.models().upsert(&obs.key(), &obs).await.unwrap();
    engine.policy_pass().await.unwrap();
    engine
        .apply_event(&direct(ARCHIVE, complete(1), vec![]))
        .await
        .unwrap();
    assert_eq!(relay(&engine).pass().await.unwrap().sent, 0);
    assert_eq!(engine.store().outbox_depth().await.unwrap().unsent, 0);
}

/// The broker unreachable for a while: announcements wait in the outbox, then all arrive, in
/// the order they were written, none twice.
async fn a_broker_outage_loses_nothing_and_keeps_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let (engine, archive, _) = world(&db, &url, "replica-a").await;
    let listener = Listener::on(&[&archive]).await;
    let relay = relay(&engine);
    proxy.cut(Mode::Refuse);
    for n in 0..5 {
        let obs = observation(n);
        engine.models().upsert(&obs.key(), &obs).await.unwrap();
    }
    engine.policy_pass().await.unwrap(); // the new-file rule
    let pass = relay.pass().await.unwrap();
    assert_eq!(pass.sent, 0);
    assert!(pass.failed.is_some(), "the cut broker failed the pass");
    assert_eq!(engine.store().outbox_depth().await.unwrap().unsent, 5);
    // The operator sees them waiting, and why.
    let status = cli(&db.url, &["status", "-o", "json"]).await;
    assert_eq!(status["outbox_waiting"], 5, "{status}");
    assert!(status["oldest_outbox"].is_string(), "{status}");
    let listed = cli(&db.url, &["outbox", "list", "--unsent", "-o", "json"]).await;
    assert_eq!(listed["depth"]["unsent"], 5, "{listed}");
    let first = &listed["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(first["attempts"], 1, "{listed}");
    assert!(
        first["last_error"].is_string(),
        "the broker's refusal: {listed}"
    );
    proxy.restore();
    assert_eq!(relay.pass().await.unwrap().sent, 5);
    let names: Vec<String> = listener
        .until(5)
        .await
        .iter()
        .map(|h| h.body["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["obs0", "obs1", "obs2", "obs3", "obs4"]);
    assert_eq!(listener.heard().len(), 5);
    // `outbox retry` sends one again, under its id.
    let id = first["id"].as_i64().unwrap().to_string();
    let out = run_cli(&db.url, &["outbox", "retry", &id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(relay.pass().await.unwrap().sent, 1);
    let again = listener.until(6).await;
    assert_eq!(again[5].message_id, again[0].message_id);
}

/// Runs the CLI on `url`.
async fn run_cli(url: &str, args: &[&str]) -> std::process::Output {
    let (url, args) = (
        url.to_string(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_thalamus"))
            .args(args)
            .env("THALAMUS__DATABASE__URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Runs a read command of the CLI on `url` and returns its JSON.
async fn cli(url: &str, args: &[&str]) -> serde_json::Value {
    let out = run_cli(url, args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Publishes through AMQP, then (the first time) never returns: the relay dies after the
/// broker confirmed but before it recorded the row sent.
struct DiesAfterConfirm {
    inner: AmqpPublisher,
    published: Gate,
    died: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Publisher for DiesAfterConfirm {
    fn transport(&self) -> &'static str {
        "amqp"
    }

    async fn publish(&self, rows: &[&OutboxRow]) -> Vec<anyhow::Result<()>> {
        let results = self.inner.publish(rows).await;
        if !self.died.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.published.open();
            std::future::pending::<()>().await;
        }
        results
    }
}

/// The relay killed between the confirm and recording it: the next relay sends the message
/// again under the same id (a consumer drops the copy), and nothing is lost.
async fn a_relay_killed_after_the_confirm_repeats_never_loses(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (engine, archive, _) = world(&db, AMQP, "replica-a").await;
    let listener = Listener::on(&[&archive]).await;
    let obs = observation(7);
    engine.models().upsert(&obs.key(), &obs).await.unwrap();
    engine.policy_pass().await.unwrap(); // the new-file rule
    let published = Gate::new();
    let dying: Arc<dyn Publisher> = Arc::new(DiesAfterConfirm {
        inner: AmqpPublisher::new(AMQP, "replica-a"),
        published: published.clone(),
        died: false.into(),
    });
    let settings = thalamus::outbox::OutboxSettings {
        amqp: thalamus::outbox::OutboxAmqp {
            enabled: true,
            url: AMQP.into(),
        },
        ..Default::default()
    };
    let store = engine.store().clone();
    let clock: Arc<dyn thalamus::clock::Clock> = Arc::new(ManualClock::at(T0));
    let first = Relay::new(
        store.clone(),
        "replica-a",
        clock.clone(),
        settings,
        vec![dying],
    );
    let running = tokio::spawn(async move { first.pass().await });
    published.pass().await;
    running.abort(); // SIGKILL, as far as the store can tell
    let _ = running.await;
    assert_eq!(listener.until(1).await.len(), 1);
    assert_eq!(
        store.outbox_depth().await.unwrap().unsent,
        1,
        "not recorded sent"
    );
    // The next relay: the same holder after a restart (its lease is its own).
    assert_eq!(relay(&engine).pass().await.unwrap().sent, 1);
    let heard = listener.until(2).await;
    assert_eq!(heard.len(), 2);
    assert_eq!(
        heard[0].message_id, heard[1].message_id,
        "the same id twice"
    );
    assert_eq!(heard[0].body, heard[1].body);
    assert_eq!(store.outbox_depth().await.unwrap().unsent, 0);
}

/// A workflow status about one of thalamus's requests is re-said once as capability status
/// (keeping the workflow's request id); the same message again says nothing; and thalamus's
/// own announcement, coming back to it, changes nothing.
async fn a_workflow_status_is_re_said_once_as_capability_status(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (engine, _, status) = world(&db, AMQP, "replica-a").await;
    let listener = Listener::on(&[&status]).await;
    let obs = observation(3);
    engine.models().upsert(&obs.key(), &obs).await.unwrap();
    engine.run_once().await.unwrap();
    // The ingestion's request (as its sync step would have recorded it).
    let mut ingestion = engine
        .models()
        .get::<thalamus::steps::models::Ingestion>("VLA/obs3")
        .await
        .unwrap()
        .unwrap();
    ingestion.status.request.request_id = Some(42);
    engine
        .models()
        .set_statuses(&[&ingestion], false)
        .await
        .unwrap();
    assert_eq!(relay(&engine).pass().await.unwrap().sent, 1, "the new-file");
    let workflow =
        br#"{"type":"workflow-status","workflow_request_id":9,"capability_request_id":42,
        "state":"Executing","message":"running","timestamp":"2026-01-01T00:00:05Z"}"#;
    let report = engine
        .apply_event(&direct(STATUS, workflow.to_vec(), vec![]))
        .await
        .unwrap();
    assert!(matches!(report, EventReport::Applied(_)), "{report:?}");
    let again = engine
        .apply_event(&direct(STATUS, workflow.to_vec(), vec![]))
        .await
        .unwrap();
    assert!(matches!(again, EventReport::Unchanged(_)), "{again:?}");
    assert_eq!(relay(&engine).pass().await.unwrap().sent, 1);
    let heard = listener.until(1).await;
    assert_eq!(heard[0].kind(), "capability-status");
    assert_eq!(heard[0].body["capability_request_id"], 42);
    assert_eq!(heard[0].body["workflow_request_id"], 9);
    assert_eq!(heard[0].body["state"], "Executing");
    // Its own announcement, consumed back, is acknowledged unapplied.
    let origin = (
        thalamus::outbox::ORIGIN_HEADER.to_string(),
        "replica-a".to_string(),
    );
    let own = serde_json::to_vec(&heard[0].body).unwrap();
    let back = engine
        .apply_event(&direct(STATUS, own, vec![origin]))
        .await
        .unwrap();
    assert!(matches!(back, EventReport::Unchanged(_)), "{back:?}");
    assert_eq!(relay(&engine).pass().await.unwrap().sent, 0);
    assert_eq!(listener.heard().len(), 1);
}

both_backends!(
    every_announced_change_arrives_once,
    a_broker_outage_loses_nothing_and_keeps_order,
    a_relay_killed_after_the_confirm_repeats_never_loses,
    a_workflow_status_is_re_said_once_as_capability_status,
);

/// Two replicas relaying at once: one holds the relay's lease, and every row is published
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_publish_each_row_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let (a, archive, _) = world(&db, AMQP, "replica-a").await;
    let (b, _, _) = world(&db, AMQP, "replica-b").await;
    let listener = Listener::on(&[&archive]).await;
    for n in 0..40 {
        let obs = observation(n);
        a.models().upsert(&obs.key(), &obs).await.unwrap();
    }
    a.policy_pass().await.unwrap(); // the new-file rule
    let (ra, rb) = (relay(&a), relay(&b));
    let (pa, pb) = tokio::join!(ra.pass(), rb.pass());
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert!(
        pa.relaying ^ pb.relaying,
        "one relay at a time: {pa:?} {pb:?}"
    );
    assert_eq!(pa.sent + pb.sent, 40);
    let heard = listener.until(40).await;
    let mut ids: Vec<String> = heard.iter().filter_map(|h| h.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "each row once");
    eventually("nothing more downstream", || async {
        listener.heard().len() == 40
    })
    .await;
}

/// On Kafka: an idempotent producer, each message keyed by its model, with its id header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_kafka_keyed_by_model() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    ensure_kafka();
    let db = TestDb::new(Backend::Sqlite).await;
    let topic = unique("archive.events.kafka");
    let mut s = settings(&db.url);
    s.outbox.kafka.enabled = true;
    s.outbox.kafka.brokers = KAFKA.into();
    s.outbox.aliases.insert(ARCHIVE.into(), topic.clone());
    let mut registry = Registry::new();
    thalamus::steps::models::register(&mut registry, &s).unwrap();
    thalamus::steps::announcements::register(&mut registry, &s).unwrap();
    thalamus::rules::register(&mut registry, &announcement_rules()).unwrap();
    let graph = DepGraph::parse("deps", "{}", &registry.sync_kinds()).unwrap();
    let engine = Engine::new(
        db.store().await,
        registry,
        graph,
        s.engine(),
        Arc::new(ManualClock::at(T0)),
    );
    for n in 0..3 {
        let obs = observation(n);
        engine.models().upsert(&obs.key(), &obs).await.unwrap();
    }
    engine.policy_pass().await.unwrap(); // the new-file rule
    assert_eq!(relay(&engine).pass().await.unwrap().sent, 3);
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", unique("outbox-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(60), consumer.recv())
            .await
            .expect("the announcements on Kafka")
            .unwrap();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let id = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "message-id"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        got.push((key, id, body["type"].as_str().unwrap().to_string()));
    }
    // Order holds per key (a key's partition); across keys it is the partitions' interleaving.
    let mut keys: Vec<&str> = got.iter().map(|(k, _, _)| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "Observation/VLA/obs0",
            "Observation/VLA/obs1",
            "Observation/VLA/obs2"
        ]
    );
    assert!(got.iter().all(|(_, id, t)| id.is_some() && t == "new-file"));
}
