//! The filesystem scan: the pull step's listing and settle logic over a large tree, against
//! `find -printf '%s %T@\n'` on the same tree; and the memory it keeps per tracked file.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::db::rss;
use super::engine::TRIALS;
use super::{BenchArgs, Figure, Goal};
use crate::sources::{scan_root, Settler};

/// Builds `files` empty files: datasets of 10 folders × 100 files.
fn build_tree(root: &Path, files: usize) -> anyhow::Result<()> {
    let bar = ProgressBar::new(files as u64).with_message("creating files");
    let per_dataset = 1000;
    let mut made = 0;
    let mut d = 0;
    while made < files {
        for sub in 0..10 {
            let dir = root.join(format!("job{d:05}/scan{sub:02}"));
            std::fs::create_dir_all(&dir)?;
            for f in 0..per_dataset / 10 {
                if made == files {
                    break;
                }
                std::fs::File::create(dir.join(format!("out{f:03}.difx")))?;
                made += 1;
            }
        }
        d += 1;
        bar.set_position(made as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Scan time vs `find`, and resident bytes kept per tracked file.
pub async fn scan(args: &BenchArgs, files: usize) -> anyhow::Result<Vec<Figure>> {
    let root = args
        .scratch()
        .join(format!("thalamus_bench_tree_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    build_tree(&root, files)?;
    let tree = root.clone();
    let figures = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Figure>> {
        // Warm the page cache for both contenders alike.
        std::process::Command::new("find")
            .arg(&tree)
            .arg("-printf")
            .arg("")
            .status()?;
        let find = || -> anyhow::Result<f64> {
            let started = Instant::now();
            let out = std::process::Command::new("find")
                .arg(&tree)
                .args(["-printf", "%s %T@\n"])
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(out.success(), "find failed");
            Ok(started.elapsed().as_secs_f64())
        };
        // Trials of each in turn; the settler of the last scan is the one measured for memory.
        let (before, _) = rss();
        let mut trials = Vec::with_capacity(TRIALS);
        let mut settler = Settler::new(Duration::ZERO);
        for _ in 0..TRIALS {
            let find_s = find()?;
            settler = Settler::new(Duration::ZERO);
            let mut seen = 0usize;
            let started = Instant::now();
            scan_root(
                &tree,
                None,
                &mut settler,
                0,
                &|_| Ok(Vec::new()),
                &mut |d| {
                    seen += d.files.len();
                    true
                },
            )?;
            trials.push((started.elapsed().as_secs_f64(), find_s));
            anyhow::ensure!(seen == files, "scanned {seen} of {files} files");
        }
        let (after, _) = rss();
        // The RSS growth, unless memory freed by earlier scenarios hid it: then what the
        // settler's table holds.
        let grown = after
            .saturating_sub(before)
            .max(settler.tracked_bytes() as u64);
        let per_file = grown as f64 / files as f64;
        drop(settler);
        Ok(vec![
            Figure::worst_of(
                format!("scan {files} files vs find"),
                &trials,
                Goal::AtMost(1.5),
                "s",
            ),
            Figure::new(
                "RSS per tracked file",
                per_file,
                200.0,
                Goal::AtMost(1.0),
                "B",
            ),
        ])
    })
    .await??;
    std::fs::remove_dir_all(&root)?;
    Ok(figures)
}
