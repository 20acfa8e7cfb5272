//! Kafka broker killed (SIGKILL) and restarted mid-stream on the same persistent storage: the
//! consumer reconnects by itself and every message produced before and after the restart is
//! applied, none dead-lettered. Its own test binary with its own broker: a tansu on
//! 127.0.0.1:19094 storing into S3 (`.ci/moto.sh`, a local moto server on 127.0.0.1:19000),
//! because memory storage would come back empty.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::brokers::*;
use common::{Backend, TestDb, T0};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use thalamus::bus::KafkaSource;
use thalamus::clock::ManualClock;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::step::prelude::*;
use thalamus::steps::models::{Ingestion, Instrument, Observation, Product};

/// This test's own broker, so restarting it disturbs no other test.
const BROKER: &str = "127.0.0.1:19094";
const S3: &str = "127.0.0.1:19000";

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

fn ci_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci").join(name)
}

fn tools() -> PathBuf {
    std::env::var_os("THALAMUS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/thalamus")
        })
}

/// The pid `.ci/kafka.sh` recorded for the broker on `BROKER`.
fn tansu_pid() -> String {
    let port = BROKER.rsplit(':').next().unwrap();
    std::fs::read_to_string(tools().join(format!("tansu-{port}.pid")))
        .expect("tansu pid file")
        .trim()
        .to_string()
}

/// Starts (or finds) this test's tansu, storing into the moto bucket `tansu`.
fn start_tansu() {
    let status = Command::new("bash")
        .arg(ci_script("kafka.sh"))
        .env("KAFKA_ADDR", BROKER)
        .env("KAFKA_STORAGE", "s3://tansu/")
        .env("AWS_ENDPOINT", format!("http://{S3}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .status()
        .expect("run .ci/kafka.sh");
    assert!(status.success(), ".ci/kafka.sh could not start tansu");
}

/// Sends `signal` to `pid` and waits (bounded) until it is gone.
fn kill(pid: &str, signal: &str) {
    let _ = Command::new("kill").args([signal, pid]).status();
    for _ in 0..100 {
        let alive = Command::new("kill")
            .args(["-0", pid])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !alive {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("process {pid} survived kill {signal}");
}

fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

/// Produces messages to one topic of this test's broker, in order, each acknowledged.
async fn produce(topic: &str, payloads: &[Vec<u8>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKER)
        .create()
        .unwrap();
    for p in payloads {
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(p),
                std::time::Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

fn complete(n: usize) -> Vec<u8> {
    format!(r#"{{"application":"ingestion","type":"ingestion-complete","instrument":"VLA","name":"obs{n}"}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restart_loses_nothing() {
    // moto keeps the bucket in memory: it must stay up across the broker restart.
    let moto_was_up = listening(S3);
    let status = Command::new("bash")
        .arg(ci_script("moto.sh"))
        .status()
        .expect("run .ci/moto.sh");
    assert!(status.success(), ".ci/moto.sh could not start moto");
    start_tansu();

    let db = TestDb::new(Backend::Sqlite).await;
    let mut s = common::settings(&db.url);
    s.events = events("kafka-restart");
    s.events.kafka.brokers = BROKER.into();
    s.events.amqp.enabled = false;
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
    // Create the topics before producing.
    drop(
        KafkaSource::connect(&s.events, engine.event_metrics())
            .await
            .unwrap(),
    );
    let topic = actual(&s.events, ARCHIVE);
    let run = {
        let e = engine.clone();
        tokio::spawn(async move { e.run().await.unwrap() })
    };
    let metrics = engine.event_metrics();
    produce(&topic, &(0..50).map(complete).collect::<Vec<_>>()).await;
    eventually("the first half", || async {
        metrics.snapshot().applied == 50
    })
    .await;

    // Kill the broker hard, then bring it back on the same storage.
    kill(&tansu_pid(), "-9");
    start_tansu();
    produce(&topic, &(50..100).map(complete).collect::<Vec<_>>()).await;
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

    kill(&tansu_pid(), "-TERM");
    if !moto_was_up {
        let pid = std::fs::read_to_string(tools().join("moto-19000.pid")).expect("moto pid file");
        kill(pid.trim(), "-TERM");
    }
}
