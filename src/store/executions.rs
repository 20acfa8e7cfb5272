//! The executions audit trail: one row per sync, delete, policy or event attempt.

use serde::Serialize;

use super::{with_pool, Db, Result, Store};

/// How an attempt ended, as the audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Did what it was asked (synced, deleted, applied, polled, handled).
    Ok,
    /// Work under way elsewhere; looked at again later, not a failure.
    Deferred,
    /// Failed in a way a retry may fix.
    Error,
    /// Failed in a way only a new spec or an operator can fix.
    Permanent,
    /// The step panicked (counted as an error).
    Panic,
    /// The step ran past `sync.step_timeout_seconds` and was cancelled.
    Timeout,
    /// Its result was not recorded: an event changed the status while it ran.
    Superseded,
    /// A message changed nothing (a duplicate or stale one).
    Unchanged,
    /// A message no step could use (a dead letter).
    Rejected,
}

impl Outcome {
    /// The word stored in `executions.outcome`.
    pub const fn code(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Deferred => "deferred",
            Outcome::Error => "error",
            Outcome::Permanent => "permanent",
            Outcome::Panic => "panic",
            Outcome::Timeout => "timeout",
            Outcome::Superseded => "superseded",
            Outcome::Unchanged => "unchanged",
            Outcome::Rejected => "rejected",
        }
    }
}

/// An attempt to record.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub kind: String,
    pub key: String,
    /// `sync`, `delete`, `reap`, `policy:<name>`, `event:<name>`, `pull:<name>`.
    pub step: String,
    pub generation: i64,
    /// Why it ran: new generation, retry after backoff, deferred recheck, operator retry, …
    pub cause: String,
    pub holder: String,
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: Outcome,
    /// The error, or why a deferred attempt waits.
    pub error: Option<String>,
}

/// A recorded attempt, as `thalamus history` and `describe` show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Execution {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub step: String,
    pub generation: i64,
    pub cause: String,
    pub holder: String,
    #[serde(serialize_with = "crate::clock::rfc3339::ms")]
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: String,
    /// The error, or why a deferred attempt waits.
    pub error: Option<String>,
}

/// Bulk insert of executions on an open connection (in a transaction), the fastest way each
/// backend has: bound rows on SQLite, one array per column on PostgreSQL (where a thousand
/// bound rows cost more to bind and plan than to insert).
pub(crate) trait InsertExecutions {
    async fn insert_executions(&mut self, rows: &[&NewExecution]) -> Result<()>;
}

const INSERT: &str = "INSERT INTO executions (kind, key, step, generation, cause, holder, started_at, duration_ms, outcome, error) ";

/// One column value of an execution, to bind.
#[derive(Clone, Copy, PartialEq)]
enum Val<'a> {
    Text(&'a str),
    Int(i64),
    Maybe(Option<&'a str>),
}

/// The executions columns in [`INSERT`] order, read from a row.
const COLUMNS: [fn(&NewExecution) -> Val<'_>; 10] = [
    |e| Val::Text(&e.kind),
    |e| Val::Text(&e.key),
    |e| Val::Text(&e.step),
    |e| Val::Int(e.generation),
    |e| Val::Text(&e.cause),
    |e| Val::Text(&e.holder),
    |e| Val::Int(e.started_at),
    |e| Val::Int(e.duration_ms),
    |e| Val::Text(e.outcome.code()),
    |e| Val::Maybe(e.error.as_deref()),
];

/// Rows per SQLite INSERT: each row's values are bound, and a statement takes at most
/// 32,766 parameters.
const PAGE: usize = 1000;

/// The key column: always bound per row, so a chunk has at least one per-row column.
const KEY: usize = 1;

fn push_val<'a>(b: &mut sqlx::query_builder::Separated<'_, 'a, sqlx::Sqlite, &str>, v: Val<'a>) {
    match v {
        Val::Text(t) => b.push_bind(t),
        Val::Int(i) => b.push_bind(i),
        Val::Maybe(m) => b.push_bind(m),
    };
}

