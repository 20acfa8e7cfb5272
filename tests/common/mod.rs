//! Shared test harness: a fresh SQLite file or PostgreSQL schema per test, small in-test
//! models and steps that record what ran, and an engine on a manual clock.
#![allow(dead_code)]

pub mod archive;
pub mod brokers;
pub mod controller;
pub mod gate;
pub mod kafka_proxy;
pub mod listener;
pub mod logs;
pub mod proxy;
pub mod rng;
pub mod source_world;
pub mod status_world;
pub mod steps;
pub mod store_view;
pub mod workspaces_stub;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thalamus::clock::ManualClock;
use thalamus::config::Settings;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::step::Registry;
use thalamus::store::{Open, Store};

pub use steps::*;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Base URL of the PostgreSQL server tests use (`THALAMUS_TEST_PG` overrides).
pub fn pg_base() -> String {
    std::env::var("THALAMUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh database: a temporary SQLite file, or a new PostgreSQL schema.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("thalamus.db").display());
                Self {
                    url,
                    backend,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let schema = format!(
                    "t_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::SeqCst),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .subsec_nanos()
                );
                let admin = sqlx::PgPool::connect(&pg_base()).await.expect(
                    "PostgreSQL on 127.0.0.1:5432 (database test) is required; start it or set THALAMUS_TEST_PG",
                );
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&admin)
                    .await
                    .expect("create schema");
                admin.close().await;
                let sep = if pg_base().contains('?') { '&' } else { '?' };
                let url = format!("{}{sep}options=-c%20search_path%3D{schema}", pg_base());
                Self {
                    url,
                    backend,
                    _dir: None,
                }
            }
        }
    }

    /// This database's URL reaching PostgreSQL through `addr` (a [`proxy::Proxy`]) instead
    /// of 127.0.0.1:5432; same schema.
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        assert!(
            self.url.contains("@127.0.0.1:5432/"),
            "the proxy forwards to 127.0.0.1:5432; this database is at {}",
            self.url
        );
        self.url
            .replacen("@127.0.0.1:5432/", &format!("@{addr}/"), 1)
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, 4, Open::Create)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

/// The test dependency graph: Parent ← Child ← Grandchild.
pub const DEPS: &str = r#"{
  "Child": [["Parent", "parent", "children"]],
  "Grandchild": [["Child", "child", "grandchildren"]]
}"#;

/// Settings for tests: no jitter, so backoff delays are exact.
pub fn settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.database.url = url.to_string();
    s.sync.concurrency = 4;
    s.sync.backoff.base_seconds = 10.0;
    s.sync.backoff.factor = 2.0;
    s.sync.backoff.max_seconds = 60.0;
    s.sync.backoff.jitter = 0.0;
    s.sync.wait_recheck_seconds = 60;
    s
}

/// Epoch milliseconds the manual clock starts at (2026-01-01).
pub const T0: i64 = 1_767_225_600_000;

/// An engine over a test database with the recording steps and a manual clock.
pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    pub script: Arc<Script>,
    pub db: TestDb,
}

impl Harness {
    pub async fn new(backend: Backend) -> Self {
        Self::with(backend, |_| {}, |_, _| {}).await
    }

    /// A harness with settings and registry adjusted by the caller.
    pub async fn with(
        backend: Backend,
        tweak: impl FnOnce(&mut Settings),
        extra: impl FnOnce(&mut Registry, &Arc<Script>),
    ) -> Self {
        let db = TestDb::new(backend).await;
        let clock = ManualClock::at(T0);
        let script = Arc::new(Script::default());
        let mut settings = settings(&db.url);
        tweak(&mut settings);
        let engine = build_engine(&db, &settings, &clock, &script, extra).await;
        Self {
            engine,
            clock,
            script,
            db,
        }
    }

    /// A second engine (another process, after a restart, or a replica) on the same database.
    pub async fn another_engine(&self, holder: &str) -> Engine {
        self.another_engine_with(holder, |_| {}).await
    }

    /// A second engine on the same database, its settings adjusted by `tweak`.
    pub async fn another_engine_with(
        &self,
        holder: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> Engine {
        self.engine_on(self.db.store().await, holder, tweak)
    }

    /// An engine on `store` (say, this database reached through a proxy), sharing this
    /// harness's clock and script, as `holder`.
    pub fn engine_on(
        &self,
        store: Store,
        holder: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> Engine {
        let mut s = settings(&self.db.url);
        s.sync.holder_id = Some(holder.to_string());
        tweak(&mut s);
        engine_with_store(store, &s, &self.clock, &self.script, |_, _| {})
    }

    pub fn models(&self) -> &thalamus::step::Models {
        self.engine.models()
    }

    pub fn store(&self) -> &Store {
        self.engine.store()
    }

    pub async fn row(&self, kind: &str, key: &str) -> thalamus::store::ObjectRow {
        self.store()
            .get(kind, key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{kind} {key} missing"))
    }
}

async fn build_engine(
    db: &TestDb,
    settings: &Settings,
    clock: &ManualClock,
    script: &Arc<Script>,
    extra: impl FnOnce(&mut Registry, &Arc<Script>),
) -> Engine {
    engine_with_store(db.store().await, settings, clock, script, extra)
}

fn engine_with_store(
    store: Store,
    settings: &Settings,
    clock: &ManualClock,
    script: &Arc<Script>,
    extra: impl FnOnce(&mut Registry, &Arc<Script>),
) -> Engine {
    let mut registry = Registry::new();
    register_test_steps(&mut registry, script);
    extra(&mut registry, script);
    let graph = DepGraph::parse("test-deps.json", DEPS, &registry.sync_kinds()).expect("graph");
    Engine::new(
        store,
        registry,
        graph,
        settings.engine(),
        Arc::new(clock.clone()),
    )
}

/// Runs an async test body once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::common::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::common::Backend::Postgres).await
                }
            }
        )*
    };
}
