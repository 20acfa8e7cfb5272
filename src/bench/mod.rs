//! `thalamus bench`: each scenario measures a baseline (the physical limit on this machine,
//! e.g. the same SQL written directly) and thalamus back to back, and reports the ratio, so
//! the figures mean something on any hardware.

mod db;
mod engine;
mod events;
mod idle;
mod latency;
mod relay;
mod report;
mod scan;
mod standin;

use std::path::PathBuf;

use clap::Args;

pub use report::{human, Figure, Goal};

/// Options of `thalamus bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Small sizes (finishes in a few minutes), for the documented workflow.
    #[arg(long)]
    pub quick: bool,
    /// Print the figures as JSON (`[{name, value, baseline, ratio, goal, unit}]`).
    #[arg(long)]
    pub json: bool,
    /// Only these scenarios: reconcile, dirty, scan, memory, events, relay, latency, idle.
    #[arg(long = "only", value_name = "SCENARIO")]
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

/// Runs the selected scenarios and returns their figures, each handed to `measured` as soon
/// as it is measured (the CLI says it at once, then prints the table).
pub async fn run(
    args: &BenchArgs,
    measured: &mut dyn FnMut(&Figure),
) -> anyhow::Result<Vec<Figure>> {
    const SCENARIOS: [&str; 8] = [
        "reconcile",
        "dirty",
        "scan",
        "memory",
        "events",
        "relay",
        "latency",
        "idle",
    ];
    for s in &args.only {
        if !SCENARIOS.contains(&s.as_str()) {
            anyhow::bail!("unknown scenario {s:?}: use {}", SCENARIOS.join(", "));
        }
    }
    let mut figures = Figures(Vec::new(), measured);
    let mut backends = vec![db::Backend::Sqlite];
    if !args.no_postgres {
        backends.push(db::Backend::Postgres);
    }
    if args.wants("reconcile") {
        let n = args.size(args.objects, 100_000, 10_000);
        for b in &backends {
            figures.add([engine::reconcile(args, *b, n).await?]);
        }
    }
    if args.wants("dirty") || args.wants("memory") {
        let n = args.size(args.models, 1_000_000, 100_000);
        for b in &backends {
            figures.add(engine::dirty_pass(args, *b, n).await?);
        }
    }
    if args.wants("scan") {
        let n = args.size(args.files, 1_000_000, 50_000);
        figures.add(scan::scan(args, n).await?);
    }
    if args.wants("events") {
        let n = args.size(args.messages, 100_000, 10_000);
        figures.add([events::kafka(args, n).await?]);
        figures.add([events::amqp(args, n).await?]);
    }
    if args.wants("relay") {
        let n = args.size(args.messages, 100_000, 10_000);
        figures.add([relay::relay(args, n).await?]);
    }
    if args.wants("latency") {
        figures.add([latency::latency(args).await?]);
    }
    if args.wants("idle") {
        let n = args.size(args.datasets, 10_000, 1_000);
        figures.add(idle::idle(args, &backends, n).await?);
    }
    Ok(figures.0)
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
