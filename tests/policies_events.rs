//! Policies derive models from models; pull steps upsert desired state; event steps write
//! observed status. All against real SQLite and PostgreSQL.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use thalamus::engine::EventReport;
use thalamus::step::{Event, Transport};
use thalamus::steps::prelude::*;

/// Every Parent gets a Child `<key>-child` whose value follows the parent's.
struct ChildPerParent;

#[async_trait]
impl ModelPolicy for ChildPerParent {
    type Model = Parent;

    fn name(&self) -> &str {
        "child-per-parent"
    }

    async fn handle_update(&self, obj: &Obj<Parent>, models: &Models) -> anyhow::Result<()> {
        let child = Child {
            parent: obj.key.clone(),
            value: obj.spec.value,
        };
        models.upsert(&format!("{}-child", obj.key), &child).await?;
        Ok(())
    }
}

/// Fails while the flag is set.
struct Flaky(Arc<AtomicBool>);

#[async_trait]
impl ModelPolicy for Flaky {
    type Model = Grandchild;

    fn name(&self) -> &str {
        "flaky"
    }

    async fn handle_update(&self, _obj: &Obj<Grandchild>, _models: &Models) -> anyhow::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            bail!("archive database unreachable");
        }
        Ok(())
    }
}

async fn policy_derives_and_follows_models(backend: Backend) {
    let h = Harness::with(
        backend,
        |_| {},
        |r, _| {
            r.policy(ChildPerParent);
        },
    )
    .await;
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    let r = h.engine.run_once().await.unwrap();
    assert_eq!(h.script.synced(), ["Parent/p", "Child/p-child"]);
    assert!(r.policy.handled >= 2);
    assert_eq!(
        h.row("Child", "p-child").await.spec,
        r#"{"parent":"p","value":1}"#
    );
    // A spec change flows through the policy into the derived model's generation.
    h.models().upsert("p", &Parent { value: 2 }).await.unwrap();
    h.engine.run_once().await.unwrap();
    let child = h.row("Child", "p-child").await;
    assert_eq!((child.generation, child.enacted), (2, 2));
    // Policies are recorded in the audit trail.
    let history = h.store().history("Parent", "p", 10).await.unwrap();
    assert!(history
        .iter()
        .any(|e| e.step == "policy:child-per-parent" && e.cause.starts_with("create")));
    assert!(history
        .iter()
        .any(|e| e.step == "policy:child-per-parent" && e.cause.starts_with("update")));
    // A status-only change does not re-run the policy into a new generation.
    assert_eq!(h.row("Child", "p-child").await.generation, 2);
}

async fn failing_policy_is_retried_not_lost(backend: Backend) {
    let broken = Arc::new(AtomicBool::new(true));
    let flag = broken.clone();
    let h = Harness::with(
        backend,
        |_| {},
        move |r, _| {
            r.policy(Flaky(flag));
        },
    )
    .await;
    h.models()
        .upsert("g", &Grandchild { child: "c".into() })
        .await
        .unwrap();
    let r = h.engine.policy_pass().await.unwrap();
    assert_eq!((r.handled, r.failed), (0, 1));
    let row = h.row("Grandchild", "g").await;
    assert!(row.policed < row.revision, "still due for policies");
    let last = &h.store().history("Grandchild", "g", 1).await.unwrap()[0];
    assert_eq!(
        (last.outcome.as_str(), last.error.as_deref()),
        ("error", Some("archive database unreachable"))
    );
    broken.store(false, Ordering::SeqCst);
    assert_eq!(h.engine.policy_pass().await.unwrap().handled, 1);
    let row = h.row("Grandchild", "g").await;
    assert_eq!(row.policed, row.revision);
}

/// Reports a fixed listing every poll.
struct Listing;

