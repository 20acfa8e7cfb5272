//! Settings: defaults, file, overlay, environment; invalid values fail naming the key.

use std::io::Write;

use thalamus::config::Settings;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_file_with_only_the_database_url_is_valid() {
    let f = file("database:\n  url: postgres://db.example/archive\n");
    let s = Settings::load_with_env(Some(f.path()), None, env(&[])).unwrap();
    assert_eq!(s.database.url, "postgres://db.example/archive");
    assert_eq!(s.sync.concurrency, 16);
    assert_eq!(s.sync.backoff.base_seconds, 10.0);
}

#[test]
fn overlay_then_environment_override_the_file() {
    let base = file("sync:\n  concurrency: 4\n  backoff:\n    factor: 3\n");
    let overlay = file("sync:\n  concurrency: 8\n");
    let vars = env(&[
        ("THALAMUS__SYNC__BACKOFF__MAX_SECONDS", "120"),
        ("OTHER", "x"),
    ]);
    let s = Settings::load_with_env(Some(base.path()), Some(overlay.path()), vars).unwrap();
    assert_eq!(
        (
            s.sync.concurrency,
            s.sync.backoff.factor,
            s.sync.backoff.max_seconds
        ),
        (8, 3.0, 120.0)
    );
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("sync:\n  concurency: 3\n", "unknown field `concurency`"),
        ("sync:\n  concurrency: many\n", "sync.concurrency"),
        (
            "sync:\n  concurrency: 0\n",
            "`sync.concurrency` must be at least 1",
        ),
        (
            "sync:\n  backoff:\n    jitter: 2\n",
            "`sync.backoff.jitter` must be between 0 and 1",
        ),
        (
            "database:\n  url: mysql://x\n",
            "`database.url` must start with sqlite:// or postgres://",
        ),
        (
            "sync:\n  lease_seconds: 10\n  step_timeout_seconds: 20\n",
            "`sync.lease_seconds` must be greater",
        ),
        // The step modules' sections (declared in steps/) sit beside the controller's.
        (
            "sourcez:\n  vla: {}\n",
            "unknown field `sourcez`, expected one of `database`, `model_deps`",
        ),
        (
            "sourcez:\n  vla: {}\n",
            "`sources`, `workspaces`, `archive`",
        ),
        ("sources:\n  vla:\n    pth: x\n", "unknown field `pth`"),
        ("sources:\n  vla:\n    pth: x\n", "sources.vla"),
        (
            "sources:\n  vla:\n    poll_seconds: many\n",
            "sources.vla.poll_seconds",
        ),
        (
            "sources:\n  vla:\n    poll_seconds: 0\n",
            "`sources.vla.poll_seconds` must be at least 1",
        ),
    ];
    for (text, expected) in cases {
        let f = file(text);
        let err = Settings::load_with_env(Some(f.path()), None, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    let err = Settings::load_with_env(None, None, env(&[("THALAMUS__SYNC__PAGE_SIZE", "-1")]))
        .unwrap_err();
    assert!(err.to_string().contains("sync.page_size"), "{err}");
    let err = Settings::load_with_env(
        None,
        None,
        env(&[("THALAMUS__SOURCES__VLBA__POLL_SECONDS", "-1")]),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("sources.vlba.poll_seconds"),
        "{err}"
    );
}

#[test]
fn step_sections_read_from_the_top_level_of_the_file() {
    let f = file("sources:\n  vla:\n    path: /data/sdm\nworkspaces:\n  poll_seconds: 5\n");
    let vars = env(&[("THALAMUS__ARCHIVE__URL", "https://archive.example/api")]);
    let s = Settings::load_with_env(Some(f.path()), None, vars).unwrap();
    assert_eq!(s.steps.sources.vla.path, std::path::Path::new("/data/sdm"));
    assert_eq!(s.workspaces.poll_seconds, 5);
    assert_eq!(s.archive.url, "https://archive.example/api");
    assert!(s.sources.vlba.enabled, "defaults fill the rest");
    // Written out, they are top-level sections again, and read back the same.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["sources"]["vla"]["path"], "/data/sdm");
    assert!(json.get("steps").is_none(), "{json}");
    let again = file(&json.to_string());
    let s2 = Settings::load_with_env(Some(again.path()), None, env(&[])).unwrap();
    assert_eq!(serde_json::to_value(&s2).unwrap(), json);
}

#[test]
fn an_explicit_missing_file_is_an_error() {
    let err = Settings::load_with_env(Some("/nonexistent/thalamus.yaml".as_ref()), None, env(&[]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "config file /nonexistent/thalamus.yaml does not exist"
    );
}

#[test]
fn passwords_in_urls_are_masked() {
    assert_eq!(
        thalamus::secret::redact_url("postgres://app:s3cret@db/archive"),
        "postgres://app:***@db/archive"
    );
    assert_eq!(
        thalamus::secret::redact_url("sqlite://thalamus.db"),
        "sqlite://thalamus.db"
    );
}
