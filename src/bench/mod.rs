//! `thalamus bench`: each scenario measures a baseline (the physical limit on this machine,
//! e.g. the same SQL written directly) and thalamus back to back, and reports the ratio, so
//! the figures mean something on any hardware.

mod backlog;
mod db;
mod engine;
mod events;
mod idle;
mod latency;
mod relay;
mod report;
mod scan;
mod soak;
mod standin;

use std::path::PathBuf;

use clap::Args;

pub use report::{human, Figure, Goal};

/// Options of `thalamus bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Small sizes: about 3 min (the full run takes about 18 min on 2 cores, idle and soak
    /// included). Checks that every scenario runs; the goals are judged on the full run.
    #[arg(long)]
    pub quick: bool,
    /// Print the figures as JSON (`[{name, value, baseline, ratio, goal, unit}]`).
    #[arg(long)]
    pub json: bool,
    /// Only these scenarios, comma-separated or repeated: reconcile, replicas, dirty, scan, memory,
    /// events, relay, latency, backlog, idle, soak.
    #[arg(long = "only", value_name = "SCENARIO", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Objects in the reconcile scenario (default 100000; --quick 10000).
    #[arg(long)]
    pub objects: Option<usize>,
    /// Models in the dirty-pass and memory scenarios (default 1000000; --quick 100000).
    #[arg(long)]
    pub models: Option<usize>,
    /// Files in the scan scenario (default 1000000; --quick 50000).
    #[arg(long)]
    pub files: Option<usize>,
    /// PostgreSQL to measure on (a scratch schema is created and dropped).
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        env = "THALAMUS_BENCH_PG"
    )]
    pub pg_url: String,
    /// Settled datasets in the idle scenario, plus 10 × as many settled models (default
    /// 10000; --quick 1000). It runs `thalamus run` for two poll periods (one with --quick).
    #[arg(long)]
    pub datasets: Option<usize>,
    /// Messages in the events and relay scenarios (default 100000; --quick 10000).
    #[arg(long)]
    pub messages: Option<usize>,
    /// Seconds of steady input the soak measures after its warm-up (default 360; --quick 30).
    #[arg(long, value_name = "SECONDS")]
    pub soak_seconds: Option<u64>,
    /// Kafka broker for the events scenario.
    #[arg(long, default_value = "127.0.0.1:19092")]
    pub kafka: String,
    /// AMQP broker for the events scenario.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp: String,
    /// Skip PostgreSQL (SQLite only).
    #[arg(long)]
    pub no_postgres: bool,
    /// Where scratch databases and file trees go (default: the system temp directory).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
}

