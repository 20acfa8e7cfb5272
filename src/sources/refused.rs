//! Datasets a source refuses (a name that is not UTF-8 cannot become a key or a path in a
//! spec without loss), remembered between polls so each is reported once, not every poll.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tracing::warn;

/// The paths refused this poll and the last one.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Refused and reported at the last complete poll.
    reported: HashSet<PathBuf>,
    /// Refused this poll so far.
    current: HashSet<PathBuf>,
}

impl Refusals {
    /// Refuses `path` for this poll, warning unless it was refused (and said) already.
    pub(crate) fn refuse(&mut self, path: &Path, why: &str) {
        if !self.reported.contains(path) && !self.current.contains(path) {
            warn!(
                path = ?path,
                "dataset refused until renamed: {why}; a name that is not UTF-8 cannot be \
                 keyed without loss"
            );
        }
        self.current.insert(path.to_path_buf());
    }

    /// Ends a complete poll: a refused name that is gone is reported again if it comes back.
    pub(crate) fn end_poll(&mut self) {
        self.reported = std::mem::take(&mut self.current);
    }
}
