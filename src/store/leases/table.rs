//! The PostgreSQL lease book: rows in the `leases` table, shared by replicas. A claim locks
//! its candidates `FOR UPDATE SKIP LOCKED` and inserts their leases in the same statement, so
//! concurrent claimers never both get an object (the second insert of a lease waits for the
//! first to commit, then finds it live).

use async_trait::async_trait;
use sqlx::PgPool;

use super::{taken, ClaimRequest, Lease, LeaseBook, DIRTY};
use crate::store::objects::{ObjectRow, OBJECT_COLUMNS};
use crate::store::Result;

/// Leases as rows in `leases`.
#[derive(Debug, Clone)]
pub(crate) struct TableBook {
    pub pool: PgPool,
}

#[async_trait]
impl LeaseBook for TableBook {
    async fn claim(&self, r: ClaimRequest<'_>) -> Result<Vec<ObjectRow>> {
        let cols = OBJECT_COLUMNS.replace(", ", ", o.");
        let sql = format!(
            "WITH due AS (SELECT id FROM objects WHERE kind = $1 AND {DIRTY} AND {lane} AND next_attempt_at <= $2 \
               AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = objects.id \
               AND (l.until >= $3 OR l.holder = $5)) ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
             got AS (INSERT INTO leases (id, holder, until) SELECT id, $5, $6 FROM due \
               ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until \
               WHERE leases.until < $3 AND leases.holder <> $5 RETURNING id) \
             SELECT o.{cols} FROM objects o JOIN got ON got.id = o.id",
            lane = r.lane.sql()
        );
        let rows: Vec<ObjectRow> = sqlx::query_as(&sql)
            .bind(r.kind)
            .bind(r.due_by)
            .bind(r.now)
            .bind(i64::try_from(r.limit).unwrap_or(i64::MAX))
            .bind(r.holder)
            .bind(r.until)
            .fetch_all(&self.pool)
            .await?;
        let all = vec![true; rows.len()];
        Ok(taken(rows, all))
    }

    async fn renew(
        &self,
        holder: &str,
        until: Option<i64>,
        claimed: &[(i64, i64)],
    ) -> Result<Vec<i64>> {
        let ids: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
        let revisions: Vec<i64> = claimed.iter().map(|(_, r)| *r).collect();
        // Only unchanged objects are renewed; the others' leases are given back next. Without
        // a renewal the leases are young and still ours: only compare.
        let sql = match until {
            Some(_) => "UPDATE leases l SET until = $3 \
                FROM UNNEST(CAST($1 AS BIGINT[]), CAST($4 AS BIGINT[])) AS j(id, revision), objects o \
                WHERE l.holder = $2 AND l.id = j.id AND o.id = j.id AND o.revision = j.revision \
                RETURNING l.id",
            None => "SELECT o.id FROM UNNEST(CAST($1 AS BIGINT[]), CAST($4 AS BIGINT[])) AS j(id, revision) \
                JOIN objects o ON o.id = j.id AND o.revision = j.revision \
                WHERE $2::TEXT IS NOT NULL AND $3::BIGINT IS NULL",
        };
        Ok(sqlx::query_scalar(sql)
            .bind(&ids)
            .bind(holder)
            .bind(until)
            .bind(&revisions)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn extend(&self, holder: &str, ids: &[i64], until: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "UPDATE leases SET until = $1 WHERE holder = $2 AND id = ANY($3) RETURNING id",
        )
        .bind(until)
        .bind(holder)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn release_holder(&self, holder: &str) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM leases WHERE holder = $1")
            .bind(holder)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn release_all(&self) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM leases")
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn all(&self) -> Result<Vec<Lease>> {
        Ok(sqlx::query_as("SELECT id, holder, until FROM leases")
            .fetch_all(&self.pool)
            .await?)
    }

    fn held_outside_settle(&self, _ids: &[i64], _holder: &str) -> Option<Vec<bool>> {
        None
    }

    fn release_after_settle(&self, _ids: &[i64], _holder: &str) {}
}
