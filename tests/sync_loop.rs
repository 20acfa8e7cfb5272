//! The sync loop against real SQLite and PostgreSQL: order, concurrency, backoff, deferral,
//! permanent failures, dependency-only blocking, panics, timeouts, restarts.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use thalamus::clock::Clock;
use thalamus::store::{Change, ListFilter, State};

async fn state(h: &Harness, kind: &str, key: &str) -> State {
    let filter = ListFilter {
        kind: kind.into(),
        keys: vec![key.into()],
        state: None,
        limit: 1,
    };
    h.store().list(&filter).await.unwrap().pop().unwrap().state
}

async fn chain(h: &Harness, p: &str, c: &str, g: &str) {
    let m = h.models();
    m.upsert(g, &Grandchild { child: c.into() }).await.unwrap();
    child(h, c, p).await;
    m.upsert(p, &Parent { value: 1 }).await.unwrap();
}

/// Upserts Child `key` linked to Parent `parent`.
async fn child(h: &Harness, key: &str, parent: &str) {
    let spec = Child {
        parent: parent.into(),
        value: 1,
    };
    h.models().upsert(key, &spec).await.unwrap();
}

async fn runs_parents_before_children(backend: Backend) {
    let h = Harness::new(backend).await;
    chain(&h, "p", "c", "g").await;
    let report = h.engine.run_once().await.unwrap();
    assert_eq!(report.sync.synced, 3);
    assert_eq!(h.script.synced(), ["Parent/p", "Child/c", "Grandchild/g"]);
    for (kind, key) in [("Parent", "p"), ("Child", "c"), ("Grandchild", "g")] {
        let row = h.row(kind, key).await;
        assert_eq!(
            (row.generation, row.enacted, row.backend_code),
            (1, 1, 1),
            "{kind} {key}"
        );
        assert_eq!(
            row.status, r#"{"runs":1}"#,
            "status written by the step is stored"
        );
    }
    // Nothing dirty: a second run does nothing at all.
    let again = h.engine.run_once().await.unwrap();
    assert_eq!(again.sync.attempted(), 0);
    assert_eq!(h.script.log().len(), 3);
}

async fn children_in_later_rounds_still_follow_parents(backend: Backend) {
    // Page size 1: every object is its own round, so order comes from the store, not memory.
    let h = Harness::with(backend, |s| s.sync.page_size = 1, |_, _| {}).await;
    chain(&h, "p", "c", "g").await;
    h.engine.run_once().await.unwrap();
    assert_eq!(h.script.synced(), ["Parent/p", "Child/c", "Grandchild/g"]);
}

async fn concurrency_is_bounded(backend: Backend) {
    let h = Harness::with(backend, |s| s.sync.concurrency = 3, |_, _| {}).await;
    for i in 0..12 {
        let key = format!("p{i}");
        h.script.set(&key, Act::Sleep(Duration::from_millis(30)));
        h.models().upsert(&key, &Parent { value: i }).await.unwrap();
    }
    let report = h.engine.run_once().await.unwrap();
    assert_eq!(report.sync.synced, 12);
    assert_eq!(h.script.max_in_flight.load(Ordering::SeqCst), 3);
}

async fn replicas_never_run_one_object_twice(backend: Backend) {
    let h = Harness::new(backend).await;
    for i in 0..40 {
        let key = format!("p{i}");
        h.script.set(&key, Act::Sleep(Duration::from_millis(5)));
        h.models().upsert(&key, &Parent { value: i }).await.unwrap();
    }
    let a = h.another_engine("replica-a").await;
    let b = h.another_engine("replica-b").await;
    let (ra, rb) = tokio::join!(a.sync_pass(), b.sync_pass());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.synced + rb.synced,
        40,
        "every object synced exactly once across both"
    );
    for i in 0..40 {
        assert_eq!(h.script.calls(&format!("p{i}")), 1, "p{i} ran once");
    }
}

