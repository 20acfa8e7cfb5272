//! What the API answers with, and how each is read from the store: the same store queries
//! the CLI's `status`, `get`, `describe` and `history` run, so both show the same figures.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::clock::format_ms;
use crate::store::{Execution, ListFilter, ObjectSummary, PageFilter, State, Store};

/// One model in a listing (`thalamus get -o json`'s fields).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelSummary {
    pub kind: String,
    pub key: String,
    /// Desired version.
    pub generation: i64,
    /// Last version synced successfully.
    pub enacted: i64,
    /// ok, pending, backoff, error, waiting or deleting.
    pub state: String,
    pub attempts: i32,
    /// RFC 3339; absent when nothing is scheduled.
    pub next_attempt_at: Option<String>,
    pub backend_status: String,
    pub last_error: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<ObjectSummary> for ModelSummary {
    fn from(s: ObjectSummary) -> Self {
        Self {
            kind: s.kind,
            key: s.key,
            generation: s.generation,
            enacted: s.enacted,
            state: s.state.as_str().into(),
            attempts: s.attempts,
            next_attempt_at: s.next_attempt_at.map(format_ms),
            backend_status: s.backend_status,
            last_error: s.last_error,
            updated_at: format_ms(s.updated_at),
        }
    }
}

/// A page of models; pass `next_cursor` as `cursor` for the next one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelPage {
    pub items: Vec<ModelSummary>,
    /// Absent on the last page.
    pub next_cursor: Option<String>,
}

/// A link between two models.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LinkView {
    /// The spec field holding the link.
    pub field: String,
    pub kind: String,
    pub key: String,
}

/// One recorded attempt (`thalamus history -o json`'s fields).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutionView {
    pub id: i64,
    pub step: String,
    pub generation: i64,
    pub cause: String,
    pub holder: String,
    /// RFC 3339.
    pub started_at: String,
    pub duration_ms: i64,
    pub outcome: String,
    pub error: Option<String>,
}

impl From<Execution> for ExecutionView {
    fn from(e: Execution) -> Self {
        Self {
            id: e.id,
            step: e.step,
            generation: e.generation,
            cause: e.cause,
            holder: e.holder,
            started_at: format_ms(e.started_at),
            duration_ms: e.duration_ms,
            outcome: e.outcome,
            error: e.error,
        }
    }
}

/// One model in full (`thalamus describe -o json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDetail {
    #[serde(flatten)]
    pub summary: ModelSummary,
    #[schema(value_type = Object)]
    pub spec: Value,
    #[schema(value_type = Object)]
    pub status: Value,
    pub revision: i64,
    pub policed: i64,
    pub waiting_on: Option<String>,
    pub last_success_at: Option<String>,
    pub created_at: String,
    pub deleted_at: Option<String>,
    pub need_delete: bool,
    /// The replica running its step now, if one is (see [`RunningView`]).
    pub running: Option<RunningView>,
    /// The models this one links to.
    pub links: Vec<LinkView>,
    /// The models that link to this one.
    pub dependents: Vec<LinkView>,
    /// The latest attempts, newest first.
    pub executions: Vec<ExecutionView>,
}

/// Who runs a model's step now. `since` is known for steps this process runs; for another
/// replica (PostgreSQL) only its lease is seen: claimed, running or about to, until then.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunningView {
    pub replica: String,
    /// When the step started (this process's steps).
    pub since: Option<String>,
    /// Until when another replica's lease holds the model.
    pub lease_until: Option<String>,
}

/// Who runs the step of `kind` `key` (object `id`) now: this process, or another replica's
/// live lease.
pub async fn running(
    engine: &crate::engine::Engine,
    kind: &str,
    key: &str,
    id: i64,
) -> Result<Option<RunningView>, ApiError> {
    if let Some(since) = engine.reconcile_metrics().running_since(kind, key) {
        return Ok(Some(RunningView {
            replica: engine.holder().to_string(),
            since: Some(format_ms(since)),
            lease_until: None,
        }));
    }
    let now = engine.now_ms();
    Ok(engine
        .store()
        .leases()
        .await?
        .into_iter()
        .find(|l| l.id == id && l.until > now && l.holder != engine.holder())
        .map(|l| RunningView {
            replica: l.holder,
            since: None,
            lease_until: Some(format_ms(l.until)),
        }))
}

/// Counts of one kind's models per state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KindCounts {
    pub kind: String,
    pub total: i64,
    pub ok: i64,
    pub pending: i64,
    pub backoff: i64,
    pub error: i64,
    pub waiting: i64,
    pub deleting: i64,
}

impl KindCounts {
    /// The count in `state`.
    pub fn get(&self, state: State) -> i64 {
        match state {
            State::Ok => self.ok,
            State::Pending => self.pending,
            State::Backoff => self.backoff,
            State::Error => self.error,
            State::Waiting => self.waiting,
            State::Deleting => self.deleting,
        }
    }

