//! The store taken away mid-round, and a process restarted after a crash, on PostgreSQL:
//! the database reached through a TCP proxy the test cuts (refusing or black-holing every
//! connection) and restores, and a second process registering under the holder id of one
//! that died. Work resumes in seconds; nothing is lost, and no lease is waited out.

mod common;

use std::time::Duration;

use common::brokers::eventually;
use common::gate::Gate;
use common::proxy::{Mode, Proxy};
use common::*;
use thalamus::store::{Open, Store};

/// A store on the harness's database through `proxy`, failing a call after 2 s.
async fn store_via(h: &Harness, proxy: &Proxy) -> Store {
    let url = h.db.url_via(proxy.addr());
    Store::connect_with_timeout(&url, 4, Open::Existing, Duration::from_secs(2))
        .await
        .unwrap()
}

/// Steps that end while the database is cut keep their outcomes; once it answers again the
/// round records them, gives every lease back, and the pass succeeds. Before, the first
/// failed write ended the round: outcomes were dropped and leases held until they expired.
async fn an_outage_mid_round_loses_no_outcome_and_leaves_no_lease(mode: Mode) {
    let h = Harness::new(Backend::Postgres).await;
    let proxy = Proxy::postgres().await;
    let engine = h.engine_on(store_via(&h, &proxy).await, "cut-off", |_| {});
    let gate = Gate::new();
    for key in ["a", "b"] {
        h.script
            .set(key, Act::Gated(gate.clone(), Box::new(Act::Ok)));
        h.models().upsert(key, &Parent { value: 1 }).await.unwrap();
    }
    let e = engine.clone();
    let pass = tokio::spawn(async move { e.sync_pass().await });
    h.script.until_started("a", 1).await;
    h.script.until_started("b", 1).await;
    proxy.cut(mode);
    gate.open();
    eventually("the round to find the store failing", || async {
        engine.store_health().failing_since().is_some()
    })
    .await;
    gate.open();
    eventually("both steps ended", || async { h.script.in_flight() == 0 }).await;
    proxy.restore();
    let report = pass.await.unwrap().expect("the pass rides out the outage");
    assert_eq!(report.synced, 2);
    for key in ["a", "b"] {
        assert_eq!(h.row("Parent", key).await.enacted, 1, "{key} recorded");
    }
    assert_eq!(
        h.store().leases().await.unwrap(),
        [],
        "no lease left behind"
    );
    assert_eq!(engine.store_health().failing_since(), None);
    assert_eq!(
        h.script.calls("a") + h.script.calls("b"),
        2,
        "nothing ran twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_mid_round() {
    an_outage_mid_round_loses_no_outcome_and_leaves_no_lease(Mode::Refuse).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_mid_round() {
    an_outage_mid_round_loses_no_outcome_and_leaves_no_lease(Mode::Blackhole).await
}

/// A process that died holding leases, restarted under the same holder id: the new one
/// waits while the old one's heartbeat is live (two live processes never share an id), then
/// takes the old one's leases over at once instead of waiting for them to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_takes_its_predecessors_leases_over_after_one_heartbeat() {
    let h = Harness::new(Backend::Postgres).await;
    let old = h.another_engine("host-1").await;
    let seat = old.join().await.unwrap().expect("joined");
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    // The old process claims p, then dies (SIGKILL: no release, no leaving).
    let claimed = h
        .store()
        .claim_due("Parent", T0, T0, 10, "host-1", T0 + 600_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    drop((old, seat));

    let new = h.another_engine("host-1").await;
    let joining = tokio::spawn({
        let new = new.clone();
        async move { new.join().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !joining.is_finished(),
        "joined while the old process's heartbeat was live"
    );
    // The heartbeat (10 s) lapses long before the lease (600 s) would.
    h.clock.advance(10_001);
    let seat = tokio::time::timeout(Duration::from_secs(10), joining)
        .await
        .expect("joined once the heartbeat lapsed")
        .unwrap()
        .unwrap()
        .expect("a seat");
    let report = new.sync_pass().await.unwrap();
    assert_eq!(
        report.synced, 1,
        "p taken over at once, not after its lease"
    );
    assert_eq!(h.row("Parent", "p").await.enacted, 1);
    new.leave(&seat).await;
    assert_eq!(h.store().replicas().await.unwrap(), []);
}

/// Leases are written to PostgreSQL's log: a crash or a failover to a standby keeps them.
/// An UNLOGGED table is emptied after a crash (and is not replicated), which freed every
/// object to be claimed again while its holder's step still ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_crash() {
    let h = Harness::new(Backend::Postgres).await;
    let thalamus::store::Db::Postgres(pool) = h.store().db() else {
        unreachable!("a PostgreSQL harness")
    };
    let persistence: String = sqlx::query_scalar(
        "SELECT relpersistence::text FROM pg_class WHERE oid = 'leases'::regclass",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(persistence, "p", "p: permanent (logged); u: unlogged");
}
