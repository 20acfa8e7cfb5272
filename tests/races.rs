//! The engine's promises under the interleavings an operator meets, each forced with gates
//! (a step waits until the test opens its gate) and the manual clock, never by sleeping:
//! two replicas and a lease running out mid-round, a status event landing while the step of
//! the same object runs, a deletion racing any outcome, outcomes that must reach the store
//! while a round is still running, and two writers upserting the same new spec.

mod common;

use std::time::Duration;

use common::brokers::eventually;
use common::gate::Gate;
use common::*;
use thalamus::config::Settings;
use thalamus::store::{Change, Open, Store};

/// Replicas with a short lease: a step times out after 5 s, a lease lasts 6 s.
fn short_lease(s: &mut Settings) {
    s.sync.concurrency = 1;
    s.sync.lease_seconds = 6;
    s.sync.step_timeout_seconds = 5;
}

async fn upsert_parents(h: &Harness, keys: &[&str]) {
    for key in keys {
        h.models().upsert(key, &Parent { value: 1 }).await.unwrap();
    }
}

/// A round that outlives the lease it started with renews it before starting its next step,
/// so a second replica never claims (and runs) an object the first is about to run.
async fn a_step_starts_only_under_a_lease_that_outlives_its_timeout(backend: Backend) {
    let tweak = |s: &mut Settings| {
        short_lease(s);
        s.sync.page_size = 2;
    };
    let h = Harness::with(backend, tweak, |_, _| {}).await;
    let b = h.another_engine_with("replica-b", tweak).await;
    let (first, second) = (Gate::new(), Gate::new());
    h.script
        .set("p1", Act::Gated(first.clone(), Box::new(Act::Ok)));
    h.script
        .set("p2", Act::Gated(second.clone(), Box::new(Act::Ok)));
    upsert_parents(&h, &["p1", "p2", "p3"]).await;
    let a = h.engine.clone();
    let pass = tokio::spawn(async move { a.sync_pass().await });
    h.script.until_started("p1", 1).await;
    // The next page (p3) is claimed while the round [p1, p2] runs: wait for it, so every
    // lease of A was taken at T0.
    eventually("A's claim of the next page", || async {
        h.store().leases().await.unwrap().len() == 3
    })
    .await;
    // 5 s of the 6-s lease are left when p1 ends: less than p2's timeout plus slack.
    h.clock.advance(1_000);
    first.open();
    h.script.until_started("p2", 1).await;
    // The lease taken by the claim has run out while p2 runs.
    h.clock.advance(5_500);
    let b_pass = tokio::time::timeout(Duration::from_secs(10), b.sync_pass()).await;
    second.open();
    second.open(); // lets a second run of p2 (the defect) finish too
    let report = b_pass.expect("replica B ran p2 while replica A was running it");
    assert_eq!(
        report.unwrap().synced,
        1,
        "B takes over only p3, claimed ahead by A but not yet running"
    );
    pass.await.unwrap().unwrap();
    assert_eq!(h.script.calls("p2"), 1, "{:?}", h.script.log());
    assert_eq!(h.script.calls("p3"), 1, "{:?}", h.script.log());
}

/// A replica that stalled past its lease (the other replica took the object over and ran it)
/// writes nothing when its step finally ends: neither the outcome nor its audit row.
async fn an_outcome_under_a_lost_lease_writes_nothing(backend: Backend) {
    let h = Harness::with(backend, short_lease, |_, _| {}).await;
    let b = h.another_engine_with("replica-b", short_lease).await;
    let gate = Gate::new();
    h.script
        .set("p", Act::Gated(gate.clone(), Box::new(Act::Ok)));
    upsert_parents(&h, &["p"]).await;
    let a = h.engine.clone();
    let pass = tokio::spawn(async move { a.sync_pass().await });
    h.script.until_started("p", 1).await;
    h.clock.advance(7_000);
    h.script.set("p", Act::Ok);
    assert_eq!(
        b.sync_pass().await.unwrap().synced,
        1,
        "B took the expired lease"
    );
    gate.open();
    let a_report = pass.await.unwrap().unwrap();
    assert_eq!(a_report.lost, 1);
    let history = h.store().history("Parent", "p", 10).await.unwrap();
    let holders: Vec<&str> = history.iter().map(|e| e.holder.as_str()).collect();
    assert_eq!(
        holders,
        ["replica-b"],
        "only the lease holder's attempt is on record"
    );
    assert_eq!(h.row("Parent", "p").await.enacted, 1);
}