impl InsertExecutions for sqlx::SqliteConnection {
    async fn insert_executions(&mut self, rows: &[&NewExecution]) -> Result<()> {
        // Bound rows, and a column whose value every row of the chunk shares (the kind, step,
        // cause, holder, outcome, generation, no error: usually all of them) bound once:
        // binding is most of an insert's cost here, and extracting fields from one JSON
        // parameter was slower still.
        for chunk in rows.chunks(PAGE) {
            let first = chunk[0];
            let shared: Vec<bool> = COLUMNS
                .iter()
                .enumerate()
                .map(|(c, col)| c != KEY && chunk.iter().all(|e| col(e) == col(first)))
                .collect();
            let mut q = sqlx::QueryBuilder::new(INSERT);
            q.push("SELECT ");
            let mut per_row = 0;
            {
                let mut select = q.separated(", ");
                for (c, col) in COLUMNS.iter().enumerate() {
                    if shared[c] {
                        push_val(&mut select, col(first));
                    } else {
                        per_row += 1;
                        select.push(format!("column{per_row}"));
                    }
                }
            }
            q.push(" FROM (");
            q.push_values(chunk.iter(), |mut b, e| {
                for (c, col) in COLUMNS.iter().enumerate() {
                    if !shared[c] {
                        push_val(&mut b, col(e));
                    }
                }
            });
            q.push(")");
            q.build().execute(&mut *self).await?;
        }
        Ok(())
    }
}

impl InsertExecutions for sqlx::PgConnection {
    async fn insert_executions(&mut self, rows: &[&NewExecution]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let text = |f: fn(&NewExecution) -> &String| {
            rows.iter().map(|e| f(e).as_str()).collect::<Vec<_>>()
        };
        let int = |f: fn(&NewExecution) -> i64| rows.iter().map(|e| f(e)).collect::<Vec<_>>();
        let sql = format!(
            "{INSERT}SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], \
             $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $9::TEXT[], $10::TEXT[])"
        );
        sqlx::query(&sql)
            .bind(text(|e| &e.kind))
            .bind(text(|e| &e.key))
            .bind(text(|e| &e.step))
            .bind(int(|e| e.generation))
            .bind(text(|e| &e.cause))
            .bind(text(|e| &e.holder))
            .bind(int(|e| e.started_at))
            .bind(int(|e| e.duration_ms))
            .bind(rows.iter().map(|e| e.outcome.code()).collect::<Vec<_>>())
            .bind(rows.iter().map(|e| e.error.as_deref()).collect::<Vec<_>>())
            .execute(self)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Records attempts that are not part of a sync outcome (policies, events, pulls).
    pub async fn record(&self, rows: &[NewExecution]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<&NewExecution> = rows.iter().collect();
        // One INSERT is its own transaction; SQLite takes more than a page in several.
        match &self.db {
            Db::Postgres(pool) => pool.acquire().await?.insert_executions(&rows).await?,
            Db::Sqlite(pool) if rows.len() <= PAGE => {
                pool.acquire().await?.insert_executions(&rows).await?
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                tx.insert_executions(&rows).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The newest `limit` executions of one object, newest first.
    pub async fn history(&self, kind: &str, key: &str, limit: i64) -> Result<Vec<Execution>> {
        let sql = "SELECT id, kind, key, step, generation, cause, holder, started_at, duration_ms, outcome, error \
                   FROM executions WHERE kind = $1 AND key = $2 ORDER BY id DESC LIMIT $3";
        with_pool!(&self.db, pool => Ok(sqlx::query_as(sql).bind(kind).bind(key).bind(limit).fetch_all(pool).await?))
    }

    /// Deletes executions that started before `before`; returns how many.
    pub async fn prune_executions(&self, before: i64) -> Result<u64> {
        let sql = "DELETE FROM executions WHERE started_at < $1";
        with_pool!(&self.db, pool => Ok(sqlx::query(sql).bind(before).execute(pool).await?.rows_affected()))
    }
}
