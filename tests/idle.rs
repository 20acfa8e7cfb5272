//! An idle controller is idle: a poll never wakes the next one (inotify hints only on
//! writes), a dataset that cannot settle by waiting asks for no early poll, and a failing
//! source backs off and says so once per change instead of once per poll.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::brokers::eventually;
use common::source_world::World;
use common::{logs, Backend, Harness, T0};
use thalamus::steps::prelude::*;

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
    // inotify is not recursive: a directory made after the watch began is watched once its
    // creation arrives, so a file written in it hints too.
    let late = w.path("sdm/24A-009.sb1.eb1");
    std::fs::create_dir(&late).unwrap();
    eventually("the new directory's hint", || hinted(late.clone())).await;
    let inside = late.join("Main.xml");
    std::fs::write(&inside, "<MainTable/>").unwrap();
    eventually("a write in the new directory", || hinted(inside.clone())).await;
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

/// A source that fails (or recovers) as the test says, hinting all the time while told to,
/// and remembers when it was polled.
struct Flaky {
    error: Mutex<Option<String>>,
    hinting: AtomicBool,
    polled: Mutex<Vec<Instant>>,
}

impl Flaky {
    fn new(error: &str) -> Arc<Self> {
        Arc::new(Self {
            error: Mutex::new(Some(error.into())),
            hinting: AtomicBool::new(true),
            polled: Mutex::new(Vec::new()),
        })
    }

    fn polls(&self) -> usize {
        self.polled.lock().unwrap().len()
    }
}

/// Registers a shared [`Flaky`] as a pull step of this name (names tell tests' log lines apart).
struct FlakyStep(Arc<Flaky>, &'static str);

#[async_trait]
impl PullStep for FlakyStep {
    fn name(&self) -> &str {
        self.1
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(20)
    }

    async fn pull(&self, _models: &Models) -> anyhow::Result<PullReport> {
        self.0.polled.lock().unwrap().push(Instant::now());
        match self.0.error.lock().unwrap().clone() {
            Some(e) => Err(anyhow!(e)),
            None => Ok(PullReport::default()),
        }
    }

    async fn changed(&self) {
        if self.0.hinting.load(Ordering::SeqCst) {
            tokio::task::yield_now().await // "something changed", every time it is asked
        } else {
            std::future::pending().await
        }
    }
}

/// A failing source is polled at its interval, then twice that, and so on (a hint does not
/// cut the wait short while it fails), and its log says "failing" once per error message and
/// "recovered" once, however many polls it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_backs_off_and_logs_once_per_change() {
    logs::capture();
    let flaky = Flaky::new("source unreachable");
    let step = FlakyStep(flaky.clone(), "flaky-source");
    let h = Harness::with(
        Backend::Sqlite,
        |_| {},
        |r, _| {
            r.pull(step);
        },
    )
    .await;
    let engine = h.engine.clone();
    let running = tokio::spawn(async move { engine.run().await });
    eventually("five polls", || async { flaky.polls() >= 5 }).await;
    let times = flaky.polled.lock().unwrap()[..5].to_vec();
    for (i, pair) in times.windows(2).enumerate() {
        let least = Duration::from_millis(20 << i);
        assert!(
            pair[1] - pair[0] >= least,
            "poll {} came {:?} after the one before; a failing source waits at least {least:?}",
            i + 2,
            pair[1] - pair[0]
        );
    }
    let failed = || logs::lines_with(&["flaky-source", "poll failed"]);
    assert_eq!(failed().len(), 1, "{:#?}", failed());
    assert!(
        failed()[0].contains("source unreachable"),
        "{:#?}",
        failed()
    );

    *flaky.error.lock().unwrap() = Some("permission denied".into());
    let seen = flaky.polls();
    eventually("a poll with the new error", || async {
        flaky.polls() > seen
    })
    .await;
    eventually("its warning", || async { failed().len() == 2 }).await;
    assert!(failed()[1].contains("permission denied"));

    flaky.hinting.store(false, Ordering::SeqCst);
    *flaky.error.lock().unwrap() = None;
    let recovered = || logs::lines_with(&["flaky-source", "recovered"]);
    eventually("the recovery", || async { recovered().len() == 1 }).await;
    let seen = flaky.polls();
    eventually("two more polls", || async { flaky.polls() >= seen + 2 }).await;
    assert_eq!(failed().len(), 2, "{:#?}", failed());
    assert_eq!(recovered().len(), 1, "{:#?}", recovered());
    h.engine.shutdown_token().cancel();
    running.await.unwrap().unwrap();
}

/// The schedule itself: the interval, doubled per failure up to `pull.max_backoff_seconds`,
/// and the interval again once a poll succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_doubles_up_to_its_cap() {
    let flaky = Flaky::new("source unreachable");
    let step = FlakyStep(flaky.clone(), "capped-source");
    let h = Harness::with(
        Backend::Sqlite,
        |s| s.pull.max_backoff_seconds = 1,
        |r, _| {
            r.pull(FlakyStep(flaky.clone(), "capped-source"));
        },
    )
    .await;
    let mut delays = vec![h.engine.pull_delay(&step)];
    for _ in 0..8 {
        assert_eq!(h.engine.pull_once().await.failed, 1);
        delays.push(h.engine.pull_delay(&step));
    }
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [20, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    *flaky.error.lock().unwrap() = None;
    assert_eq!(h.engine.pull_once().await.failed, 0);
    assert_eq!(h.engine.pull_delay(&step), Duration::from_millis(20));
}

/// An idle poll hands the store only what changed since this process last reported it: a
/// settled dataset is counted as seen but not upserted again, so an Observation removed from
/// the store behind the source's back (a restored backup, a hand-made DELETE) is not put back
/// by the next poll; the full report every `FULL_REPORT_EVERY` polls puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_reports_only_what_changed_and_a_full_report_restores_the_store() {
    use thalamus::sources::FULL_REPORT_EVERY;
    let w = World::new(Backend::Postgres, |_, _| {}).await;
    w.sdm("24A-002.sb1.eb1", &[1]);
    w.bdf(1, 1000);
    let mut polls = 0;
    for _ in 0..3 {
        w.once().await;
        w.clock.advance(60_000);
        polls += 1;
    }
    assert_eq!(w.keys("Observation").await, ["VLA/24A-002.sb1.eb1"]);
    let r = w.once().await;
    polls += 1;
    assert_eq!((r.pull.seen, r.pull.created, r.pull.updated), (1, 0, 0));

    let pool = sqlx::PgPool::connect(&w.db.url).await.unwrap();
    sqlx::query("DELETE FROM objects WHERE kind = 'Observation'")
        .execute(&pool)
        .await
        .unwrap();
    let r = w.once().await;
    polls += 1;
    assert_eq!(r.pull.created, 0, "an unchanged dataset is not reported");
    assert!(w.keys("Observation").await.is_empty());
    let mut back = None;
    while polls <= FULL_REPORT_EVERY as usize + 1 {
        let r = w.once().await;
        polls += 1;
        if r.pull.created == 1 {
            back = Some(polls);
            break;
        }
    }
    assert_eq!(
        back,
        Some(FULL_REPORT_EVERY as usize + 1),
        "the full report puts it back"
    );
    assert_eq!(w.keys("Observation").await, ["VLA/24A-002.sb1.eb1"]);

    // A change is reported at once.
    w.append("sdm/24A-002.sb1.eb1/Scan.xml", b"<more/>");
    w.clock.advance(61_000);
    w.once().await; // the change starts a new window
    w.clock.advance(61_000);
    let r = w.once().await;
    assert_eq!(r.pull.updated, 1);
}
