//! Kafka broker killed (SIGKILL) and restarted mid-stream on the same persistent storage: the
//! consumer reconnects by itself and every message produced before and after the restart is
//! applied, none dead-lettered. Its own test binary with its own broker: a tansu on
//! 127.0.0.1:19094 storing into S3 (`.ci/moto.sh`, a local moto server on 127.0.0.1:19000),
//! because memory storage would come back empty.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::archive::*;
use common::brokers::*;
use common::{Backend, TestDb};
use thalamus::bus::KafkaSource;

/// This test's own broker, so restarting it disturbs no other test.
const BROKER: &str = "127.0.0.1:19094";
const S3: &str = "127.0.0.1:19000";

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
    let mut events = events("kafka-restart");
    events.kafka.brokers = BROKER.into();
    events.amqp.enabled = false;
    let engine = archive_world(&db, events.clone(), 100).await;
    // Create the topics before producing.
    drop(
        KafkaSource::connect(&events, engine.event_metrics(), None)
            .await
            .unwrap(),
    );
    let topic = actual(&events, ARCHIVE);
    let run = {
        let (e, events) = (engine.clone(), events.clone());
        tokio::spawn(async move {
            thalamus::app::run_with_transports(&e, &events)
                .await
                .unwrap()
        })
    };
    let metrics = engine.event_metrics();
    produce_kafka_to(BROKER, &topic, &(0..50).map(complete).collect::<Vec<_>>()).await;
    eventually("the first half", || async {
        metrics.snapshot().applied == 50
    })
    .await;

    // Kill the broker hard, then bring it back on the same storage.
    kill(&tansu_pid(), "-9");
    start_tansu();
    produce_kafka_to(BROKER, &topic, &(50..100).map(complete).collect::<Vec<_>>()).await;
    expect_all_applied(&engine, run, 100).await;

    kill(&tansu_pid(), "-TERM");
    if !moto_was_up {
        let pid = std::fs::read_to_string(tools().join("moto-19000.pid")).expect("moto pid file");
        kill(pid.trim(), "-TERM");
    }
}