    fn add(&mut self, state: State, n: i64) {
        let slot = match state {
            State::Ok => &mut self.ok,
            State::Pending => &mut self.pending,
            State::Backoff => &mut self.backoff,
            State::Error => &mut self.error,
            State::Waiting => &mut self.waiting,
            State::Deleting => &mut self.deleting,
        };
        *slot += n;
        self.total += n;
    }
}

/// Counts per kind × state (`thalamus status -o json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Counts {
    pub kinds: Vec<KindCounts>,
    pub total: i64,
    /// Dead letters kept, and when the oldest arrived (RFC 3339).
    pub dead_letters: i64,
    pub oldest_dead_letter: Option<String>,
    /// Announcements waiting in the outbox, and when the oldest was written (RFC 3339).
    pub outbox_waiting: i64,
    pub oldest_outbox: Option<String>,
    /// The same, in epoch ms (for `/metrics`' age gauge; not in the JSON).
    #[serde(skip)]
    pub oldest_outbox_ms: Option<i64>,
    /// Each source's health (as `thalamus status` shows it).
    #[schema(value_type = Vec<Object>)]
    pub sources: Vec<crate::store::SourceHealth>,
}

/// Counts per kind × state, from the query `thalamus status` runs.
pub async fn counts(store: &Store) -> Result<Counts, ApiError> {
    let mut per_kind: BTreeMap<String, KindCounts> = BTreeMap::new();
    for c in store.counts().await? {
        per_kind
            .entry(c.kind.clone())
            .or_insert_with(|| KindCounts {
                kind: c.kind.clone(),
                total: 0,
                ok: 0,
                pending: 0,
                backoff: 0,
                error: 0,
                waiting: 0,
                deleting: 0,
            })
            .add(c.state, c.count);
    }
    let kinds: Vec<KindCounts> = per_kind.into_values().collect();
    let total = kinds.iter().map(|k| k.total).sum();
    let letters = store.dead_letter_count().await?;
    let outbox = store.outbox_depth().await?;
    Ok(Counts {
        kinds,
        total,
        dead_letters: letters.count,
        oldest_dead_letter: letters.oldest.map(crate::clock::format_ms),
        outbox_waiting: outbox.unsent,
        oldest_outbox: outbox.oldest.map(crate::clock::format_ms),
        oldest_outbox_ms: outbox.oldest,
        sources: store.source_health().await?,
    })
}

/// An opaque position in the (kind, key) order: hex of a JSON pair.
pub fn encode_cursor(kind: &str, key: &str) -> String {
    let text = serde_json::to_string(&(kind, key)).unwrap_or_default();
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The (kind, key) a cursor stands for; a 400 naming `cursor` if it is not one.
pub fn decode_cursor(cursor: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_param("cursor", "is not a cursor this API gave out");
    if !cursor.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, ApiError>>()?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

/// One page of models matching `filter` (its `limit` is the page size).
pub async fn page(store: &Store, mut filter: PageFilter) -> Result<ModelPage, ApiError> {
    let limit = filter.limit;
    filter.limit = limit + 1;
    let mut rows = store.page(&filter).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(&r.kind, &r.key))
    } else {
        None
    };
    Ok(ModelPage {
        items: rows.into_iter().map(ModelSummary::from).collect(),
        next_cursor,
    })
}

fn links(rows: Vec<(String, String, String)>) -> Vec<LinkView> {
    rows.into_iter()
        .map(|(field, kind, key)| LinkView { field, kind, key })
        .collect()
}

/// One model in full, with its `executions` latest attempts; `None` if there is no such model.
pub async fn detail(
    engine: &crate::engine::Engine,
    kind: &str,
    key: &str,
    executions: i64,
) -> Result<Option<ModelDetail>, ApiError> {
    let store = engine.store();
    let Some(row) = store.get(kind, key).await? else {
        return Ok(None);
    };
    let filter = ListFilter {
        kind: kind.into(),
        keys: vec![key.into()],
        state: None,
        limit: 1,
    };
    let Some(summary) = store.list(&filter).await?.pop() else {
        return Ok(None);
    };
    let parse = |text: &str| serde_json::from_str(text).unwrap_or(Value::String(text.into()));
    Ok(Some(ModelDetail {
        summary: summary.into(),
        spec: parse(&row.spec),
        status: parse(&row.status),
        revision: row.revision,
        policed: row.policed,
        waiting_on: row.waiting_on,
        last_success_at: row.last_success_at.map(format_ms),
        created_at: format_ms(row.created_at),
        deleted_at: row.deleted_at.map(format_ms),
        need_delete: row.need_delete,
        running: running(engine, kind, key, row.id).await?,
        links: links(store.links_from(row.id).await?),
        dependents: links(store.links_to(kind, key).await?),
        executions: store
            .history(kind, key, executions)
            .await?
            .into_iter()
            .map(ExecutionView::from)
            .collect(),
    }))
}
