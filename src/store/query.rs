//! Read models for operators: per-kind state counts and object listings.

use serde::Serialize;

use super::{with_pool, Result, Store, StoreError};

/// Where an object stands, derived from its bookkeeping columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Enacted at its current generation.
    Ok,
    /// New, changed, or in progress (deferred), and due to run.
    Pending,
    /// Failed; a retry is scheduled at `next_attempt_at`.
    Backoff,
    /// Failed permanently; waits for a spec change or `thalamus retry`.
    Error,
    /// Blocked by a dependency that is not in sync.
    Waiting,
    /// Soft-deleted; its delete step has not finished yet.
    Deleting,
}

impl State {
    /// Every state, in display order.
    pub const ALL: [State; 6] = [
        State::Ok,
        State::Pending,
        State::Backoff,
        State::Error,
        State::Waiting,
        State::Deleting,
    ];

    /// The lowercase name used in tables, JSON and `--state`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Pending => "pending",
            State::Backoff => "backoff",
            State::Error => "error",
            State::Waiting => "waiting",
            State::Deleting => "deleting",
        }
    }

    /// Parses a state name given on the command line.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The SQL expression computing [`State`] from the columns, shared by counts and filters.
pub(super) const STATE_SQL: &str = "CASE WHEN deleted_at IS NOT NULL THEN 'deleting' \
    WHEN enacted >= generation THEN 'ok' \
    WHEN waiting_on IS NOT NULL THEN 'waiting' \
    WHEN backend_code = 2 AND next_attempt_at IS NULL THEN 'error' \
    WHEN backend_code = 2 THEN 'backoff' \
    ELSE 'pending' END";

/// How many objects of one kind are in one state.
#[derive(Debug, Clone, Serialize)]
pub struct StateCount {
    pub kind: String,
    pub state: State,
    pub count: i64,
}

/// One row of `thalamus get`.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectSummary {
    pub kind: String,
    pub key: String,
    pub generation: i64,
    pub enacted: i64,
    pub state: State,
    pub attempts: i32,
    #[serde(serialize_with = "crate::clock::rfc3339::opt_ms")]
    pub next_attempt_at: Option<i64>,
    pub backend_status: String,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::clock::rfc3339::ms")]
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    kind: String,
    key: String,
    generation: i64,
    enacted: i64,
    state: String,
    attempts: i32,
    next_attempt_at: Option<i64>,
    backend_status: String,
    last_error: Option<String>,
    updated_at: i64,
}

/// What `thalamus get` asks for.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub kind: String,
    /// Empty means every key.
    pub keys: Vec<String>,
    pub state: Option<State>,
    pub limit: i64,
}

/// A page of objects across kinds for the operator API: optional kind, state and key prefix,
/// ordered by (kind, key) and resumed after the last (kind, key) seen, so inserts between
/// pages never repeat or skip a row.
#[derive(Debug, Clone, Default)]
pub struct PageFilter {
    pub kind: Option<String>,
    pub state: Option<State>,
    /// Only keys starting with this text (compared exactly, case included).
    pub prefix: Option<String>,
    /// Resume after this (kind, key).
    pub after: Option<(String, String)>,
    pub limit: i64,
}

fn parse_state(s: &str) -> Result<State> {
    State::parse(s)
        .ok_or_else(|| StoreError::Invalid(format!("unknown state {s:?} in the database")))
}

fn summary(r: SummaryRow) -> Result<ObjectSummary> {
    Ok(ObjectSummary {
        state: parse_state(&r.state)?,
        kind: r.kind,
        key: r.key,
        generation: r.generation,
        enacted: r.enacted,
        attempts: r.attempts,
        next_attempt_at: r.next_attempt_at,
        backend_status: r.backend_status,
        last_error: r.last_error,
        updated_at: r.updated_at,
    })
}

