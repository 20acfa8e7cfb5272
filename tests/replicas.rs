//! Three replicas of the real binary on one PostgreSQL schema, against a Workspaces that is
//! slower than the leases are long (a listing answers after 1 s, a create after 0.35 s; one
//! step at a time per replica; leases of 6 s; steps time out after 5 s):
//! - no external id ever receives two create calls (a second one shows at the stand-in even
//!   though it answers 409), and every Ingestion ends with its request;
//! - a replica SIGKILLed while it holds work (leases on new Ingestions, one of their steps in
//!   flight) has that work taken over by the others within the lease time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::controller::{self, Controller};
use common::store_view::StoreView;
use common::workspaces_stub::{decode, Route, Stub};
use common::{Backend, TestDb};

/// Datasets present when the replicas start.
const DATASETS: usize = 30;
/// Datasets added before one replica is killed.
const MORE: usize = 12;
const LEASE_SECONDS: u64 = 6;
const STEP_TIMEOUT_SECONDS: u64 = 5;
/// Beyond the lease: one idle pass (`sync.interval_ms`, 1 s) to notice the lease expired,
/// and a second for the claim and the step's first call.
const TAKEOVER_SLACK: Duration = Duration::from_secs(2);
/// How long the replicas get to request everything (generous: about 20 s are needed).
const CONVERGE: Duration = Duration::from_secs(150);

const REPLICAS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];

/// The external id the Ingestion of `key` at `generation` requests.
fn external_id(key: &str, generation: i64) -> String {
    format!("Ingestion/{key}@{generation}")
}

/// Ingestions whose current generation has no request recorded that the stand-in knows
/// under that external id (empty when every Ingestion ended with its request).
async fn unrequested(view: &StoreView, stub: &Stub, expected: usize) -> Vec<String> {
    let requests: BTreeMap<i64, String> = stub
        .requests()
        .into_iter()
        .map(|r| (r.id, r.external_id))
        .collect();
    let ingestions = view.kind("Ingestion").await;
    let mut missing: Vec<String> = ingestions
        .iter()
        .filter(|r| {
            let wanted = external_id(&r.key, r.generation);
            r.request_id().and_then(|id| requests.get(&id)) != Some(&wanted)
        })
        .map(|r| r.key.clone())
        .collect();
    if ingestions.len() < expected {
        missing.push(format!(
            "({} of {expected} Ingestions exist)",
            ingestions.len()
        ));
    }
    missing
}