/// An event rewrites an object's status while its step runs: the step's own status write
/// cannot be applied over it, so the object is not marked enacted with a dropped status; it
/// runs again at once, from the event's status.
async fn a_status_event_during_a_step_is_never_lost(backend: Backend) {
    let h = Harness::new(backend).await;
    let gate = Gate::new();
    h.script
        .set("p", Act::Gated(gate.clone(), Box::new(Act::Ok)));
    upsert_parents(&h, &["p"]).await;
    let engine = h.engine.clone();
    let pass = tokio::spawn(async move { engine.sync_pass().await });
    h.script.until_started("p", 1).await;
    h.script.set("p", Act::Ok);
    let event = Runs { runs: 100 };
    assert!(h.models().set_status::<Parent>("p", &event).await.unwrap());
    gate.open();
    // Due again at once, the object runs a second time in the same pass.
    let report = pass.await.unwrap().unwrap();
    assert_eq!((report.rerun, report.synced), (1, 2));
    let row = h.row("Parent", "p").await;
    assert_eq!(row.enacted, 1);
    let status: Runs = serde_json::from_str(&row.status).unwrap();
    assert_eq!(
        status.runs, 101,
        "the second run started from the event's status"
    );
    assert_eq!(h.script.calls("p"), 2);
    let history = h.store().history("Parent", "p", 10).await.unwrap();
    let outcomes: Vec<&str> = history.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ok", "superseded"]);
}

/// A deletion that arrives while a sync step runs is carried out next pass, whatever that
/// step's outcome: a permanent failure, a transient one (with its backoff) or a deferral.
async fn a_deletion_during_a_step_runs_next_pass_whatever_the_outcome(backend: Backend) {
    let h = Harness::new(backend).await;
    let gate = Gate::new();
    let outcomes = [
        ("permanent", Act::Permanent),
        ("failed", Act::Fail),
        ("deferred", Act::DeferTimes(1, Duration::from_secs(600))),
        ("synced", Act::Ok),
    ];
    for (key, act) in &outcomes {
        h.script
            .set(key, Act::Gated(gate.clone(), Box::new(act.clone())));
    }
    let keys: Vec<&str> = outcomes.iter().map(|(k, _)| *k).collect();
    upsert_parents(&h, &keys).await;
    let engine = h.engine.clone();
    let pass = tokio::spawn(async move { engine.sync_pass().await });
    for key in &keys {
        h.script.until_started(key, 1).await;
        assert_eq!(h.models().delete::<Parent>(key).await.unwrap(), 1);
        h.script.set(key, Act::Ok);
    }
    for _ in &keys {
        gate.open();
    }
    // The deletions are due at once (with fresh attempts): this very pass carries them out.
    pass.await.unwrap().unwrap();
    h.engine.run_once().await.unwrap();
    for key in &keys {
        assert!(
            h.store().get("Parent", key).await.unwrap().is_none(),
            "{key} was deleted"
        );
    }
    let mut deleted = h.script.deleted();
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "Parent/deferred",
            "Parent/failed",
            "Parent/permanent",
            "Parent/synced"
        ]
    );
}

