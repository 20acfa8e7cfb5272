//! SIGKILL at random moments of a busy reconcile, 100 times over: `thalamus run` (SQLite
//! file; 30 times on PostgreSQL too; the real steps against the Workspaces stand-in, status events over RabbitMQ) is
//! started, killed with SIGKILL after a random delay, and started again, while new datasets
//! appear and Workspaces completes requests, announcing each with a capability-status
//! message published while the controller is down or up. Then it runs until quiescent.
//! The promises: every model ends enacted, no external id is requested twice, no object has
//! two requests in flight at once, and no event is lost (each one's own effect, its timestamp in the request status, is stored).
//!
//! Randomness: the kill delays, the datasets' arrivals and when requests complete come from
//! a seeded generator; the seed is printed, and `THALAMUS_TEST_SEED=<seed>` replays that
//! schedule exactly (which requests complete, and the controller's own timing, still vary
//! from run to run). Requests are completed only
//! once the store shows them Submitted, and Workspaces is looked at again only after
//! `POLL_SECONDS`, far beyond the test: only the event can finish a request in time.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::brokers::{actual, cleanup_amqp, events, try_publish_amqp, STATUS};
use common::controller::{self, Controller};
use common::rng::Rng;
use common::store_view::{Row, StoreView};
use common::workspaces_stub::{Route, Stub};
use common::{Backend, TestDb};
use thalamus::bus::{AmqpSession, EventsSettings};

/// Restarts on SQLite (leases live in the process, so a restart frees them).
const CYCLES: usize = 100;
/// Restarts on PostgreSQL (leases are rows a killed process leaves behind), fewer so both
/// variants together stay within three minutes on two cores.
const CYCLES_POSTGRES: usize = 30;
/// Datasets present before the first start.
const INITIAL: usize = 10;
/// Chance that datasets (one to three) appear before a restart.
const NEW_DATASETS: f64 = 0.4;
/// A controller lives this long (ms, uniformly) before its SIGKILL.
const LIFETIME_MS: (u64, u64) = (50, 1500);
/// How soon Workspaces is looked at again by the controller itself: never, within the test.
const POLL_SECONDS: u64 = 3600;
/// How long the last run gets to bring everything in sync.
const FINAL_WAIT: Duration = Duration::from_secs(60);

/// One request the test completed, and the message that said so.
#[derive(Debug, Clone)]
struct Completion {
    kind: String,
    key: String,
    timestamp: String,
}

/// The world the test plays: Workspaces, the broker, the datasets.
struct World {
    stub: Stub,
    events: EventsSettings,
    dir: std::path::PathBuf,
    datasets: usize,
    /// Request id → its completion and announcement.
    completed: BTreeMap<i64, Completion>,
    /// Which requests complete: a stream of its own, since how many there are to choose
    /// from depends on the controller's timing; the schedule's stream stays replayable.
    picks: Rng,
}

impl World {
    fn add_dataset(&mut self) {
        controller::add_dataset(&self.dir, &format!("26A-{:03}.sb1.eb1", self.datasets));
        self.datasets += 1;
    }

    /// Completes up to `n` (all, if `None`) of the requests the store shows Submitted for
    /// its objects' current generation, and publishes each one's capability-status message.
    async fn complete(&mut self, view: &StoreView, n: Option<usize>) {
        let mut candidates: Vec<Row> = view
            .rows()
            .await
            .into_iter()
            .filter(|r| {
                let current = format!("{}/{}@{}", r.kind, r.key, r.generation);
                r.enacted < r.generation
                    && r.request_state() == Some("Submitted")
                    && r.external_id() == Some(current.as_str())
                    && r.request_id()
                        .is_some_and(|id| !self.completed.contains_key(&id))
            })
            .collect();
        let n = n.unwrap_or(candidates.len()).min(candidates.len());
        let mut payloads = Vec::new();
        for _ in 0..n {
            let pick = self.picks.range(0, candidates.len() as u64) as usize;
            let row = candidates.remove(pick);
            let id = row.request_id().unwrap();
            let seq = self.completed.len();
            let timestamp = format!(
                "2026-02-01T{:02}:{:02}:{:02}Z",
                seq / 3600,
                seq / 60 % 60,
                seq % 60
            );
            self.stub.set_state(id, "Complete", None);
            payloads.push(
                serde_json::json!({
                    "type": "capability-status",
                    "capability_request_id": id,
                    "state": "Complete",
                    "timestamp": timestamp,
                })
                .to_string()
                .into_bytes(),
            );
            self.completed.insert(
                id,
                Completion {
                    kind: row.kind,
                    key: row.key,
                    timestamp,
                },
            );
        }
        if !payloads.is_empty() {
            publish(&actual(&self.events, STATUS), &payloads).await;
        }
    }
}

