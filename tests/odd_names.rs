//! Directory and file names that are not UTF-8: `caf\xe9` and `caf\xe8` would both read as
//! `caf\u{FFFD}`, so they are refused (said once per name), and they never stop, block or
//! flip any other dataset; nor does an item the store refuses stop the rest of its batch.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use common::source_world::World;
use common::{logs, Backend, Harness, Runs};
use thalamus::steps::models::{Instrument, Observation, Product};
use thalamus::steps::prelude::*;

/// A world whose datasets are marked complete (so they are taken on the first poll).
async fn marked_world(backend: Backend) -> World {
    World::new(backend, |s, _| {
        s.sources.vla.marker_file = Some("DONE".into())
    })
    .await
}

/// 150 ordinary datasets, two whose names are not UTF-8 (sorted before them), and one that
/// holds a file whose name is not UTF-8; all marked complete.
fn odd_world(w: &World) {
    for n in 0..150 {
        w.sdm(&format!("d{n:03}"), &[]);
        w.write(&format!("sdm/d{n:03}/DONE"), b"");
    }
    for name in [b"caf\xe9".as_slice(), b"caf\xe8"] {
        let dir = w.path("sdm").join(OsStr::from_bytes(name));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("Main.xml"), b"<MainTable/>").unwrap();
        std::fs::write(dir.join("DONE"), b"").unwrap();
    }
    w.sdm("mixed", &[]);
    w.write("sdm/mixed/DONE", b"");
    std::fs::write(
        w.path("sdm/mixed").join(OsStr::from_bytes(b"Scan\xff.xml")),
        b"<ScanTable/>",
    )
    .unwrap();
}

/// Polls four times, a minute apart.
async fn poll_a_while(w: &World) {
    for _ in 0..4 {
        w.once().await;
        w.clock.advance(60_000);
    }
}

async fn odd_names_are_refused_and_block_nothing(backend: Backend) {
    logs::capture();
    let w = marked_world(backend).await;
    odd_world(&w);
    poll_a_while(&w).await;
    let observations = w.list("Observation").await;
    let keys: Vec<&str> = observations.iter().map(|o| o.key.as_str()).collect();
    let expected: Vec<String> = (0..150).map(|n| format!("VLA/d{n:03}")).collect();
    assert_eq!(
        keys, expected,
        "every ordinary dataset, none of the odd ones"
    );
    assert!(
        observations.iter().all(|o| o.generation == 1),
        "no generation moved on repeated polls"
    );
    assert_eq!(w.keys("Ingestion").await.len(), 150);
    let root = w.path("sdm").display().to_string();
    let refused = logs::lines_with(&[&root, "not UTF-8"]);
    assert_eq!(
        refused.len(),
        3,
        "once per name, not per poll: {refused:#?}"
    );
    for name in [r"caf\xE9", r"caf\xE8", r"Scan\xFF.xml"] {
        assert!(
            refused.iter().any(|l| l.contains(name)),
            "{name} is named: {refused:#?}"
        );
    }
}

/// An Observation stored under the lossy key by an earlier version is left alone: the two
/// directories that both mapped onto it no longer take turns rewriting its spec.
async fn a_lossy_key_stored_earlier_never_flips(backend: Backend) {
    let w = marked_world(backend).await;
    odd_world(&w);
    let lossy = "caf\u{FFFD}";
    let old = Observation {
        instrument: Instrument::VLA,
        product: Product::Sdm,
        name: lossy.into(),
        location: w.path("sdm").join(lossy).display().to_string(),
        files: vec![],
        requested_at: None,
        missing_files: vec![],
    };
    w.engine.models().upsert(&old.key(), &old).await.unwrap();
    poll_a_while(&w).await;
    let obs = w.observation(&format!("VLA/{lossy}")).await;
    assert_eq!((obs.generation, obs.spec), (1, old));
    assert_eq!(w.keys("Observation").await.len(), 151);
}

/// A Child whose link field may hold anything, to make the store refuse one item.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LooseChild {
    parent: serde_json::Value,
    value: i64,
}

impl Model for LooseChild {
    const KIND: &'static str = "Child";
    type Status = Runs;
}

/// One item the store refuses (a link that is not a key) fails a whole `upsert_many`;
/// `upsert_each`, which the filesystem sources use, stores the others and names the one.
async fn one_refused_item_never_stops_its_batch(backend: Backend) {
    let h = Harness::new(backend).await;
    let child =
        |n: i64, parent: serde_json::Value| (format!("c{n}"), LooseChild { parent, value: n });
    let items = vec![
        child(1, "p".into()),
        child(2, serde_json::json!(42)),
        child(3, "p".into()),
    ];
    assert!(h.models().upsert_many(&items).await.is_err());
    let (changes, refused) = h.models().upsert_each(&items).await.unwrap();
    let stored: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(stored, ["c1", "c3"]);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, "c2");
    assert!(
        format!("{:#}", refused[0].1).contains("must be a Parent key"),
        "{:#}",
        refused[0].1
    );
}

both_backends!(
    odd_names_are_refused_and_block_nothing,
    a_lossy_key_stored_earlier_never_flips,
    one_refused_item_never_stops_its_batch,
);