impl BenchArgs {
    fn size(&self, given: Option<usize>, full: usize, quick: usize) -> usize {
        given.unwrap_or(if self.quick { quick } else { full })
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    fn scratch(&self) -> PathBuf {
        self.scratch.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// The controller `settings` make, on `store`, with the shipped `model-deps.json` (the bench
/// may run anywhere, away from the file).
fn shipped_engine(
    settings: &crate::config::Settings,
    store: crate::store::Store,
) -> anyhow::Result<crate::engine::Engine> {
    let registry = crate::app::registry(settings)?;
    let graph = crate::graph::DepGraph::parse(
        "model-deps.json",
        include_str!("../../model-deps.json"),
        &registry.sync_kinds(),
    )?;
    crate::app::EngineBuilder::new(settings)
        .registry(registry)
        .graph(graph)
        .build(store)
}

/// What a bench run measured, and the scenarios it could not measure.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The figures, in the order measured.
    pub figures: Vec<Figure>,
    /// Scenarios that failed, each with why; the others still ran.
    pub failed: Vec<String>,
}

/// Runs the selected scenarios and returns their figures, each handed to `measured` as soon
/// as it is measured (the CLI says it at once, then prints the table). A scenario that
/// fails is reported through `say` and the others still run; one whose broker is not
/// there is skipped with a line saying why.
pub async fn run(
    args: &BenchArgs,
    measured: &mut dyn FnMut(&Figure),
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Outcome> {
    const SCENARIOS: [&str; 11] = [
        "reconcile",
        "replicas",
        "dirty",
        "scan",
        "memory",
        "events",
        "relay",
        "latency",
        "backlog",
        "idle",
        "soak",
    ];
    for s in &args.only {
        if !SCENARIOS.contains(&s.as_str()) {
            anyhow::bail!("unknown scenario {s:?}: use {}", SCENARIOS.join(", "));
        }
    }
    let mut figures = Figures(Vec::new(), measured);
    let mut failed = Vec::new();
    // A scenario that fails is said and counted; the others still run.
    macro_rules! check {
        ($scenario:expr, $result:expr) => {
            match $result {
                Ok(measured) => figures.add(measured),
                Err(e) => {
                    say(&format!("{}: failed: {e:#}", $scenario));
                    failed.push(format!("{}: {e:#}", $scenario));
                }
            }
        };
    }
    let mut backends = vec![db::Backend::Sqlite];
    if !args.no_postgres {
        backends.push(db::Backend::Postgres);
    }
    if args.wants("reconcile") {
        let n = args.size(args.objects, 100_000, 10_000);
        for b in &backends {
            let r = engine::reconcile(args, *b, n).await.map(|f| vec![f]);
            check!("reconcile", r);
        }
    }
    if args.wants("replicas") {
        if args.no_postgres {
            say("replicas: skipped (--no-postgres): replicas share work through PostgreSQL");
        } else {
            let n = args.size(args.objects, 100_000, 10_000);
            let r = engine::replicas(args, n).await;
            check!("replicas", r);
        }
    }
    if args.wants("dirty") || args.wants("memory") {
        let n = args.size(args.models, 1_000_000, 100_000);
        for b in &backends {
            let r = engine::dirty_pass(args, *b, n).await.map(Vec::from_iter);
            check!("dirty", r);
        }
    }
    if args.wants("scan") {
        let n = args.size(args.files, 1_000_000, 50_000);
        let r = scan::scan(args, n).await.map(Vec::from_iter);
        check!("scan", r);
    }
    if args.wants("events") {
        let n = args.size(args.messages, 100_000, 10_000);
        match crate::bus::reachable(&args.kafka).await {
            Ok(()) => {
                for b in &backends {
                    let r = events::kafka(args, *b, n).await.map(|f| vec![f]);
                    check!("events via Kafka", r);
                }
            }
            Err(why) => say(&format!(
                "events via Kafka: skipped, no broker answers at {} ({why}); --kafka HOST:PORT names one",
                args.kafka
            )),
        }
        for b in &backends {
            let r = events::amqp(args, *b, n).await.map(|f| vec![f]);
            check!("events via AMQP", r);
        }
    }
    if args.wants("relay") {
        let n = args.size(args.messages, 100_000, 10_000);
        let r = relay::relay(args, n).await.map(|f| vec![f]);
        check!("relay", r);
    }
    if args.wants("latency") {
        let r = latency::latency(args).await.map(|f| vec![f]);
        check!("latency", r);
    }
    if args.wants("backlog") {
        // 10,000 rechecks take 8 min to drain at 20 calls/s: the scenario stops long before.
        let n = args.size(None, 10_000, 1_000);
        for b in &backends {
            let r = backlog::backlog_scenario(args, *b, n).await;
            check!("backlog", r);
        }
    }
    if args.wants("idle") {
        let n = args.size(args.datasets, 10_000, 1_000);
        let r = idle::idle(args, &backends, n).await.map(Vec::from_iter);
        check!("idle", r);
    }
    if args.wants("soak") {
        // Six minutes of steady input after four of warm-up (--quick: 30 s after 10 s):
        // SQLite's page cache (2 MB) fills as the store grows over the first minutes.
        let warm = if args.quick { 10 } else { 240 };
        let measure = args.size(args.soak_seconds.map(|s| s as usize), 360, 30) as u64;
        let r = soak::soak(
            args,
            std::time::Duration::from_secs(warm),
            std::time::Duration::from_secs(measure),
        )
        .await;
        check!("soak", r);
    }
    Ok(Outcome {
        figures: figures.0,
        failed,
    })
}

/// The figures measured so far; each is handed on as it comes.
struct Figures<'m>(Vec<Figure>, &'m mut dyn FnMut(&Figure));

impl Figures<'_> {
    fn add(&mut self, new: impl IntoIterator<Item = Figure>) {
        for f in new {
            (self.1)(&f);
            self.0.push(f);
        }
    }
}