/// The wall clock in epoch milliseconds, as the controller writes it.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// How many requests Workspaces holds that no stored object records (yet).
async fn unrecorded(view: &StoreView, stub: &Stub) -> usize {
    let recorded: std::collections::BTreeSet<i64> = view
        .rows()
        .await
        .iter()
        .filter_map(Row::request_id)
        .collect();
    stub.requests()
        .iter()
        .filter(|r| !recorded.contains(&r.id))
        .count()
}

/// Publishes status messages, retrying (bounded) while RabbitMQ is away: other tests on
/// this machine restart it, and the test's own publisher is not what is under test. A
/// message published twice by a retry is a duplicate, which changes nothing.
async fn publish(exchange: &str, payloads: &[Vec<u8>]) {
    let start = Instant::now();
    while let Err(e) = try_publish_amqp(exchange, "workspaces.status", payloads).await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "RabbitMQ unavailable for a minute: {e}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether every dataset's Observation, Ingestion and Calibration exists and is in sync.
fn quiescent(rows: &[Row], datasets: usize) -> bool {
    ["Observation", "Ingestion", "Calibration"]
        .iter()
        .all(|kind| {
            let of_kind: Vec<&Row> = rows.iter().filter(|r| &r.kind == kind).collect();
            of_kind.len() == datasets && of_kind.iter().all(|r| r.in_sync())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_sqlite() {
    kill_cycles(Backend::Sqlite, CYCLES).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_postgres() {
    kill_cycles(Backend::Postgres, CYCLES_POSTGRES).await
}

async fn kill_cycles(backend: Backend, cycles: usize) {
    let seed = Rng::seed_from_env();
    println!("{backend:?}: seed {seed} (THALAMUS_TEST_SEED={seed} replays these choices)");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let stub = Stub::start().await;
    // Workspaces takes a little time, so kills often land inside a step, between a create
    // and the outcome that records it.
    stub.delay(Route::List, Duration::from_millis(50));
    stub.delay(Route::Create, Duration::from_millis(150));
    stub.delay(Route::Submit, Duration::from_millis(50));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = TestDb::new(backend).await; // a fresh SQLite file or PostgreSQL schema
    let url = db.url.clone();
    let mut s = controller::settings(dir, &url, &stub);
    s.sync.interval_ms = 250;
    s.workspaces.poll_seconds = POLL_SECONDS;
    s.workspaces.timeout_seconds = 5;
    let mut ev = events("kill-cycles");
    ev.kafka.enabled = false;
    s.events = ev.clone();
    let cfg = controller::write_config(dir, "config", &s);
    controller::run_to_end(&cfg, dir, &["migrate"]);
    // The queue exists and is bound before anything is published, as after a first start.
    let start = Instant::now();
    while let Err(e) = AmqpSession::connect(&ev).await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "RabbitMQ unavailable: {e:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let view = StoreView::connect(&url).await;
    let mut world = World {
        stub: stub.clone(),
        events: ev.clone(),
        dir: dir.to_path_buf(),
        datasets: 0,
        completed: BTreeMap::new(),
        picks: Rng::new(seed ^ 0x5EED_0F91_C5C5),
    };
    for _ in 0..INITIAL {
        world.add_dataset();
    }

    let mut completed_while_down = 0;
    let mut completed_while_up = 0;
    let mut killed_unrecorded = 0;
    for cycle in 0..cycles {
        if rng.chance(NEW_DATASETS) {
            for _ in 0..rng.range(1, 4) {
                world.add_dataset();
            }
        }
        if rng.chance(0.5) {
            let before = world.completed.len();
            world.complete(&view, Some(3)).await;
            completed_while_down += world.completed.len() - before;
        }
        let mut c = Controller::spawn(&cfg, dir, "controller", &[]);
        // The kill moment is random by design (seeded, printed above); these sleeps choose
        // it, they synchronise nothing.
        let life = rng.range(LIFETIME_MS.0, LIFETIME_MS.1);
        let midway = rng.range(0, life);
        tokio::time::sleep(Duration::from_millis(midway)).await;
        if rng.chance(0.5) {
            let before = world.completed.len();
            world.complete(&view, Some(3)).await;
            completed_while_up += world.completed.len() - before;
        }
        let rest = life.saturating_sub(c.started.elapsed().as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(rest)).await;
        assert!(
            c.alive(),
            "cycle {cycle}: the controller exited by itself:\n{}",
            c.tail(30)
        );
        c.kill();
        if unrecorded(&view, &stub).await > 0 {
            killed_unrecorded += 1;
        }
    }
    println!(
        "{backend:?}: {cycles} SIGKILLs in {:.1} s, {killed_unrecorded} of them after a create whose request \
         was not yet stored; {} datasets; {} requests completed and announced while the \
         controller was down, {} while it ran",
        started.elapsed().as_secs_f64(),
        world.datasets,
        completed_while_down,
        completed_while_up
    );

    // Last run: complete whatever is submitted until everything is in sync.
    let last = Instant::now();
    let mut c = Controller::spawn(&cfg, dir, "controller", &[]);
    let mut rows = view.rows().await;
    while !quiescent(&rows, world.datasets) && last.elapsed() < FINAL_WAIT {
        assert!(c.alive(), "the last run exited:\n{}", c.tail(30));
        world.complete(&view, None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        rows = view.rows().await;
    }
    println!(
        "{backend:?}: last run {} after {:.1} s",
        if quiescent(&rows, world.datasets) {
            "quiescent"
        } else {
            "NOT quiescent"
        },
        last.elapsed().as_secs_f64()
    );
    c.kill();

    let mut failures = Vec::new();
    for kind in ["Observation", "Ingestion", "Calibration"] {
        let n = rows.iter().filter(|r| r.kind == kind).count();
        if n != world.datasets {
            failures.push(format!("{n} {kind}s for {} datasets", world.datasets));
        }
    }
    for r in rows.iter().filter(|r| !r.in_sync()) {
        failures.push(format!(
            "{} {} not enacted: generation {}, enacted {}, {:?}, status {}",
            r.kind, r.key, r.generation, r.enacted, r.backend_status, r.status
        ));
    }
    let duplicates = stub.duplicate_creates();
    if !duplicates.is_empty() {
        failures.push(format!("external ids requested twice: {duplicates:?}"));
    }
    let overlaps = stub.overlaps();
    if !overlaps.is_empty() {
        failures.push(format!(
            "two requests of one object in flight: {overlaps:?}"
        ));
    }
    let by_key: BTreeMap<(&str, &str), &Row> = rows
        .iter()
        .map(|r| ((r.kind.as_str(), r.key.as_str()), r))
        .collect();
    let mut lost = Vec::new();
    for (id, done) in &world.completed {
        let stored = by_key
            .get(&(done.kind.as_str(), done.key.as_str()))
            .and_then(|r| r.status["updated_at"].as_str());
        if stored != Some(done.timestamp.as_str()) {
            lost.push(format!(
                "request {id} ({} {}): sent {}, stored {stored:?}",
                done.kind, done.key, done.timestamp
            ));
        }
    }
    if !lost.is_empty() {
        failures.push(format!(
            "{} of {} events without their effect: {lost:?}",
            lost.len(),
            world.completed.len()
        ));
    }
    let leases = view.leases().await; // PostgreSQL only
    if !rows.iter().all(Row::in_sync) && !leases.is_empty() {
        let holders: std::collections::BTreeSet<&str> =
            leases.iter().map(|l| l.holder.as_str()).collect();
        failures.push(format!(
            "{} leases still held, by {} holders (killed processes among them: {holders:?}), \
             the last until {:.0} s from now",
            leases.len(),
            holders.len(),
            (leases.iter().map(|l| l.until).max().unwrap_or(0) - now_ms()) as f64 / 1000.0
        ));
    }
    let dead = view.dead_letter_reasons().await;
    if !dead.is_empty() {
        failures.push(format!("{} dead letters: {dead:?}", dead.len()));
    }
    let creates = stub.creates_per_external_id();
    println!(
        "{backend:?}: {} create calls for {} external ids, {} events published, {} dead letters, \
         total {:.1} s",
        creates.values().sum::<usize>(),
        creates.len(),
        world.completed.len(),
        dead.len(),
        started.elapsed().as_secs_f64()
    );
    view.close().await;
    cleanup_amqp(&ev).await;
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
}
