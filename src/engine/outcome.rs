//! What a finished step means for its object: the outcome the store records and the audit
//! row's words (a pure function of how the step ended), and why an object runs (its cause),
//! read from its bookkeeping.

use std::any::Any;

use crate::step::{Progress, StepError, StepResult};
use crate::store::{ObjectRow, Outcome, Reason, Settled};

/// Deferrals and waits are rescheduled at least this far ahead, so a pass always ends.
pub(super) const MIN_DELAY_MS: i64 = 1000;

/// How a step's run ended, before it becomes a [`Settled`].
pub(super) enum Ended {
    /// The step returned.
    Returned(StepResult),
    /// It ran past `sync.step_timeout_seconds` (this many seconds) and was cancelled.
    TimedOut(u64),
    /// It panicked with this payload.
    Panicked(Box<dyn Any + Send>),
}

/// What the store records for one finished attempt.
#[derive(Debug)]
pub(super) struct Classified {
    pub settled: Settled,
    pub outcome: Outcome,
    /// The audit row's words: the error, or why a deferred attempt waits.
    pub error: Option<String>,
}

/// Classifies how the step of `row` (a delete if `deleting`) ended at `now`; a failure's
/// retry is `backoff_ms(attempts)` away.
pub(super) fn classify(
    ended: Ended,
    row: &ObjectRow,
    deleting: bool,
    now: i64,
    backoff_ms: impl Fn(i32) -> i64,
) -> Classified {
    let failed = |error: String, outcome: Outcome| {
        let attempts = row.attempts.saturating_add(1);
        Classified {
            settled: Settled::Failed {
                attempts,
                until: now.saturating_add(backoff_ms(attempts)),
                error: error.clone(),
            },
            outcome,
            error: Some(error),
        }
    };
    match ended {
        Ended::TimedOut(secs) => failed(format!("step timed out after {secs}s"), Outcome::Timeout),
        Ended::Panicked(payload) => failed(
            format!("step panicked: {}", panic_message(payload)),
            Outcome::Panic,
        ),
        Ended::Returned(Err(StepError::Transient(err))) => {
            failed(format!("{err:#}"), Outcome::Error)
        }
        Ended::Returned(Err(StepError::Permanent(reason))) => Classified {
            settled: Settled::Permanent {
                error: reason.clone(),
            },
            outcome: Outcome::Permanent,
            error: Some(reason),
        },
        Ended::Returned(Ok(Progress::Done)) => Classified {
            settled: if deleting {
                Settled::Reaped
            } else {
                Settled::Synced
            },
            outcome: Outcome::Ok,
            error: None,
        },
        Ended::Returned(Ok(Progress::Deferred { after, reason })) => {
            let after = i64::try_from(after.as_millis())
                .unwrap_or(i64::MAX)
                .max(MIN_DELAY_MS);
            // The audit row keeps why it waits (a request in flight, a newer generation
            // waiting behind it, a cancel), not only that it did.
            Classified {
                settled: Settled::Deferred {
                    until: now.saturating_add(after),
                    message: reason.clone(),
                },
                outcome: Outcome::Deferred,
                error: Some(reason),
            }
        }
    }
}

/// Why an object runs now, from its bookkeeping, for the executions trail and logs.
pub(super) fn cause(row: &ObjectRow) -> String {
    if row.deleted_at.is_some() {
        return "deletion requested".into();
    }
    let reason = Reason::from_code(&row.reason);
    match reason {
        Reason::OperatorRetry => "operator retry".into(),
        _ if row.attempts > 0 => format!("retry {} after backoff", row.attempts),
        _ if row.waiting_on.is_some() => "dependency ready".into(),
        Reason::New => "new object".into(),
        Reason::SpecChanged => format!("spec changed (generation {})", row.generation),
        Reason::Event => "an event asked for a look".into(),
        Reason::StatusChanged => "an event changed the status while the step ran".into(),
        Reason::Deletion | Reason::Recheck | Reason::Retry | Reason::Waiting => {
            format!("recheck ({})", row.backend_status)
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn row(attempts: i32, reason: Reason) -> ObjectRow {
        ObjectRow {
            id: 1,
            kind: "Ingestion".into(),
            key: "VLA/x".into(),
            spec: "{}".into(),
            status: "{}".into(),
            generation: 3,
            enacted: 2,
            revision: 7,
            policed: 7,
            backend_code: 0,
            backend_status: "capability request 9 is Executing".into(),
            attempts,
            next_attempt_at: Some(0),
            waiting_on: None,
            last_error: None,
            last_success_at: None,
            created_at: 0,
            updated_at: 0,
            deleted_at: None,
            need_delete: false,
            reason: reason.code().into(),
        }
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn a_failure_counts_an_attempt_and_backs_off() {
        let r = row(2, Reason::Retry);
        let c = classify(
            Ended::Returned(Err(StepError::Transient(anyhow::anyhow!("503")))),
            &r,
            false,
            NOW,
            |attempts| i64::from(attempts) * 10_000,
        );
        assert_eq!(c.outcome, Outcome::Error);
        match c.settled {
            Settled::Failed {
                attempts, until, ..
            } => assert_eq!((attempts, until), (3, NOW + 30_000)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeouts_and_panics_are_failures_of_their_own_kind() {
        let r = row(0, Reason::New);
        let timed_out = classify(Ended::TimedOut(5), &r, false, NOW, |_| 1);
        assert_eq!(timed_out.outcome, Outcome::Timeout);
        assert_eq!(timed_out.error.as_deref(), Some("step timed out after 5s"));
        let panicked = classify(Ended::Panicked(Box::new("boom")), &r, false, NOW, |_| 1);
        assert_eq!(panicked.outcome, Outcome::Panic);
        assert_eq!(panicked.error.as_deref(), Some("step panicked: boom"));
    }

    #[test]
    fn done_means_synced_or_reaped_and_a_deferral_waits_at_least_a_second() {
        let r = row(0, Reason::New);
        let synced = classify(Ended::Returned(Ok(Progress::Done)), &r, false, NOW, |_| 1);
        assert!(matches!(synced.settled, Settled::Synced));
        let reaped = classify(Ended::Returned(Ok(Progress::Done)), &r, true, NOW, |_| 1);
        assert!(matches!(reaped.settled, Settled::Reaped));
        let soon = Progress::deferred(Duration::from_millis(10), "Executing");
        let deferred = classify(Ended::Returned(Ok(soon)), &r, false, NOW, |_| 1);
        match deferred.settled {
            Settled::Deferred { until, .. } => assert_eq!(until, NOW + MIN_DELAY_MS),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            deferred.error.as_deref(),
            Some("Executing"),
            "the audit row says why"
        );
    }

    #[test]
    fn the_cause_comes_from_the_recorded_reason_not_the_status_text() {
        assert_eq!(cause(&row(0, Reason::New)), "new object");
        assert_eq!(
            cause(&row(0, Reason::SpecChanged)),
            "spec changed (generation 3)"
        );
        assert_eq!(cause(&row(2, Reason::Retry)), "retry 2 after backoff");
        assert_eq!(cause(&row(2, Reason::OperatorRetry)), "operator retry");
        let mut waiting = row(0, Reason::Waiting);
        waiting.waiting_on = Some("waiting on Observation x".into());
        assert_eq!(cause(&waiting), "dependency ready");
        let mut deleted = row(0, Reason::Deletion);
        deleted.deleted_at = Some(1);
        assert_eq!(cause(&deleted), "deletion requested");
        assert_eq!(
            cause(&row(0, Reason::Recheck)),
            "recheck (capability request 9 is Executing)"
        );
    }
}
