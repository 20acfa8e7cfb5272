//! The SQLite lease book: candidates read from the database, leases kept in memory (one
//! process holds a SQLite store; see `memory_table.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::SqlitePool;

use super::{taken, ClaimRequest, Lane, Lease, LeaseBook, MemLeases, DIRTY};
use crate::store::objects::{object_json_columns, ObjectRow};
use crate::store::{Result, StoreError};

/// Leases in this process's memory, over a SQLite pool.
#[derive(Debug, Clone)]
pub(crate) struct MemoryBook {
    pub pool: SqlitePool,
    pub table: Arc<MemLeases>,
}

/// A JSON array of ids, bound as one parameter and read with `json_each`.
fn json_ids(ids: impl IntoIterator<Item = i64>) -> String {
    let ids: Vec<i64> = ids.into_iter().collect();
    serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())
}

#[async_trait]
impl LeaseBook for MemoryBook {
    async fn claim(&self, r: ClaimRequest<'_>) -> Result<Vec<ObjectRow>> {
        // Each kind's due objects are a range scan of its lane's index; the page is filled
        // kind by kind in sync order, and what is due again only when no news is.
        let lane = |lane: Lane, due_by: &str| {
            let kinds: Vec<String> = (0..r.kinds.len())
                .map(|i| {
                    format!(
                        "SELECT id FROM (SELECT id FROM objects WHERE kind = ${} AND {DIRTY} \
                         AND {} AND next_attempt_at <= {due_by} \
                         AND id NOT IN (SELECT value FROM json_each($3)) \
                         ORDER BY next_attempt_at LIMIT $4)",
                        i + 5,
                        lane.sql()
                    )
                })
                .collect();
            format!("{} LIMIT $4", kinds.join(" UNION ALL "))
        };
        // The rows come back as one JSON array: a thousand rows through the driver's
        // row-by-row hand-over cost three times the query itself.
        let sql = format!(
            "WITH news AS ({news}), again AS ({again}) \
             SELECT json_group_array(json_array({cols})) FROM objects WHERE id IN \
             (SELECT id FROM news UNION ALL \
              SELECT id FROM again WHERE NOT EXISTS (SELECT 1 FROM news))",
            news = lane(Lane::News, "$1"),
            again = lane(Lane::Again, "$2"),
            cols = object_json_columns(),
        );
        let unavailable = json_ids(self.table.unavailable(r.now, r.holder));
        let mut query = sqlx::query_scalar(&sql)
            .bind(r.news_due_by)
            .bind(r.again_due_by)
            .bind(unavailable)
            .bind(i64::try_from(r.limit).unwrap_or(i64::MAX));
        for kind in r.kinds {
            query = query.bind(*kind);
        }
        let text: String = query.fetch_one(&self.pool).await?;
        let rows: Vec<ObjectRow> = serde_json::from_str(&text)
            .map_err(|e| StoreError::Invalid(format!("decoding claimed rows: {e}")))?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let took = self.table.take(&ids, r.holder, r.until, r.now);
        Ok(taken(rows, took))
    }

    async fn renew(
        &self,
        holder: &str,
        until: Option<i64>,
        claimed: &[(i64, i64)],
    ) -> Result<Vec<i64>> {
        let ids: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
        let held = self.table.renew(&ids, holder, until);
        let pairs: Vec<&(i64, i64)> = claimed
            .iter()
            .zip(held)
            .filter(|(_, h)| *h)
            .map(|(c, _)| c)
            .collect();
        let pairs = serde_json::to_string(&pairs)
            .map_err(|e| StoreError::Invalid(format!("encoding claims: {e}")))?;
        let text: String = sqlx::query_scalar(
            "SELECT json_group_array(o.id) FROM json_each($1) AS j \
             JOIN objects o ON o.id = (j.value ->> 0) AND o.revision = (j.value ->> 1)",
        )
        .bind(pairs)
        .fetch_one(&self.pool)
        .await?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Invalid(format!("decoding claims: {e}")))
    }

    async fn extend(&self, holder: &str, ids: &[i64], until: i64) -> Result<Vec<i64>> {
        let held = self.table.renew(ids, holder, Some(until));
        Ok(ids
            .iter()
            .zip(held)
            .filter(|(_, h)| *h)
            .map(|(id, _)| *id)
            .collect())
    }

    async fn release_holder(&self, holder: &str) -> Result<u64> {
        Ok(self.table.release_holder(holder))
    }

    async fn release_all(&self) -> Result<u64> {
        Ok(self.table.clear())
    }

    async fn all(&self) -> Result<Vec<Lease>> {
        Ok(self
            .table
            .all()
            .into_iter()
            .map(|(id, holder, until)| Lease { id, holder, until })
            .collect())
    }

    fn held_outside_settle(&self, ids: &[i64], holder: &str) -> Option<Vec<bool>> {
        Some(self.table.held_by(ids, holder))
    }

    fn release_after_settle(&self, ids: &[i64], holder: &str) {
        self.table.release(ids, holder);
    }
}
