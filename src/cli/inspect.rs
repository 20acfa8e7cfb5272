//! Read and operator commands over the model status tables: status, get, describe, history,
//! retry, delete.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::{json, Value};

use super::output::{clip, print_json, time_or_dash, Format, Table};
use crate::clock::{format_ms, Clock, SystemClock};
use crate::config::Settings;
use crate::store::{Execution, ListFilter, ObjectSummary, Open, RetryResult, State, Store};

async fn open(settings: &Settings) -> anyhow::Result<Store> {
    let store = crate::app::store(settings, Open::Existing).await?;
    store.ensure_migrated().await?;
    Ok(store)
}

/// Fails with the known kinds when `kind` has no objects at all (likely a typo).
async fn known_kind(store: &Store, kind: &str) -> anyhow::Result<()> {
    let kinds = store.kinds().await?;
    if !kinds.iter().any(|k| k == kind) {
        let known = if kinds.is_empty() {
            "none yet".to_string()
        } else {
            kinds.join(", ")
        };
        bail!("no objects of kind {kind:?} (kinds in the store: {known})");
    }
    Ok(())
}

/// `thalamus status`.
pub async fn status(settings: &Settings, format: Format) -> anyhow::Result<()> {
    let store = open(settings).await?;
    let mut per_kind: BTreeMap<String, BTreeMap<State, i64>> = BTreeMap::new();
    for c in store.counts().await? {
        *per_kind
            .entry(c.kind)
            .or_default()
            .entry(c.state)
            .or_default() += c.count;
    }
    if format == Format::Json {
        let kinds: Vec<Value> = per_kind
            .iter()
            .map(|(kind, counts)| {
                let mut row = json!({ "kind": kind, "total": counts.values().sum::<i64>() });
                for state in State::ALL {
                    row[state.as_str()] = json!(counts.get(&state).copied().unwrap_or(0));
                }
                row
            })
            .collect();
        let total: i64 = per_kind.values().flat_map(|c| c.values()).sum();
        let sources = store.source_health().await?;
        return print_json(&json!({ "kinds": kinds, "total": total, "sources": sources }));
    }
    if per_kind.is_empty() {
        println!("no objects yet");
        return print_sources(&store).await;
    }
    let mut table = Table::new(vec![
        "KIND", "OK", "PENDING", "BACKOFF", "ERROR", "WAITING", "DELETING", "TOTAL",
    ]);
    for (kind, counts) in &per_kind {
        let mut row = vec![kind.clone()];
        row.extend(
            State::ALL
                .iter()
                .map(|s| counts.get(s).copied().unwrap_or(0).to_string()),
        );
        row.push(counts.values().sum::<i64>().to_string());
        table.row(row);
    }
    print!("{}", table.render());
    print_sources(&store).await
}

/// The sources' health block of `thalamus status`, after a blank line: each pull step's
/// state, last working poll, items seen and skipped in it, and what last went wrong.
async fn print_sources(store: &Store) -> anyhow::Result<()> {
    let sources = store.source_health().await?;
    if sources.is_empty() {
        return Ok(());
    }
    let mut table = Table::new(vec![
        "SOURCE",
        "STATE",
        "LAST SUCCESS",
        "SEEN",
        "SKIPPED",
        "FAILURES",
        "LAST ERROR",
    ]);
    for h in &sources {
        let error = match (&h.last_error, h.last_error_at) {
            (Some(e), Some(at)) => format!("{} ({})", clip(e, 100), format_ms(at)),
            (Some(e), None) => clip(e, 100),
            _ => "-".into(),
        };
        table.row(vec![
            h.source.clone(),
            h.state.clone(),
            time_or_dash(h.last_success_at),
            h.seen.to_string(),
            h.skipped.to_string(),
            h.failures.to_string(),
            error,
        ]);
    }
    println!();
    print!("{}", table.render());
    Ok(())
}

