//! Soak: the real `thalamus run` (this binary, a child process, on SQLite) under steady input:
//! a new SDM every 2 s (the newest minute's stay in the tree, as in a staging area), taken
//! through ingestion and calibration by a Workspaces stand-in, and
//! 20 AMQP status messages a second, half of them malformed (dead letters). Its anonymous
//! resident memory (heap and stacks) is sampled every second and its store measured; both
//! are reported per hour. Goals: RSS flat after warm-up (its trend grows it by at most 5 % an
//! hour), and a store that grows only by the rows it keeps (at most 1.5 × what its rows take
//! compacted).

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::net::TcpListener;

use super::db::{status_bytes, Backend, Scratch};
use super::events::amqp_status;
use super::idle::{complete_everything, Controller, Tree, MARKER};
use super::{standin, BenchArgs, Figure, Goal};
use crate::bus::AmqpSession;

/// A new dataset this often.
const SDM_EVERY: Duration = Duration::from_secs(2);
/// AMQP messages a second; every other one is malformed.
const MESSAGES_PER_SECOND: u64 = 20;
/// Resident memory of process `pid`, in bytes: all of it (`VmRSS`), and its anonymous part
/// (`RssAnon`: heap and stacks, without the binary's code, which is paged in as code paths
/// first run and is no growth of what the process holds).
fn rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status_bytes(&status, name)
            .map(|b| b as f64)
            .ok_or_else(|| anyhow::anyhow!("no {name} for process {pid}"))
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

