//! The `thalamus` command line: run the controller, manage the schema, inspect models.

mod admin;
mod bench;
mod dead_letters;
mod inspect;
mod outbox;
mod output;
mod rules;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use output::{Format, Table};

use crate::config::{ConfigError, Settings};

/// Work-based reconciliation controller for the NRAO archive and Workspaces.
#[derive(Debug, Parser)]
#[command(name = "thalamus", version, about, long_about = None)]
pub struct Cli {
    /// Settings file (default: ./config.yaml if it exists; built-in defaults otherwise).
    #[arg(long, global = true, value_name = "FILE", env = "THALAMUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// A second settings file laid over the first (e.g. site-specific values).
    #[arg(long, global = true, value_name = "FILE", env = "THALAMUS_OVERLAY")]
    pub overlay: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller until SIGTERM/SIGINT (or, with --once, until nothing is runnable now).
    Run {
        /// Poll every source once, then run policy and sync passes until nothing more is
        /// runnable now (all in sync, or waiting on backoff or dependencies), and exit 0.
        #[arg(long)]
        once: bool,
        /// Do not create or update the schema on start (fail if it is missing).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Create or update the database schema.
    Migrate,
    /// Validate the settings and model-deps.json; print the sync order and registered steps.
    Check,
    /// Print the dependency graph from model-deps.json.
    Graph {
        /// Graphviz DOT instead of text.
        #[arg(long)]
        dot: bool,
    },
    /// Count objects per kind and state (ok, pending, backoff, error, waiting, deleting).
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// List objects of one kind: key, generation, enacted, state, attempts, next attempt, status.
    Get {
        /// The model kind, e.g. Ingestion.
        kind: String,
        /// Only these keys (default: all).
        keys: Vec<String>,
        /// Only objects in this state: ok, pending, backoff, error, waiting, deleting.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show one object: spec, status, links, bookkeeping, last error, recent executions.
    Describe {
        kind: String,
        key: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show the executions audit trail of one object, newest first.
    History {
        kind: String,
        key: String,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Clear an object's backoff or permanent failure so it runs at the next pass.
    Retry { kind: String, key: String },
    /// Soft-delete an object and its dependents; their delete steps run, dependents first.
    Delete { kind: String, key: String },
    /// Messages no event step could apply: list, show, replay, purge.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLetters),
    /// What thalamus announces downstream: list, show, send again.
    #[command(subcommand)]
    Outbox(outbox::Outbox),
    /// The rules (Event → Condition → Response): list them, or test a message against them.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Measure the controller against the limits of this machine, as ratios in one run.
    Bench(crate::bench::BenchArgs),
}

/// Parses the command line, runs the command, and maps errors to exit codes: 2 for bad
/// settings, 1 for everything else.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), cli.overlay.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(&anyhow::Error::new(e), 2),
    };
    let level = match cli.command {
        Command::Run { .. } | Command::Migrate => settings.log.level.clone(),
        _ => "warn".to_string(),
    };
    crate::telemetry::init(&level, settings.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &anyhow::Error::new(e).context("starting the async runtime"),
                1,
            )
        }
    };
    match runtime.block_on(dispatch(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => fail(&e, 2),
        Err(e) => fail(&e, 1),
    }
}

fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(code)
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Run { once, no_migrate } => admin::run(settings, once, !no_migrate).await,
        Command::Migrate => admin::migrate(&settings).await,
        Command::Check => admin::check(&settings),
        Command::Graph { dot } => admin::graph(&settings, dot),
        Command::Status { output } => inspect::status(&settings, output).await,
        Command::Get {
            kind,
            keys,
            state,
            limit,
            output,
        } => inspect::get(&settings, kind, keys, state, limit, output).await,
        Command::Describe { kind, key, output } => {
            inspect::describe(&settings, &kind, &key, output).await
        }
        Command::History {
            kind,
            key,
            limit,
            output,
        } => inspect::history(&settings, &kind, &key, limit, output).await,
        Command::Retry { kind, key } => inspect::retry(&settings, &kind, &key).await,
        Command::Delete { kind, key } => inspect::delete(&settings, &kind, &key).await,
        Command::DeadLetters(command) => dead_letters::run(settings, command).await,
        Command::Outbox(command) => outbox::run(settings, command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Rules(command) => rules::run(settings, command),
    }
}
