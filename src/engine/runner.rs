//! Runs one round of claimed objects as a DAG: a node starts when its in-round prerequisites
//! have converged, at most `sync.concurrency` at once; outcomes are settled in batches.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use tracing::{debug, info, info_span, warn, Instrument};

use super::sync::SyncReport;
use super::Engine;
use crate::step::{Op, Progress, StepContext, StepError, StepResult};
use crate::store::{NewExecution, ObjectRow, OutcomeRecord, Settled};

/// Settled outcomes are written at least this often while long steps keep a round open.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Outcomes are written once this many have piled up.
const FLUSH_AT: usize = 1000;
/// Deferrals and waits are rescheduled at least this far ahead, so a pass always ends.
const MIN_DELAY_MS: i64 = 1000;

/// What a claimed object needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    Sync,
    Delete,
    /// Deleted before any step touched the world: remove without running `delete`.
    Reap,
}

/// One claimed object in the round's DAG.
pub(super) struct Node {
    /// Shared with the running step's future, so starting a step copies no strings.
    pub row: std::sync::Arc<ObjectRow>,
    pub job: Job,
    /// In-round prerequisites not yet converged.
    pub blockers: usize,
    /// Nodes that wait for this one.
    pub dependents: Vec<usize>,
    settled: bool,
}

impl Node {
    /// A node for a claimed row, its job read from the deletion columns.
    pub fn new(row: ObjectRow) -> Self {
        let job = match (row.deleted_at, row.need_delete) {
            (None, _) => Job::Sync,
            (Some(_), true) => Job::Delete,
            (Some(_), false) => Job::Reap,
        };
        Self {
            row: std::sync::Arc::new(row),
            job,
            blockers: 0,
            dependents: Vec::new(),
            settled: false,
        }
    }
}

type TaskOutput = (
    Result<(StepResult, Option<String>), tokio::time::error::Elapsed>,
    i64,
);

/// A running step: its node, and its output or the payload it panicked with.
type Running = Pin<
    Box<dyn std::future::Future<Output = (usize, Result<TaskOutput, Box<dyn Any + Send>>)> + Send>,
>;

/// The state of one round while it runs.
pub(super) struct Round<'e> {
    engine: &'e Engine,
    nodes: Vec<Node>,
    pending: Vec<OutcomeRecord>,
    report: SyncReport,
}

impl<'e> Round<'e> {
    /// A round over the claimed nodes, nothing settled yet.
    pub fn new(engine: &'e Engine, nodes: Vec<Node>) -> Self {
        Self {
            engine,
            nodes,
            pending: Vec::new(),
            report: SyncReport::default(),
        }
    }