/// `thalamus get KIND [KEY…] [--state S]`.
pub async fn get(
    settings: &Settings,
    kind: String,
    keys: Vec<String>,
    state: Option<String>,
    limit: i64,
    format: Format,
) -> anyhow::Result<()> {
    let state = match state {
        Some(s) => match State::parse(&s) {
            Some(st) => Some(st),
            None => bail!(
                "unknown state {s:?}: use one of ok, pending, backoff, error, waiting, deleting"
            ),
        },
        None => None,
    };
    if limit < 1 {
        bail!("--limit must be at least 1");
    }
    let store = open(settings).await?;
    let rows = store
        .list(&ListFilter {
            kind: kind.clone(),
            keys: keys.clone(),
            state,
            limit,
        })
        .await?;
    if rows.is_empty() && format == Format::Table {
        known_kind(&store, &kind).await?;
    }
    if format == Format::Json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no {kind} objects match");
        return Ok(());
    }
    let mut table = Table::new(vec![
        "KEY",
        "GENERATION",
        "ENACTED",
        "STATE",
        "ATTEMPTS",
        "NEXT ATTEMPT",
        "BACKEND STATUS",
    ]);
    for r in &rows {
        table.row(vec![
            r.key.clone(),
            r.generation.to_string(),
            r.enacted.to_string(),
            r.state.as_str().to_string(),
            r.attempts.to_string(),
            time_or_dash(next_attempt(r)),
            clip(&r.backend_status, 100),
        ]);
    }
    print!("{}", table.render());
    if rows.len() as i64 == limit {
        eprintln!("(showing the first {limit}; use --limit for more)");
    }
    Ok(())
}

/// The next attempt is meaningful only for objects that still have work to do.
fn next_attempt(r: &ObjectSummary) -> Option<i64> {
    if r.state == State::Ok {
        None
    } else {
        r.next_attempt_at
    }
}

/// `thalamus describe KIND KEY`.
pub async fn describe(
    settings: &Settings,
    kind: &str,
    key: &str,
    format: Format,
) -> anyhow::Result<()> {
    let store = open(settings).await?;
    let Some(row) = store.get(kind, key).await? else {
        bail!("{kind} {key} not found")
    };
    let filter = ListFilter {
        kind: kind.into(),
        keys: vec![key.into()],
        state: None,
        limit: 1,
    };
    let Some(summary) = store.list(&filter).await?.pop() else {
        bail!("{kind} {key} not found")
    };
    let links = store.links_from(row.id).await?;
    let dependents = store.links_to(kind, key).await?;
    let executions = store.history(kind, key, 10).await?;
    let spec: Value = serde_json::from_str(&row.spec).unwrap_or(Value::String(row.spec.clone()));
    let status: Value =
        serde_json::from_str(&row.status).unwrap_or(Value::String(row.status.clone()));
    if format == Format::Json {
        let mut doc = serde_json::to_value(&summary)?;
        doc["spec"] = spec;
        doc["status"] = status;
        doc["revision"] = json!(row.revision);
        doc["policed"] = json!(row.policed);
        doc["waiting_on"] = json!(row.waiting_on);
        doc["last_success_at"] = json!(row.last_success_at.map(format_ms));
        doc["created_at"] = json!(format_ms(row.created_at));
        doc["deleted_at"] = json!(row.deleted_at.map(format_ms));
        doc["need_delete"] = json!(row.need_delete);
        doc["links"] = json!(links
            .iter()
            .map(|(f, k, n)| json!({"field": f, "kind": k, "key": n}))
            .collect::<Vec<_>>());
        doc["dependents"] = json!(dependents
            .iter()
            .map(|(f, k, n)| json!({"field": f, "kind": k, "key": n}))
            .collect::<Vec<_>>());
        doc["executions"] = serde_json::to_value(&executions)?;
        return print_json(&doc);
    }
    println!("{kind} {key}");
    println!("  state:           {}", summary.state.as_str());
    println!(
        "  generation:      {} (enacted {})",
        row.generation, row.enacted
    );
    println!("  backend status:  {}", row.backend_status);
    println!("  attempts:        {}", row.attempts);
    println!(
        "  next attempt:    {}",
        time_or_dash(next_attempt(&summary))
    );
    println!(
        "  last error:      {}",
        row.last_error.as_deref().unwrap_or("-")
    );
    println!("  last success:    {}", time_or_dash(row.last_success_at));
    println!("  created:         {}", format_ms(row.created_at));
    if let Some(deleted) = row.deleted_at {
        println!(
            "  deleted:         {} (delete step needed: {})",
            format_ms(deleted),
            row.need_delete
        );
    }
    println!("  links:           {}", link_text(&links));
    println!("  dependents:      {}", link_text(&dependents));
    println!("spec:\n{}", indent(&serde_json::to_string_pretty(&spec)?));
    println!(
        "status:\n{}",
        indent(&serde_json::to_string_pretty(&status)?)
    );
    println!("recent executions:");
    if executions.is_empty() {
        println!("  none");
    } else {
        print!("{}", indent(&history_table(&executions).render()));
    }
    Ok(())
}

