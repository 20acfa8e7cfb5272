//! The engine's settings: how the sync loop claims and runs work, backs off, pages policies,
//! polls sources and keeps its audit trail. The keys keep their sections (`sync.*`, …).

use serde::{Deserialize, Serialize};

/// How the sync loop claims and runs work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Steps running at once in one process.
    pub concurrency: usize,
    /// Dirty objects claimed per round; bounds memory, not the number of models.
    pub page_size: usize,
    /// How often `run` looks for due work when nothing wakes it sooner.
    pub interval_ms: u64,
    /// A step running longer than this is cancelled and counted as a failure.
    pub step_timeout_seconds: u64,
    /// How long a claim is held; must exceed the step timeout.
    pub lease_seconds: u64,
    /// Safety-net recheck for objects waiting on a dependency (they are also woken directly).
    pub wait_recheck_seconds: u64,
    /// Time running steps get to finish after SIGTERM before they are abandoned.
    pub shutdown_grace_seconds: u64,
    /// Identity written into leases and executions; defaults to the host name. One live
    /// process per id: a restart under the same id takes its predecessor's leases over.
    pub holder_id: Option<String>,
    /// How long a process's heartbeat (PostgreSQL) vouches for it: a restart after a crash
    /// waits at most this long before it takes its predecessor's work over.
    pub heartbeat_seconds: u64,
    pub backoff: BackoffSettings,
}

/// Exponential backoff: `min(max, base · factor^(attempts-1))`, spread by ±jitter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffSettings {
    pub base_seconds: f64,
    pub factor: f64,
    pub max_seconds: f64,
    /// Fraction (0..=1) by which each delay is spread, so failures do not retry in lockstep.
    pub jitter: f64,
}

/// How the policy loop pages through changed objects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    pub page_size: usize,
}

/// Defaults for pull steps that do not set their own interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullSettings {
    pub enabled: bool,
    /// A failing source is polled at its interval, then twice that, and so on up to this.
    pub max_backoff_seconds: u64,
}

/// Retention of the executions audit trail, and of dead letters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionSettings {
    /// Rows older than this are pruned by `run`; 0 keeps everything.
    pub retain_days: u64,
    /// Dead letters received longer ago than this are pruned by `run`; 0 keeps everything.
    pub dead_letter_retain_days: u64,
}

impl SyncSettings {
    /// `step_timeout_seconds` in milliseconds (validation keeps it far from overflowing).
    pub fn step_timeout_ms(&self) -> i64 {
        i64::try_from(self.step_timeout_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }

    /// `lease_seconds` in milliseconds (validation keeps it far from overflowing).
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            page_size: 500,
            interval_ms: 1000,
            step_timeout_seconds: 300,
            lease_seconds: 600,
            wait_recheck_seconds: 60,
            shutdown_grace_seconds: 30,
            holder_id: None,
            heartbeat_seconds: 10,
            backoff: BackoffSettings::default(),
        }
    }
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            base_seconds: 10.0,
            factor: 2.0,
            max_seconds: 3600.0,
            jitter: 0.2,
        }
    }
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self { page_size: 500 }
    }
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_backoff_seconds: 300,
        }
    }
}

impl Default for ExecutionSettings {
    fn default() -> Self {
        Self {
            retain_days: 30,
            dead_letter_retain_days: 30,
        }
    }
}

/// The longest lease (and dependency recheck) accepted: a week.
const MAX_LEASE_SECONDS: u64 = 7 * 86_400;
/// The longest shutdown grace and pass interval accepted: a day.
const MAX_WAIT_SECONDS: u64 = 86_400;

/// The engine's own settings (sections `sync`, `policy`, `pull`, `executions`).
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    pub sync: SyncSettings,
    pub policy: PolicySettings,
    pub pull: PullSettings,
    pub executions: ExecutionSettings,
    /// What changes announce, and on which transports (the relay runs beside the engine).
    pub outbox: crate::outbox::OutboxSettings,
}

impl EngineSettings {
    /// Checks the values the engine cannot work with; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |key, problem: &str| Err((key, problem.to_string()));
        let s = &self.sync;
        if s.concurrency == 0 {
            return bad("sync.concurrency", "must be at least 1");
        }
        if s.page_size == 0 {
            return bad("sync.page_size", "must be at least 1");
        }
        if s.step_timeout_seconds == 0 {
            return bad("sync.step_timeout_seconds", "must be at least 1");
        }
        if s.lease_seconds > MAX_LEASE_SECONDS {
            return bad("sync.lease_seconds", "must be at most 604800 (a week)");
        }
        if s.shutdown_grace_seconds > MAX_WAIT_SECONDS {
            return bad(
                "sync.shutdown_grace_seconds",
                "must be at most 86400 (a day)",
            );
        }
        if s.wait_recheck_seconds > MAX_LEASE_SECONDS {
            return bad(
                "sync.wait_recheck_seconds",
                "must be at most 604800 (a week)",
            );
        }
        if s.interval_ms > MAX_WAIT_SECONDS * 1000 {
            return bad("sync.interval_ms", "must be at most 86400000 (a day)");
        }
        if !(1..=3600).contains(&s.heartbeat_seconds) {
            return bad("sync.heartbeat_seconds", "must be from 1 to 3600");
        }
        if s.holder_id.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return bad("sync.holder_id", "must not be empty");
        }
        if s.lease_seconds <= s.step_timeout_seconds {
            return bad(
                "sync.lease_seconds",
                "must be greater than sync.step_timeout_seconds",
            );
        }
        let b = &s.backoff;
        if !(b.base_seconds.is_finite() && b.base_seconds > 0.0) {
            return bad("sync.backoff.base_seconds", "must be a positive number");
        }
        if !(b.factor.is_finite() && b.factor >= 1.0) {
            return bad("sync.backoff.factor", "must be a number of at least 1");
        }
        if !(b.max_seconds.is_finite() && b.max_seconds >= b.base_seconds) {
            return bad(
                "sync.backoff.max_seconds",
                "must be at least sync.backoff.base_seconds",
            );
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return bad("sync.backoff.jitter", "must be between 0 and 1");
        }
        if self.pull.max_backoff_seconds == 0 {
            return bad("pull.max_backoff_seconds", "must be at least 1");
        }
        if self.policy.page_size == 0 {
            return bad("policy.page_size", "must be at least 1");
        }
        Ok(())
    }
}
