//! Why an object is due: written (as a short code in `objects.reason`) by the change that made
//! it due, and read back as the cause of its next run, for the audit trail and logs.

use std::fmt;

/// What made an object due, as its writer recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// First upserted.
    New,
    /// Upserted with a new spec.
    SpecChanged,
    /// Soft-deleted.
    Deletion,
    /// An operator asked for it (`thalamus retry`).
    OperatorRetry,
    /// An event changed its status and asked for a look now.
    Event,
    /// Its last attempt deferred: work is under way elsewhere.
    Recheck,
    /// Its last attempt failed; this is the retry after the backoff.
    Retry,
    /// It waited on a dependency.
    Waiting,
    /// An event changed its status while its step ran, so the step runs again.
    StatusChanged,
}

impl Reason {
    /// The code stored in `objects.reason`.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::SpecChanged => "spec_changed",
            Reason::Deletion => "deletion",
            Reason::OperatorRetry => "operator_retry",
            Reason::Event => "event",
            Reason::Recheck => "recheck",
            Reason::Retry => "retry",
            Reason::Waiting => "waiting",
            Reason::StatusChanged => "status_changed",
        }
    }

    /// Reads a stored code; one this version does not know reads as a recheck.
    pub fn from_code(code: &str) -> Self {
        const ALL: [Reason; 9] = [
            Reason::New,
            Reason::SpecChanged,
            Reason::Deletion,
            Reason::OperatorRetry,
            Reason::Event,
            Reason::Recheck,
            Reason::Retry,
            Reason::Waiting,
            Reason::StatusChanged,
        ];
        ALL.into_iter()
            .find(|r| r.code() == code)
            .unwrap_or(Reason::Recheck)
    }
}

/// Which due objects a claim takes first. A page of news (a new object, a new spec, a
/// deletion, an event, an operator's retry, a dependency that converged) goes ahead of the
/// rechecks and retries an outage piles up, so fresh work never waits behind a backlog;
/// the backlog still drains whenever there is no news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Due because something changed.
    News,
    /// Due to look again: a recheck of work under way, or a retry after a failure.
    Again,
}

impl Lane {
    /// The lane of an object due for `reason` (its stored code).
    pub fn of(reason: &str) -> Self {
        match Reason::from_code(reason) {
            Reason::Recheck | Reason::Retry => Lane::Again,
            _ => Lane::News,
        }
    }

    /// The lane's condition on `objects`, word for word the predicate of its partial index
    /// (migration 0013), so a claim is a range scan of that index.
    pub(crate) const fn sql(self) -> &'static str {
        match self {
            Lane::News => "reason NOT IN ('recheck', 'retry')",
            Lane::Again => "reason IN ('recheck', 'retry')",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::{Lane, Reason};

    #[test]
    fn rechecks_and_retries_are_due_again_and_the_rest_is_news() {
        assert_eq!(Lane::of(Reason::Recheck.code()), Lane::Again);
        assert_eq!(Lane::of(Reason::Retry.code()), Lane::Again);
        for r in [
            Reason::New,
            Reason::Event,
            Reason::Waiting,
            Reason::OperatorRetry,
        ] {
            assert_eq!(Lane::of(r.code()), Lane::News, "{r}");
        }
    }

    #[test]
    fn each_lane_condition_is_the_predicate_of_its_index() {
        // A claim whose condition differs from the index's by a character scans the table.
        for migration in [
            include_str!("../../migrations/sqlite/0013_claim_lanes.sql"),
            include_str!("../../migrations/postgres/0013_claim_lanes.sql"),
        ] {
            for lane in [Lane::News, Lane::Again] {
                let predicate = format!("WHERE {} AND {}", super::super::leases::DIRTY, lane.sql());
                assert!(migration.contains(&predicate), "{predicate}");
            }
        }
    }

    #[test]
    fn every_code_reads_back_as_its_reason() {
        for r in [
            Reason::New,
            Reason::SpecChanged,
            Reason::Deletion,
            Reason::OperatorRetry,
            Reason::Event,
            Reason::Recheck,
            Reason::Retry,
            Reason::Waiting,
            Reason::StatusChanged,
        ] {
            assert_eq!(Reason::from_code(r.code()), r);
        }
        assert_eq!(Reason::from_code("from a newer version"), Reason::Recheck);
    }
}