async fn upsert_is_idempotent(backend: Backend) {
    let h = Harness::new(backend).await;
    let store = h.store();
    let spec = serde_json::json!({"value": 1, "extra": {"b": 2, "a": 1}});
    let same_reordered = serde_json::json!({"extra": {"a": 1, "b": 2}, "value": 1});
    assert_eq!(
        store.upsert("Parent", "p", &spec, T0).await.unwrap(),
        Change::Created
    );
    assert_eq!(
        store
            .upsert("Parent", "p", &same_reordered, T0)
            .await
            .unwrap(),
        Change::Unchanged
    );
    let row = h.row("Parent", "p").await;
    assert_eq!((row.generation, row.revision), (1, 1));
    h.engine.run_once().await.unwrap();
    assert_eq!(
        store.upsert("Parent", "p", &spec, T0).await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        h.engine.run_once().await.unwrap().sync.attempted(),
        0,
        "unchanged spec: no re-run"
    );
    let changed = serde_json::json!({"value": 2});
    assert_eq!(
        store.upsert("Parent", "p", &changed, T0).await.unwrap(),
        Change::Updated { generation: 2 }
    );
    h.engine.run_once().await.unwrap();
    let row = h.row("Parent", "p").await;
    assert_eq!((row.generation, row.enacted), (2, 2));
    assert_eq!(h.script.calls("p"), 2);
}

async fn backoff_grows_caps_and_resets(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script.set("p", Act::FailTimes(4));
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    // Delays with base 10 s, factor 2, cap 60 s, no jitter: 10, 20, 40, 60.
    for (attempt, delay_s) in [(1, 10), (2, 20), (3, 40), (4, 60)] {
        h.engine.run_once().await.unwrap();
        let row = h.row("Parent", "p").await;
        let now = h.clock.now_ms();
        assert_eq!(row.attempts, attempt);
        assert_eq!(row.backend_code, 2);
        assert_eq!(
            row.next_attempt_at,
            Some(now + delay_s * 1000),
            "attempt {attempt}"
        );
        assert_eq!(
            row.last_error.as_deref(),
            Some(format!("boom {attempt}").as_str())
        );
        assert_eq!(state(&h, "Parent", "p").await, State::Backoff);
        // Not due a millisecond early.
        h.clock.advance(delay_s * 1000 - 1);
        assert_eq!(h.engine.run_once().await.unwrap().sync.attempted(), 0);
        h.clock.advance(1);
    }
    h.engine.run_once().await.unwrap();
    let row = h.row("Parent", "p").await;
    assert_eq!(
        (row.attempts, row.backend_code, row.enacted),
        (0, 1, 1),
        "success resets the backoff"
    );
    assert_eq!(row.last_error, None);
    let history = h.store().history("Parent", "p", 10).await.unwrap();
    let outcomes: Vec<&str> = history.iter().rev().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["error", "error", "error", "error", "ok"]);
    assert_eq!(history[0].cause, "retry 4 after backoff");
}

async fn backoff_survives_restart(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script.set("p", Act::FailTimes(1));
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    h.engine.run_once().await.unwrap();
    h.engine.store().close().await;
    // A new process on the same database honours the stored schedule.
    let restarted = h.another_engine("after-restart").await;
    assert_eq!(
        restarted.run_once().await.unwrap().sync.attempted(),
        0,
        "still backing off"
    );
    h.clock.advance(10_000);
    assert_eq!(restarted.run_once().await.unwrap().sync.synced, 1);
}

async fn deferred_requeues_without_counting_failure(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script
        .set("p", Act::DeferTimes(2, Duration::from_secs(30)));
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    child(&h, "c", "p").await;
    let r = h.engine.run_once().await.unwrap();
    assert_eq!((r.sync.deferred, r.sync.waiting), (1, 1));
    let row = h.row("Parent", "p").await;
    assert_eq!((row.attempts, row.backend_code, row.enacted), (0, 0, 0));
    assert_eq!(row.next_attempt_at, Some(T0 + 30_000));
    assert_eq!(row.backend_status, "request 7 is Executing");
    assert_eq!(state(&h, "Parent", "p").await, State::Pending);
    let child = h.row("Child", "c").await;
    assert_eq!(
        child.waiting_on.as_deref(),
        Some("waiting on Parent p: in progress: request 7 is Executing")
    );
    h.clock.advance(30_000);
    h.engine.run_once().await.unwrap();
    h.clock.advance(30_000);
    let r = h.engine.run_once().await.unwrap();
    assert_eq!(
        r.sync.synced, 2,
        "parent done, child woken and synced in the same run"
    );
    assert_eq!(h.row("Parent", "p").await.attempts, 0);
}

