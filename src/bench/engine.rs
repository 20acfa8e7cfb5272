//! Engine scenarios: a full reconcile of 3-level chains, a sync pass with few dirty models
//! among many, and the memory that takes.

use std::time::Instant;

use async_trait::async_trait;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::db::{rss, Backend, Scratch};
use super::{BenchArgs, Figure, Goal};
use crate::config::Settings;
use crate::engine::Engine;
use crate::graph::DepGraph;
use crate::step::{Model, Obj, Progress, Registry, StepContext, StepResult, SyncStep};

/// A bench model; the link fields are optional so one type serves every level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Level<const L: u8> {
    #[serde(default)]
    a: Option<String>,
    #[serde(default)]
    b: Option<String>,
}

impl Model for Level<0> {
    const KIND: &'static str = "BenchA";
    type Status = ();
}
impl Model for Level<1> {
    const KIND: &'static str = "BenchB";
    type Status = ();
}
impl Model for Level<2> {
    const KIND: &'static str = "BenchC";
    type Status = ();
}

/// A sync step that does nothing, so the engine's own cost is what is measured.
struct Noop<M>(std::marker::PhantomData<M>);

#[async_trait]
impl<M: Model> SyncStep for Noop<M> {
    type Model = M;
    async fn sync(&self, _obj: &mut Obj<M>, _ctx: &StepContext) -> StepResult {
        Ok(Progress::Done)
    }
}

const DEPS: &str = r#"{ "BenchB": [["BenchA", "a", "bs"]], "BenchC": [["BenchB", "b", "cs"]] }"#;

fn engine(scratch: &Scratch) -> anyhow::Result<Engine> {
    let mut registry = Registry::new();
    registry.sync(Noop::<Level<0>>(Default::default()))?;
    registry.sync(Noop::<Level<1>>(Default::default()))?;
    registry.sync(Noop::<Level<2>>(Default::default()))?;
    let graph = DepGraph::parse("bench", DEPS, &registry.sync_kinds())?;
    let mut settings = Settings::default();
    settings.database.url = scratch.url.clone();
    settings.sync.page_size = 1000;
    settings.pull.enabled = false;
    crate::app::EngineBuilder::new(&settings)
        .registry(registry)
        .graph(graph)
        .build(scratch.store.clone())
}

/// A spinner with a message and the time elapsed, cleared when the step ends.
pub(super) fn spinner(msg: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(msg);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Trials of each side in the reconcile scenario; the best of each is reported.
const TRIALS: usize = 3;

/// Objects/s of a full reconcile of `n` objects in 3-level chains vs. the raw batched writes.
pub async fn reconcile(args: &BenchArgs, backend: Backend, n: usize) -> anyhow::Result<Figure> {
    let bar = spinner(format!("reconcile {n} objects on {}", backend.name()));
    let scratch = Scratch::new(backend, &args.scratch(), &args.pg_url).await?;
    let chains = n / 3;
    scratch.bulk_objects("BenchA", "a", chains, None).await?;
    scratch
        .bulk_objects("BenchB", "b", chains, Some(("a", "BenchA", "a")))
        .await?;
    scratch
        .bulk_objects("BenchC", "c", chains, Some(("b", "BenchB", "b")))
        .await?;
    if backend == Backend::Postgres {
        // As autovacuum would soon after a bulk load; without statistics the planner may
        // scan where it should look up.
        scratch.exec("ANALYZE").await?;
    }
    let engine = engine(&scratch)?;
    // Best of three trials each, alternating, so a noisy neighbour or a checkpoint in one
    // trial does not decide the ratio.
    let (mut value, mut baseline) = (0.0f64, 0.0f64);
    for _ in 0..TRIALS {
        scratch.make_dirty(None).await?;
        let started = Instant::now();
        let mut synced = 0;
        loop {
            let pass = engine.sync_pass().await?;
            synced += pass.synced;
            if pass.attempted() == 0 {
                break;
            }
        }
        value = value.max(synced as f64 / started.elapsed().as_secs_f64());
        anyhow::ensure!(
            synced == chains * 3,
            "reconciled {synced} of {} objects",
            chains * 3
        );
        scratch.make_dirty(None).await?;
        baseline = baseline.max(scratch.raw_batched_rate().await?);
    }
    scratch.drop_all().await?;
    bar.finish_and_clear();
    Ok(Figure::new(
        format!("reconcile ({})", backend.name()),
        value,
        baseline,
        Goal::AtLeast(0.5),
        "objects/s",
    ))
}

/// Seconds for one sync pass over 1000 dirty models among `n`, vs. among 1000 in all; and
/// the peak memory of the process while it holds and pages through the `n` models.
pub async fn dirty_pass(
    args: &BenchArgs,
    backend: Backend,
    n: usize,
) -> anyhow::Result<Vec<Figure>> {
    let dirty = 1000;
    let mut seconds = Vec::new();
    for total in [dirty, n] {
        let bar = spinner(format!(
            "dirty pass: {dirty} dirty of {total} on {}",
            backend.name()
        ));
        let scratch = Scratch::new(backend, &args.scratch(), &args.pg_url).await?;
        scratch.bulk_objects("BenchA", "a", total, None).await?;
        scratch.exec("ANALYZE").await?;
        let engine = engine(&scratch)?;
        // Best of three passes (made dirty again in between), so warm-up is not measured.
        let mut best = f64::MAX;
        for _ in 0..3 {
            scratch.make_dirty(Some(dirty as i64)).await?;
            let started = Instant::now();
            let pass = engine.sync_pass().await?;
            best = best.min(started.elapsed().as_secs_f64());
            anyhow::ensure!(pass.synced == dirty, "synced {} of {dirty}", pass.synced);
        }
        seconds.push(best);
        if total == n {
            // Every model changed since policies last looked: the policy pass pages through all.
            scratch.exec("UPDATE objects SET policed = 0").await?;
            engine.policy_pass().await?;
        }
        scratch.drop_all().await?;
        bar.finish_and_clear();
    }
    let (_, peak) = rss();
    let peak_mb = peak as f64 / 1_048_576.0;
    Ok(vec![
        Figure::new(
            format!("dirty pass, 1k of {n} ({})", backend.name()),
            seconds[1],
            seconds[0],
            Goal::AtMost(2.0),
            "s",
        ),
        Figure::new(
            format!("peak RSS, {n} models ({})", backend.name()),
            peak_mb,
            200.0,
            Goal::AtMost(1.0),
            "MB",
        ),
    ])
}
