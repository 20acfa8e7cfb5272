//! Latency: from the last write of a dataset on local disk to its ingestion request created
//! at a local Workspaces stand-in, with the inotify hint. Goal: within the settle window + 1 s.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::db::{Backend, Scratch};
use super::standin;
use super::{BenchArgs, Figure, Goal};
use crate::config::Settings;
use crate::engine::Engine;

/// Seconds from the last write to the create call, against the settle window + 1 s.
pub async fn latency(args: &BenchArgs) -> anyhow::Result<Figure> {
    let root = args
        .scratch()
        .join(format!("thalamus_bench_latency_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sdm"))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/workspaces", listener.local_addr()?);
    let created = Arc::new(Notify::new());
    // The Workspaces contract at its simplest: no requests yet, create → 1, submit → 1.
    let answer: standin::Answer = {
        let created = created.clone();
        Arc::new(move |line: &str| {
            if line.starts_with("GET") && line.contains("/requests?") {
                "[]".into()
            } else if line.starts_with("POST") && line.contains("/request/create") {
                created.notify_one();
                r#"{"id":1,"state":"Created"}"#.into()
            } else {
                r#"{"id":1,"state":"Submitted"}"#.into()
            }
        })
    };
    let server = tokio::spawn(standin::serve(listener, answer));

    let scratch = Scratch::new(Backend::Sqlite, &args.scratch(), &args.pg_url).await?;
    let settle = 1u64;
    let engine = watching(&scratch, &root, settle, url)?;
    let run = {
        let e = engine.clone();
        tokio::spawn(async move { e.run().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // the first, empty poll
    write_dataset(&root, "24A-999.sb1.eb1")?;
    let written = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), created.notified())
        .await
        .map_err(|_| anyhow::anyhow!("no ingestion request within 30 s"))?;
    let seconds = written.elapsed().as_secs_f64();
    engine.shutdown_token().cancel();
    run.await??;
    server.abort();
    scratch.drop_all().await?;
    std::fs::remove_dir_all(&root)?;
    let budget = settle as f64 + 1.0;
    Ok(Figure::new(
        format!("latency file → request (settle {settle} s)"),
        seconds,
        budget,
        Goal::AtMost(1.0),
        "s",
    ))
}

/// A controller on `scratch` that watches `root/sdm` (settle window `settle` s, polled every
/// 30 s, so only the inotify hint and the settle deadline make it sooner) and asks the
/// Workspaces at `url`.
pub(super) fn watching(
    scratch: &Scratch,
    root: &Path,
    settle: u64,
    url: String,
) -> anyhow::Result<Engine> {
    let mut settings = Settings::default();
    // File → request needs no rule (and the bench may run anywhere, away from `rules/`).
    settings.rules.paths.clear();
    settings.database.url = scratch.url.clone();
    settings.sources.vla.path = root.join("sdm");
    settings.sources.vla.bdf_path = None;
    settings.sources.vla.settle_seconds = settle;
    settings.sources.vla.poll_seconds = 30;
    settings.sources.vlba.enabled = false;
    settings.workspaces.url = url;
    super::shipped_engine(&settings, scratch.store.clone())
}

/// Writes a small SDM `name` under `root/sdm` (Main.xml, then a 1 MB table).
pub(super) fn write_dataset(root: &Path, name: &str) -> std::io::Result<()> {
    let dataset = root.join("sdm").join(name);
    std::fs::create_dir_all(&dataset)?;
    std::fs::write(dataset.join("Main.xml"), "<MainTable/>")?;
    std::fs::write(dataset.join("Antenna.xml"), vec![b'x'; 1 << 20])
}