async fn permanent_waits_for_spec_change_or_retry(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script.set("p", Act::Permanent);
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    h.engine.run_once().await.unwrap();
    let row = h.row("Parent", "p").await;
    assert_eq!(row.next_attempt_at, None);
    assert_eq!(
        row.last_error.as_deref(),
        Some("400 Bad Request: no such capability")
    );
    assert_eq!(state(&h, "Parent", "p").await, State::Error);
    h.clock.advance(86_400_000);
    assert_eq!(
        h.engine.run_once().await.unwrap().sync.attempted(),
        0,
        "no retry however long we wait"
    );
    // An operator retry runs it again.
    h.store()
        .retry("Parent", "p", h.clock.now_ms())
        .await
        .unwrap();
    h.engine.run_once().await.unwrap();
    assert_eq!(h.script.calls("p"), 2);
    assert_eq!(
        h.store().history("Parent", "p", 1).await.unwrap()[0].cause,
        "operator retry"
    );
    // So does a spec change.
    h.script.set("p", Act::Ok);
    h.models().upsert("p", &Parent { value: 2 }).await.unwrap();
    h.engine.run_once().await.unwrap();
    assert_eq!(state(&h, "Parent", "p").await, State::Ok);
}

async fn only_true_dependents_wait(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script.set("bad", Act::Fail);
    chain(&h, "bad", "bad-child", "bad-grandchild").await;
    chain(&h, "good", "good-child", "good-grandchild").await;
    let r = h.engine.run_once().await.unwrap();
    assert_eq!((r.sync.synced, r.sync.failed, r.sync.waiting), (3, 1, 2));
    assert_eq!(
        h.row("Child", "bad-child").await.waiting_on.as_deref(),
        Some("waiting on Parent bad: always broken")
    );
    assert_eq!(
        h.row("Grandchild", "bad-grandchild")
            .await
            .waiting_on
            .as_deref(),
        Some("waiting on Child bad-child: waiting on Parent bad: always broken")
    );
    assert_eq!(state(&h, "Child", "bad-child").await, State::Waiting);
    assert_eq!(state(&h, "Grandchild", "good-grandchild").await, State::Ok);
    // Waiting children never ran their step.
    assert_eq!(h.script.calls("bad-child"), 0);
    // Once the parent recovers, the children follow in the same run.
    h.script.set("bad", Act::Ok);
    h.clock.advance(10_000);
    let r = h.engine.run_once().await.unwrap();
    assert_eq!(r.sync.synced, 3);
    assert_eq!(state(&h, "Grandchild", "bad-grandchild").await, State::Ok);
}

async fn missing_parent_is_waited_for(backend: Backend) {
    let h = Harness::new(backend).await;
    child(&h, "orphan", "later").await;
    h.engine.run_once().await.unwrap();
    assert_eq!(
        h.row("Child", "orphan").await.waiting_on.as_deref(),
        Some("waiting on Parent later: it does not exist yet")
    );
    h.models()
        .upsert("later", &Parent { value: 1 })
        .await
        .unwrap();
    h.engine.run_once().await.unwrap();
    assert_eq!(
        state(&h, "Child", "orphan").await,
        State::Ok,
        "woken when its parent synced"
    );
}

async fn delete_runs_dependents_first_then_reaps(backend: Backend) {
    let h = Harness::new(backend).await;
    chain(&h, "p", "c", "g").await;
    h.models()
        .upsert("never-synced", &Parent { value: 5 })
        .await
        .unwrap();
    h.engine.run_once().await.unwrap();
    assert_eq!(
        h.store()
            .delete("Parent", "p", h.clock.now_ms())
            .await
            .unwrap(),
        3,
        "cascade to dependents"
    );
    assert_eq!(state(&h, "Child", "c").await, State::Deleting);
    let r = h.engine.run_once().await.unwrap();
    assert_eq!(r.sync.reaped, 3);
    assert_eq!(h.script.deleted(), ["Grandchild/g", "Child/c", "Parent/p"]);
    for (kind, key) in [("Parent", "p"), ("Child", "c"), ("Grandchild", "g")] {
        assert!(
            h.store().get(kind, key).await.unwrap().is_none(),
            "{kind} {key} reaped"
        );
        assert!(
            !h.store().history(kind, key, 5).await.unwrap().is_empty(),
            "history kept"
        );
    }
    // An object no step touched is reaped without calling delete.
    h.models()
        .upsert("fresh", &Parent { value: 1 })
        .await
        .unwrap();
    h.store()
        .delete("Parent", "fresh", h.clock.now_ms())
        .await
        .unwrap();
    h.engine.run_once().await.unwrap();
    assert!(h.store().get("Parent", "fresh").await.unwrap().is_none());
    assert_eq!(h.script.calls("fresh"), 0);
}

