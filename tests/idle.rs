//! An idle controller is idle: a poll never wakes the next one (inotify hints only on
//! writes), and a dataset that cannot settle by waiting asks for no early poll.

mod common;

use std::time::Duration;

use common::brokers::eventually;
use common::source_world::World;
use common::{Backend, T0};
use thalamus::step::prelude::*;

/// The scan's own `opendir`, `stat` and read of Main.xml (open, access, close-nowrite) are
/// not changes: after polls over a watched dataset, the only hint is the sentinel's. inotify
/// delivers in order, so once the sentinel's hint has arrived, every event the polls caused
/// has been delivered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_never_wakes_itself() {
    let w = World::new(Backend::Sqlite, |_, _| {}).await;
    w.sdm("24A-001.sb1.eb1", &[1]);
    w.bdf(1, 1000);
    let hint = Hint::watch(&[&w.path("sdm"), &w.path("bdf")]);
    for _ in 0..3 {
        w.once().await; // lists, stats, reads Main.xml; the third poll also ingests
        w.clock.advance(60_000);
    }
    assert_eq!(w.keys("Observation").await, ["VLA/24A-001.sb1.eb1"]);
    let sentinel = w.path("sdm/sentinel");
    std::fs::create_dir(&sentinel).unwrap(); // one event: IN_CREATE in sdm/
    let hinted = |path: std::path::PathBuf| {
        let hint = &hint;
        async move { hint.last_hint() == Some(path) }
    };
    eventually("the sentinel's hint", || hinted(sentinel.clone())).await;
    assert_eq!(hint.hints(), 1, "only the sentinel hinted, not the polls");
    // Writes still hint.
    w.append("sdm/24A-001.sb1.eb1/Scan.xml", b"<more/>");
    let scan = w.path("sdm/24A-001.sb1.eb1/Scan.xml");
    eventually("the write's hint", || hinted(scan.clone())).await;
    assert!(hint.hints() >= 2);
}

/// An empty dataset past its window cannot settle by waiting (it has no files): it must not
/// ask for a poll at once, or the source polls every few milliseconds for as long as it exists.
#[test]
fn an_empty_dataset_asks_for_no_early_poll() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    std::fs::create_dir(dir.path().join("full")).unwrap();
    std::fs::write(dir.path().join("full/data"), b"x").unwrap();
    let mut settler = Settler::new(Duration::from_secs(60));
    let mut poll = |now: i64| {
        let mut settled = Vec::new();
        scan_root(
            dir.path(),
            None,
            &mut settler,
            now,
            &|_| Ok(Vec::new()),
            &mut |d| {
                settled.push(d.name);
                true
            },
        )
        .unwrap();
        (settled, settler.next_deadline(now))
    };
    assert_eq!(poll(T0), (vec![], Some(Duration::from_secs(60))));
    assert_eq!(
        poll(T0 + 61_000),
        (vec!["full".to_string()], None),
        "nothing left that waiting could settle"
    );
}
