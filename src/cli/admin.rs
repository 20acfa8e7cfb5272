//! Commands that run or set up the controller: run, migrate, check, graph.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use serde_json::json;
use tracing::info;

use super::output::{error_text, out, outln, print_json, Format};
use crate::config::Settings;
use crate::engine::OnceReport;
use crate::secret::redact_url;
use crate::store::{Backend, Open, State};

/// `run --once` finished, but objects are left failing: cron gets its own exit code
/// ([`super::EXIT_OBJECTS_IN_ERROR`]) for it.
#[derive(Debug, thiserror::Error)]
#[error("{0} object(s) in error or backoff after the run (see `thalamus status`)")]
pub struct ObjectsInError(pub i64);

/// `thalamus run [--once]`.
pub async fn run(settings: Settings, once: bool, migrate: bool) -> anyhow::Result<()> {
    let url = redact_url(&settings.database.url);
    let (engine, _lock) = crate::app::engine(&settings, migrate).await?;
    info!(database = %url, holder = engine.holder(), "thalamus starting");
    let token = engine.shutdown_token();
    tokio::spawn(reload_on_hangup(engine.clone()));
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested: finishing running steps");
        token.cancel();
        wait_for_signal().await;
        crate::telemetry::say("second signal: exiting now");
        std::process::exit(130);
    });
    let _api = if once {
        None
    } else {
        crate::api::serve(&engine, &settings.api, &settings.events).await?
    };
    // One live process per holder id: after a crash, the restarted process waits for its
    // predecessor's heartbeat to lapse, then takes its leases over at once.
    let Some(seat) = engine.join().await? else {
        return Ok(()); // shutdown requested while waiting for the holder id
    };
    let heart = engine.clone();
    let beat = seat.clone();
    let heartbeat = tokio::spawn(async move { heart.keep(&beat).await });
    let result = if once {
        run_once(&engine).await
    } else {
        crate::app::run_with_transports(&engine, &settings.events).await
    };
    heartbeat.abort();
    engine.leave(&seat).await;
    engine.store().close().await;
    result
}

/// One `--once` run, its summary, and whether objects are left in error or backoff.
async fn run_once(engine: &crate::engine::Engine) -> anyhow::Result<()> {
    let report = crate::app::run_once(engine).await?;
    let failing: i64 = engine
        .store()
        .counts()
        .await?
        .iter()
        .filter(|c| matches!(c.state, State::Error | State::Backoff))
        .map(|c| c.count)
        .sum();
    outln!("{}", summary(&report));
    if failing > 0 {
        return Err(ObjectsInError(failing).into());
    }
    Ok(())
}

fn summary(r: &OnceReport) -> String {
    let s = &r.sync;
    format!(
        "run --once: {} pull step(s) saw {} object(s) ({} created, {} updated, {} poll(s) failed); \
         policies handled {} change(s) ({} failed); synced {}, deferred {}, failed {}, permanent {}, \
         waiting {}, deleted {} in {} pass(es)",
        r.pull.steps, r.pull.seen, r.pull.created, r.pull.updated, r.pull.failed,
        r.policy.handled, r.policy.failed, s.synced, s.deferred, s.failed, s.permanent, s.waiting, s.reaped, r.passes
    )
}

