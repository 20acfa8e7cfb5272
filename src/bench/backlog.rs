//! Fresh work ahead of a backlog: after an outage, N Ingestions with requests in flight are
//! due for a recheck at once, and the Workspaces stand-in takes calls only at the configured
//! rate limit. A dataset written meanwhile must have its request created within the settle
//! window + 2 s, and the backlog must still drain at the rate limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::db::{Backend, Scratch};
use super::latency::{watching, write_dataset};
use super::{standin, BenchArgs, Figure, Goal};

/// Rechecks seen before the dataset is written: the backlog is draining at the limit.
const WARM: usize = 40;
/// How long the drain rate is measured after the request went out.
const DRAIN_FOR: Duration = Duration::from_secs(4);

/// The stand-in's counts: rechecks answered, and the one create.
#[derive(Default)]
struct Seen {
    rechecks: AtomicUsize,
    created: Notify,
}

/// Answers the Workspaces calls: a recheck (`GET …/request/{id}`) finds its request still
/// Executing; the new dataset finds no request, creates one and submits it.
fn answer(seen: Arc<Seen>) -> standin::Answer {
    Arc::new(move |line: &str| {
        let path = line.split(' ').nth(1).unwrap_or_default();
        if line.starts_with("GET") && path.contains("/requests?") {
            "[]".into()
        } else if line.starts_with("POST") && path.ends_with("/request/create") {
            seen.created.notify_one();
            r#"{"id":1000000000,"state":"Created"}"#.into()
        } else if line.starts_with("GET") {
            seen.rechecks.fetch_add(1, Ordering::SeqCst);
            let id = path.rsplit('/').next().unwrap_or("0");
            format!(r#"{{"id":{id},"state":"Executing"}}"#)
        } else {
            r#"{"id":1000000000,"state":"Submitted"}"#.into()
        }
    })
}

/// `n` ingested Observations whose Ingestions' requests 1..=n are in flight, each due for
/// its recheck long ago.
async fn backlog(scratch: &Scratch, n: usize) -> anyhow::Result<()> {
    scratch
        .exec(&format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) \
             INSERT INTO objects (kind, key, spec, status, generation, enacted, revision, \
             policed, created_at, updated_at) \
             SELECT 'Observation', 'VLA/backlog' || g, \
             '{{\"instrument\":\"VLA\",\"product\":\"sdm\",\"name\":\"backlog' || g || '\",\"location\":\"/nowhere\"}}', \
             '{{}}', 1, 1, 1, 1, 0, 0 FROM s"
        ))
        .await?;
    scratch
        .ingestions_in_flight("backlog", n, "Executing", true)
        .await?;
    Ok(())
}

/// The dataset's latency against the settle window + 2 s, and the backlog's drain rate
/// against the rate limit, on `backend` with `n` rechecks due.
pub async fn backlog_scenario(
    args: &BenchArgs,
    backend: Backend,
    n: usize,
) -> anyhow::Result<Vec<Figure>> {
    let root = args.scratch().join(format!(
        "thalamus_bench_backlog_{}_{}",
        backend.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sdm"))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/workspaces", listener.local_addr()?);
    let seen = Arc::new(Seen::default());
    let server = tokio::spawn(standin::serve(listener, answer(seen.clone())));
    let scratch = Scratch::new(backend, &args.scratch(), &args.pg_url).await?;
    backlog(&scratch, n).await?;
    let settle = 1u64;
    let engine = watching(&scratch, &root, settle, url)?;
    let rate = crate::config::Settings::default()
        .workspaces
        .requests_per_second;
    let run = {
        let e = engine.clone();
        tokio::spawn(async move { e.run().await })
    };
    let began = Instant::now();
    while seen.rechecks.load(Ordering::SeqCst) < WARM {
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(60),
            "the backlog did not start draining within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (drain_from, rechecks_from) = (Instant::now(), seen.rechecks.load(Ordering::SeqCst));
    write_dataset(&root, "24A-998.sb1.eb1")?;
    let written = Instant::now();
    let limit = Duration::from_secs(120);
    tokio::time::timeout(limit, seen.created.notified())
        .await
        .map_err(|_| anyhow::anyhow!("no request for the new dataset within {limit:?}"))?;
    let seconds = written.elapsed().as_secs_f64();
    tokio::time::sleep(DRAIN_FOR).await;
    let drained = seen.rechecks.load(Ordering::SeqCst) - rechecks_from;
    let drain_rate = drained as f64 / drain_from.elapsed().as_secs_f64();
    engine.shutdown_token().cancel();
    run.await??;
    server.abort();
    scratch.drop_all().await?;
    std::fs::remove_dir_all(&root)?;
    Ok(vec![
        Figure::new(
            format!(
                "backlog: file → request behind {n} rechecks ({}, settle {settle} s)",
                backend.name()
            ),
            seconds,
            settle as f64 + 2.0,
            Goal::AtMost(1.0),
            "s",
        ),
        Figure::new(
            format!("backlog: rechecks drained meanwhile ({})", backend.name()),
            drain_rate,
            rate,
            Goal::AtLeast(0.9),
            "calls/s",
        ),
    ])
}
