//! The real `thalamus` binary as a child process, as an operator runs it: settings written to
//! a file in the test's directory, VLA datasets under it, JSON log lines on stderr in a file
//! the test reads, SIGKILL on demand (and when the handle is dropped).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use thalamus::config::Settings;
use thalamus::telemetry::LogFormat;

use super::workspaces_stub::Stub;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_thalamus")
}

/// Settings for a controller in `dir` on `db_url`: the VLA source reads `dir/sdm` (a
/// `DONE` marker settles a dataset at once, polled every second), VLBA is off, Workspaces
/// and the archive are `stub`, logs are JSON lines. Tests adjust the rest.
pub fn settings(dir: &Path, db_url: &str, stub: &Stub) -> Settings {
    let mut s = Settings::default();
    s.database.url = db_url.to_string();
    s.model_deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("model-deps.json");
    s.rules.paths = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")];
    s.sources.vla.path = dir.join("sdm");
    s.sources.vla.bdf_path = None;
    s.sources.vla.marker_file = Some("DONE".into());
    s.sources.vla.poll_seconds = 1;
    s.sources.vla.settle_seconds = 1;
    s.sources.vlba.enabled = false;
    s.workspaces.url = stub.workspaces_url();
    s.archive.url = stub.archive_url();
    s.log.format = LogFormat::Json;
    s.api.listen = "127.0.0.1:0".into();
    std::fs::create_dir_all(dir.join("sdm")).unwrap();
    s
}

/// Writes `settings` to `dir/<name>.yaml` (as JSON, which YAML reads) and returns its path.
pub fn write_config(dir: &Path, name: &str, settings: &Settings) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_json::to_string_pretty(settings).unwrap()).unwrap();
    path
}

/// Adds the settled VLA dataset `dir/sdm/<name>` (Main.xml and the `DONE` marker), made
/// aside and renamed into place so no scan ever sees it half made.
pub fn add_dataset(dir: &Path, name: &str) {
    let staging = dir.join("staging").join(name);
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("Main.xml"), "<MainTable/>").unwrap();
    std::fs::write(staging.join("DONE"), "").unwrap();
    std::fs::rename(&staging, dir.join("sdm").join(name)).unwrap();
}

/// Runs a one-shot command (`migrate`, `run --once`, …) to completion; panics with its
/// output if it fails.
pub fn run_to_end(config: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thalamus {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One log line of the controller: level and message from its JSON, or the raw text of a
/// line that is not JSON (a fatal `error:` line, a panic).
#[derive(Debug, Clone)]
pub struct LogLine {
    /// `TRACE` … `ERROR`, or `RAW` for a line that is not JSON.
    pub level: String,
    pub message: String,
    pub raw: String,
}

impl LogLine {
    /// Whether an operator would see this line as a problem (WARN, ERROR, or not JSON).
    pub fn is_problem(&self) -> bool {
        matches!(self.level.as_str(), "WARN" | "ERROR" | "RAW")
    }
}

/// A running `thalamus run`.
pub struct Controller {
    pub name: String,
    child: Child,
    log: PathBuf,
    pub started: Instant,
}

impl Controller {
    /// Starts `thalamus --config <config> run` in `dir`, stderr to `dir/<name>.log`
    /// (appended, so a restarted controller keeps one log), with extra environment.
    pub fn spawn(config: &Path, dir: &Path, name: &str, env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("run")
            .current_dir(dir)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            name: name.to_string(),
            child,
            log,
            started: Instant::now(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log so far, line by line.
    pub fn log_lines(&self) -> Vec<LogLine> {
        self.log().lines().map(parse_line).collect()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_line(raw: &str) -> LogLine {
    match serde_json::from_str::<Value>(raw) {
        Ok(v) => LogLine {
            level: v["level"].as_str().unwrap_or("RAW").to_string(),
            message: v["fields"]["message"].as_str().unwrap_or("").to_string(),
            raw: raw.to_string(),
        },
        Err(_) => LogLine {
            level: "RAW".into(),
            message: raw.to_string(),
            raw: raw.to_string(),
        },
    }
}
