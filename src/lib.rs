//! thalamus: a work-based reconciliation controller for the NRAO archive.
//!
//! Module map:
//! - [`config`]: settings (defaults, `config.yaml`, overlay, `THALAMUS__…` env vars).
//! - [`clock`]: time as epoch milliseconds, from a clock tests can drive.
//! - [`store`]: the model store (objects, links, executions) on SQLite or PostgreSQL.
//! - [`graph`]: the petgraph DAG from `model-deps.json`: sync order and link fields.
//! - [`secret`]: secrets and what may be printed of them (URL redaction); a leaf.
//! - [`sources`]: the NFS-safe dataset scanner, settle window, inotify hint, `sources.*` settings.
//! - [`step`]: the traits steps implement (`SyncStep`, `PullStep`, `ModelPolicy`, `EventStep`).
//! - [`engine`]: the pull, policy and sync loops and event application.
//! - [`bus`]: the Kafka and AMQP event transports, dead letters and event metrics.
//! - [`bench`]: `thalamus bench`, figures as ratios against baselines measured in the same run.
//! - [`app`]: bootstrap shared by commands (settings → registry → graph → store → engine).
//! - [`cli`]: the `thalamus` command line and its tables.
//! - [`telemetry`]: tracing setup.
//! - [`workspaces`]: Workspaces and archive REST clients, rate-limited; the request cycle.
//! - [`steps`]: the domain steps in `steps/`, registered explicitly.

pub mod app;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod graph;
pub mod secret;
pub mod sources;
pub mod step;
pub mod store;
pub mod telemetry;
pub mod workspaces;

#[path = "../steps/mod.rs"]
pub mod steps;
