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

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

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
