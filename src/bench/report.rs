//! Figures and the summary table.

use serde::Serialize;

/// One measured figure: thalamus's value, the baseline measured in the same run, their ratio,
/// and the goal the ratio is held to.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub baseline: f64,
    pub ratio: f64,
    /// E.g. `>= 0.5` or `<= 2`.
    pub goal: String,
    pub unit: String,
}

impl Figure {
    /// A figure whose ratio is value / baseline.
    pub fn new(name: impl Into<String>, value: f64, baseline: f64, goal: &str, unit: &str) -> Self {
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
            goal: goal.into(),
            unit: unit.into(),
        }
    }

    /// Whether the ratio meets the goal.
    pub fn met(&self) -> bool {
        let parse = |p: &str| {
            self.goal
                .strip_prefix(p)
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        match (parse(">="), parse("<=")) {
            (Some(g), _) => self.ratio >= g,
            (_, Some(g)) => self.ratio <= g,
            _ => false,
        }
    }
}

/// Says a figure on stderr as soon as it is measured (the table on stdout waits for all).
pub fn announce(f: &Figure) {
    eprintln!(
        "{}: {} {} (baseline {} {}, ratio {:.2}, goal {}: {})",
        f.name,
        human(f.value),
        f.unit,
        human(f.baseline),
        f.unit,
        f.ratio,
        f.goal,
        if f.met() { "met" } else { "NOT met" }
    );
}

/// Prints the figures as a table, or as JSON.
pub fn print(figures: &[Figure], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(figures)?);
        return Ok(());
    }
    let mut table = crate::cli::Table::new(vec![
        "FIGURE", "THALAMUS", "BASELINE", "RATIO", "GOAL", "MET",
    ]);
    for f in figures {
        table.row(vec![
            f.name.clone(),
            format!("{} {}", human(f.value), f.unit),
            format!("{} {}", human(f.baseline), f.unit),
            format!("{:.2}", f.ratio),
            f.goal.clone(),
            if f.met() { "yes" } else { "NO" }.into(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

fn human(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
