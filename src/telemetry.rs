//! Logging: tracing to stderr (stdout stays clean for `-o json`), text or JSON lines. A log
//! that cannot be written (stderr a closed pipe: `| head -1` exited, a log shipper died) is
//! dropped: it never blocks shutdown or panics the controller. Colour only on a terminal.

use std::io::{IsTerminal as _, Write};

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`. lapin's own lines
/// are off by default: a dropped broker connection made it print three ERROR lines of socket
/// internals, while thalamus's consumer and relay already say what failed, with the broker's
/// address, once per change of state (`RUST_LOG=lapin=debug` brings them back).
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},sqlx=warn,lapin=off")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(colour)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Writes `line` and a newline to stderr, ignoring a stderr that cannot be written (where
/// `eprintln!` would panic).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Stderr that reports every write as done: a lost log line is better than a stuck or
/// crashed controller.
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Log level and format (`text` for people, `json` for collectors).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// The levels `log.level` accepts.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl LogSettings {
    /// Checks `log.level` (`RUST_LOG` takes any filter; this key takes a level).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if LEVELS.contains(&self.level.to_ascii_lowercase().as_str()) {
            Ok(())
        } else {
            Err((
                "log.level",
                format!(
                    "must be one of {} (got {:?}; RUST_LOG takes finer filters)",
                    LEVELS.join(", "),
                    self.level
                ),
            ))
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    Text,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`log.format` must be text or json, not {other:?}")),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
