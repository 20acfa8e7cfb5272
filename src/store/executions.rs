//! The executions audit trail: one row per sync, delete, policy or event attempt.

use serde::Serialize;

use super::{with_pool, Result, Store};

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
    /// `ok`, `deferred`, `error`, `permanent`, `panic`, `timeout`.
    pub outcome: String,
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
    pub error: Option<String>,
}

/// Inserts executions in multi-row statements inside an open transaction.
macro_rules! insert_executions {
    ($tx:ident, $rows:expr) => {
        for chunk in $rows.chunks(500) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO executions (kind, key, step, generation, cause, holder, started_at, duration_ms, outcome, error) ");
            q.push_values(chunk.iter(), |mut b, e| {
                b.push_bind(&e.kind).push_bind(&e.key).push_bind(&e.step).push_bind(e.generation)
                    .push_bind(&e.cause).push_bind(&e.holder).push_bind(e.started_at)
                    .push_bind(e.duration_ms).push_bind(&e.outcome).push_bind(&e.error);
            });
            q.build().execute(&mut *$tx).await?;
        }
    };
}
pub(crate) use insert_executions;

impl Store {
    /// Records attempts that are not part of a sync outcome (policies, events, pulls).
    pub async fn record(&self, rows: &[NewExecution]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            insert_executions!(tx, rows);
            tx.commit().await?;
            Ok(())
        })
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