#[async_trait]
impl PullStep for Listing {
    fn name(&self) -> &str {
        "listing"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn pull(&self, models: &Models) -> anyhow::Result<PullReport> {
        let items: Vec<(String, Parent)> = (0..50)
            .map(|i| (format!("obs{i:02}"), Parent { value: i }))
            .collect();
        let changes = models.upsert_many(&items).await?;
        let created = changes
            .iter()
            .filter(|c| c.change == Change::Created)
            .count();
        let updated = changes
            .iter()
            .filter(|c| matches!(c.change, Change::Updated { .. }))
            .count();
        Ok(PullReport {
            seen: items.len(),
            created,
            updated,
            ..Default::default()
        })
    }
}

async fn stateless_pull_changes_nothing_twice(backend: Backend) {
    let h = Harness::with(
        backend,
        |_| {},
        |r, _| {
            r.pull(Listing);
        },
    )
    .await;
    let first = h.engine.run_once().await.unwrap();
    assert_eq!((first.pull.seen, first.pull.created), (50, 50));
    assert_eq!(first.sync.synced, 50);
    let second = h.engine.run_once().await.unwrap();
    assert_eq!(
        (second.pull.seen, second.pull.created, second.pull.updated),
        (50, 0, 0)
    );
    assert_eq!(
        second.sync.attempted(),
        0,
        "an unchanged listing runs nothing"
    );
    assert_eq!(
        h.store()
            .history("pull", "listing", 10)
            .await
            .unwrap()
            .len(),
        1,
        "no executions flood"
    );
}

/// Writes `{"runs": N}` from `{"key": …, "runs": N}` messages into a Parent's status.
struct StatusFeed;

#[derive(Deserialize)]
struct Message {
    key: String,
    runs: u32,
}

#[async_trait]
impl EventStep for StatusFeed {
    fn name(&self) -> &str {
        "status-feed"
    }

    fn topics(&self) -> Vec<String> {
        vec!["parent-status".into()]
    }

    async fn handle(&self, event: &Event, models: &Models) -> Result<EventOutcome, EventError> {
        let msg: Message = serde_json::from_slice(&event.payload)
            .map_err(|e| EventError::Reject(format!("not a status message: {e}")))?;
        if models.get::<Parent>(&msg.key).await?.is_none() {
            return Err(EventError::Reject(format!("no Parent {}", msg.key)));
        }
        if models
            .set_status::<Parent>(&msg.key, &Runs { runs: msg.runs })
            .await?
        {
            Ok(EventOutcome::Applied(format!(
                "Parent {} runs={}",
                msg.key, msg.runs
            )))
        } else {
            Ok(EventOutcome::Unchanged(format!(
                "Parent {} already runs={}",
                msg.key, msg.runs
            )))
        }
    }
}

fn event(topic: &str, payload: &str) -> Event {
    Event {
        transport: Transport::Direct,
        topic: topic.into(),
        routing_key: None,
        payload: payload.as_bytes().to_vec(),
        headers: vec![],
        position: "test".into(),
    }
}

async fn events_update_status_idempotently(backend: Backend) {
    let h = Harness::with(
        backend,
        |_| {},
        |r, _| {
            r.event(StatusFeed);
        },
    )
    .await;
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    let msg = event(
        "parent-status",
        r#"{"key": "p", "runs": 7, "unknown": true}"#,
    );
    assert!(matches!(
        h.engine.apply_event(&msg).await.unwrap(),
        EventReport::Applied(_)
    ));
    assert_eq!(h.row("Parent", "p").await.status, r#"{"runs":7}"#);
    let revision = h.row("Parent", "p").await.revision;
    assert!(
        matches!(
            h.engine.apply_event(&msg).await.unwrap(),
            EventReport::Unchanged(_)
        ),
        "duplicate"
    );
    assert_eq!(h.row("Parent", "p").await.revision, revision);
    let bad = h
        .engine
        .apply_event(&event("parent-status", "{not json"))
        .await
        .unwrap();
    assert!(
        matches!(bad, EventReport::Rejected(ref r) if r.contains("not a status message")),
        "{bad:?}"
    );
    let unrouted = h
        .engine
        .apply_event(&event("elsewhere", "{}"))
        .await
        .unwrap();
    assert_eq!(
        unrouted,
        EventReport::Rejected("no event step consumes elsewhere".into())
    );
}

async fn event_resync_never_shortens_backoff(backend: Backend) {
    let h = Harness::new(backend).await;
    h.script.set("p", Act::FailTimes(1));
    h.models().upsert("p", &Parent { value: 1 }).await.unwrap();
    h.engine.run_once().await.unwrap();
    let before = h.row("Parent", "p").await.next_attempt_at;
    assert!(!h.models().resync::<Parent>("p").await.unwrap());
    assert_eq!(h.row("Parent", "p").await.next_attempt_at, before);
    // A deferred object, by contrast, is looked at again at once.
    h.script
        .set("d", Act::DeferTimes(1, Duration::from_secs(300)));
    h.models().upsert("d", &Parent { value: 1 }).await.unwrap();
    h.engine.run_once().await.unwrap();
    assert!(h.models().resync::<Parent>("d").await.unwrap());
    assert_eq!(h.engine.run_once().await.unwrap().sync.synced, 1);
}

both_backends!(
    policy_derives_and_follows_models,
    failing_policy_is_retried_not_lost,
    stateless_pull_changes_nothing_twice,
    events_update_status_idempotently,
    event_resync_never_shortens_backoff,
);