/// Outcomes reach the store within a bounded time of their step finishing, not when the
/// round ends, however busy the round: a crash mid-round then loses nothing already done,
/// and an event about a request made early in the round finds the request's id stored.
async fn outcomes_are_stored_while_the_round_still_runs(backend: Backend) {
    const SLEEPERS: u64 = 40;
    let h = Harness::with(backend, |s| s.sync.concurrency = 64, |_, _| {}).await;
    let gate = Gate::new();
    // Steps finishing every 100 ms for 4 s keep the round busy; one more waits at the gate
    // so the round cannot end before the test looks.
    let mut keys = vec!["quick".to_string(), "held".to_string()];
    h.script
        .set("held", Act::Gated(gate.clone(), Box::new(Act::Ok)));
    for i in 1..=SLEEPERS {
        let key = format!("busy{i:02}");
        h.script
            .set(&key, Act::Sleep(Duration::from_millis(100 * i)));
        keys.push(key);
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    upsert_parents(&h, &refs).await;
    let engine = h.engine.clone();
    let pass = tokio::spawn(async move { engine.sync_pass().await });
    eventually("the quick step's outcome in the store", || async {
        h.row("Parent", "quick").await.enacted == 1
    })
    .await;
    let busy = h.script.in_flight() - 1;
    assert!(
        busy > 0,
        "stored only once every busy step of the round had ended"
    );
    gate.open();
    assert_eq!(pass.await.unwrap().unwrap().synced, keys.len());
}

/// Steps that read the store keep running while the round writes outcomes: a step holding the
/// one SQLite connection mid-read must be able to finish and hand it back, or the write waits
/// for it until the pool gives up (30 s by default; `run --once` stalled so). With a store
/// that gives up after 2 s, no store call of the round may fail.
async fn steps_using_the_store_never_stall_the_round(backend: Backend) {
    let h = Harness::with(backend, |s| s.sync.concurrency = 16, |_, _| {}).await;
    let url = h.db.url.clone();
    let store = Store::connect_with_timeout(&url, 4, Open::Existing, Duration::from_secs(2))
        .await
        .unwrap();
    let engine = h.engine_on(store, "reader", |s| s.sync.concurrency = 16);
    let keys: Vec<String> = (0..200).map(|i| format!("p{i:03}")).collect();
    for key in &keys {
        h.script.set(key, Act::Reads(20));
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    upsert_parents(&h, &refs).await;
    let report = engine.run_once().await.unwrap();
    assert_eq!(report.sync.synced, keys.len());
    assert_eq!(
        engine.store_health().failures(),
        0,
        "a store call of the round waited for a connection a paused step held"
    );
}

/// A replica decides a Child must wait (its Parent is not in sync as it read it), but before
/// it writes that, another replica syncs the Parent: the other's wake-up of waiting
/// dependents found the Child not yet waiting. The Child must be due at once, not sleep out
/// the whole recheck (found by `thalamus bench --only replicas`: 244 of 100,000 objects left
/// for the recheck). Forced here through the store, in the order that loses the wake-up.
async fn a_wait_written_after_its_dependency_converged_is_due_at_once(backend: Backend) {
    use thalamus::store::{OutcomeRecord, Settled};
    let h = Harness::new(backend).await;
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    let child = Child {
        parent: "p".into(),
        value: 1,
    };
    h.models().upsert("c", &child).await.unwrap();
    let store = h.store();
    let lease = T0 + 600_000;
    // Replica a claims the Child and reads its Parent: not in sync yet.
    let c = store
        .claim_due("Child", T0, T0, 10, "a", lease)
        .await
        .unwrap();
    assert_eq!(c.len(), 1);
    // Replica b syncs the Parent (and wakes waiting dependents: none are waiting yet).
    let p = store
        .claim_due("Parent", T0, T0, 10, "b", lease)
        .await
        .unwrap();
    let record = |row: &thalamus::store::ObjectRow, settled: Settled| OutcomeRecord {
        id: row.id,
        kind: row.kind.clone(),
        key: row.key.clone(),
        generation: row.generation,
        revision: row.revision,
        sync_job: true,
        settled,
        status: None,
        execution: None,
        has_dependents: row.kind == "Parent",
        announce: Vec::new(),
        transitions: false,
    };
    store
        .settle("b", T0, &[record(&p[0], Settled::Synced)])
        .await
        .unwrap();
    // Replica a writes, at `t`, the wait it decided on for the Child it claimed (its
    // Parent not in sync as it read it), with a recheck a minute away; returns when the Child
    // is due next.
    let (h, record) = (&h, &record);
    let wait = |child: thalamus::store::ObjectRow, t: i64| async move {
        let wait = Settled::Waiting {
            on: "waiting on Parent p: not yet synced".into(),
            until: t + 60_000,
        };
        store.settle("a", t, &[record(&child, wait)]).await.unwrap();
        h.row("Child", "c").await.next_attempt_at
    };
    let claim = |t: i64| async move {
        let mut c = store
            .claim_due("Child", t, t, 10, "a", t + 600_000)
            .await
            .unwrap();
        c.pop().expect("the Child, due")
    };
    // Replica a claimed the Child before b synced the Parent.
    assert_eq!(wait(c[0].clone(), T0).await, Some(T0), "due at once");

    // A wait on a dependency still out of sync keeps its recheck.
    h.models().upsert("p", &Parent { value: 2 }).await.unwrap();
    h.models()
        .upsert("c", &Child { value: 2, ..child })
        .await
        .unwrap();
    assert_eq!(wait(claim(T0).await, T0).await, Some(T0 + 60_000));

    // PostgreSQL: the Parent is being written by another transaction right now (a replica's
    // settle, not yet committed, whose wake-up cannot see this wait): the wait is rechecked
    // within a second, not after the whole recheck.
    if backend == Backend::Postgres {
        let writer = Locker::hold(
            &h.db.url,
            "UPDATE objects SET updated_at = updated_at WHERE kind = 'Parent'",
        )
        .await;
        let t1 = T0 + 60_000;
        assert_eq!(wait(claim(t1).await, t1).await, Some(t1 + 1_000));
        drop(writer);
    }
}

both_backends!(
    a_wait_written_after_its_dependency_converged_is_due_at_once,
    steps_using_the_store_never_stall_the_round,
    a_step_starts_only_under_a_lease_that_outlives_its_timeout,
    an_outcome_under_a_lost_lease_writes_nothing,
    a_status_event_during_a_step_is_never_lost,
    a_deletion_during_a_step_runs_next_pass_whatever_the_outcome,
    outcomes_are_stored_while_the_round_still_runs,
);

/// Holds row locks in the objects table from its own transaction, so two writers can be made
/// to read before either writes, and tells when both are waiting for it.
struct Locker {
    conn: sqlx::PgConnection,
    pid: i32,
}

impl Locker {
    /// Begins a transaction on the test's schema and runs `sql` in it.
    async fn hold(url: &str, sql: &str) -> Self {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        Self { conn, pid }
    }

    /// Waits until `n` other sessions wait for this one, directly or behind each other.
    async fn until_waited_on(&self, url: &str, n: i64) {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        eventually("both writers waiting for the lock", || async {
            let waiting: i64 = sqlx::query_scalar(
                "WITH RECURSIVE blocked(pid) AS ( \
                   SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)) \
                   UNION SELECT a.pid FROM pg_stat_activity a JOIN blocked b \
                   ON b.pid = ANY(pg_blocking_pids(a.pid))) SELECT count(*) FROM blocked",
            )
            .bind(self.pid)
            .fetch_one(&pool)
            .await
            .unwrap();
            waiting >= n
        })
        .await;
        pool.close().await;
    }

    async fn commit(mut self) {
        sqlx::query("COMMIT").execute(&mut self.conn).await.unwrap();
    }
}

/// Two upserts of one new spec that both read the old one before either writes (two
/// overlapping scans, two replicas' policies) move the generation once, not twice; and two
/// writers creating one new key never fail each other's batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_of_one_spec_move_the_generation_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let (a, b) = (db.store().await, db.store().await);
    let keys: Vec<String> = (0..200).map(|i| format!("obs{i:03}")).collect();
    let specs = |value: i64| -> Vec<(String, serde_json::Value)> {
        keys.iter()
            .map(|k| (k.clone(), serde_json::json!({ "value": value })))
            .collect()
    };
    a.upsert_many("Parent", &specs(1), T0).await.unwrap();

    let locker = Locker::hold(&db.url, "UPDATE objects SET updated_at = updated_at").await;
    let (v2a, v2b) = (specs(2), specs(2));
    let (sa, sb) = (a.clone(), b.clone());
    let first = tokio::spawn(async move { sa.upsert_many("Parent", &v2a, T0 + 1).await });
    let second = tokio::spawn(async move { sb.upsert_many("Parent", &v2b, T0 + 1).await });
    locker.until_waited_on(&db.url, 2).await;
    locker.commit().await;
    let changes: Vec<Change> = [first.await.unwrap(), second.await.unwrap()]
        .into_iter()
        .flat_map(|r| r.unwrap())
        .map(|c| c.change)
        .collect();
    let updated = changes
        .iter()
        .filter(|c| matches!(c, Change::Updated { .. }))
        .count();
    assert_eq!(
        updated,
        keys.len(),
        "each key updated by exactly one writer"
    );
    for key in &keys {
        assert_eq!(a.get("Parent", key).await.unwrap().unwrap().generation, 2);
    }

    // Creation: both writers find the key missing, then meet at the unique index.
    let locker = Locker::hold(
        &db.url,
        "INSERT INTO objects (kind, key, spec, next_attempt_at, created_at, updated_at) \
         VALUES ('Parent', 'new', '{\"value\":1}', 0, 0, 0)",
    )
    .await;
    let new = vec![("new".to_string(), serde_json::json!({ "value": 1 }))];
    let (sa, sb, na, nb) = (a.clone(), b.clone(), new.clone(), new);
    let first = tokio::spawn(async move { sa.upsert_many("Parent", &na, T0 + 2).await });
    let second = tokio::spawn(async move { sb.upsert_many("Parent", &nb, T0 + 2).await });
    locker.until_waited_on(&db.url, 2).await;
    locker.commit().await;
    for result in [first.await.unwrap(), second.await.unwrap()] {
        assert_eq!(result.unwrap()[0].change, Change::Unchanged);
    }
    assert_eq!(a.get("Parent", "new").await.unwrap().unwrap().generation, 1);
}
