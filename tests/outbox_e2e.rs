//! The outbox end to end, as a downstream consumer sees it: the real `thalamus run` finds a
//! VLA dataset, Workspaces (a stand-in) runs its ingestion and calibration, status comes back
//! over real RabbitMQ, and a consumer bound to the exchanges hears, in order, `new-file`, the
//! capability status re-said from a workflow status, `ingestion-complete` and
//! `calibration-complete` — with the announcing broker connection cut and thalamus killed
//! with SIGKILL along the way. Nothing is lost; a repeat carries the same id.

mod common;

use common::brokers::{actual, events, eventually, publish_amqp, ARCHIVE, STATUS};
use common::controller::{add_dataset, settings, write_config, Controller};
use common::listener::Listener;
use common::proxy::{Mode, Proxy};
use common::workspaces_stub::Stub;

const NAME: &str = "24A-900.sb1.eb1";

/// The messages heard so far, each id once (a repeat after a kill is allowed, a loss is not).
fn distinct(listener: &Listener) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    listener
        .heard()
        .into_iter()
        .filter(|h| h.origin.is_some()) // thalamus's, not the test's own status messages
        .filter(|h| seen.insert(h.message_id.clone()))
        .map(|h| (h.kind().to_string(), h.exchange.clone()))
        .collect()
}

fn kinds(listener: &Listener) -> Vec<String> {
    distinct(listener).into_iter().map(|(k, _)| k).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_hears_every_announcement_in_order_across_a_cut_and_a_sigkill() {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = format!("sqlite://{}", d.join("thalamus.db").display());
    let mut s = settings(d, &db, &stub);
    s.events = events("outbox-e2e");
    s.events.kafka.enabled = false;
    let (archive, status) = (actual(&s.events, ARCHIVE), actual(&s.events, STATUS));
    // Announcements go through a proxy the test cuts; consumed events come directly.
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    s.outbox.amqp.enabled = true;
    s.outbox.amqp.url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    s.outbox.aliases.insert(ARCHIVE.into(), archive.clone());
    s.outbox.aliases.insert(STATUS.into(), status.clone());
    let config = write_config(d, "config", &s);
    let listener = Listener::on(&[&archive, &status]).await;

    let mut first = Controller::spawn(&config, d, "first", &[]);
    // Its queue is bound once it consumes: a status published before would be unroutable.
    eventually("thalamus consuming", || async {
        first.log().contains("consuming AMQP")
    })
    .await;
    add_dataset(d, NAME);
    eventually("new-file", || async { kinds(&listener) == ["new-file"] }).await;
    eventually("the ingestion request", || async {
        stub.requests().len() == 1
    })
    .await;
    let ingestion = stub.requests()[0].id;

    // The announcing connection is cut; the workflow status of the ingestion arrives and is
    // absorbed (its capability status waits in the outbox); thalamus is killed.
    proxy.cut(Mode::Refuse);
    stub.set_state(ingestion, "Executing", Some("ingesting"));
    let workflow = format!(
        r#"{{"type":"workflow-status","workflow_request_id":77,"capability_request_id":{ingestion},"state":"Executing","message":"ingesting","timestamp":"2026-11-26T12:00:00Z"}}"#
    );
    publish_amqp(&status, "workflow-status", &[workflow.into_bytes()]).await;
    let store = sqlx::SqlitePool::connect(&db).await.unwrap();
    eventually("the status absorbed, its capability status in the outbox", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox WHERE message_type = 'capability-status' AND sent_at IS NULL",
        )
        .fetch_one(&store)
        .await
        .unwrap();
        waiting == 1
    })
    .await;
    store.close().await;
    assert_eq!(
        kinds(&listener),
        ["new-file"],
        "nothing got through the cut"
    );
    first.kill();
    proxy.restore();

    let mut second = Controller::spawn(&config, d, "second", &[]);
    eventually("thalamus consuming again", || async {
        second.log().contains("consuming AMQP")
    })
    .await;
    eventually("capability-status after the restart", || async {
        kinds(&listener).len() >= 2
    })
    .await;
    let heard: Vec<_> = listener
        .heard()
        .into_iter()
        .filter(|h| h.origin.is_some())
        .collect();
    let capability = heard
        .iter()
        .find(|h| h.kind() == "capability-status")
        .expect("the re-said status");
    assert_eq!(capability.exchange, status);
    assert_eq!(capability.body["capability_request_id"], ingestion);
    assert_eq!(capability.body["workflow_request_id"], 77);
    assert_eq!(capability.body["state"], "Executing");

    // Workspaces and the archive say the observation is ingested; the calibration runs and
    // completes.
    stub.set_state(ingestion, "Complete", None);
    let ingested = format!(
        r#"{{"type":"capability-status","capability_request_id":{ingestion},"state":"Complete","message":"ingested","timestamp":"2026-11-26T12:30:00Z"}}"#
    );
    publish_amqp(&status, "capability-status", &[ingested.into_bytes()]).await;
    let complete = format!(
        r#"{{"application":"ingestion","type":"ingestion-complete","instrument":"VLA","name":"{NAME}"}}"#
    );
    publish_amqp(&archive, "ingestion.event", &[complete.into_bytes()]).await;
    eventually("the calibration request", || async {
        stub.requests().len() == 2
    })
    .await;
    let calibration = stub.requests()[1].id;
    stub.set_state(calibration, "Complete", Some("calibrated"));
    let done = format!(
        r#"{{"type":"capability-status","capability_request_id":{calibration},"state":"Complete","message":"calibrated","timestamp":"2026-11-26T13:00:00Z"}}"#
    );
    publish_amqp(&status, "capability-status", &[done.into_bytes()]).await;
    eventually("calibration-complete", || async {
        kinds(&listener).len() >= 4
    })
    .await;
    assert_eq!(
        kinds(&listener),
        [
            "new-file",
            "capability-status",
            "ingestion-complete",
            "calibration-complete"
        ],
        "{:#?}",
        listener.heard()
    );
    let heard: Vec<_> = listener
        .heard()
        .into_iter()
        .filter(|h| h.origin.is_some())
        .collect();
    for h in &heard {
        assert!(h.origin.is_some(), "every announcement says who said it");
        assert!(h
            .message_id
            .as_deref()
            .is_some_and(|id| id.starts_with("thalamus-outbox-")));
    }
    // The cut announcing connection was told once, as thalamus's own warning, not as the
    // AMQP library's socket internals.
    let cut: Vec<String> = first
        .log_lines()
        .into_iter()
        .filter(|l| l.is_problem())
        .map(|l| l.message)
        .collect();
    assert!(cut.iter().all(|m| m.starts_with("outbox: ")), "{cut:#?}");
    // Its own announcements came back on the exchanges it consumes and changed nothing:
    // exactly one capability status, nothing announced twice under two ids.
    let problems: Vec<String> = second
        .log_lines()
        .into_iter()
        .filter(|l| l.level == "ERROR" || l.level == "RAW")
        .map(|l| l.raw)
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        heard
            .iter()
            .filter(|h| h.kind() == "capability-status")
            .count(),
        1
    );
    second.kill();
}

