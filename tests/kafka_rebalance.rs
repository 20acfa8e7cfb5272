//! A thalamus restart in the middle of a consumer-group rebalance leaves no message
//! undelivered, on a real broker (tansu): the stopped consumer must not wedge the group for the
//! next one. Each case has its own tansu, which advertises a proxy in front of it
//! (`common::kafka_proxy`), so the test sees each JoinGroup travel and stops the controller at
//! the exact moment: while its own JoinGroup is in flight, or right after another member's
//! JoinGroup has opened a rebalance it still leads. Both wedged tansu 0.6's group for good
//! while a stopped consumer sent LeaveGroup (see the README, Events).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::archive::*;
use common::brokers::*;
use common::kafka_proxy::{Join, KafkaProxy};
use common::{Backend, TestDb};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use thalamus::bus::EventsSettings;
use thalamus::engine::Engine;

/// This test binary's brokers (tansu) and the proxies they advertise, one pair per case.
const OWN_JOIN: (&str, &str) = ("127.0.0.1:19461", "127.0.0.1:19462");
const OTHER_JOIN: (&str, &str) = ("127.0.0.1:19463", "127.0.0.1:19464");

/// Starts the proxy, then (or finds) a tansu on `broker` that advertises it.
fn start_broker((broker, proxy): (&str, &str)) -> KafkaProxy {
    let proxy_server = KafkaProxy::start(proxy, broker);
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/kafka.sh"))
        .env("KAFKA_ADDR", broker)
        .env("KAFKA_ADVERTISED", proxy)
        .status()
        .expect("run .ci/kafka.sh");
    assert!(status.success(), ".ci/kafka.sh could not start tansu");
    proxy_server
}