async fn failing_delete_keeps_parent(backend: Backend) {
    let h = Harness::new(backend).await;
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    child(&h, "c", "p").await;
    h.engine.run_once().await.unwrap();
    h.script.set("c", Act::FailTimes(1));
    h.store()
        .delete("Parent", "p", h.clock.now_ms())
        .await
        .unwrap();
    let r = h.engine.run_once().await.unwrap();
    assert_eq!((r.sync.failed, r.sync.waiting, r.sync.reaped), (1, 1, 0));
    assert_eq!(
        h.row("Parent", "p").await.waiting_on.as_deref(),
        Some("waiting on dependents: Child c must be deleted first (boom 1)")
    );
    h.clock.advance(10_000);
    let r = h.engine.run_once().await.unwrap();
    assert_eq!(r.sync.reaped, 2);
}

async fn panicking_step_is_isolated(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script.set("boom", Act::Panic);
    h.models()
        .upsert("boom", &Parent { value: 1 })
        .await
        .unwrap();
    h.models()
        .upsert("fine", &Parent { value: 1 })
        .await
        .unwrap();
    let r = h.engine.run_once().await.unwrap();
    assert_eq!((r.sync.synced, r.sync.failed), (1, 1));
    let row = h.row("Parent", "boom").await;
    assert_eq!(
        row.last_error.as_deref(),
        Some("step panicked: step exploded on boom")
    );
    assert_eq!(row.attempts, 1);
    assert_eq!(
        h.store().history("Parent", "boom", 1).await.unwrap()[0].outcome,
        "panic"
    );
}

async fn hung_step_times_out(backend: Backend) {
    let h = Harness::with(backend, |s| s.sync.step_timeout_seconds = 1, |_, _| {}).await;
    h.script.set("slow", Act::Hang);
    h.models()
        .upsert("slow", &Parent { value: 1 })
        .await
        .unwrap();
    h.engine.run_once().await.unwrap();
    let row = h.row("Parent", "slow").await;
    assert_eq!(row.last_error.as_deref(), Some("step timed out after 1s"));
    assert_eq!(state(&h, "Parent", "slow").await, State::Backoff);
}

