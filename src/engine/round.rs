//! Runs one round of claimed objects as a DAG: a node starts when its in-round prerequisites
//! have converged, at most `sync.concurrency` at once, and only under a lease that outlives
//! its timeout; outcomes reach the store within [`FLUSH_EVERY`] of their step finishing, and
//! a store that fails to take them holds the round (nothing is dropped) until it answers.

use std::any::Any;
use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::outcome::{self, cause, Ended, MIN_DELAY_MS};
use super::report::SyncReport;
use super::Engine;
use crate::step::{Op, StepContext, StepError, StepResult};
use crate::store::{
    NewExecution, ObjectRow, Outcome, OutcomeRecord, Settled, Settlement, StoreError,
};

/// An outcome reaches the store at most this long after its step finished (store willing).
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Outcomes are written at once when this many have piled up (a page's worth by default:
/// each write is a transaction, and a round of quick steps is best stored in one).
const FLUSH_AT: usize = 1000;
/// A round of rechecks and retries yields to news no sooner than this after it began, so
/// a stream of events cannot make it give back its page over and over.
const YIELD_AFTER: Duration = Duration::from_millis(250);
/// First and longest wait before the store is tried again after a failure.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a claimed object needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    /// Its step runs this operation.
    Run(Op),
    /// Deleted before any step touched the world: remove without running `delete`.
    Reap,
}

impl Job {
    /// Whether the object is being deleted (a delete step or a reap), not synced.
    pub fn deletes(self) -> bool {
        self != Job::Run(Op::Sync)
    }
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
    /// Its step has started.
    running: bool,
    /// Its outcome is decided (recorded, pending, or its lease lost).
    settled: bool,
}