/// The least-squares slope of `(seconds, value)` samples, per second.
fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    let (mx, my) = samples
        .iter()
        .fold((0.0, 0.0), |(x, y), (a, b)| (x + a / n, y + b / n));
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in samples {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// Bytes of a SQLite store: the file and its write-ahead log.
fn store_bytes(file: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", file.display())).ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes the store's rows take compacted (`VACUUM INTO` a copy): a store that grows much
/// faster holds what it does not keep (a write-ahead log never checkpointed, pages freed and
/// never reused).
async fn compacted(scratch: &Scratch, file: &Path) -> anyhow::Result<u64> {
    let copy = file.with_extension("compacted");
    let _ = std::fs::remove_file(&copy);
    scratch
        .exec(&format!("VACUUM INTO '{}'", copy.display()))
        .await?;
    let bytes = store_bytes(&copy);
    std::fs::remove_file(&copy)?;
    Ok(bytes)
}

/// Datasets that stay in the tree: the newest minute's. An older one is moved on, as a
/// staging area's are once ingested, so the tree (and what the watcher keeps of it) stays
/// the same size while the store keeps every model.
const KEEP: usize = 30;

/// Dataset `i`'s directory.
fn dataset(sdm: &Path, i: usize) -> std::path::PathBuf {
    sdm.join(format!("26B-{i:05}.sb1.eb1"))
}

/// Writes dataset `i` (a `Main.xml` naming no BDF, a table, and the marker: settled at once)
/// and removes dataset `i - KEEP`.
fn write_sdm(sdm: &Path, i: usize) -> std::io::Result<()> {
    let dataset_dir = dataset(sdm, i);
    std::fs::create_dir_all(&dataset_dir)?;
    std::fs::write(dataset_dir.join("Main.xml"), "<MainTable/>\n")?;
    std::fs::write(dataset_dir.join("Antenna.xml"), vec![b'x'; 4096])?;
    std::fs::write(dataset_dir.join(MARKER), "")?;
    match i.checked_sub(KEEP) {
        Some(old) => std::fs::remove_dir_all(dataset(sdm, old)),
        None => Ok(()),
    }
}

/// Message `i`: a status for a request the stand-in made (odd `i`), or a cut-off one (even).
fn message(i: u64, requests: i64) -> Vec<u8> {
    if i.is_multiple_of(2) {
        return br#"{"type":"capability-status","capability_request_id":"#.to_vec();
    }
    let id = (i as i64 / 2) % requests.max(1) + 1;
    format!(
        r#"{{"type":"capability-status","capability_request_id":{id},"state":"Complete","timestamp":"2026-01-01T00:00:00Z"}}"#
    )
    .into_bytes()
}

/// Soaks `thalamus run` for `warm` and then `measure`; returns the RSS trend and store growth.
pub async fn soak(
    args: &BenchArgs,
    warm: Duration,
    measure: Duration,
) -> anyhow::Result<Vec<Figure>> {
    let root = args
        .scratch()
        .join(format!("thalamus_bench_soak_{}", std::process::id()));
    let tree = Tree::build(&root, 0)?;
    let requests = Arc::new(AtomicI64::new(1));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let workspaces = format!("http://{}/workspaces", listener.local_addr()?);
    let server = tokio::spawn(standin::serve(
        listener,
        complete_everything(requests.clone()),
    ));
    let scratch = Scratch::new(Backend::Sqlite, &args.scratch(), &args.pg_url).await?;
    let file = scratch
        .url
        .strip_prefix("sqlite://")
        .map(std::path::PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("not a SQLite scratch store: {}", scratch.url))?;
    let (mut events, exchange) = amqp_status(args, "soak");
    events.amqp.enabled = true;
    // Declares the exchange, the queue and the binding, so no message is published unrouted.
    drop(AmqpSession::connect(&events).await?);
    // JSON is YAML: the events settings go into the config as they are.
    let extra = format!("events: {}\n", serde_json::to_string(&events)?);
    let config = tree.config_with(Backend::Sqlite, &scratch.url, &workspaces, &extra)?;
    let ctl = Controller::start(&config, &tree.root, &tree.sdm)?;
    let pid = ctl.pid();
    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;

    let bar = super::engine::spinner(format!(
        "soak: `thalamus run` with an SDM every {} s and {MESSAGES_PER_SECOND} AMQP messages/s, {} s warm-up, {} s measured",
        SDM_EVERY.as_secs(),
        warm.as_secs(),
        measure.as_secs()
    ));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / MESSAGES_PER_SECOND));
    let (mut sent, mut datasets, mut next_sdm) = (0u64, 0usize, started);
    // (seconds, anonymous bytes) and (seconds, all resident bytes), after warm-up.
    let (mut samples, mut all) = (Vec::new(), Vec::new());
    let mut next_sample = started;
    let mut at_warm: Option<(f64, u64, u64)> = None;
    while started.elapsed() < warm + measure {
        ticker.tick().await;
        let now = Instant::now();
        if now >= next_sdm {
            write_sdm(&tree.sdm, datasets)?;
            datasets += 1;
            next_sdm += SDM_EVERY;
        }
        let payload = message(sent, requests.load(Ordering::Relaxed) - 1);
        channel
            .basic_publish(
                exchange.as_str().into(),
                "status".into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default(),
            )
            .await?;
        sent += 1;
        if now >= next_sample {
            next_sample += Duration::from_secs(1);
            let (resident, memory) = rss(pid).map_err(|e| {
                anyhow::anyhow!("{e}; the controller's last lines:\n{}", ctl.last_lines())
            })?;
            let at = now.duration_since(started);
            if at >= warm {
                if at_warm.is_none() {
                    at_warm = Some((
                        memory,
                        store_bytes(&file),
                        compacted(&scratch, &file).await?,
                    ));
                }
                if (at - warm).as_secs().is_multiple_of(60) {
                    bar.suspend(|| {
                        crate::telemetry::say(&format!(
                            "soak: {:>4} s: anonymous RSS {:.2} MB, store {:.1} MB",
                            at.as_secs(),
                            memory / 1024.0 / 1024.0,
                            store_bytes(&file) as f64 / 1024.0 / 1024.0
                        ))
                    });
                }
                samples.push((at.as_secs_f64(), memory));
                all.push((at.as_secs_f64(), resident));
            }
        }
    }
    let (rss_warm, bytes_warm, compacted_warm) =
        at_warm.ok_or_else(|| anyhow::anyhow!("the soak ended before its warm-up did"))?;
    let (bytes_end, compacted_end) = (store_bytes(&file), compacted(&scratch, &file).await?);
    let dead = scratch.count("SELECT COUNT(*) FROM dead_letters").await?;
    let ingested = scratch
        .count("SELECT COUNT(*) FROM objects WHERE kind = 'Calibration' AND enacted >= generation")
        .await?;
    drop(ctl);
    bar.finish_and_clear();
    conn.close(200, "soaked".into()).await?;
    server.abort();
    scratch.drop_all().await?;
    drop(tree);

    let hours = measure.as_secs_f64() / 3600.0;
    let rss_per_hour = slope(&samples) * 3600.0;
    let gained = bytes_end.saturating_sub(bytes_warm) as f64;
    let kept = compacted_end.saturating_sub(compacted_warm) as f64;
    const MB: f64 = 1024.0 * 1024.0;
    crate::telemetry::say(&format!(
        "soak: {datasets} datasets written ({ingested} calibrated), {sent} messages sent \
         ({dead} dead letters); anonymous RSS {:.1} MB at warm-up, trend {:+.2} MB/h (all RSS \
         {:+.2} MB/h); store {:.1} MB at \
         warm-up ({:.1} MB compacted), {:.1} MB at the end ({:.1} MB compacted): +{:.1} MB/h",
        rss_warm / MB,
        rss_per_hour / MB,
        slope(&all) * 3600.0 / MB,
        bytes_warm as f64 / MB,
        compacted_warm as f64 / MB,
        bytes_end as f64 / MB,
        compacted_end as f64 / MB,
        gained / hours / MB,
    ));
    Ok(vec![
        Figure::new(
            "soak: anonymous RSS growth per hour after warm-up (sqlite)",
            rss_per_hour / MB,
            rss_warm / MB,
            Goal::AtMost(0.05),
            "MB",
        ),
        Figure::new(
            "soak: store growth per hour vs. its rows' (sqlite)",
            gained / hours / MB,
            kept / hours / MB,
            Goal::AtMost(1.5),
            "MB",
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn the_trend_is_the_least_squares_slope() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 7.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat = [(0.0, 5.0), (1.0, 6.0), (2.0, 5.0), (3.0, 6.0), (4.0, 5.5)];
        assert!(slope(&flat).abs() < 0.2);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }
}