/// With no events at all (the default), Workspaces' answers to thalamus's own polls are what
/// completes a request: that path announces too, in the transaction that records the
/// outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_found_by_polling_workspaces_are_announced() {
    let stub = Stub::start().await;
    stub.auto_complete(true);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = format!("sqlite://{}", d.join("thalamus.db").display());
    let mut s = settings(d, &db, &stub);
    s.workspaces.poll_seconds = 1;
    let id = common::brokers::unique("outbox-polled");
    let archive = format!("{ARCHIVE}.{id}");
    s.outbox.amqp.enabled = true;
    s.outbox.amqp.url = common::brokers::AMQP.into();
    s.outbox.aliases.insert(ARCHIVE.into(), archive.clone());
    let config = write_config(d, "config", &s);
    let listener = Listener::on(&[&archive]).await;
    let mut controller = Controller::spawn(&config, d, "run", &[]);
    add_dataset(d, NAME);
    eventually("calibration-complete", || async {
        kinds(&listener).len() >= 3
    })
    .await;
    assert_eq!(
        kinds(&listener),
        ["new-file", "ingestion-complete", "calibration-complete"],
        "{}",
        controller.tail(20)
    );
    let heard: Vec<_> = listener.heard();
    let ingested = heard
        .iter()
        .find(|h| h.kind() == "ingestion-complete")
        .unwrap();
    assert_eq!(ingested.body["key"], format!("VLA/{NAME}"));
    assert_eq!(
        ingested.body["external_id"],
        format!("Ingestion/VLA/{NAME}@1")
    );
    assert_eq!(ingested.body["state"], "Complete");
    controller.kill();
}
