//! In-test models (Parent ← Child ← Grandchild) and a scripted sync step that records every
//! call, so tests can assert order, concurrency and outcomes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thalamus::steps::prelude::*;

/// Observed status the test step keeps: how often it ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Runs {
    pub runs: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parent {
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Child {
    pub parent: String,
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grandchild {
    pub child: String,
}

impl Model for Parent {
    const KIND: &'static str = "Parent";
    type Status = Runs;
}
impl Model for Child {
    const KIND: &'static str = "Child";
    type Status = Runs;
}
impl Model for Grandchild {
    const KIND: &'static str = "Grandchild";
    type Status = Runs;
}

/// What the scripted step does for one key.
#[derive(Debug, Clone)]
pub enum Act {
    Ok,
    /// Fail transiently this many times, then succeed.
    FailTimes(u32),
    /// Always fail transiently.
    Fail,
    Permanent,
    /// Defer this many times, then succeed.
    DeferTimes(u32, Duration),
    Panic,
    /// Sleep, then succeed (to overlap with other steps).
    Sleep(Duration),
    /// Never finish (timeouts and shutdown).
    Hang,
    /// Wait at the gate, then act.
    Gated(super::gate::Gate, Box<Act>),
    /// Read its own object from the store this many times, then succeed (steps that use
    /// the store while the round writes outcomes).
    Reads(u32),
}

/// The script every test step follows, and the log of what ran.
#[derive(Default)]
pub struct Script {
    acts: Mutex<HashMap<String, Act>>,
    counts: Mutex<HashMap<String, u32>>,
    /// (op, kind/key) in the order steps started.
    pub log: Mutex<Vec<(String, String)>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Notified whenever a step starts.
    pub started: tokio::sync::Notify,
}

impl Script {
    pub fn set(&self, key: &str, act: Act) {
        self.acts.lock().unwrap().insert(key.to_string(), act);
    }

    pub fn log(&self) -> Vec<(String, String)> {
        self.log.lock().unwrap().clone()
    }

    /// Keys in the order they were synced (sync op only).
    pub fn synced(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|(op, _)| op == "sync")
            .map(|(_, k)| k)
            .collect()
    }

    pub fn deleted(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|(op, _)| op == "delete")
            .map(|(_, k)| k)
            .collect()
    }

    /// Steps running right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn calls(&self, key: &str) -> usize {
        self.log()
            .iter()
            .filter(|(_, k)| k.ends_with(&format!("/{key}")))
            .count()
    }

    async fn act(&self, op: &str, kind: &str, key: &str) -> StepResult {
        // What to do is decided before the start is visible, so a test that changes the
        // script once it sees a step start changes only later runs.
        let act = self
            .acts
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or(Act::Ok);
        let n = {
            let mut counts = self.counts.lock().unwrap();
            let c = counts.entry(format!("{op}/{key}")).or_default();
            *c += 1;
            *c
        };
        self.log
            .lock()
            .unwrap()
            .push((op.to_string(), format!("{kind}/{key}")));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.started.notify_waiters();
        let result = Self::perform(act, n, key).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl Script {
    /// Does what `act` says on the `n`th call for `key`.
    fn perform(act: Act, n: u32, key: &str) -> futures::future::BoxFuture<'_, StepResult> {
        Box::pin(async move {
            match act {
                Act::Ok => Ok(Progress::Done),
                Act::FailTimes(k) if n <= k => Err(anyhow!("boom {n}").into()),
                Act::FailTimes(_) => Ok(Progress::Done),
                Act::Fail => Err(anyhow!("always broken").into()),
                Act::Permanent => Err(StepError::permanent("400 Bad Request: no such capability")),
                Act::DeferTimes(k, after) if n <= k => {
                    Ok(Progress::deferred(after, "request 7 is Executing"))
                }
                Act::DeferTimes(..) => Ok(Progress::Done),
                Act::Panic => panic!("step exploded on {key}"),
                Act::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(Progress::Done)
                }
                Act::Hang => std::future::pending().await,
                Act::Gated(gate, then) => {
                    gate.pass().await;
                    Self::perform(*then, n, key).await
                }
                // Done by the step itself, which has the context to read with.
                Act::Reads(_) => Ok(Progress::Done),
            }
        })
    }

    /// Waits until `key`'s step has started `n` times (any op).
    pub async fn until_started(&self, key: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let started = self.started.notified();
            if self.calls(key) >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} did not start {n} time(s): {:?}",
                self.log()
            );
            let _ = tokio::time::timeout(Duration::from_millis(50), started).await;
        }
    }
}

/// A sync step for model `M` that follows the script.
pub struct Scripted<M>(pub Arc<Script>, std::marker::PhantomData<M>);

#[async_trait]
impl<M: Model<Status = Runs>> SyncStep for Scripted<M> {
    type Model = M;

    async fn sync(&self, obj: &mut Obj<M>, ctx: &StepContext) -> StepResult {
        obj.status.runs += 1;
        let reads = self.0.acts.lock().unwrap().get(&obj.key).cloned();
        if let Some(Act::Reads(n)) = reads {
            for _ in 0..n {
                ctx.get::<M>(&obj.key).await?;
            }
        }
        self.0.act("sync", M::KIND, &obj.key).await
    }

    async fn delete(&self, obj: &mut Obj<M>, _ctx: &StepContext) -> StepResult {
        self.0.act("delete", M::KIND, &obj.key).await
    }
}

pub fn register_test_steps(registry: &mut Registry, script: &Arc<Script>) {
    registry
        .sync(Scripted::<Parent>(script.clone(), Default::default()))
        .unwrap();
    registry
        .sync(Scripted::<Child>(script.clone(), Default::default()))
        .unwrap();
    registry
        .sync(Scripted::<Grandchild>(script.clone(), Default::default()))
        .unwrap();
}