impl Store {
    /// Object counts per kind and state.
    pub async fn counts(&self) -> Result<Vec<StateCount>> {
        let sql = format!("SELECT kind, {STATE_SQL} AS state, COUNT(*) AS n FROM objects GROUP BY kind, state ORDER BY kind");
        let rows: Vec<(String, String, i64)> =
            with_pool!(&self.db, pool => sqlx::query_as(&sql).fetch_all(pool).await)?;
        rows.into_iter()
            .map(|(kind, state, count)| {
                Ok(StateCount {
                    kind,
                    state: parse_state(&state)?,
                    count,
                })
            })
            .collect()
    }

    /// Objects of one kind, optionally only some keys or one state, ordered by key.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<ObjectSummary>> {
        let rows: Vec<SummaryRow> = with_pool!(&self.db, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT kind, key, generation, enacted, {STATE_SQL} AS state, attempts, next_attempt_at, \
                 backend_status, last_error, updated_at FROM objects WHERE kind = "));
            q.push_bind(&filter.kind);
            if !filter.keys.is_empty() {
                q.push(" AND key IN (");
                let mut sep = q.separated(", ");
                for key in &filter.keys {
                    sep.push_bind(key);
                }
                q.push(")");
            }
            if let Some(state) = filter.state {
                q.push(format!(" AND {STATE_SQL} = ")).push_bind(state.as_str());
            }
            q.push(" ORDER BY key LIMIT ").push_bind(filter.limit);
            q.build_query_as().fetch_all(pool).await
        })?;
        rows.into_iter().map(summary).collect()
    }

    /// One page of objects matching `filter`, ordered by (kind, key): the operator API's list.
    pub async fn page(&self, filter: &PageFilter) -> Result<Vec<ObjectSummary>> {
        let rows: Vec<SummaryRow> = with_pool!(&self.db, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT kind, key, generation, enacted, {STATE_SQL} AS state, attempts, next_attempt_at, \
                 backend_status, last_error, updated_at FROM objects WHERE 1 = 1"));
            if let Some(kind) = &filter.kind {
                q.push(" AND kind = ").push_bind(kind);
            }
            if let Some(state) = filter.state {
                q.push(format!(" AND {STATE_SQL} = ")).push_bind(state.as_str());
            }
            if let Some(prefix) = &filter.prefix {
                q.push(" AND substr(key, 1, length(CAST(").push_bind(prefix);
                q.push(" AS TEXT))) = ").push_bind(prefix);
            }
            if let Some((kind, key)) = &filter.after {
                q.push(" AND (kind > ").push_bind(kind);
                q.push(" OR (kind = ").push_bind(kind);
                q.push(" AND key > ").push_bind(key);
                q.push("))");
            }
            q.push(" ORDER BY kind, key LIMIT ").push_bind(filter.limit);
            q.build_query_as().fetch_all(pool).await
        })?;
        rows.into_iter().map(summary).collect()
    }

    /// The kinds present in the store, for "unknown kind" hints.
    pub async fn kinds(&self) -> Result<Vec<String>> {
        let sql = "SELECT DISTINCT kind FROM objects ORDER BY kind";
        with_pool!(&self.db, pool => Ok(sqlx::query_scalar(sql).fetch_all(pool).await?))
    }

    /// The links an object declares, as (field, kind, key).
    pub async fn links_from(&self, id: i64) -> Result<Vec<(String, String, String)>> {
        let sql = "SELECT field, dst_kind, dst_key FROM links WHERE src_id = $1 ORDER BY field, dst_kind, dst_key";
        with_pool!(&self.db, pool => Ok(sqlx::query_as(sql).bind(id).fetch_all(pool).await?))
    }

    /// The objects that link to (kind, key), as (field, kind, key).
    pub async fn links_to(&self, kind: &str, key: &str) -> Result<Vec<(String, String, String)>> {
        let sql = "SELECT l.field, o.kind, o.key FROM links l JOIN objects o ON o.id = l.src_id \
                   WHERE l.dst_kind = $1 AND l.dst_key = $2 ORDER BY o.kind, o.key";
        with_pool!(&self.db, pool => Ok(sqlx::query_as(sql).bind(kind).bind(key).fetch_all(pool).await?))
    }
}