/// SIGHUP reloads the rules: files that pass the checks replace the running rules; a refused
/// file leaves them running, and the log says why.
async fn reload_on_hangup(engine: crate::engine::Engine) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            for result in engine.registry.reload() {
                match result {
                    Ok(what) => info!("SIGHUP: rules reloaded: {what}"),
                    Err(e) => {
                        tracing::warn!("SIGHUP: rules refused, the running rules stay: {e:#}")
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    drop(engine);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `thalamus migrate`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store = crate::app::store(settings, Open::Create).await?;
    store.migrate().await?;
    store.close().await;
    outln!(
        "schema up to date at {}",
        redact_url(&settings.database.url)
    );
    Ok(())
}

/// Something `check` found that `run` would trip over; not fatal unless `--strict`.
#[derive(Debug, Serialize)]
struct Warning {
    key: &'static str,
    problem: String,
}

/// `thalamus check [--strict]`: the settings and `model-deps.json` (errors), then what the
/// controller would meet at run time: the database and the source directories (warnings).
pub async fn check(settings: &Settings, strict: bool, format: Format) -> anyhow::Result<()> {
    let registry = crate::app::registry(settings)?;
    let graph = crate::app::graph(settings, &registry)?;
    let source_notes = check_sources(&registry).await?;
    let rule_files = settings.rules.files()?;
    let warnings = run_time_warnings(settings).await;
    let sync_steps: Vec<String> = registry
        .sync_kinds()
        .iter()
        .map(|s| s.to_string())
        .collect();
    if format == Format::Json {
        print_json(&json!({
            "database": redact_url(&settings.database.url),
            "model_deps": settings.model_deps.display().to_string(),
            "sync_order": graph.sync_order(),
            "sync_steps": sync_steps,
            "pull_steps": registry.pull_names(),
            "policies": registry.policy_names(),
            "event_steps": registry.event_names(),
            "source_checks": &source_notes,
            "rule_files": rule_files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "warnings": &warnings,
        }))?;
    } else {
        outln!(
            "configuration OK (database {})",
            redact_url(&settings.database.url)
        );
        outln!(
            "{} OK: sync order {}",
            settings.model_deps.display(),
            order_text(graph.sync_order())
        );
        outln!("sync steps: {}", list_or_none(sync_steps));
        outln!("pull steps: {}", list_or_none(registry.pull_names()));
        outln!("policies: {}", list_or_none(registry.policy_names()));
        outln!("event steps: {}", list_or_none(registry.event_names()));
        outln!("rules: {} file(s) OK", rule_files.len());
        for note in &source_notes {
            outln!("{note}");
        }
        for w in &warnings {
            outln!("warning: {}: {}", w.key, w.problem);
        }
    }
    if strict && !warnings.is_empty() {
        bail!("{} warning(s), and --strict", warnings.len());
    }
    Ok(())
}

/// How long `check` waits for the database.
const CHECK_DB_TIMEOUT: Duration = Duration::from_secs(5);

/// The database answers and has its schema; each enabled source's directory exists.
async fn run_time_warnings(settings: &Settings) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let url = redact_url(&settings.database.url);
    let sqlite_file = Backend::of(&settings.database.url) == Some(Backend::Sqlite);
    let mut quick = settings.clone();
    quick.database.timeout_seconds = CHECK_DB_TIMEOUT.as_secs();
    let opened =
        tokio::time::timeout(CHECK_DB_TIMEOUT, crate::app::store(&quick, Open::Existing)).await;
    match opened {
        Err(_) => warnings.push(Warning {
            key: "database.url",
            problem: format!(
                "database {url} did not answer within {}s",
                CHECK_DB_TIMEOUT.as_secs()
            ),
        }),
        Ok(Err(e)) => {
            let missing = e
                .downcast_ref::<crate::store::StoreError>()
                .is_some_and(|e| matches!(e, crate::store::StoreError::NotInitialised(_)));
            // A SQLite file that is not there yet is made by `run` or `migrate`, if its
            // directory exists.
            let creatable = sqlite_file && missing && sqlite_dir_exists(&settings.database.url);
            if !creatable {
                warnings.push(Warning {
                    key: "database.url",
                    problem: format!("database {}", error_text(&e)),
                });
            }
        }
        Ok(Ok(store)) => {
            if let Err(e) = store.ensure_migrated().await {
                warnings.push(Warning {
                    key: "database.url",
                    problem: format!("database {e}"),
                });
            }
            store.close().await;
        }
    }
    for (key, path) in settings.source_paths() {
        if !path.is_dir() {
            warnings.push(Warning {
                key,
                problem: format!("{} is not a directory", path.display()),
            });
        }
    }
    warnings
}

fn sqlite_dir_exists(url: &str) -> bool {
    let file = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    match Path::new(file).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.is_dir(),
        _ => true,
    }
}

/// Asks each source what it can check of itself (the ALMA queries' columns, say) and returns
/// what it found, each line naming the source; fails, naming the key, on a source configured
/// wrong.
async fn check_sources(registry: &crate::step::Registry) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for step in &registry.pulls {
        for note in step.check().await? {
            notes.push(format!("{}: {note}", step.name()));
        }
    }
    Ok(notes)
}

fn order_text(order: &[String]) -> String {
    if order.is_empty() {
        "(no kinds)".into()
    } else {
        order.join(" → ")
    }
}

fn list_or_none(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// `thalamus graph [--dot | -o json]`.
pub fn graph(settings: &Settings, dot: bool, format: Format) -> anyhow::Result<()> {
    let registry = crate::app::registry(settings)?;
    let graph = crate::app::graph(settings, &registry)?;
    if format == Format::Json {
        let edges: Vec<_> = graph
            .dependencies()
            .iter()
            .map(|d| json!({"kind": d.kind, "depends_on": d.target, "field": d.field, "reverse": d.reverse}))
            .collect();
        print_json(&json!({
            "sync_order": graph.sync_order(),
            "levels": graph.levels(),
            "edges": edges,
        }))?;
    } else if dot {
        out!("{}", graph.to_dot());
    } else if graph.sync_order().is_empty() {
        outln!("(no kinds: model-deps.json and steps/ declare none)");
    } else {
        out!("{}", graph.to_text());
    }
    Ok(())
}
