//! Commands that run or set up the controller: run, migrate, check, graph.

use tracing::info;

use crate::config::Settings;
use crate::engine::OnceReport;
use crate::secret::redact_url;
use crate::store::Open;

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
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
    // One live process per holder id: after a crash, the restarted process waits for its
    // predecessor's heartbeat to lapse, then takes its leases over at once.
    let Some(seat) = engine.join().await? else {
        return Ok(()); // shutdown requested while waiting for the holder id
    };
    let heart = engine.clone();
    let beat = seat.clone();
    let heartbeat = tokio::spawn(async move { heart.keep(&beat).await });
    let result = if once {
        crate::app::run_once(&engine)
            .await
            .map(|report| println!("{}", summary(&report)))
    } else {
        crate::app::run_with_transports(&engine, &settings.events).await
    };
    heartbeat.abort();
    engine.leave(&seat).await;
    engine.store().close().await;
    result
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
    println!(
        "schema up to date at {}",
        redact_url(&settings.database.url)
    );
    Ok(())
}

/// `thalamus check`.
pub fn check(settings: &Settings) -> anyhow::Result<()> {
    let registry = crate::app::registry(settings)?;
    let graph = crate::app::graph(settings, &registry)?;
    println!(
        "configuration OK (database {})",
        redact_url(&settings.database.url)
    );
    println!(
        "{} OK: sync order {}",
        settings.model_deps.display(),
        order_text(graph.sync_order())
    );
    println!(
        "sync steps: {}",
        list_or_none(
            registry
                .sync_kinds()
                .iter()
                .map(|s| s.to_string())
                .collect()
        )
    );
    println!("pull steps: {}", list_or_none(registry.pull_names()));
    println!("policies: {}", list_or_none(registry.policy_names()));
    println!("event steps: {}", list_or_none(registry.event_names()));
    let files = settings.rules.files()?;
    println!("rules: {} file(s) OK", files.len());
    Ok(())
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

/// `thalamus graph [--dot]`.
pub fn graph(settings: &Settings, dot: bool) -> anyhow::Result<()> {
    let registry = crate::app::registry(settings)?;
    let graph = crate::app::graph(settings, &registry)?;
    if dot {
        print!("{}", graph.to_dot());
    } else if graph.sync_order().is_empty() {
        println!("(no kinds: model-deps.json and steps/ declare none)");
    } else {
        print!("{}", graph.to_text());
    }
    Ok(())
}
