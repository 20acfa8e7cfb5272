//! Read and operator commands over the model status tables: status, get, describe, history,
//! retry, delete.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::{json, Value};

use super::output::{clip, out, outln, print_json, time_or_dash, Format, Table};
use crate::clock::{format_ms, Clock, SystemClock};
use crate::config::Settings;
use crate::store::{
    DeadLetterCount, Execution, ListFilter, ObjectSummary, Open, OutboxDepth, RetryResult, State,
    Store,
};

async fn open(settings: &Settings) -> anyhow::Result<Store> {
    let store = crate::app::store(settings, Open::Existing).await?;
    store.ensure_migrated().await?;
    Ok(store)
}

/// The kinds thalamus knows: those with a sync step in this build, and those in the store.
async fn kinds(settings: &Settings, store: &Store) -> anyhow::Result<Vec<String>> {
    let mut kinds = store.kinds().await?;
    // The steps name the kinds; the rules add none (and a missing rules file must not hide
    // a kind from a read command).
    let mut steps_only = settings.clone();
    steps_only.rules.paths.clear();
    if let Ok(registry) = crate::app::registry(&steps_only) {
        kinds.extend(registry.sync_kinds().iter().map(|k| k.to_string()));
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// Fails with the known kinds when `kind` is not one (likely a typo).
async fn known_kind(settings: &Settings, store: &Store, kind: &str) -> anyhow::Result<()> {
    let kinds = kinds(settings, store).await?;
    if !kinds.iter().any(|k| k == kind) {
        let known = if kinds.is_empty() {
            "none yet".to_string()
        } else {
            kinds.join(", ")
        };
        bail!("{kind} is not a kind (kinds: {known})");
    }
    Ok(())
}

/// Not found: says which key was probably meant (keys carry the instrument, `VLA/…`), or
/// that `kind` is not a kind at all.
async fn not_found(settings: &Settings, store: &Store, kind: &str, key: &str) -> anyhow::Error {
    if let Err(e) = known_kind(settings, store, kind).await {
        return e;
    }
    match store.similar_keys(kind, key, 5).await {
        Ok(keys) if !keys.is_empty() => {
            let meant: Vec<String> = keys.iter().map(|k| format!("{kind} {k}")).collect();
            anyhow::anyhow!(
                "{kind} {key} not found; did you mean {}?",
                meant.join(" or ")
            )
        }
        _ => anyhow::anyhow!("{kind} {key} not found (keys carry the instrument, e.g. VLA/…)"),
    }
}

/// `thalamus status`.
pub async fn status(settings: &Settings, format: Format) -> anyhow::Result<()> {
    let store = open(settings).await?;
    let letters = store.dead_letter_count().await?;
    let outbox = store.outbox_depth().await?;
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
        return print_json(&json!({
            "kinds": kinds,
            "total": total,
            "dead_letters": letters.count,
            "oldest_dead_letter": letters.oldest.map(format_ms),
            "outbox_waiting": outbox.unsent,
            "oldest_outbox": outbox.oldest.map(format_ms),
            "sources": store.source_health().await?,
        }));
    }
    if per_kind.is_empty() {
        outln!("no objects yet");
        if let Some(line) = dead_letter_line(&letters) {
            outln!("{line}");
        }
        if let Some(line) = outbox_line(&outbox) {
            outln!("{line}");
        }
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
    out!("{}", table.render());
    if let Some(line) = dead_letter_line(&letters) {
        outln!("{line}");
    }
    if let Some(line) = outbox_line(&outbox) {
        outln!("{line}");
    }
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
    outln!();
    out!("{}", table.render());
    Ok(())
}

/// The announcements waiting to be published, if any (JSON always counts them).
fn outbox_line(outbox: &OutboxDepth) -> Option<String> {
    let oldest = outbox.oldest.filter(|_| outbox.unsent > 0)?;
    Some(format!(
        "outbox: {} waiting (oldest written {}; `thalamus outbox list`)",
        outbox.unsent,
        format_ms(oldest)
    ))
}

/// The dead letters kept, if any (JSON always counts them).
fn dead_letter_line(letters: &DeadLetterCount) -> Option<String> {
    let oldest = letters.oldest.filter(|_| letters.count > 0)?;
    Some(format!(
        "dead letters: {} (oldest {}; `thalamus dead-letters list`)",
        letters.count,
        format_ms(oldest)
    ))
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
    if rows.is_empty() {
        known_kind(settings, &store, &kind).await?;
    }
    // Keys asked for by name that do not exist are an error (exit 1), after the rest print.
    let missing: Vec<&String> = match state {
        Some(_) => Vec::new(),
        None => keys
            .iter()
            .filter(|k| !rows.iter().any(|r| &r.key == *k))
            .collect(),
    };
    let not_found = || {
        let list: Vec<&str> = missing.iter().map(|k| k.as_str()).collect();
        anyhow::anyhow!(
            "{kind} not found: {} (keys carry the instrument, e.g. VLA/<name>)",
            list.join(", ")
        )
    };
    if format == Format::Json {
        print_json(&rows)?;
        return if missing.is_empty() {
            Ok(())
        } else {
            Err(not_found())
        };
    }
    if rows.is_empty() {
        if keys.is_empty() && state.is_none() {
            outln!("no {kind} objects");
        } else if missing.is_empty() {
            outln!("no {kind} objects match");
        } else {
            return Err(not_found());
        }
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
    out!("{}", table.render());
    if rows.len() as i64 == limit {
        crate::telemetry::say(&format!(
            "(showing the first {limit}; use --limit for more)"
        ));
    }
    if !missing.is_empty() {
        return Err(not_found());
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
        return Err(not_found(settings, &store, kind, key).await);
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
    // The controller running on this configuration knows which steps it runs, and since
    // when: ask its API. Failing that, a live lease (PostgreSQL keeps them in a table every
    // replica sees; SQLite's live in the controller's memory) means a replica runs, or is
    // about to run, its step.
    let now = SystemClock.now_ms();
    let running = match running_from_api(settings, kind, key).await {
        Some(running) => Some(running),
        None => store
            .leases()
            .await?
            .into_iter()
            .find(|l| l.id == row.id && l.until > now && summary.state != State::Ok)
            .map(
                |l| json!({"replica": l.holder, "since": null, "lease_until": format_ms(l.until)}),
            ),
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
        doc["running"] = json!(running);
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
    outln!("{kind} {key}");
    let text = |v: &Value, field: &str| v[field].as_str().unwrap_or_default().to_string();
    match &running {
        Some(r) if r["since"].is_string() => outln!(
            "  state:           {}, running since {} on replica {}",
            summary.state.as_str(),
            text(r, "since"),
            text(r, "replica")
        ),
        Some(r) => outln!(
            "  state:           {}, claimed by replica {} (running or about to; lease until {})",
            summary.state.as_str(),
            text(r, "replica"),
            text(r, "lease_until")
        ),
        None => outln!("  state:           {}", summary.state.as_str()),
    }
    outln!(
        "  generation:      {} (enacted {})",
        row.generation,
        row.enacted
    );
    outln!("  backend status:  {}", row.backend_status);
    outln!("  attempts:        {}", row.attempts);
    outln!(
        "  next attempt:    {}",
        time_or_dash(next_attempt(&summary))
    );
    outln!(
        "  last error:      {}",
        row.last_error.as_deref().unwrap_or("-")
    );
    outln!("  last success:    {}", time_or_dash(row.last_success_at));
    outln!("  created:         {}", format_ms(row.created_at));
    if let Some(deleted) = row.deleted_at {
        outln!(
            "  deleted:         {} (delete step needed: {})",
            format_ms(deleted),
            row.need_delete
        );
    }
    outln!("  links:           {}", link_text(&links));
    outln!("  dependents:      {}", link_text(&dependents));
    outln!("spec:\n{}", indent(&serde_json::to_string_pretty(&spec)?));
    outln!(
        "status:\n{}",
        indent(&serde_json::to_string_pretty(&status)?)
    );
    outln!("recent executions:");
    if executions.is_empty() {
        outln!("  none");
    } else {
        out!("{}", indent(&history_table(&executions).render()));
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
        outln!("no executions recorded for {kind} {key}");
        return Ok(());
    }
    out!("{}", history_table(&executions).render());
    Ok(())
}

/// `thalamus retry KIND (KEY | --state STATE | --all)`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["key", "state", "all"])))]
pub struct RetryArgs {
    /// The model kind, e.g. Ingestion.
    pub kind: String,
    /// One object's key.
    pub key: Option<String>,
    /// Every object of KIND in this state: error, backoff, waiting, pending or deleting.
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// Every object of KIND that is not in sync.
    #[arg(long)]
    pub all: bool,
}

/// `thalamus retry`: one object, or every object of a kind in one state or not in sync.
pub async fn retry(settings: &Settings, args: RetryArgs) -> anyhow::Result<()> {
    let kind = args.kind.as_str();
    let state = match args.state.as_deref() {
        None => None,
        Some("ok") => bail!("objects in state ok are in sync; nothing to retry"),
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown state {s:?}: use one of pending, backoff, error, waiting, deleting"
            )
        })?),
    };
    let store = open(settings).await?;
    let now = SystemClock.now_ms();
    let Some(key) = args.key.as_deref() else {
        known_kind(settings, &store, kind).await?;
        let n = store.retry_many(kind, state, now).await?;
        match state {
            Some(state) => outln!(
                "{kind}: {n} object(s) in state {} scheduled to run at the next pass",
                state.as_str()
            ),
            None => outln!("{kind}: {n} object(s) not in sync scheduled to run at the next pass"),
        }
        return Ok(());
    };
    let filter = ListFilter {
        kind: kind.into(),
        keys: vec![key.into()],
        state: None,
        limit: 1,
    };
    let before = store.list(&filter).await?.pop().map(|s| s.state);
    match store.retry(kind, key, now).await? {
        RetryResult::Scheduled => {
            let what = match before {
                Some(State::Error) => "permanent failure cleared",
                Some(State::Backoff) => "backoff cleared",
                Some(State::Waiting) => "dependency wait cleared",
                _ => "scheduled",
            };
            outln!("{kind} {key}: {what}; it runs at the next pass")
        }
        RetryResult::InSync => outln!("{kind} {key} is in sync; nothing to retry"),
        RetryResult::NotFound => return Err(not_found(settings, &store, kind, key).await),
    }
    Ok(())
}

/// `thalamus delete KIND KEY`.
pub async fn delete(settings: &Settings, kind: &str, key: &str) -> anyhow::Result<()> {
    let store = open(settings).await?;
    if store.get(kind, key).await?.is_none() {
        return Err(not_found(settings, &store, kind, key).await);
    }
    let marked = store.delete(kind, key, SystemClock.now_ms()).await?;
    if marked == 0 {
        outln!("{kind} {key} is already being deleted");
    } else {
        outln!("{kind} {key}: marked {marked} object(s) for deletion (dependents first)");
    }
    Ok(())
}

/// Who runs the step of `kind` `key` now, as the controller serving this configuration's
/// API says (`running` of `GET /api/v1/models/{kind}/{key}`); `None` when it runs none, or
/// no controller answers within a second.
async fn running_from_api(settings: &Settings, kind: &str, key: &str) -> Option<Value> {
    if !settings.api.enabled {
        return None;
    }
    let host = settings.api.listen.replace("0.0.0.0:", "127.0.0.1:");
    let url = format!(
        "http://{host}/api/v1/models/{}/{}",
        crate::api::encode_segment(kind),
        crate::api::encode_segment(key)
    );
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(1))
        .build()
        .ok()?;
    let detail: Value = client.get(url).send().await.ok()?.json().await.ok()?;
    detail.get("running").filter(|r| !r.is_null()).cloned()
}