fn link_text(links: &[(String, String, String)]) -> String {
    if links.is_empty() {
        return "-".into();
    }
    links
        .iter()
        .map(|(field, kind, key)| format!("{field} → {kind} {key}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn history_table(executions: &[Execution]) -> Table {
    let mut table = Table::new(vec![
        "ID", "STARTED", "STEP", "GEN", "CAUSE", "OUTCOME", "DURATION", "DETAIL",
    ]);
    for e in executions {
        table.row(vec![
            e.id.to_string(),
            format_ms(e.started_at),
            e.step.clone(),
            e.generation.to_string(),
            clip(&e.cause, 40),
            e.outcome.clone(),
            format!("{}ms", e.duration_ms),
            clip(e.error.as_deref().unwrap_or("-"), 80),
        ]);
    }
    table
}

/// `thalamus history KIND KEY`.
pub async fn history(
    settings: &Settings,
    kind: &str,
    key: &str,
    limit: i64,
    format: Format,
) -> anyhow::Result<()> {
    if limit < 1 {
        bail!("--limit must be at least 1");
    }
    let store = open(settings).await?;
    let executions = store.history(kind, key, limit).await?;
    if format == Format::Json {
        return print_json(&executions);
    }
    if executions.is_empty() {
        if store.get(kind, key).await?.is_none() {
            bail!("{kind} {key} not found and has no recorded executions");
        }
        println!("no executions recorded for {kind} {key}");
        return Ok(());
    }
    print!("{}", history_table(&executions).render());
    Ok(())
}

/// `thalamus retry KIND KEY`.
pub async fn retry(settings: &Settings, kind: &str, key: &str) -> anyhow::Result<()> {
    let store = open(settings).await?;
    match store.retry(kind, key, SystemClock.now_ms()).await? {
        RetryResult::Scheduled => {
            println!("{kind} {key}: backoff cleared; it runs at the next pass")
        }
        RetryResult::InSync => println!("{kind} {key} is in sync; nothing to retry"),
        RetryResult::NotFound => bail!("{kind} {key} not found"),
    }
    Ok(())
}

/// `thalamus delete KIND KEY`.
pub async fn delete(settings: &Settings, kind: &str, key: &str) -> anyhow::Result<()> {
    let store = open(settings).await?;
    if store.get(kind, key).await?.is_none() {
        bail!("{kind} {key} not found");
    }
    let marked = store.delete(kind, key, SystemClock.now_ms()).await?;
    if marked == 0 {
        println!("{kind} {key} is already being deleted");
    } else {
        println!("{kind} {key}: marked {marked} object(s) for deletion (dependents first)");
    }
    Ok(())
}
