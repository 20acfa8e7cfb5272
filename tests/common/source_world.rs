//! A world for the filesystem and ALMA sources: temporary `sdm/`, `bdf/` and `vlba/` trees,
//! every shipped step except Workspaces' (stand-ins complete at once), on a manual clock.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thalamus::clock::ManualClock;
use thalamus::config::Settings;
use thalamus::engine::Engine;
use thalamus::graph::DepGraph;
use thalamus::steps::models::{Calibration, Ingestion, Observation};
use thalamus::steps::prelude::*;
use thalamus::store::{ListFilter, ObjectSummary};

use super::{Backend, TestDb, T0};

pub const DOMAIN_DEPS: &str = r#"{ "Ingestion":   [["Observation", "observation", "ingestions"]],
                               "Calibration": [["Ingestion",   "ingestion",   "calibrations"]] }"#;

/// Stands in for the Workspaces ingestion: completes the request at once.
pub struct IngestNow;

#[async_trait]
impl SyncStep for IngestNow {
    type Model = Ingestion;
    async fn sync(&self, obj: &mut Obj<Ingestion>, _ctx: &StepContext) -> StepResult {
        obj.status.request.completed_generation = Some(obj.generation);
        obj.status.request.state = Some("Complete".into());
        Ok(Progress::Done)
    }
}

/// Stands in for the Workspaces calibration.
pub struct CalibrateNow;

#[async_trait]
impl SyncStep for CalibrateNow {
    type Model = Calibration;
    async fn sync(&self, obj: &mut Obj<Calibration>, _ctx: &StepContext) -> StepResult {
        obj.status.request.completed_generation = Some(obj.generation);
        Ok(Progress::Done)
    }
}

pub struct World {
    pub engine: Engine,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub db: TestDb,
}

impl World {
    pub async fn new(backend: Backend, tweak: impl FnOnce(&mut Settings, &Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["sdm", "bdf", "vlba"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let db = TestDb::new(backend).await;
        let mut s = super::settings(&db.url);
        s.sources.vla.path = dir.path().join("sdm");
        s.sources.vla.bdf_path = Some(dir.path().join("bdf"));
        s.sources.vla.settle_seconds = 60;
        s.sources.vlba.path = dir.path().join("vlba");
        s.sources.vlba.settle_seconds = 60;
        tweak(&mut s, dir.path());
        let clock = ManualClock::at(T0);
        let engine = engine(&db, &s, &clock).await;
        Self {
            engine,
            clock,
            dir,
            settings: s,
            db,
        }
    }

    /// Another engine on the same database, settings and clock: the controller after a
    /// restart (the first one should no longer be used).
    pub async fn restarted(&self) -> Engine {
        engine(&self.db, &self.settings, &self.clock).await
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &[u8]) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn append(&self, rel: &str, content: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path(rel))
            .unwrap();
        f.write_all(content).unwrap();
    }

    /// An SDM whose Main.xml references BDFs `uid:///evla/bdf/<n>` (stored as `uid____evla_bdf_<n>`).
    pub fn sdm(&self, name: &str, bdfs: &[u64]) {
        let refs: String = bdfs
            .iter()
            .map(|n| format!("<DataUID><EntityRef entityId=\"uid:///evla/bdf/{n}\"/></DataUID>"))
            .collect();
        self.write(
            &format!("sdm/{name}/Main.xml"),
            format!("<MainTable>{refs}</MainTable>").as_bytes(),
        );
        self.write(&format!("sdm/{name}/Scan.xml"), b"<ScanTable/>");
    }

    pub fn bdf(&self, n: u64, bytes: usize) {
        self.write(&format!("bdf/uid____evla_bdf_{n}"), &vec![7u8; bytes]);
    }

    pub async fn once(&self) -> thalamus::engine::OnceReport {
        self.engine.run_once().await.unwrap()
    }

    pub async fn keys(&self, kind: &str) -> Vec<String> {
        self.list(kind).await.into_iter().map(|r| r.key).collect()
    }

    /// Every object of `kind`, with its generation and state.
    pub async fn list(&self, kind: &str) -> Vec<ObjectSummary> {
        let filter = ListFilter {
            kind: kind.into(),
            keys: vec![],
            state: None,
            limit: 1000,
        };
        self.engine.store().list(&filter).await.unwrap()
    }

    pub async fn observation(&self, key: &str) -> Obj<Observation> {
        self.engine
            .models()
            .get::<Observation>(key)
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn ingestion(&self, key: &str) -> Obj<Ingestion> {
        self.engine
            .models()
            .get::<Ingestion>(key)
            .await
            .unwrap()
            .unwrap()
    }
}

/// An engine with every shipped step except Workspaces', whose stand-ins complete at once.
async fn engine(db: &TestDb, s: &Settings, clock: &ManualClock) -> Engine {
    let mut registry = Registry::new();
    thalamus::app::registry(s).unwrap(); // the shipped registration must accept these settings
    let shipped = thalamus::steps::MODULES
        .iter()
        .filter(|(name, _)| *name != "workspaces");
    for (_, register) in shipped {
        register(&mut registry, s).unwrap();
    }
    registry.sync(IngestNow).unwrap();
    registry.sync(CalibrateNow).unwrap();
    // The shipped rules (the Calibration of a completed ingestion is one).
    thalamus::rules::register(&mut registry, &s.rules).unwrap();
    let graph = DepGraph::parse("deps", DOMAIN_DEPS, &registry.sync_kinds()).unwrap();
    Engine::new(
        db.store().await,
        registry,
        graph,
        s.engine(),
        Arc::new(clock.clone()),
    )
}