    /// Runs the round to completion (or until shutdown's grace runs out).
    pub async fn run(mut self, blocked: Vec<(usize, String)>) -> anyhow::Result<SyncReport> {
        let e = self.engine;
        for (i, message) in blocked {
            self.wait(i, message);
        }
        let mut ready: VecDeque<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].settled && self.nodes[i].blockers == 0)
            .collect();
        // Steps run as futures of this task, not spawned tasks: a spawn and the wake-ups of
        // its hand-over cost more than a quick step itself. Steps must not block (see
        // steps/README.md); a panic is caught and isolated to its object.
        let mut tasks: FuturesUnordered<Running> = FuturesUnordered::new();
        let concurrency = e.settings.sync.concurrency;
        let grace = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
        tokio::pin!(grace);
        let mut draining = false;
        loop {
            while !draining && tasks.len() < concurrency {
                let Some(i) = ready.pop_front() else { break };
                if self.nodes[i].settled {
                    continue;
                }
                if self.nodes[i].job == Job::Reap {
                    self.reap(i);
                    ready.extend(self.release_dependents(i));
                    continue;
                }
                let step = AssertUnwindSafe(self.start(i)).catch_unwind();
                tasks.push(Box::pin(step.map(move |output| (i, output))));
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                joined = tasks.next() => {
                    let Some((i, output)) = joined else { continue };
                    if self.finish(i, output) {
                        ready.extend(self.release_dependents(i));
                    }
                    if self.pending.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
                _ = e.shutdown.cancelled(), if !draining => {
                    draining = true;
                    let secs = e.settings.sync.shutdown_grace_seconds;
                    info!(running = tasks.len(), "shutdown: waiting up to {secs}s for running steps");
                    grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(secs));
                }
                _ = &mut grace, if draining => {
                    warn!(abandoned = tasks.len(), "shutdown grace over: abandoning running steps");
                    drop(std::mem::take(&mut tasks));
                    break;
                }
                _ = tokio::time::sleep(FLUSH_EVERY), if !self.pending.is_empty() => {
                    self.flush().await?;
                }
            }
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].settled {
                self.settle(i, Settled::Released, None, None);
                self.report.released += 1;
            }
        }
        self.flush().await?;
        Ok(self.report)
    }

    /// Spawnable future running node `i`'s step under its span and timeout.
    fn start(&self, i: usize) -> impl std::future::Future<Output = TaskOutput> + Send + 'static {
        let e = self.engine;
        let row = self.nodes[i].row.clone();
        let op = if self.nodes[i].job == Job::Delete {
            Op::Delete
        } else {
            Op::Sync
        };
        let step = e.registry.sync.get(&row.kind).cloned();
        let ctx = StepContext::new(e.models.clone(), cause(&row));
        let timeout = Duration::from_secs(e.settings.sync.step_timeout_seconds);
        let clock = e.clock.clone();
        let span = info_span!("reconcile", kind = %row.kind, key = %row.key, generation = row.generation, op = ?op);
        async move {
            let started = clock.now_ms();
            let result = tokio::time::timeout(timeout, async {
                match step {
                    Some(step) => step.run(op, &row, &ctx).await,
                    None => (
                        Err(StepError::permanent(format!(
                            "no sync step is registered for kind {}",
                            row.kind
                        ))),
                        None,
                    ),
                }
            })
            .await;
            (result, started)
        }
        .instrument(span)
    }

    /// Turns a finished task into an outcome; returns whether the node converged.
    fn finish(&mut self, i: usize, output: Result<TaskOutput, Box<dyn Any + Send>>) -> bool {
        let e = self.engine;
        let now = e.clock.now_ms();
        let row = &self.nodes[i].row;
        let op = if self.nodes[i].job == Job::Delete {
            "delete"
        } else {
            "sync"
        };
        let (result, status, started) = match output {
            Ok((Ok((result, status)), started)) => (result, status, started),
            Ok((Err(_elapsed), started)) => {
                let secs = e.settings.sync.step_timeout_seconds;
                (
                    Err(StepError::Transient(anyhow::anyhow!(
                        "step timed out after {secs}s"
                    ))),
                    None,
                    started,
                )
            }
            Err(payload) => {
                let message = panic_message(payload);
                (
                    Err(StepError::Transient(anyhow::anyhow!(
                        "step panicked: {message}"
                    ))),
                    None,
                    now,
                )
            }
        };
        let (settled, outcome, error) = match result {
            Ok(Progress::Done) if op == "delete" => (Settled::Reaped, "ok", None),
            Ok(Progress::Done) => (
                Settled::Synced {
                    message: crate::store::synced_message(row.generation),
                },
                "ok",
                None,
            ),
            Ok(Progress::Deferred { after, reason }) => {
                let after = (after.as_millis() as i64).max(MIN_DELAY_MS);
                (
                    Settled::Deferred {
                        until: now + after,
                        message: reason,
                    },
                    "deferred",
                    None,
                )
            }
            Err(StepError::Transient(err)) => {
                let attempts = row.attempts + 1;
                let salt = format!("{}/{}", row.kind, row.key);
                let until = now + e.backoff.delay_ms(attempts, &salt);
                let error = format!("{err:#}");
                let outcome = if error.starts_with("step panicked") {
                    "panic"
                } else {
                    "error"
                };
                (
                    Settled::Failed {
                        attempts,
                        until,
                        error: error.clone(),
                    },
                    outcome,
                    Some(error),
                )
            }
            Err(StepError::Permanent(reason)) => (
                Settled::Permanent {
                    error: reason.clone(),
                },
                "permanent",
                Some(reason),
            ),
        };
        match &settled {
            Settled::Synced { .. } => {
                self.report.synced += 1;
                info!(kind = %row.kind, key = %row.key, generation = row.generation, "synced");
            }
            Settled::Reaped => {
                self.report.reaped += 1;
                info!(kind = %row.kind, key = %row.key, "deleted");
            }
            Settled::Deferred { message, .. } => {
                self.report.deferred += 1;
                debug!(kind = %row.kind, key = %row.key, "deferred: {message}");
            }
            Settled::Failed {
                attempts,
                until,
                error,
            } => {
                self.report.failed += 1;
                warn!(kind = %row.kind, key = %row.key, attempts, retry_in_ms = until - now, "{op} failed: {error}");
            }
            Settled::Permanent { error } => {
                self.report.permanent += 1;
                warn!(kind = %row.kind, key = %row.key, "{op} failed permanently: {error}");
            }
            Settled::Waiting { .. } | Settled::Released => {}
        }
        let converged = matches!(settled, Settled::Synced { .. } | Settled::Reaped);
        let reason = match &settled {
            Settled::Deferred { message, .. } => Some(format!("in progress: {message}")),
            Settled::Failed { error, .. } | Settled::Permanent { error } => Some(error.clone()),
            _ => None,
        };
        let execution = NewExecution {
            kind: row.kind.clone(),
            key: row.key.clone(),
            step: op.to_string(),
            generation: row.generation,
            cause: cause(row),
            holder: e.holder().to_string(),
            started_at: started,
            duration_ms: (now - started).max(0),
            outcome: outcome.to_string(),
            error,
        };
        let status = status.map(|new| (self.nodes[i].row.status.clone(), new));
        self.settle(i, settled, status, Some(execution));
        if let Some(reason) = reason {
            self.block_dependents(i, &reason);
        }
        converged
    }

    /// Removes a deleted object no step ever touched.
    fn reap(&mut self, i: usize) {
        let e = self.engine;
        let row = &self.nodes[i].row;
        let now = e.clock.now_ms();
        let execution = NewExecution {
            kind: row.kind.clone(),
            key: row.key.clone(),
            step: "reap".into(),
            generation: row.generation,
            cause: "deleted before any step ran".into(),
            holder: e.holder().to_string(),
            started_at: now,
            duration_ms: 0,
            outcome: "ok".into(),
            error: None,
        };
        self.report.reaped += 1;
        self.settle(i, Settled::Reaped, None, Some(execution));
    }

    /// Marks node `i` as waiting, and its in-round dependents as waiting on it.
    fn wait(&mut self, i: usize, message: String) {
        if self.nodes[i].settled {
            return;
        }
        let until = self.engine.clock.now_ms()
            + ((self.engine.settings.sync.wait_recheck_seconds as i64) * 1000).max(MIN_DELAY_MS);
        debug!(kind = %self.nodes[i].row.kind, key = %self.nodes[i].row.key, "{message}");
        self.report.waiting += 1;
        self.settle(
            i,
            Settled::Waiting {
                on: message.clone(),
                until,
            },
            None,
            None,
        );
        self.block_dependents(i, &message);
    }

    fn block_dependents(&mut self, i: usize, reason: &str) {
        let (kind, key) = (
            self.nodes[i].row.kind.clone(),
            self.nodes[i].row.key.clone(),
        );
        for d in self.nodes[i].dependents.clone() {
            let message = if self.nodes[d].job == Job::Sync {
                format!("waiting on {kind} {key}: {reason}")
            } else {
                format!("waiting on dependents: {kind} {key} must be deleted first ({reason})")
            };
            self.wait(d, message);
        }
    }

    /// Counts down the prerequisites of `i`'s dependents; returns those now ready.
    fn release_dependents(&mut self, i: usize) -> Vec<usize> {
        let mut ready = Vec::new();
        for d in self.nodes[i].dependents.clone() {
            let node = &mut self.nodes[d];
            node.blockers = node.blockers.saturating_sub(1);
            if node.blockers == 0 && !node.settled {
                ready.push(d);
            }
        }
        ready
    }

    fn settle(
        &mut self,
        i: usize,
        settled: Settled,
        status: Option<(String, String)>,
        execution: Option<NewExecution>,
    ) {
        let node = &mut self.nodes[i];
        node.settled = true;
        self.pending.push(OutcomeRecord {
            id: node.row.id,
            kind: node.row.kind.clone(),
            key: node.row.key.clone(),
            generation: node.row.generation,
            settled,
            status,
            execution,
            has_dependents: self.engine.graph.has_dependents(&node.row.kind),
        });
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let e = self.engine;
        e.store
            .settle(e.holder(), e.clock.now_ms(), &self.pending)
            .await
            .context("recording outcomes")?;
        self.pending.clear();
        Ok(())
    }
}

/// Why an object runs now, from its bookkeeping, for the executions trail and logs.
fn cause(row: &ObjectRow) -> String {
    if row.deleted_at.is_some() {
        return "deletion requested".into();
    }
    match row.backend_status.as_str() {
        "retry requested by operator" => "operator retry".into(),
        _ if row.attempts > 0 => format!("retry {} after backoff", row.attempts),
        _ if row.waiting_on.is_some() => "dependency ready".into(),
        "new" => "new object".into(),
        "spec changed" => format!("spec changed (generation {})", row.generation),
        status => format!("recheck ({status})"),
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}
