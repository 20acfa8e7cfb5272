//! The PostgreSQL lease book: rows in the `leases` table, shared by replicas. A claim locks
//! its candidates `FOR UPDATE SKIP LOCKED` and inserts their leases in the same statement, so
//! concurrent claimers never both get an object (the second insert of a lease waits for the
//! first to commit, then finds it live).

use async_trait::async_trait;
use sqlx::PgPool;

use super::{taken, ClaimRequest, Lane, Lease, LeaseBook, DIRTY};
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
        // Kind by kind in sync order, each a range scan of its lane's index; what is due
        // again only when no news is.
        let lane = |lane: Lane, due_by: &str| {
            format!(
                "SELECT d.id FROM UNNEST(CAST($1 AS TEXT[])) AS k(kind), LATERAL \
                 (SELECT id FROM objects WHERE kind = k.kind AND {DIRTY} AND {} \
                  AND next_attempt_at <= {due_by} \
                  AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = objects.id \
                  AND (l.until >= $4 OR l.holder = $6)) \
                  ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED) AS d LIMIT $5",
                lane.sql()
            )
        };
        let cols = OBJECT_COLUMNS.replace(", ", ", o.");
        let sql = format!(
            "WITH news AS ({news}), \
             again AS ({again_lane}), \
             due AS (SELECT id FROM news UNION ALL \
               SELECT id FROM again WHERE NOT EXISTS (SELECT 1 FROM news)), \
             got AS (INSERT INTO leases (id, holder, until) SELECT id, $6, $7 FROM due \
               ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until \
               WHERE leases.until < $4 AND leases.holder <> $6 RETURNING id) \
             SELECT o.{cols} FROM objects o JOIN got ON got.id = o.id",
            news = lane(Lane::News, "$2"),
            again_lane = lane(Lane::Again, "$3"),
        );
        let rows: Vec<ObjectRow> = sqlx::query_as(&sql)
            .bind(r.kinds)
            .bind(r.news_due_by)
            .bind(r.again_due_by)
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
