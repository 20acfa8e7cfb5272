//! `thalamus bench`: says each figure on stderr as it is measured, then prints the table (or
//! JSON) of them all on stdout.

use super::output::{out, outln, Table};
use crate::bench::{human, BenchArgs, Figure};

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let outcome = crate::bench::run(&args, &mut announce, &mut |line| {
        crate::telemetry::say(line)
    })
    .await?;
    let figures = outcome.figures;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        table(&figures)?;
    }
    if !outcome.failed.is_empty() {
        anyhow::bail!(
            "{} scenario(s) failed: {}",
            outcome.failed.len(),
            outcome.failed.join("; ")
        );
    }
    Ok(())
}

fn table(figures: &[Figure]) -> anyhow::Result<()> {
    let mut table = Table::new(vec![
        "FIGURE", "THALAMUS", "BASELINE", "RATIO", "GOAL", "MET",
    ]);
    for f in figures {
        table.row(vec![
            f.name.clone(),
            format!("{} {}", human(f.value), f.unit),
            format!("{} {}", human(f.baseline), f.unit),
            format!("{:.2}", f.ratio),
            f.goal.to_string(),
            f.verdict().into(),
        ]);
    }
    out!("{}", table.render());
    Ok(())
}

/// Says a figure on stderr as soon as it is measured (the table on stdout waits for all).
fn announce(f: &Figure) {
    crate::telemetry::say(&format!(
        "{}: {} {} (baseline {} {}, ratio {:.2}, goal {}: {})",
        f.name,
        human(f.value),
        f.unit,
        human(f.baseline),
        f.unit,
        f.ratio,
        f.goal,
        match f.verdict() {
            "yes" => "met",
            "NO" => "NOT met",
            _ => "reported",
        }
    ));
}
