//! The `thalamus` command line: run the controller, manage the schema, inspect models.

mod admin;
mod bench;
mod dead_letters;
mod inspect;
mod outbox;
mod output;
mod rules;
mod sources;

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
    /// Validate the settings and model-deps.json; print the sync order and registered steps,
    /// and warn of what `run` would meet (database unreachable, source directories missing).
    Check {
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Print the dependency graph from model-deps.json.
    Graph {
        /// Graphviz DOT instead of text.
        #[arg(long, conflicts_with = "output")]
        dot: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
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
    /// Clear an object's backoff or permanent failure so it runs at the next pass; or those of
    /// every object of KIND in one state (--state error), or not in sync (--all).
    Retry(inspect::RetryArgs),
    /// Soft-delete an object and its dependents; their delete steps run, dependents first.
    Delete { kind: String, key: String },
    /// Datasets the sources have seen but not yet settled: how long until each settles, and
    /// the BDFs a VLA dataset's Main.xml names that have not arrived.
    Sources {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
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

/// Exit code of a command that failed.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of bad configuration (settings, `model-deps.json`) or usage.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of `run --once` that finished with objects left in error or backoff.
pub const EXIT_OBJECTS_IN_ERROR: u8 = 3;

/// Parses the command line, runs the command, and maps errors to exit codes (see the
/// constants above; 0 when it worked, or when stdout was closed by its reader).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), cli.overlay.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(&anyhow::Error::new(e), EXIT_CONFIG),
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
    let result = runtime.block_on(dispatch(cli.command, settings));
    // Steps still running after a shutdown grace are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<output::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<admin::ObjectsInError>().is_some() => {
            fail(&e, EXIT_OBJECTS_IN_ERROR)
        }
        Err(e)
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<crate::graph::GraphError>().is_some() =>
        {
            fail(&e, EXIT_CONFIG)
        }
        Err(e) => fail(&e, EXIT_ERROR),
    }
}

/// Says why on stderr (if anyone still reads it) and exits with `code`.
fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    crate::telemetry::say(&format!("error: {}", output::error_text(e)));
    ExitCode::from(code)
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Run { once, no_migrate } => admin::run(settings, once, !no_migrate).await,
        Command::Migrate => admin::migrate(&settings).await,
        Command::Check { strict, output } => admin::check(&settings, strict, output).await,
        Command::Graph { dot, output } => admin::graph(&settings, dot, output),
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
        Command::Retry(args) => inspect::retry(&settings, args).await,
        Command::Delete { kind, key } => inspect::delete(&settings, &kind, &key).await,
        Command::Sources { output } => sources::sources(&settings, output).await,
        Command::DeadLetters(command) => dead_letters::run(settings, command).await,
        Command::Outbox(command) => outbox::run(settings, command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Rules(command) => rules::run(settings, command),
    }
}
