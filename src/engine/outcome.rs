//! What a finished step means for its object: the outcome the store records, the audit row's
//! words, and why an object runs (its cause), for the executions trail and logs.

use std::any::Any;

use crate::step::{Progress, StepError, StepResult};
use crate::store::{ObjectRow, Settled};

/// Deferrals and waits are rescheduled at least this far ahead, so a pass always ends.
pub(super) const MIN_DELAY_MS: i64 = 1000;

/// How a step's run ended, before it becomes a [`Settled`].
pub(super) enum Ended {
    /// The step returned.
    Returned(StepResult),
    /// It ran past `sync.step_timeout_seconds` and was cancelled.
    TimedOut(u64),
    /// It panicked with this payload.
    Panicked(Box<dyn Any + Send>),
}

/// The outcome to record for `row`, its word in the audit trail, and its error, if any.
pub(super) fn settle(
    ended: Ended,
    row: &ObjectRow,
    deleting: bool,
    now: i64,
    backoff_ms: impl FnOnce(i32) -> i64,
) -> (Settled, &'static str, Option<String>) {
    let result = match ended {
        Ended::Returned(result) => result,
        Ended::TimedOut(secs) => Err(StepError::Transient(anyhow::anyhow!(
            "step timed out after {secs}s"
        ))),
        Ended::Panicked(payload) => {
            let message = panic_message(payload);
            let attempts = row.attempts + 1;
            let error = format!("step panicked: {message}");
            let until = now + backoff_ms(attempts);
            return (
                Settled::Failed {
                    attempts,
                    until,
                    error: error.clone(),
                },
                "panic",
                Some(error),
            );
        }
    };
    match result {
        Ok(Progress::Done) if deleting => (Settled::Reaped, "ok", None),
        Ok(Progress::Done) => (
            Settled::Synced {
                message: crate::store::synced_message(row.generation),
            },
            "ok",
            None,
        ),
        Ok(Progress::Deferred { after, reason }) => {
            let after = i64::try_from(after.as_millis())
                .unwrap_or(i64::MAX)
                .max(MIN_DELAY_MS);
            (
                Settled::Deferred {
                    until: now.saturating_add(after),
                    message: reason,
                },
                "deferred",
                None,
            )
        }
        Err(StepError::Transient(err)) => {
            let attempts = row.attempts + 1;
            let error = format!("{err:#}");
            (
                Settled::Failed {
                    attempts,
                    until: now + backoff_ms(attempts),
                    error: error.clone(),
                },
                "error",
                Some(error),
            )
        }
        Err(StepError::Permanent(reason)) => (
            Settled::Permanent {
                error: reason.clone(),
            },
            "permanent",
            Some(reason),
        ),
    }
}

/// Why an object runs now, from its bookkeeping, for the executions trail and logs.
pub(super) fn cause(row: &ObjectRow) -> String {
    if row.deleted_at.is_some() {
        return "deletion requested".into();
    }
    match row.backend_status.as_str() {
        "retry requested by operator" => "operator retry".into(),
        _ if row.attempts > 0 => format!("retry {} after backoff", row.attempts),
        _ if row.waiting_on.is_some() => "dependency ready".into(),
        "new" => "new object".into(),
        "spec changed" => format!("spec changed (generation {})", row.generation),
        status => format!("recheck ({status})"),
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}
