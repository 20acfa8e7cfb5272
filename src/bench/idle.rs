//! Idle cost: the real `thalamus run` (this binary, as a child process, with the default poll
//! intervals) over `n` settled VLA datasets and about 10 × `n` more settled models, with
//! nothing to do: its CPU as a fraction of one core, and the `stat` calls its polls make
//! against the entries of the tree they watch. Both are measured over whole poll periods,
//! from the end of the first VLA poll (start-up: the settle state is loaded, the inotify
//! watches are set) to the end of a later one, so each window holds its polls and the
//! sync loop's idle passes in the proportion a long idle run has.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::db::{Backend, Scratch};
use super::{standin, BenchArgs, Figure, Goal};
use crate::config::Settings;

/// The goal: an idle controller uses at most 1 % of one core.
const CPU_GOAL_PERCENT: f64 = 1.0;
/// The marker that makes each dataset settle at once.
pub(super) const MARKER: &str = "COMPLETE";
/// The default VLA poll interval, which the generated config keeps.
const POLL_SECONDS: f64 = 30.0;

/// The scratch file tree: `sdm/` with the datasets, `bdf/` with their BDFs, an empty `vlba/`.
pub(super) struct Tree {
    pub(super) root: PathBuf,
    pub(super) sdm: PathBuf,
    bdf: PathBuf,
    vlba: PathBuf,
    /// Files and directories under `root` (as `find` lists them, `root` aside): what a poll
    /// may `stat` once each.
    entries: usize,
}

