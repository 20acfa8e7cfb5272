//! Fresh work ahead of a backlog. After an outage thousands of rechecks and retries are due
//! at once, and Workspaces takes them only at its rate limit: a dataset that settles meanwhile
//! must not wait behind them, across a restart too (the queue is the table), and the backlog
//! must still drain.

mod common;

use std::time::Duration;

use common::gate::Gate;
use common::*;

const BACKLOG: usize = 12;

/// `BACKLOG` Parents whose first run deferred for 30 s, all due again an hour later (their
/// rechecks were due long before anything new).
async fn backlog(h: &Harness) -> Vec<String> {
    let keys: Vec<String> = (0..BACKLOG).map(|i| format!("b{i:02}")).collect();
    for k in &keys {
        h.script.set(k, Act::DeferTimes(1, Duration::from_secs(30)));
        h.models().upsert(k, &Parent { value: 1 }).await.unwrap();
    }
    assert_eq!(h.engine.run_once().await.unwrap().sync.deferred, BACKLOG);
    h.clock.advance(3_600_000);
    keys
}

/// A harness running one step at a time, in pages of `page_size`, so the order is the claim's.
async fn one_at_a_time(backend: Backend, page_size: usize) -> Harness {
    let tweak = |s: &mut thalamus::config::Settings| {
        s.sync.page_size = page_size;
        s.sync.concurrency = 1;
    };
    Harness::with(backend, tweak, |_, _| {}).await
}

/// What ran after the first `before` steps, as kind/key.
fn ran_since(h: &Harness, before: usize) -> Vec<String> {
    h.script.synced()[before..].to_vec()
}

/// Asserts that of what ran after the first `before` steps, `news` ran first, and the whole
/// backlog after it (`synced` in all).
fn first_then_the_backlog(h: &Harness, before: usize, synced: usize, news: &str) {
    let ran = ran_since(h, before);
    assert_eq!(ran.first().map(String::as_str), Some(news), "{ran:?}");
    assert_eq!(synced, BACKLOG + 1, "the backlog drains too: {ran:?}");
}

async fn news_is_claimed_before_a_backlog_due_long_before_it(backend: Backend) {
    let h = one_at_a_time(backend, 5).await;
    backlog(&h).await;
    h.models()
        .upsert("fresh", &Parent { value: 1 })
        .await
        .unwrap();
    let before = h.script.synced().len();
    // Another process (a restart) finds the same order in the table.
    let restarted = h.another_engine("restarted").await;
    let report = restarted.run_once().await.unwrap();
    first_then_the_backlog(&h, before, report.sync.synced, "Parent/fresh");
}

async fn news_of_a_later_kind_is_claimed_before_a_backlog_of_an_earlier_one(backend: Backend) {
    // Parents sync before Children; the claim still takes a Child's news before the
    // Parents' rechecks, and never the two in one page.
    let h = one_at_a_time(backend, 5).await;
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    h.engine.run_once().await.unwrap();
    backlog(&h).await;
    let child = Child {
        parent: "p".into(),
        value: 1,
    };
    h.models().upsert("fresh", &child).await.unwrap();
    let before = h.script.synced().len();
    let report = h.engine.run_once().await.unwrap();
    first_then_the_backlog(&h, before, report.sync.synced, "Child/fresh");
}

async fn a_round_of_rechecks_yields_to_news_that_comes_while_it_runs(backend: Backend) {
    let h = one_at_a_time(backend, 100).await;
    let keys = backlog(&h).await;
    let gate = Gate::new();
    h.script
        .set(&keys[0], Act::Gated(gate.clone(), Box::new(Act::Ok)));
    let before = h.script.synced().len();
    let engine = h.engine.clone();
    let run = tokio::spawn(async move { engine.run_once().await });
    // The whole backlog is one round; its first recheck is held at the gate.
    h.script.until_started(&keys[0], 2).await;
    h.models()
        .upsert("fresh", &Parent { value: 1 })
        .await
        .unwrap();
    h.engine.wake(); // as a pull step that found something new does
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.engine.reconcile_metrics().yields() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the round never yielded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.open();
    let report = run.await.unwrap().unwrap();
    let ran = ran_since(&h, before);
    assert_eq!(
        ran.get(..2),
        Some(&["Parent/b00".to_string(), "Parent/fresh".to_string()][..]),
        "the news ran as soon as the running recheck ended: {ran:?}"
    );
    assert_eq!(report.sync.synced, BACKLOG + 1, "nothing starves: {ran:?}");
    // The 11 unstarted rechecks, and the news too when the page claimed ahead took it.
    assert!(
        report.sync.released >= BACKLOG - 1,
        "the unstarted rechecks were given back: {report:?}"
    );
    assert_eq!(h.engine.reconcile_metrics().yields(), 1);
}

both_backends!(
    news_is_claimed_before_a_backlog_due_long_before_it,
    news_of_a_later_kind_is_claimed_before_a_backlog_of_an_earlier_one,
    a_round_of_rechecks_yields_to_news_that_comes_while_it_runs,
);
