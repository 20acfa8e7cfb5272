//! Bootstrap shared by the CLI commands: settings → registry → graph → store → engine.

use std::fs::File;
use std::sync::Arc;

use anyhow::Context as _;

use crate::clock::SystemClock;
use crate::config::Settings;
use crate::engine::Engine;
use crate::graph::DepGraph;
use crate::step::Registry;
use crate::store::{Open, Store};

/// The steps compiled from `steps/`, configured from `settings`.
pub fn registry(settings: &Settings) -> anyhow::Result<Registry> {
    let mut registry = Registry::new();
    crate::steps::register(&mut registry, &settings.steps)?;
    Ok(registry)
}

/// `model-deps.json` validated against the registered sync steps.
pub fn graph(settings: &Settings, registry: &Registry) -> anyhow::Result<DepGraph> {
    Ok(DepGraph::load(
        &settings.model_deps,
        &registry.sync_kinds(),
    )?)
}

/// Opens the configured store.
pub async fn store(settings: &Settings, open: Open) -> anyhow::Result<Store> {
    let url = crate::config::redact_url(&settings.database.url);
    Store::connect_with_timeout(
        &settings.database.url,
        settings.database.max_connections,
        open,
        std::time::Duration::from_secs(settings.database.timeout_seconds),
    )
    .await
    .with_context(|| format!("opening the database at {url}"))
}

/// Everything `run` needs, wired together on the system clock.
pub async fn engine(settings: Settings, migrate: bool) -> anyhow::Result<(Engine, Option<File>)> {
    let registry = registry(&settings)?;
    let graph = graph(&settings, &registry)?;
    let store = store(&settings, Open::Create).await?;
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
    Ok((
        Engine::new(store, registry, graph, settings, Arc::new(SystemClock)),
        lock,
    ))
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