impl Node {
    /// A node for a claimed row, its job read from the deletion columns.
    pub fn new(row: ObjectRow) -> Self {
        let job = match (row.deleted_at, row.need_delete) {
            (None, _) => Job::Run(Op::Sync),
            (Some(_), true) => Job::Run(Op::Delete),
            (Some(_), false) => Job::Reap,
        };
        Self {
            row: std::sync::Arc::new(row),
            job,
            blockers: 0,
            dependents: Vec::new(),
            running: false,
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

/// What a store call made while the round's steps keep running came back with.
enum Done {
    /// The outcomes handed to the store, and what it did with them.
    Settled(Vec<OutcomeRecord>, Result<Settlement, StoreError>),
    /// The leases were to last until `until`; the ids still held.
    Extended {
        until: i64,
        held: Result<Vec<i64>, StoreError>,
    },
}

/// A store call in flight. The round keeps polling its running steps meanwhile: a step that
/// holds a connection (SQLite has one) must be able to finish and give it back, or the call
/// would wait for it until the pool times out.
type Call = Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// The state of one round while it runs.
pub(super) struct Round<'e> {
    engine: &'e Engine,
    nodes: Vec<Node>,
    pending: Vec<OutcomeRecord>,
    report: SyncReport,
    /// Until when (engine clock, ms) the round's leases are known to be ours.
    lease_until: i64,
    /// When the pending outcomes are due to be written.
    flush_at: Option<Instant>,
    /// While the store is failing: when to try it again.
    retry: Option<Instant>,
    /// The last wait before a retry; zero once the store answered.
    retry_wait: Duration,
    /// When running steps are abandoned after a shutdown request.
    grace_until: Option<Instant>,
    /// Leases are being extended: no step starts until they are.
    extending: bool,
}

impl<'e> Round<'e> {
    /// A round over the claimed nodes, leased until `lease_until`, nothing settled yet.
    pub fn new(engine: &'e Engine, nodes: Vec<Node>, lease_until: i64) -> Self {
        Self {
            engine,
            nodes,
            pending: Vec::new(),
            report: SyncReport::default(),
            lease_until,
            flush_at: None,
            retry: None,
            retry_wait: Duration::ZERO,
            grace_until: None,
            extending: false,
        }
    }

    /// Runs the round to completion (or until shutdown's grace runs out). Never fails: a
    /// store that cannot take outcomes holds them and pauses new steps until it answers.
    /// With `news` (a round of rechecks and retries), news yields the round: no more steps
    /// start, the running ones finish, and the rest are given back.
    pub async fn run(
        mut self,
        blocked: Vec<(usize, String)>,
        mut news: Option<&mut watch::Receiver<u64>>,
    ) -> SyncReport {
        let e = self.engine;
        let began = Instant::now();
        // When news came, the round yields at this time; once it does, nothing starts.
        let mut yield_at: Option<Instant> = None;
        let mut yielding = false;
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
        let mut call: Option<Call> = None;
        loop {
            if self.grace_until.is_none() && !self.extending && !yielding {
                let extend = self.start_ready(&mut ready, &mut tasks, call.is_none());
                call = call.or(extend);
            }
            let stuck = self.grace_until.is_some() || yielding || ready.is_empty();
            if tasks.is_empty() && stuck && call.is_none() {
                break;
            }
            let timer = self.timer();
            tokio::select! {
                joined = tasks.next(), if !tasks.is_empty() => {
                    let Some((i, output)) = joined else { continue };
                    if self.finish(i, output) {
                        ready.extend(self.release_dependents(i));
                    }
                    if self.pending.len() >= FLUSH_AT && self.retry.is_none() && call.is_none() {
                        call = self.begin_settle();
                    }
                }
                done = in_flight(&mut call), if call.is_some() => {
                    call = None;
                    self.end_call(done);
                }
                _ = changed(&mut news), if yield_at.is_none() => {
                    yield_at = Some((began + YIELD_AFTER).max(Instant::now()));
                }
                _ = sleep_until(yield_at), if yield_at.is_some() && !yielding => {
                    yielding = true;
                    self.report.yielded = 1;
                    e.reconciles.yielded();
                    info!(running = tasks.len(), "news came: the rechecks and retries not yet started wait for the next pass");
                }
                _ = e.shutdown.cancelled(), if self.grace_until.is_none() => {
                    let secs = e.settings.sync.shutdown_grace_seconds;
                    info!(running = tasks.len(), "shutdown: waiting up to {secs}s for running steps");
                    self.grace_until = Some(Instant::now() + Duration::from_secs(secs));
                }
                _ = sleep_until(self.grace_until), if self.grace_until.is_some() && !tasks.is_empty() => {
                    warn!(abandoned = tasks.len(), "shutdown grace over: abandoning running steps");
                    drop(std::mem::take(&mut tasks));
                    break;
                }
                _ = sleep_until(timer), if timer.is_some() && call.is_none() => {
                    if self.pending.is_empty() {
                        // Nothing to write: let the next start try the store again.
                        self.retry = None;
                    } else {
                        call = self.begin_settle();
                    }
                }
            }
        }
        // No step runs any more: what is in flight can be awaited alone.
        if let Some(call) = call.take() {
            let done = call.await;
            self.end_call(done);
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].settled {
                self.settle(i, Settled::Released, None, None);
                self.report.released += 1;
            }
        }
        self.flush_all().await;
        self.report
    }

    /// When the loop must wake for the store: the flush deadline, or the next retry.
    fn timer(&self) -> Option<Instant> {
        self.retry.or(self.flush_at)
    }

    /// Starts ready nodes up to the concurrency bound, each under a lease that outlives its
    /// timeout. When the leases are too short it starts nothing and returns the call that
    /// extends them (if no other store call is in flight: `may_call`).
    fn start_ready(
        &mut self,
        ready: &mut VecDeque<usize>,
        tasks: &mut FuturesUnordered<Running>,
        may_call: bool,
    ) -> Option<Call> {
        let concurrency = self.engine.settings.sync.concurrency;
        while tasks.len() < concurrency && self.retry.is_none() {
            let Some(&i) = ready.front() else { break };
            if self.nodes[i].settled {
                ready.pop_front();
                continue;
            }
            let op = match self.nodes[i].job {
                Job::Reap => {
                    ready.pop_front();
                    self.reap(i);
                    ready.extend(self.release_dependents(i));
                    continue;
                }
                Job::Run(op) => op,
            };
            if !self.lease_covers_a_step() {
                return may_call.then(|| self.begin_extend());
            }
            ready.pop_front();
            self.nodes[i].running = true;
            let step = AssertUnwindSafe(self.start(i, op)).catch_unwind();
            tasks.push(Box::pin(step.map(move |output| (i, output))));
        }
        None
    }

    /// Whether the round's leases last long enough for a step started now to time out and
    /// have its outcome written before they expire, with half the slack the lease leaves.
    fn lease_covers_a_step(&self) -> bool {
        let sync = &self.engine.settings.sync;
        let timeout_ms = sync.step_timeout_ms();
        let slack = (sync.lease_ms() - timeout_ms) / 2;
        self.lease_until - self.engine.clock.now_ms() >= timeout_ms + slack
    }

    /// The call that extends the leases of every object of the round not yet written.
    fn begin_extend(&mut self) -> Call {
        let e = self.engine;
        let now = e.clock.now_ms();
        let until = now.saturating_add(e.settings.sync.lease_ms());
        let ids: Vec<i64> = self
            .nodes
            .iter()
            .filter(|n| !n.settled)
            .map(|n| n.row.id)
            .chain(self.pending.iter().map(|r| r.id))
            .collect();
        self.extending = true;
        let (store, holder) = (e.store.clone(), e.holder().to_string());
        Box::pin(async move {
            let held = store.timed(store.extend_leases(&holder, &ids, until)).await;
            Done::Extended { until, held }
        })
    }

    /// The call that writes the pending outcomes, if there are any.
    fn begin_settle(&mut self) -> Option<Call> {
        self.flush_at = None;
        if self.pending.is_empty() {
            return None;
        }
        let records = std::mem::take(&mut self.pending);
        let e = self.engine;
        let (store, holder, now) = (e.store.clone(), e.holder().to_string(), e.clock.now_ms());
        Some(Box::pin(async move {
            let settled = store.timed(store.settle(&holder, now, &records)).await;
            Done::Settled(records, settled)
        }))
    }

    /// Takes in what a store call came back with.
    fn end_call(&mut self, done: Done) {
        match done {
            Done::Settled(records, Ok(settlement)) => {
                self.store_answered();
                for (ids, message) in [
                    (
                        &settlement.lost,
                        "outcome not recorded: another replica took the lease over and runs it",
                    ),
                    (
                        &settlement.rerun,
                        "an event changed the status while the step ran; running it again",
                    ),
                ] {
                    for r in records.iter().filter(|r| ids.contains(&r.id)) {
                        warn!(kind = %r.kind, key = %r.key, "{message}");
                    }
                }
                self.report.lost += settlement.lost.len();
                self.report.rerun += settlement.rerun.len();
            }
            Done::Settled(mut records, Err(err)) => {
                // Kept, in order, ahead of what finished meanwhile.
                records.append(&mut self.pending);
                self.pending = records;
                self.store_failed("recording outcomes", err.into());
            }
            Done::Extended {
                until,
                held: Ok(held),
            } => {
                self.extending = false;
                self.store_answered();
                // An object whose lease another holder took over meanwhile (this process
                // stalled past it) is dropped from the round unrun: that holder runs it.
                let held: HashSet<i64> = held.into_iter().collect();
                for node in self.nodes.iter_mut() {
                    if !node.settled && !node.running && !held.contains(&node.row.id) {
                        node.settled = true;
                        self.report.lost += 1;
                        warn!(kind = %node.row.kind, key = %node.row.key,
                            "lease taken over by another replica before the step started; not running it here");
                    }
                }
                self.lease_until = until;
            }
            Done::Extended { held: Err(err), .. } => {
                self.extending = false;
                self.store_failed("extending leases", err.into());
            }
        }
    }

    /// The store answered: an outage (if any) is over, and retries start afresh.
    fn store_answered(&mut self) {
        let e = self.engine;
        e.health.answered(e.clock.now_ms());
        self.retry = None;
        self.retry_wait = Duration::ZERO;
    }

    /// Future running node `i`'s step under its span and timeout.
    fn start(
        &self,
        i: usize,
        op: Op,
    ) -> impl std::future::Future<Output = TaskOutput> + Send + 'static {
        let e = self.engine;
        let row = self.nodes[i].row.clone();
        let step = e.registry.sync.get(&row.kind).cloned();
        let ctx = StepContext::new(e.models.clone(), cause(&row));
        let timeout = Duration::from_secs(e.settings.sync.step_timeout_seconds);
        let clock = e.clock.clone();
        let span = info_span!("reconcile", kind = %row.kind, key = %row.key, generation = row.generation, op = ?op);
        let running = e.reconciles.start(&row.kind, &row.key, e.clock.now_ms());
        async move {
            let _running = running;
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
        let row = self.nodes[i].row.clone();
        let deleting = self.nodes[i].job == Job::Run(Op::Delete);
        let op = if deleting { "delete" } else { "sync" };
        let (ended, status, started) = match output {
            Ok((Ok((result, status)), started)) => (Ended::Returned(result), status, started),
            Ok((Err(_elapsed), started)) => (
                Ended::TimedOut(e.settings.sync.step_timeout_seconds),
                None,
                started,
            ),
            Err(payload) => (Ended::Panicked(payload), None, now),
        };
        let salt = format!("{}/{}", row.kind, row.key);
        let outcome::Classified {
            settled,
            outcome,
            error,
        } = outcome::classify(ended, &row, deleting, now, |attempts| {
            e.backoff.delay_ms(attempts, &salt)
        });
        match &settled {
            Settled::Synced => {
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
        let converged = matches!(settled, Settled::Synced | Settled::Reaped);
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
            cause: cause(&row),
            holder: e.holder().to_string(),
            started_at: started,
            duration_ms: (now - started).max(0),
            outcome,
            error,
        };
        e.reconciles
            .finished(&row.kind, &settled, execution.duration_ms);
        let status = status.map(|new| (row.status.clone(), new));
        self.nodes[i].running = false;
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
            outcome: Outcome::Ok,
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
        let e = self.engine;
        let recheck = (e.settings.sync.wait_recheck_seconds as i64).saturating_mul(1000);
        let until = e.clock.now_ms().saturating_add(recheck.max(MIN_DELAY_MS));
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
            let message = if !self.nodes[d].job.deletes() {
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
        let e = self.engine;
        let node = &mut self.nodes[i];
        node.settled = true;
        let row = &node.row;
        let announce = match &status {
            Some((before, after)) if e.announcers.announces(&row.kind) => e
                .announcers
                .on_status(&row.kind, &row.key, &row.spec, before, after, Vec::new())
                .unwrap_or_else(|err| {
                    // The step wrote this status itself; it decodes unless the kind changed.
                    warn!(kind = %row.kind, key = %row.key, "announcing a status failed: {err:#}");
                    Vec::new()
                }),
            _ => Vec::new(),
        };
        self.pending.push(OutcomeRecord {
            id: node.row.id,
            kind: node.row.kind.clone(),
            key: node.row.key.clone(),
            generation: node.row.generation,
            revision: node.row.revision,
            sync_job: !node.job.deletes(),
            settled,
            status,
            execution,
            has_dependents: e.graph.has_dependents(&node.row.kind),
            announce,
            transitions: e.registry.transitions.contains(&node.row.kind),
        });
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + FLUSH_EVERY);
        }
    }

    /// Writes the pending outcomes, with no step running; on failure keeps them.
    async fn flush(&mut self) {
        if let Some(call) = self.begin_settle() {
            let done = call.await;
            self.end_call(done);
        }
    }

    /// Writes what is pending at the round's end, retrying while the store fails; gives up
    /// only when a shutdown's grace is over (the leases then expire and the objects run again).
    async fn flush_all(&mut self) {
        loop {
            self.flush().await;
            if self.pending.is_empty() {
                return;
            }
            let shutdown = self.engine.shutdown.is_cancelled();
            let grace = self.grace_until.unwrap_or_else(|| {
                Instant::now()
                    + Duration::from_secs(self.engine.settings.sync.shutdown_grace_seconds)
            });
            if shutdown && Instant::now() >= grace {
                error!(
                    outcomes = self.pending.len(),
                    "shutdown: outcomes could not be recorded; their objects run again once their leases expire"
                );
                return;
            }
            if shutdown {
                self.grace_until = Some(grace);
            }
            let at = self.timer().unwrap_or_else(Instant::now);
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = tokio::time::sleep_until(grace), if shutdown => {}
                _ = self.engine.shutdown.cancelled(), if !shutdown => {}
            }
        }
    }

    /// The store failed: hold what is pending, pause new steps, and try again after a wait
    /// that doubles up to [`RETRY_MAX`].
    fn store_failed(&mut self, what: &str, err: anyhow::Error) {
        let e = self.engine;
        e.health.failed(e.clock.now_ms(), what, &err);
        self.retry_wait = if self.retry_wait.is_zero() {
            RETRY_FIRST
        } else {
            (self.retry_wait * 2).min(RETRY_MAX)
        };
        self.retry = Some(Instant::now() + self.retry_wait);
    }
}

/// The store call in flight, if any (never resolves without one).
async fn in_flight(call: &mut Option<Call>) -> Done {
    match call {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

/// Resolves when the news counter moves (never without one, or once its engine is gone).
async fn changed(news: &mut Option<&mut watch::Receiver<u64>>) {
    if let Some(news) = news {
        if news.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
