//! thalamus: a work-based reconciliation controller for the NRAO archive.
//!
//! Module map:
//! - [`config`]: loads and aggregates the settings each layer and step module owns (defaults,
//!   `config.yaml`, overlay, `THALAMUS__…` env vars).
//! - [`clock`]: time as epoch milliseconds, from a clock tests can drive.
//! - [`store`]: the model store (objects, links, executions) on SQLite or PostgreSQL.
//! - [`graph`]: the petgraph DAG from `model-deps.json`: sync order and link fields.
//! - [`secret`]: credentials and what may be printed of them (`Secret`, URL redaction); a leaf.
//! - [`sources`]: the NFS-safe dataset scanner, settle window and inotify hint.
//! - [`step`]: the contract steps implement (`SyncStep`, `PullStep`, `ModelPolicy`, `EventStep`)
//!   and the typed model access they get.
//! - [`engine`]: the pull, policy and sync loops, event delivery (`EventSink`), the store's
//!   health and the replicas' heartbeat; owns `sync`, `policy`, `pull`, `executions` settings.
//! - [`bus`]: the Kafka and AMQP transports: adapters delivering into the engine's `EventSink`,
//!   started beside it by the bootstrap.
//! - [`bench`]: `thalamus bench`'s scenarios: figures as ratios against baselines measured in
//!   the same run (the CLI prints them).
//! - [`app`]: the bootstrap: `EngineBuilder` (settings → registry → graph → store → engine),
//!   used by `run`, dead-letter replay and the bench; the transports started beside `run`.
//! - [`outbox`]: announcements (what thalamus tells downstream), the outbox rows they become,
//!   and the relay that publishes them at least once.
//! - [`api`]: the operator surface `run` serves (axum): JSON API with its OpenAPI document,
//!   the web page, Prometheus metrics, `/healthz` `/readyz`; owns the `api` settings.
//! - [`rules`]: rules as data (Event → CEL condition → responses through the store or the
//!   outbox), checked when loaded, fired as an event step and per-kind policies, reloaded.
//! - [`cli`]: the `thalamus` command line and its tables.
//! - [`telemetry`]: tracing setup and `log.*` settings.
//! - [`workspaces`]: plain Workspaces and archive REST clients, rate-limited.
//! - [`steps`]: the domain in `steps/`: models, policies, the steps that talk to each outside
//!   system, their settings sections, and the `prelude` a step imports.
//!
//! Layers point one way (`../shared/tools/module-cycles src` finds no cycle): `cli` → `app` →
//! {`config`, `api`, `bus`, `steps`, `rules`} → `engine` → {`step`, `store`, `graph`} → leaves
//! (`clock`, `secret`); `rules` → {`step`, `store`, `outbox`}.

pub mod api;
pub mod app;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod graph;
pub mod outbox;
pub mod rules;
pub mod secret;
pub mod sources;
pub mod step;
pub mod store;
pub mod telemetry;
pub mod workspaces;

#[path = "../steps/mod.rs"]
pub mod steps;
