//! PostgreSQL unreachable for 30 s in the middle of a run: `thalamus run` reaches its
//! database through a TCP proxy the test cuts while steps are in flight (their Workspaces
//! creates held by the stand-in until the cut), while new datasets arrive, and restores.
//! The promises: the process stays up; the outage is logged a bounded number of times, not
//! once per pass or poll; and within seconds of the database coming back, all work resumes
//! and completes (the outcomes of steps that finished during the outage included).
//!
//! Once as a refused outage (the server is down: connections closed at once) and once as a
//! blackholed one (the network hangs: connections accepted and never answered).

mod common;

use std::time::{Duration, Instant};

use common::controller::{self, Controller};
use common::proxy::{Mode, Proxy};
use common::store_view::StoreView;
use common::workspaces_stub::{Route, Stub};
use common::{Backend, TestDb};

/// How long the database stays unreachable.
const OUTAGE: Duration = Duration::from_secs(30);
/// Datasets whose ingestion steps are in flight when the database goes away.
const IN_FLIGHT: usize = 8;
/// Datasets that appear while the database is away.
const DURING: usize = 4;
/// Connections in the controller's pool (`database.max_connections`).
const POOL: u32 = 4;
/// WARN/ERROR lines the whole outage may cost: one or two per loop that notices it (sync,
/// pull, the audit of polls) and one per pooled connection the cut breaks (sqlx says so as
/// it gives each back), not one per pass or poll.
const MAX_OUTAGE_LINES: usize = 8 + POOL as usize;
/// How soon after the database returns everything must be done: the work itself needs
/// about 4 s (an ingestion, then its calibration, each looked at again after 1 s).
const RESUME_WITHIN: Duration = Duration::from_secs(20);
/// How long the test waits for the work to finish at all, to report how late it was.
const RESUME_WAIT: Duration = Duration::from_secs(60);
/// How long finished steps' outcomes get to reach the store before the cut.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Waits until `check` holds, with the controller alive; panics with its log otherwise.
async fn wait_until<F, Fut>(c: &mut Controller, what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(c.alive(), "the controller exited:\n{}", c.tail(30));
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}:\n{}",
            c.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The wall clock in epoch milliseconds, as the controller writes it.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// How many objects of each shipped kind are in sync, out of how many exist.
async fn progress(view: &StoreView) -> [(usize, usize); 3] {
    let rows = view.rows().await;
    ["Observation", "Ingestion", "Calibration"].map(|kind| {
        let of_kind: Vec<_> = rows.iter().filter(|r| r.kind == kind).collect();
        (
            of_kind.iter().filter(|r| r.in_sync()).count(),
            of_kind.len(),
        )
    })
}

async fn outage_mid_run(mode: Mode) {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = Proxy::postgres().await;
    let stub = Stub::start().await;
    stub.auto_complete(true);
    stub.hold(Route::Create);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut s = controller::settings(dir, &db.url_via(proxy.addr()), &stub);
    s.workspaces.poll_seconds = 1;
    s.database.max_connections = POOL;
    let cfg = controller::write_config(dir, "config", &s);
    controller::run_to_end(&cfg, dir, &["migrate"]);
    for i in 0..IN_FLIGHT {
        controller::add_dataset(dir, &format!("25B-{i:03}.sb1.eb1"));
    }
    let view = StoreView::connect(&db.url).await; // direct, not through the proxy
    let mut c = Controller::spawn(&cfg, dir, "controller", &[]);
    wait_until(
        &mut c,
        "every ingestion's create in flight",
        RESUME_WAIT,
        || async { stub.held(Route::Create) == IN_FLIGHT },
    )
    .await;

    // The Observations' steps have finished: their outcomes should reach the store within a
    // bounded time, steps in flight or not. Waited for (bounded) and reported, not required:
    // the outage is what this test is about.
    let finished = Instant::now();
    while progress(&view).await[0].0 < IN_FLIGHT && finished.elapsed() < FLUSH_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{mode:?}: {} of {IN_FLIGHT} finished Observation steps stored {:.1} s after the \
         Ingestions' creates were all in flight",
        progress(&view).await[0].0,
        finished.elapsed().as_secs_f64()
    );
    let before = c.log_lines().len();
    proxy.cut(mode);
    let cut = Instant::now();
    println!("{mode:?}: database cut with {IN_FLIGHT} steps in flight");
    stub.release(Route::Create); // the steps finish while the database is away
    for i in 0..DURING {
        controller::add_dataset(dir, &format!("25B-{:03}.sb1.eb1", 100 + i));
    }
    while cut.elapsed() < OUTAGE {
        assert!(
            c.alive(),
            "the controller exited during the outage:\n{}",
            c.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lines = c.log_lines();
    proxy.restore();
    let restored = Instant::now();
    let problems: Vec<_> = lines[before..].iter().filter(|l| l.is_problem()).collect();
    println!(
        "{mode:?}: {} WARN/ERROR lines in the {OUTAGE:?} outage; proxy {:?}",
        problems.len(),
        proxy.counts()
    );
    let mut kinds: Vec<String> = problems
        .iter()
        .map(|l| l.message.chars().take(90).collect())
        .collect();
    kinds.sort();
    kinds.dedup();
    for k in kinds.iter().take(8) {
        println!("  {k}");
    }

    let total = IN_FLIGHT + DURING;
    let done = |p: [(usize, usize); 3]| p.iter().all(|&(ok, all)| ok == total && all == total);
    let mut last = progress(&view).await;
    while !done(last) && restored.elapsed() < RESUME_WAIT && c.alive() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = progress(&view).await;
    }
    let resumed = restored.elapsed();
    let alive = c.alive();
    println!(
        "{mode:?}: {} {:.1} s after the database returned; in sync (Observation, Ingestion, \
         Calibration): {last:?} of {total} each",
        if done(last) {
            "all work done"
        } else {
            "work NOT done"
        },
        resumed.as_secs_f64()
    );
    if !done(last) {
        for r in view.rows().await.iter().filter(|r| !r.in_sync()).take(4) {
            println!(
                "  {} {}: generation {}, enacted {}, {:?}, next attempt {:?}",
                r.kind, r.key, r.generation, r.enacted, r.backend_status, r.next_attempt_at
            );
        }
        let leases = view.leases().await;
        println!(
            "  {} leases held, the first until {:?} (now {})",
            leases.len(),
            leases.first().map(|l| l.until),
            now_ms()
        );
    }
    view.close().await;
    let mut failures = Vec::new();
    if !alive {
        failures.push(format!("the controller exited:\n{}", c.tail(30)));
    }
    if problems.len() > MAX_OUTAGE_LINES {
        failures.push(format!(
            "the outage was logged {} times (at most {MAX_OUTAGE_LINES}); first: {:?}",
            problems.len(),
            problems.first().map(|l| &l.message)
        ));
    }
    if !done(last) {
        failures.push(format!(
            "work not done {RESUME_WAIT:?} after the database returned: {last:?} of {total}"
        ));
    } else if resumed > RESUME_WITHIN {
        failures.push(format!(
            "work took {:.1} s to finish after the database returned (at most {RESUME_WITHIN:?})",
            resumed.as_secs_f64()
        ));
    }
    assert!(failures.is_empty(), "{mode:?}: {}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_for_30s_mid_run() {
    outage_mid_run(Mode::Refuse).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_for_30s_mid_run() {
    outage_mid_run(Mode::Blackhole).await
}