/// The tree goes when the scenario ends, whether it measured or failed.
impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Tree {
    /// Builds `n` settled SDMs: `Main.xml` naming one BDF, two more tables and the marker.
    pub(super) fn build(root: &Path, n: usize) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(root);
        let (sdm, bdf, vlba) = (root.join("sdm"), root.join("bdf"), root.join("vlba"));
        for dir in [&sdm, &bdf, &vlba] {
            std::fs::create_dir_all(dir)?;
        }
        let bar = ProgressBar::new(n as u64).with_message("idle: creating datasets");
        let mut entries = 3;
        for i in 0..n {
            let dataset = sdm.join(format!("26A-{i:05}.sb1.eb1"));
            std::fs::create_dir(&dataset)?;
            std::fs::write(
                dataset.join("Main.xml"),
                format!("<MainTable><EntityRef entityId=\"uid:///evla/bdf/{i}\"/></MainTable>\n"),
            )?;
            // Empty: a poll stats them all the same, and a tree without data blocks is
            // written and removed in seconds, not minutes, on a disk mounted with `discard`.
            for empty in [
                dataset.join("Antenna.xml"),
                dataset.join("Scan.xml"),
                dataset.join(MARKER),
                bdf.join(format!("uid____evla_bdf_{i}")),
            ] {
                std::fs::File::create(empty)?;
            }
            entries += 6;
            if i % 500 == 0 {
                bar.set_position(i as u64);
            }
        }
        bar.finish_and_clear();
        Ok(Self {
            root: root.to_path_buf(),
            sdm,
            bdf,
            vlba,
            entries,
        })
    }

    /// The settings file the controller runs with: defaults (poll intervals included) but for
    /// where things are, the marker, and logs as JSON with the scanner's `scan done` lines.
    fn config(&self, backend: Backend, url: &str, workspaces: &str) -> anyhow::Result<PathBuf> {
        self.config_with(backend, url, workspaces, "")
    }

    /// [`Tree::config`] with more top-level settings (`extra`, YAML lines) at its end.
    pub(super) fn config_with(
        &self,
        backend: Backend,
        url: &str,
        workspaces: &str,
        extra: &str,
    ) -> anyhow::Result<PathBuf> {
        let deps = self.root.join("model-deps.json");
        std::fs::write(&deps, include_str!("../../model-deps.json"))?;
        // The shipped rules, beside the config as an installation has them.
        let rules = self.root.join("rules");
        std::fs::create_dir_all(&rules)?;
        std::fs::write(
            rules.join("announcements.yaml"),
            include_str!("../../rules/announcements.yaml"),
        )?;
        std::fs::write(
            rules.join("calibration.yaml"),
            include_str!("../../rules/calibration.yaml"),
        )?;
        let q = |p: &Path| serde_json::to_string(&p.display().to_string());
        let text = format!(
            "database: {{url: {url}}}\n\
             model_deps: {deps}\n\
             sync: {{holder_id: {holder}}}\n\
             sources:\n  \
               vla: {{path: {sdm}, bdf_path: {bdf}, marker_file: {MARKER}}}\n  \
               vlba: {{path: {vlba}, marker_file: {MARKER}}}\n\
             workspaces: {{url: {workspaces}}}\n\
             log: {{level: info, format: json}}\n\
             api: {{listen: \"127.0.0.1:0\"}}\n\
             {extra}",
            url = serde_json::to_string(url)?,
            deps = q(&deps)?,
            holder = serde_json::to_string(&format!(
                "bench-idle-{}-{}",
                backend.name(),
                std::process::id()
            ))?,
            sdm = q(&self.sdm)?,
            bdf = q(&self.bdf)?,
            vlba = q(&self.vlba)?,
            workspaces = serde_json::to_string(workspaces)?,
        );
        let path = self.root.join(format!("config-{}.yaml", backend.name()));
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// A Workspaces that has a Complete request for everything it is asked about, so each
/// Ingestion and Calibration is adopted and done in one call; `next` is the next request id.
pub(super) fn complete_everything(next: Arc<AtomicI64>) -> standin::Answer {
    Arc::new(move |line: &str| {
        let id = next.fetch_add(1, Ordering::Relaxed);
        if line.contains("/requests?") {
            format!(r#"[{{"id":{id},"state":"Complete"}}]"#)
        } else {
            format!(r#"{{"id":{id},"state":"Complete"}}"#)
        }
    })
}

/// A scratch store in which everything is in sync: `extra` clean models inserted directly
/// (Observations, Ingestions, Calibrations and CalibrationMarks in quarters), then the tree's datasets taken
/// through the real steps, policies and a Workspaces that answers Complete, until quiescent.
async fn settled_store(
    args: &BenchArgs,
    backend: Backend,
    tree: &Tree,
    datasets: usize,
    extra: usize,
    workspaces: &str,
) -> anyhow::Result<InSync> {
    let started = Instant::now();
    let scratch = Scratch::new(backend, &args.scratch(), &args.pg_url).await?;
    let per_kind = extra / 4;
    for (kind, link) in [
        ("Observation", None),
        (
            "Ingestion",
            Some(("observation", "Observation", "VLA/idle-")),
        ),
        ("Calibration", Some(("ingestion", "Ingestion", "VLA/idle-"))),
        ("CalibrationMark", None),
    ] {
        scratch
            .bulk_objects(kind, "VLA/idle-", per_kind, link)
            .await?;
    }
    if backend == Backend::Postgres {
        // As autovacuum would after a bulk load (the scratch schema's tables only: a bare
        // ANALYZE visits every schema of the database). Without it, the planner takes the
        // links table for empty and the pre-fill's dependency reads scan.
        scratch.exec("ANALYZE objects, links").await?;
    }
    let config = tree.config(backend, &scratch.url, workspaces)?;
    let mut settings = Settings::load_with_env(Some(&config), None, Vec::new())?;
    // Only this pre-fill calls the stand-in, which has no limit to protect.
    settings.workspaces.requests_per_second = 1_000_000.0;
    let engine = super::shipped_engine(&settings, scratch.store.clone())?;
    let out_of_sync = "SELECT COUNT(*) FROM objects WHERE enacted < generation \
                       OR policed < revision OR backend_code <> 1";
    let report = engine.run_once().await?;
    drop(engine); // and its inotify watches
    let total = scratch.count("SELECT COUNT(*) FROM objects").await?;
    let unsettled = scratch.count(out_of_sync).await?;
    let expected = (4 * per_kind + 3 * datasets) as i64;
    anyhow::ensure!(
        total == expected && unsettled == 0 && report.pull.created == datasets,
        "idle pre-fill on {}: {total} models of {expected}, {unsettled} not in sync ({report:?})",
        backend.name()
    );
    if backend == Backend::Postgres {
        scratch.exec("ANALYZE objects, links").await?; // and after the pre-fill's rows
    }
    Ok(InSync {
        backend,
        scratch,
        config,
        models: total,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A store with everything in sync, and the settings file to run on it.
struct InSync {
    backend: Backend,
    scratch: Scratch,
    config: PathBuf,
    /// Models it holds.
    models: i64,
    /// How long it took to get there.
    seconds: f64,
}

/// CPU time of one thread, by name.
#[derive(Debug, Clone)]
struct ThreadCpu {
    tid: String,
    name: String,
    ns: u64,
}

/// The controller as seen at the end of one VLA poll.
#[derive(Debug)]
struct Sample {
    at: Instant,
    /// utime + stime of the whole process (exited threads included), in clock ticks.
    ticks: u64,
    /// `stat` calls its scans have made so far.
    stats: u64,
    threads: Vec<ThreadCpu>,
}

/// utime + stime of process `pid`, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let field = |n: usize| -> anyhow::Result<u64> { Ok(fields.get(n - 3).unwrap_or(&"").parse()?) };
    Ok(field(14)? + field(15)?)
}

/// Every live thread's CPU time in nanoseconds (`/proc/<pid>/task/*/schedstat`), and name.
fn threads(pid: u32) -> Vec<ThreadCpu> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| {
            let path = t.path();
            let ns = std::fs::read_to_string(path.join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            Some(ThreadCpu {
                tid: t.file_name().to_string_lossy().into_owned(),
                name: name.trim().to_string(),
                ns,
            })
        })
        .collect()
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times: `getconf CLK_TCK`, or 100
/// (USER_HZ, which Linux fixes at 100 on x86 and ARM) if that cannot be run. Checked on the
/// bench machine against `/proc/<pid>/schedstat`, which counts nanoseconds: a busy process
/// showed 149 ticks for 1.503 s on the CPU.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// A running `thalamus run`; stopped (SIGTERM, then SIGKILL) when dropped.
pub(super) struct Controller {
    child: Child,
    started: Instant,
    samples: mpsc::UnboundedReceiver<Sample>,
    /// Its last log lines, to say why it stopped if it does.
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Controller {
    /// Starts this very binary as `thalamus --config <config> run`, away from any
    /// `THALAMUS…` variables of the bench's environment.
    pub(super) fn start(config: &Path, cwd: &Path, sdm: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--config")
            .arg(config)
            .arg("run")
            .current_dir(cwd)
            .env("RUST_LOG", "info,sqlx=warn,thalamus::sources::scan=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("THALAMUS") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, samples) = mpsc::unbounded_channel();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (log, sdm) = (tail.clone(), sdm.display().to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let fields = &json["fields"];
                if fields["message"] == "scan done" && fields["root"] == sdm.as_str() {
                    let sample = process_ticks(pid).map(|ticks| Sample {
                        at: Instant::now(),
                        ticks,
                        stats: fields["stat_calls_total"].as_u64().unwrap_or(0),
                        threads: threads(pid),
                    });
                    if let Ok(s) = sample {
                        let _ = tx.send(s);
                    }
                } else {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.push_back(line);
                    if log.len() > 20 {
                        log.pop_front();
                    }
                }
            }
        });
        Ok(Self {
            child,
            started: Instant::now(),
            samples,
            tail,
        })
    }

    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its last log lines, to say why it stopped.
    pub(super) fn last_lines(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The next end of a VLA poll, or why there is none.
    async fn next(&mut self, within: Duration) -> anyhow::Result<Sample> {
        match tokio::time::timeout(within, self.samples.recv()).await {
            Ok(Some(sample)) => Ok(sample),
            outcome => anyhow::bail!(
                "the idle controller {}; its last log lines:\n{}",
                if outcome.is_err() {
                    format!("ended no poll within {} s", within.as_secs())
                } else {
                    "stopped".into()
                },
                self.last_lines()
            ),
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one controller did over the measured poll periods.
struct Measured {
    /// From the start to the end of the first poll.
    warmup: f64,
    seconds: f64,
    cpu_seconds: f64,
    stats: u64,
    polls: usize,
    /// CPU seconds by thread name, busiest first (threads alive at both ends).
    by_thread: Vec<(String, f64)>,
}

/// Waits out the first poll, then measures `periods` whole poll periods.
async fn measure(ctl: &mut Controller, periods: usize, tick: f64) -> anyhow::Result<Measured> {
    let first = ctl.next(Duration::from_secs(300)).await?;
    let mut last = None;
    for _ in 0..periods {
        last = Some(
            ctl.next(Duration::from_secs(POLL_SECONDS as u64 + 120))
                .await?,
        );
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("no poll period to measure"))?;
    let mut by_thread: BTreeMap<String, f64> = BTreeMap::new();
    for t in &last.threads {
        if let Some(before) = first.threads.iter().find(|b| b.tid == t.tid) {
            *by_thread.entry(t.name.clone()).or_default() +=
                t.ns.saturating_sub(before.ns) as f64 / 1e9;
        }
    }
    let mut by_thread: Vec<(String, f64)> = by_thread.into_iter().collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Measured {
        warmup: first.at.duration_since(ctl.started).as_secs_f64(),
        seconds: last.at.duration_since(first.at).as_secs_f64(),
        cpu_seconds: last.ticks.saturating_sub(first.ticks) as f64 / tick,
        stats: last.stats.saturating_sub(first.stats),
        polls: periods,
        by_thread,
    })
}

/// Idle CPU (per backend) and `stat` calls per second and per poll, over `n` settled datasets.
pub async fn idle(args: &BenchArgs, backends: &[Backend], n: usize) -> anyhow::Result<Vec<Figure>> {
    let root = args
        .scratch()
        .join(format!("thalamus_bench_idle_{}", std::process::id()));
    let started = Instant::now();
    let tree = Tree::build(&root, n)?;
    crate::telemetry::say(&format!(
        "idle: {n} datasets ({} entries) written in {:.1} s",
        tree.entries,
        started.elapsed().as_secs_f64()
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let workspaces = format!("http://{}/workspaces", listener.local_addr()?);
    let server = tokio::spawn(standin::serve(
        listener,
        complete_everything(Arc::new(AtomicI64::new(1))),
    ));
    let extra = 10 * n;
    let bar = super::engine::spinner(format!(
        "idle: {n} datasets and {extra} more models in sync on each backend"
    ));
    // Both at once: one mostly waits on SQLite's thread, the other on PostgreSQL's.
    let stores = futures::future::try_join_all(
        backends
            .iter()
            .map(|&b| settled_store(args, b, &tree, n, extra, &workspaces)),
    )
    .await?;
    bar.finish_and_clear();
    // Whole poll periods: two (a minute) in the full run, one with --quick.
    let periods = if args.quick { 1 } else { 2 };
    let tick = clock_ticks();
    let bar = super::engine::spinner(format!(
        "idle: `thalamus run` over {n} settled datasets, {periods} poll period(s) of {POLL_SECONDS} s"
    ));
    let mut controllers = Vec::new();
    for store in &stores {
        controllers.push(Controller::start(&store.config, &tree.root, &tree.sdm)?);
    }
    // Side by side: each is measured by its own CPU time, and an idle one leaves the cores
    // to the other.
    let measured =
        futures::future::join_all(controllers.iter_mut().map(|c| measure(c, periods, tick))).await;
    drop(controllers);
    bar.finish_and_clear();
    server.abort();
    let mut figures = Vec::new();
    for (store, m) in stores.into_iter().zip(measured) {
        let (backend, models) = (store.backend, store.models);
        store.scratch.drop_all().await?;
        let m = m?;
        let threads: Vec<String> = m
            .by_thread
            .iter()
            .take(6)
            .map(|(name, s)| format!("{name} {s:.3} s"))
            .collect();
        crate::telemetry::say(&format!(
            "idle ({}): store in sync in {:.1} s; first poll done {:.1} s after the start; then \
             {:.3} s of CPU in {:.1} s over {} poll(s), {} stat calls; busiest threads: {}",
            backend.name(),
            store.seconds,
            m.warmup,
            m.cpu_seconds,
            m.seconds,
            m.polls,
            m.stats,
            threads.join(", ")
        ));
        figures.push(Figure::new(
            format!(
                "idle CPU, {n} datasets, {models} models ({})",
                backend.name()
            ),
            100.0 * m.cpu_seconds / m.seconds,
            CPU_GOAL_PERCENT,
            Goal::AtMost(1.0),
            "% core",
        ));
        figures.push(Figure::new(
            format!("idle stat calls per second ({})", backend.name()),
            m.stats as f64 / m.seconds,
            tree.entries as f64 / POLL_SECONDS,
            Goal::AtMost(1.0),
            "stat/s",
        ));
        if backend == backends[0] {
            figures.push(Figure::new(
                format!("idle stat calls per poll, {} entries", tree.entries),
                m.stats as f64 / m.polls as f64,
                tree.entries as f64,
                Goal::AtMost(1.0),
                "stat",
            ));
        }
    }
    drop(tree);
    Ok(figures)
}