/// Stops the tansu `.ci/kafka.sh` started on `broker`, and waits (bounded) until it is gone,
/// so the next run can start its own on the same port.
fn stop_broker((broker, _): (&str, &str)) {
    let port = broker.rsplit(':').next().unwrap();
    let tools = std::env::var("THALAMUS_TOOLS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/thalamus",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    let pid = std::fs::read_to_string(format!("{tools}/tansu-{port}.pid")).expect("tansu pid");
    let pid = pid.trim();
    let _ = Command::new("kill").arg(pid).status();
    for _ in 0..100 {
        let alive = Command::new("kill")
            .args(["-0", pid])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("tansu {pid} outlived SIGTERM by 10 s");
}

/// Event settings for this case: Kafka only, through the proxy.
fn kafka_events(test: &str, proxy: &str) -> EventsSettings {
    let mut events = events(test);
    events.kafka.brokers = proxy.into();
    events.amqp.enabled = false;
    events
}

/// Creates `topics` (one partition each) without joining any group.
async fn create_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await.unwrap() {
        result.unwrap();
    }
}

/// Runs `engine` until its shutdown token is cancelled.
fn spawn_run(engine: &Engine, events: &EventsSettings) -> tokio::task::JoinHandle<()> {
    let (engine, events) = (engine.clone(), events.clone());
    tokio::spawn(async move {
        thalamus::app::run_with_transports(&engine, &events)
            .await
            .unwrap()
    })
}

/// Stops `engine` and waits until its run (and so its Kafka consumer) has ended.
async fn stop(engine: &Engine, run: tokio::task::JoinHandle<()>) {
    engine.shutdown_token().cancel();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the controller stops within a minute")
        .unwrap();
}

/// The restarted controller gets the group: every ingestion is enacted, nothing dead-lettered.
async fn expect_all_enacted(engine: &Engine, run: tokio::task::JoinHandle<()>, total: usize) {
    eventually("every ingestion enacted after the restart", || async {
        ingestions_ok(engine).await == total
    })
    .await;
    let metrics = engine.event_metrics();
    stop(engine, run).await;
    assert_eq!(metrics.snapshot().dead_lettered, 0);
}

fn joined_by(client: &'static str, group: String) -> impl Fn(&Join) -> bool {
    move |j| j.client_id == client && j.group_id == group
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_its_own_join_is_in_flight_loses_nothing() {
    let proxy = start_broker(OWN_JOIN);
    let events = kafka_events("rebalance-own-join", OWN_JOIN.1);
    let topic = actual(&events, ARCHIVE);
    let topics: Vec<&str> = events.kafka.topics.iter().map(String::as_str).collect();
    create_topics(OWN_JOIN.1, &topics).await;
    let db = TestDb::new(Backend::Sqlite).await;
    // Waiting before the first start: never committed.
    produce_kafka_to(
        OWN_JOIN.1,
        &topic,
        &(0..5).map(complete).collect::<Vec<_>>(),
    )
    .await;

    let first = archive_world(&db, events.clone(), 10).await;
    let run = spawn_run(&first, &events);
    // The JoinGroup that takes part in the join phase, the one a broker answers only when
    // that phase ends (tansu holds it for session.timeout.ms / 2): a dynamic member's second
    // (carrying the member id the broker handed out), a static member's first.
    let ours = joined_by("thalamus", events.kafka.group_id.clone());
    let join = proxy.wait_join("the controller's JoinGroup in the join phase", |joins| {
        joins
            .iter()
            .find(|j| ours(j) && (!j.member_id.is_empty() || j.instance_id.is_some()))
            .cloned()
    });
    assert!(!join.answered, "stopped while its JoinGroup is in flight");
    stop(&first, run).await;

    produce_kafka_to(
        OWN_JOIN.1,
        &topic,
        &(5..10).map(complete).collect::<Vec<_>>(),
    )
    .await;
    let second = archive_world(&db, events.clone(), 10).await;
    let run = spawn_run(&second, &events);
    expect_all_enacted(&second, run, 10).await;
    stop_broker(OWN_JOIN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_another_member_joins_loses_nothing() {
    let proxy = start_broker(OTHER_JOIN);
    let events = kafka_events("rebalance-other-join", OTHER_JOIN.1);
    let topic = actual(&events, ARCHIVE);
    let elsewhere = format!("{topic}.elsewhere");
    let mut topics: Vec<&str> = events.kafka.topics.iter().map(String::as_str).collect();
    topics.push(&elsewhere);
    create_topics(OTHER_JOIN.1, &topics).await;
    let db = TestDb::new(Backend::Sqlite).await;

    let first = archive_world(&db, events.clone(), 10).await;
    let run = spawn_run(&first, &events);
    produce_kafka_to(
        OTHER_JOIN.1,
        &topic,
        &(0..5).map(complete).collect::<Vec<_>>(),
    )
    .await;
    let metrics = first.event_metrics();
    eventually("the first half, consumed and committed", || async {
        metrics.snapshot().applied == 5
    })
    .await;

    // Another member joins the group (subscribed elsewhere, so it never takes our topic):
    // once the broker has answered its first JoinGroup a rebalance is open, and the
    // controller, which does not know yet, is still the group's leader.
    let group = events.kafka.group_id.clone();
    let other: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", OTHER_JOIN.1)
        .set("group.id", &group)
        .set("client.id", "other")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    other.subscribe(&[&elsewhere]).unwrap();
    let other = std::sync::Arc::new(other);
    let polling = {
        let other = other.clone();
        tokio::spawn(async move {
            loop {
                let _ = other.recv().await;
            }
        })
    };
    let theirs = joined_by("other", group.clone());
    let opened = proxy.wait_join("the other member's first JoinGroup answered", |joins| {
        joins.iter().find(|j| theirs(j) && j.answered).cloned()
    });
    // The rebalance cannot have completed: that needs the leader's JoinGroup answered.
    let ours = joined_by("thalamus", group.clone());
    assert!(
        !proxy
            .joins()
            .iter()
            .any(|j| ours(j) && j.seq > opened.seq && j.answered),
        "stopped before the controller rejoined"
    );
    stop(&first, run).await;

    produce_kafka_to(
        OTHER_JOIN.1,
        &topic,
        &(5..10).map(complete).collect::<Vec<_>>(),
    )
    .await;
    let second = archive_world(&db, events.clone(), 10).await;
    let run = spawn_run(&second, &events);
    expect_all_enacted(&second, run, 10).await;
    polling.abort();
    let _ = polling.await;
    tokio::task::block_in_place(|| drop(other));
    stop_broker(OTHER_JOIN);
}
