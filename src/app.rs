//! Bootstrap shared by the CLI commands: settings → registry → graph → store → engine.

use std::fs::File;
use std::sync::Arc;

use anyhow::Context as _;

use crate::bus::{AmqpPublisher, EventsSettings, KafkaPublisher};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::engine::Engine;
use crate::graph::DepGraph;
use crate::outbox::{Publisher, Relay};
use crate::step::Registry;
use crate::store::{Open, Store};

/// The steps compiled from `steps/`, configured from `settings`.
pub fn registry(settings: &Settings) -> anyhow::Result<Registry> {
    let mut registry = Registry::new();
    crate::steps::register(&mut registry, &settings.steps)?;
    crate::rules::register(&mut registry, &settings.rules)?;
    Ok(registry)
}

/// `model-deps.json` validated against the registered sync steps.
/// A file that cannot be read is bad configuration (`model_deps` names it).
pub fn graph(settings: &Settings, registry: &Registry) -> anyhow::Result<DepGraph> {
    match DepGraph::load(&settings.model_deps, &registry.sync_kinds()) {
        Err(crate::graph::GraphError::Read { path, source }) => {
            let path =
                std::path::absolute(&settings.model_deps).map_or(path, |p| p.display().to_string());
            Err(crate::config::ConfigError::Key {
                key: "model_deps",
                problem: format!("names {path}, which cannot be read: {source}"),
            }
            .into())
        }
        loaded => Ok(loaded?),
    }
}

/// Opens the configured store.
pub async fn store(settings: &Settings, open: Open) -> anyhow::Result<Store> {
    let url = crate::secret::redact_url(&settings.database.url);
    Store::connect_with_timeout(
        &settings.database.url,
        settings.database.max_connections,
        open,
        std::time::Duration::from_secs(settings.database.timeout_seconds),
    )
    .await
    .with_context(|| format!("opening the database at {url}"))
}

/// Wires an engine: the shipped steps (or the given ones), `model-deps.json` (or the given
/// graph), a store and a clock (the system's unless given). `run`, dead-letter replay and the
/// bench all build their engines here, so all are wired alike.
pub struct EngineBuilder<'s> {
    settings: &'s Settings,
    registry: Option<Registry>,
    graph: Option<DepGraph>,
    clock: Arc<dyn Clock>,
}

impl<'s> EngineBuilder<'s> {
    /// A builder on `settings`, with the shipped steps, `model_deps` and the system clock.
    pub fn new(settings: &'s Settings) -> Self {
        Self {
            settings,
            registry: None,
            graph: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Runs these steps instead of the shipped ones.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Orders work by this graph instead of `model_deps`.
    pub fn graph(mut self, graph: DepGraph) -> Self {
        self.graph = Some(graph);
        self
    }

    /// Tells time by this clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The engine over `store`.
    pub fn build(self, store: Store) -> anyhow::Result<Engine> {
        let registry = match self.registry {
            Some(r) => r,
            None => registry(self.settings)?,
        };
        let graph = match self.graph {
            Some(g) => g,
            None => graph(self.settings, &registry)?,
        };
        Ok(Engine::new(
            store,
            registry,
            graph,
            self.settings.engine(),
            self.clock,
        ))
    }
}

/// Everything `run` needs, wired together on the system clock.
pub async fn engine(settings: &Settings, migrate: bool) -> anyhow::Result<(Engine, Option<File>)> {
    let builder = EngineBuilder::new(settings);
    let store = store(settings, Open::Create).await?;
    if migrate {
        store.migrate().await.context("migrating the schema")?;
    } else {
        store.ensure_migrated().await?;
    }
    let lock = single_process_lock(&store)?;
    if lock.is_some() {
        // The lock proves no other process uses this SQLite file: its leases are stale.
        store.release_all_leases().await?;
    }
    Ok((builder.build(store)?, lock))
}

/// Runs `engine` until shutdown with the enabled event transports and the outbox relay beside
/// it: what `thalamus run` does once its bootstrap is done. They all stop with it.
pub async fn run_with_transports(engine: &Engine, events: &EventsSettings) -> anyhow::Result<()> {
    let sink = Arc::new(engine.clone());
    let shutdown = engine.shutdown_token();
    let mut beside = crate::bus::start(sink, engine.holder(), events, &shutdown);
    if let Some(relay) = relay(engine)? {
        beside.spawn(relay.run(engine.outbox_written(), shutdown.clone()));
    }
    let ran = engine.run().await;
    beside.join_all().await;
    ran
}

/// `run --once`: one poll, policy and sync passes until nothing more is runnable now, then
/// one pass of the outbox relay, so what the run announced is published before it exits.
pub async fn run_once(engine: &Engine) -> anyhow::Result<crate::engine::OnceReport> {
    let report = engine.run_once().await?;
    if let Some(relay) = relay(engine)? {
        let pass = relay.pass().await?;
        if let Some((id, error)) = pass.failed {
            tracing::warn!(
                row = id,
                "outbox: cannot publish (the next run tries again): {error}"
            );
        }
    }
    Ok(report)
}

/// The outbox relay of `engine`, publishing on the transports `outbox.*` enables; `None` when
/// nothing is announced.
pub fn relay(engine: &Engine) -> anyhow::Result<Option<Relay>> {
    let settings = &engine.settings.outbox;
    let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
    if settings.amqp.enabled {
        publishers.push(Arc::new(AmqpPublisher::new(
            &settings.amqp.url,
            engine.holder(),
        )));
    }
    if settings.kafka.enabled {
        publishers.push(Arc::new(KafkaPublisher::new(
            &settings.kafka.brokers,
            engine.holder(),
        )?));
    }
    if publishers.is_empty() {
        return Ok(None);
    }
    Ok(Some(Relay::new(
        engine.store().clone(),
        engine.holder(),
        engine.clock.clone(),
        settings.clone(),
        publishers,
    )))
}

/// SQLite serves one controller process: hold an exclusive lock on `<db>.lock` while running.
fn single_process_lock(store: &Store) -> anyhow::Result<Option<File>> {
    let Some(db) = store.sqlite_path() else {
        return Ok(None);
    };
    let path = db.with_extension("lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another thalamus process is already running on {} (SQLite supports one controller \
             process; use a postgres:// database.url to run several replicas)",
            db.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}
