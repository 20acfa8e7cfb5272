//! What operators ask of the store beyond one object: retrying a whole kind, keys like the
//! one they typed, and how many dead letters there are.

use serde::Serialize;

use super::query::STATE_SQL;
use super::{with_pool, Result, State, Store};

/// How many dead letters are kept, and when the oldest arrived (epoch ms).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DeadLetterCount {
    pub count: i64,
    pub oldest: Option<i64>,
}

impl Store {
    /// Operator retry of every object of `kind` that is not in sync (in `state`, if given):
    /// clears backoff and permanent failures so they run at the next pass. Returns how many.
    pub async fn retry_many(&self, kind: &str, state: Option<State>, now: i64) -> Result<u64> {
        let only = match state {
            Some(_) => format!(" AND {STATE_SQL} = $3"),
            None => String::new(),
        };
        let sql = format!(
            "UPDATE objects SET attempts = 0, next_attempt_at = $1, backend_code = 0, \
             backend_status = 'retry requested by operator', reason = 'operator_retry', \
             waiting_on = NULL, updated_at = $1 \
             WHERE kind = $2 AND (enacted < generation OR deleted_at IS NOT NULL){only}"
        );
        with_pool!(&self.db, pool => {
            let mut q = sqlx::query(&sql).bind(now).bind(kind);
            if let Some(state) = state {
                q = q.bind(state.as_str());
            }
            Ok(q.execute(pool).await?.rows_affected())
        })
    }

    /// Keys of `kind` that end with `/key` or contain `key` (an operator who left out the
    /// instrument, `VLA/…`), at most `limit`, shortest first.
    pub async fn similar_keys(&self, kind: &str, key: &str, limit: i64) -> Result<Vec<String>> {
        let sql = "SELECT key FROM objects WHERE kind = $1 AND (key LIKE $2 ESCAPE '\\' OR key LIKE $3 ESCAPE '\\') \
                   ORDER BY LENGTH(key), key LIMIT $4";
        let escaped = key
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let suffix = format!("%/{escaped}");
        let inside = format!("%{escaped}%");
        with_pool!(&self.db, pool => Ok(sqlx::query_scalar(sql)
            .bind(kind).bind(suffix).bind(inside).bind(limit)
            .fetch_all(pool).await?))
    }

    /// How many dead letters there are, and the oldest one's arrival.
    pub async fn dead_letter_count(&self) -> Result<DeadLetterCount> {
        let sql = "SELECT COUNT(*), MIN(received_at) FROM dead_letters";
        let (count, oldest): (i64, Option<i64>) =
            with_pool!(&self.db, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(DeadLetterCount { count, oldest })
    }
}