async fn leases_keep_claims_exclusive_until_expiry(backend: Backend) {
    let h = Harness::new(backend).await;
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    let store = h.store();
    let a = store
        .claim_due("Parent", T0, T0, 10, "a", T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert!(store
        .claim_due("Parent", T0, T0 + 59_999, 10, "b", T0 + 120_000)
        .await
        .unwrap()
        .is_empty());
    // After the holder vanished and its lease expired, another may take it.
    assert_eq!(
        store
            .claim_due("Parent", T0, T0 + 60_001, 10, "b", T0 + 120_000)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn shutdown_lets_running_steps_finish(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script.set("slow", Act::Sleep(Duration::from_millis(300)));
    h.models()
        .upsert("slow", &Parent { value: 1 })
        .await
        .unwrap();
    let engine = h.engine.clone();
    let started = h.script.started.notified();
    let run = tokio::spawn(async move { engine.run().await });
    started.await;
    h.engine.shutdown_token().cancel();
    run.await.unwrap().unwrap();
    assert_eq!(
        h.row("Parent", "slow").await.enacted,
        1,
        "the running step finished and was recorded"
    );
}

async fn shutdown_grace_abandons_hung_steps(backend: Backend) {
    let h = Harness::with(backend, |s| s.sync.shutdown_grace_seconds = 0, |_, _| {}).await;
    h.script.set("hung", Act::Hang);
    h.models()
        .upsert("hung", &Parent { value: 1 })
        .await
        .unwrap();
    let engine = h.engine.clone();
    let started = h.script.started.notified();
    let run = tokio::spawn(async move { engine.run().await });
    started.await;
    h.engine.shutdown_token().cancel();
    run.await.unwrap().unwrap();
    let row = h.row("Parent", "hung").await;
    assert_eq!(row.enacted, 0);
    // The lease was given back, so the next process can run it at once.
    let next = h.another_engine("next").await;
    h.script.set("hung", Act::Ok);
    assert_eq!(next.sync_pass().await.unwrap().synced, 1);
}

/// One object a round: "slow" (300 ms) runs while the page holding "after" (doing `after`)
/// is claimed ahead. Returns once that claim is done, with `run` still running the engine.
async fn while_after_is_claimed_ahead<T, Fut>(
    backend: Backend,
    after: Act,
    run: impl FnOnce(thalamus::engine::Engine) -> Fut,
) -> (Harness, tokio::task::JoinHandle<T>)
where
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let h = Harness::with(backend, |s| s.sync.page_size = 1, |_, _| {}).await;
    h.script.set("slow", Act::Sleep(Duration::from_millis(300)));
    h.script.set("after", after);
    for key in ["slow", "after"] {
        h.models().upsert(key, &Parent { value: 1 }).await.unwrap();
    }
    let started = h.script.started.notified();
    let running = tokio::spawn(run(h.engine.clone()));
    started.await;
    tokio::time::sleep(Duration::from_millis(100)).await; // the claim ahead is done
    (h, running)
}

async fn shutdown_gives_back_the_page_claimed_ahead(backend: Backend) {
    let (h, run) =
        while_after_is_claimed_ahead(backend, Act::Ok, |e| async move { e.run().await }).await;
    h.engine.shutdown_token().cancel();
    run.await.unwrap().unwrap();
    assert_eq!(h.row("Parent", "slow").await.enacted, 1);
    assert_eq!(h.row("Parent", "after").await.enacted, 0, "never started");
    // Its lease was given back, so the next process runs it at once.
    let next = h.another_engine("next").await;
    assert_eq!(next.sync_pass().await.unwrap().synced, 1);
    assert_eq!(h.row("Parent", "after").await.enacted, 1);
}

async fn a_page_claimed_ahead_is_claimed_afresh_after_a_long_round(backend: Backend) {
    // Leases last 600 s. "after" is claimed ahead at T0 while "slow" runs; the round takes
    // 400 s of the clock, so "after" must not start on the lease that ends at T0 + 600 s.
    let slow = Act::Sleep(Duration::from_millis(300));
    let (h, pass) =
        while_after_is_claimed_ahead(backend, slow, |e| async move { e.sync_pass().await }).await;
    h.clock.advance(400_000);
    while h.script.calls("after") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.clock.advance(250_000);
    // At T0 + 650 s a replica finds "after" still leased, so it does not run it twice.
    let replica = h.another_engine("replica").await;
    assert_eq!(replica.sync_pass().await.unwrap().synced, 0);
    assert_eq!(pass.await.unwrap().unwrap().synced, 2);
    assert_eq!(h.script.calls("after"), 1);
}

async fn an_object_changed_while_claimed_ahead_runs_as_it_is_now(backend: Backend) {
    // "after" is deleted while claimed ahead, before its round starts.
    let (h, pass) =
        while_after_is_claimed_ahead(backend, Act::Ok, |e| async move { e.sync_pass().await })
            .await;
    h.clock.advance(1_000);
    h.store()
        .delete("Parent", "after", h.clock.now_ms())
        .await
        .unwrap();
    pass.await.unwrap().unwrap();
    assert_eq!(
        h.script.synced(),
        ["Parent/slow"],
        "not synced from the old row"
    );
    h.engine.run_once().await.unwrap();
    assert!(
        h.store().get("Parent", "after").await.unwrap().is_none(),
        "the deletion was not lost"
    );
}

async fn an_object_deleted_while_its_step_runs_is_still_deleted(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script.set("p", Act::Sleep(Duration::from_millis(300)));
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    let engine = h.engine.clone();
    let started = h.script.started.notified();
    let pass = tokio::spawn(async move { engine.sync_pass().await });
    started.await;
    h.clock.advance(1_000);
    h.store()
        .delete("Parent", "p", h.clock.now_ms())
        .await
        .unwrap();
    assert_eq!(pass.await.unwrap().unwrap().synced, 1);
    // The sync that finished after the deletion must not leave it without a next attempt.
    h.engine.run_once().await.unwrap();
    assert_eq!(h.script.deleted(), ["Parent/p"]);
    assert!(
        h.store().get("Parent", "p").await.unwrap().is_none(),
        "reaped"
    );
}

both_backends!(
    runs_parents_before_children,
    children_in_later_rounds_still_follow_parents,
    concurrency_is_bounded,
    replicas_never_run_one_object_twice,
    upsert_is_idempotent,
    backoff_grows_caps_and_resets,
    backoff_survives_restart,
    deferred_requeues_without_counting_failure,
    permanent_waits_for_spec_change_or_retry,
    only_true_dependents_wait,
    missing_parent_is_waited_for,
    delete_runs_dependents_first_then_reaps,
    failing_delete_keeps_parent,
    panicking_step_is_isolated,
    hung_step_times_out,
    leases_keep_claims_exclusive_until_expiry,
    shutdown_lets_running_steps_finish,
    shutdown_grace_abandons_hung_steps,
    shutdown_gives_back_the_page_claimed_ahead,
    a_page_claimed_ahead_is_claimed_afresh_after_a_long_round,
    an_object_changed_while_claimed_ahead_runs_as_it_is_now,
    an_object_deleted_while_its_step_runs_is_still_deleted,
);