/// Waits until every Ingestion has its request, while every replica in `live` stays up.
async fn wait_all_requested(
    view: &StoreView,
    stub: &Stub,
    expected: usize,
    live: &mut [&mut Controller],
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        for c in live.iter_mut() {
            if !c.alive() {
                return Err(format!("{} exited:\n{}", c.name, c.tail(20)));
            }
        }
        let missing = unrequested(view, stub, expected).await;
        if missing.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > CONVERGE {
            return Err(format!(
                "after {CONVERGE:?}, {} Ingestions still lack their request: {missing:?}",
                missing.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When the stand-in first saw a call after `since` for the object whose current external
/// id is `ext` (its listing or create) or for its recorded request `id` (a poll).
fn first_call_after(stub: &Stub, since: Instant, ext: &str, id: Option<i64>) -> Option<Instant> {
    let listing = format!("external_id={ext}");
    let get = id.map(|id| format!("/request/{id}"));
    stub.received()
        .into_iter()
        .filter(|r| r.at > since)
        .find(|r| {
            let line = decode(&r.raw);
            let created = r
                .body
                .as_ref()
                .is_some_and(|b| b["external_id"].as_str() == Some(ext));
            line.ends_with(&listing)
                || created
                || get.as_ref().is_some_and(|g| line.ends_with(g.as_str()))
        })
        .map(|r| r.at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_request_twice_and_take_over_a_killed_one() {
    let db = TestDb::new(Backend::Postgres).await;
    let stub = Stub::start().await;
    stub.delay(Route::List, Duration::from_secs(1));
    stub.delay(Route::Create, Duration::from_millis(350));
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut s = controller::settings(dir, &db.url, &stub);
    s.sync.concurrency = 1;
    s.sync.lease_seconds = LEASE_SECONDS;
    s.sync.step_timeout_seconds = STEP_TIMEOUT_SECONDS;
    // Submitted requests are looked at again only after a minute: the test never completes
    // them, so after its create and submit an Ingestion is no more work for the replicas.
    s.workspaces.poll_seconds = 60;
    let cfg = controller::write_config(dir, "config", &s);
    controller::run_to_end(&cfg, dir, &["migrate"]);
    for i in 0..DATASETS {
        controller::add_dataset(dir, &format!("25A-{i:03}.sb1.eb1"));
    }
    let view = StoreView::connect(&db.url).await;
    let mut replicas: Vec<Controller> = REPLICAS
        .iter()
        .map(|name| Controller::spawn(&cfg, dir, name, &[("THALAMUS__SYNC__HOLDER_ID", name)]))
        .collect();
    let mut failures = Vec::new();

    // Phase 1: three replicas share the work.
    let mut live: Vec<&mut Controller> = replicas.iter_mut().collect();
    match wait_all_requested(&view, &stub, DATASETS, &mut live).await {
        Ok(took) => println!("phase 1: {DATASETS} Ingestions requested in {took:.1?}"),
        Err(e) => failures.push(format!("phase 1: {e}")),
    }
    let duplicates = stub.duplicate_creates();
    println!(
        "phase 1: {} create calls for {} external ids; duplicated: {duplicates:?}",
        stub.creates_per_external_id().values().sum::<usize>(),
        stub.creates_per_external_id().len()
    );
    if !duplicates.is_empty() {
        failures.push(format!(
            "phase 1: external ids created more than once: {duplicates:?}"
        ));
    }

    // Phase 2: new work; kill the first replica seen holding it with a step in flight.
    let added = Instant::now();
    for i in 0..MORE {
        controller::add_dataset(dir, &format!("25A-{:03}.sb1.eb1", 100 + i));
    }
    let is_new = |key: &str| key.starts_with("VLA/25A-1");
    let (victim, held) = loop {
        assert!(
            added.elapsed() < CONVERGE,
            "no replica was seen holding a new Ingestion"
        );
        let rows: BTreeMap<i64, _> = view
            .kind("Ingestion")
            .await
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let mut by_holder: BTreeMap<String, Vec<(String, i64, Option<i64>)>> = BTreeMap::new();
        for lease in view.leases().await {
            if let Some(row) = rows.get(&lease.id).filter(|r| is_new(&r.key)) {
                by_holder.entry(lease.holder).or_default().push((
                    row.key.clone(),
                    row.generation,
                    row.request_id(),
                ));
            }
        }
        // A step of the holder in flight: the stand-in got a listing for one of its objects.
        let in_flight = by_holder.into_iter().find(|(_, objects)| {
            objects.iter().any(|(key, generation, _)| {
                first_call_after(&stub, added, &external_id(key, *generation), None).is_some()
            })
        });
        if let Some(found) = in_flight {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let index = REPLICAS.iter().position(|r| *r == victim).unwrap();
    replicas[index].kill();
    let killed = Instant::now();
    println!(
        "phase 2: killed {victim} holding {} new Ingestions: {:?}",
        held.len(),
        held.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
    let mut taken: BTreeMap<String, Duration> = BTreeMap::new();
    while taken.len() < held.len() && killed.elapsed() < CONVERGE {
        let leases = view.leases().await;
        let rows = view.kind("Ingestion").await;
        for (key, generation, id) in &held {
            if taken.contains_key(key) {
                continue;
            }
            let ext = external_id(key, *generation);
            let by_call = first_call_after(&stub, killed, &ext, *id).map(|at| at - killed);
            let by_lease = leases
                .iter()
                .any(|l| &l.key == key && l.kind == "Ingestion" && l.holder != victim)
                .then(|| killed.elapsed());
            // The victim's step may have settled (its request recorded, its lease given back)
            // in the instant before the kill: then there is nothing left to take over, and
            // the next look comes at the Workspaces poll, not at the lease's end.
            let by_settle = rows
                .iter()
                .any(|r| &r.key == key && r.request_id().is_some())
                .then(|| killed.elapsed());
            if let Some(after) = by_call.or(by_lease).or(by_settle) {
                taken.insert(key.clone(), after);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slowest = taken.values().max().copied().unwrap_or_default();
    println!(
        "phase 2: {} of {} taken over; the last after {:.2} s (lease {LEASE_SECONDS} s)",
        taken.len(),
        held.len(),
        slowest.as_secs_f64()
    );
    if taken.len() < held.len() {
        failures.push(format!(
            "phase 2: only {:?} of {} held objects were taken over",
            taken.keys().collect::<Vec<_>>(),
            held.len()
        ));
    } else if slowest > Duration::from_secs(LEASE_SECONDS) + TAKEOVER_SLACK {
        failures.push(format!(
            "phase 2: takeover took {:.2} s, beyond the {LEASE_SECONDS} s lease (+{TAKEOVER_SLACK:?})",
            slowest.as_secs_f64()
        ));
    }

    // Phase 3: the survivors finish everything, still without a duplicate.
    let mut survivors: Vec<&mut Controller> =
        replicas.iter_mut().filter(|c| c.name != victim).collect();
    match wait_all_requested(&view, &stub, DATASETS + MORE, &mut survivors).await {
        Ok(took) => println!(
            "phase 3: all {} Ingestions requested {took:.1?} after the kill",
            DATASETS + MORE
        ),
        Err(e) => failures.push(format!("phase 3: {e}")),
    }
    let duplicates = stub.duplicate_creates();
    let creates = stub.creates_per_external_id();
    let generations: BTreeSet<i64> = view
        .kind("Observation")
        .await
        .iter()
        .map(|r| r.generation)
        .collect();
    println!(
        "end: {} create calls for {} external ids, {} requests held; observation generations \
         {generations:?}; duplicated: {duplicates:?}",
        creates.values().sum::<usize>(),
        creates.len(),
        stub.requests().len()
    );
    if !duplicates.is_empty() {
        failures.push(format!(
            "end: external ids created more than once: {duplicates:?}"
        ));
    }
    view.close().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
