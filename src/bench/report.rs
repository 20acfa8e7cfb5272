//! Figures: what a scenario measured, against its baseline and goal. The CLI prints them.

use std::fmt;

use serde::{Serialize, Serializer};

/// The bound a figure's ratio is held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// The ratio must be at least this (throughput).
    AtLeast(f64),
    /// The ratio must be at most this (cost, time, memory).
    AtMost(f64),
    /// Reported only: no goal holds on this machine (two replicas on two cores).
    Report,
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::AtLeast(g) => write!(f, ">= {g}"),
            Goal::AtMost(g) => write!(f, "<= {g}"),
            Goal::Report => write!(f, "none"),
        }
    }
}

/// Written as it reads (`">= 0.5"`), as the JSON output always had it.
impl Serialize for Goal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One measured figure: thalamus's value, the baseline measured in the same run, their ratio,
/// and the goal the ratio is held to.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub baseline: f64,
    pub ratio: f64,
    pub goal: Goal,
    pub unit: String,
}

impl Figure {
    /// A figure whose ratio is value / baseline.
    pub fn new(name: impl Into<String>, value: f64, baseline: f64, goal: Goal, unit: &str) -> Self {
        let ratio = if baseline > 0.0 {
            value / baseline
        } else {
            f64::NAN
        };
        Self {
            name: name.into(),
            value,
            baseline,
            ratio,
            goal,
            unit: unit.into(),
        }
    }

    /// Of trials `(value, baseline)` measured each side in turn, the one with the worst ratio
    /// for `goal` (a goal met only by a lucky trial is not met); the spread of the trials'
    /// ratios is said on stderr.
    pub fn worst_of(name: String, trials: &[(f64, f64)], goal: Goal, unit: &str) -> Self {
        let mut figures: Vec<Figure> = trials
            .iter()
            .map(|(value, baseline)| Figure::new(name.clone(), *value, *baseline, goal, unit))
            .collect();
        figures.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
        let (lo, hi) = (
            figures.first().map_or(f64::NAN, |f| f.ratio),
            figures.last().map_or(f64::NAN, |f| f.ratio),
        );
        eprintln!(
            "  {name}: ratios of the {} trials {lo:.2}-{hi:.2}; the worst is the figure",
            figures.len()
        );
        let worst = match goal {
            Goal::AtMost(_) => figures.pop(),
            _ => figures.into_iter().next(),
        };
        worst.unwrap_or_else(|| Figure::new(name, f64::NAN, f64::NAN, goal, unit))
    }

    /// Whether the ratio meets the goal.
    pub fn met(&self) -> bool {
        match self.goal {
            Goal::AtLeast(g) => self.ratio >= g,
            Goal::AtMost(g) => self.ratio <= g,
            Goal::Report => true,
        }
    }

    /// The MET column: yes, NO, or `-` for a figure without a goal.
    pub fn verdict(&self) -> &'static str {
        match (self.goal, self.met()) {
            (Goal::Report, _) => "-",
            (_, true) => "yes",
            (_, false) => "NO",
        }
    }
}

/// A value as the table and the announcements show it.
pub fn human(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
