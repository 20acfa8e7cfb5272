//! Claiming due work under a lease, and keeping, extending and giving back leases. Leases are
//! rows in `leases` on PostgreSQL, shared by replicas; on SQLite, which one process holds,
//! they live in memory (`leases.rs`).

use super::objects::{ObjectRow, OBJECT_COLUMNS};
use super::{Db, Result, Store, StoreError};

/// A claimed object: the row as it was when the lease was taken.
pub type Claimed = ObjectRow;

/// Who holds an object, and until when (epoch ms; an expired lease may be taken over).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Lease {
    pub id: i64,
    pub holder: String,
    pub until: i64,
}

const DIRTY: &str = "(enacted < generation OR deleted_at IS NOT NULL)";

impl Store {
    /// Claims up to `limit` dirty objects of `kind` due by `due_by` and not leased as of `now`,
    /// leasing them to `holder` until `lease_until`; an expired lease is taken over. Leases
    /// are rows in `leases` on PostgreSQL, where concurrent claimers never both get an object
    /// (the second insert of a lease waits for the first to commit, then finds it live), and
    /// in memory on SQLite (`leases.rs`). An object `holder` already leases is never claimed
    /// again, even once its lease has run out: it belongs to one of the holder's rounds (which
    /// extend their leases as they go), or was left by a failed pass or a dead predecessor,
    /// which give theirs back first (`release_holder_leases`).
    pub async fn claim_due(
        &self,
        kind: &str,
        due_by: i64,
        now: i64,
        limit: usize,
        holder: &str,
        lease_until: i64,
    ) -> Result<Vec<Claimed>> {
        let due =
            format!("SELECT id FROM objects WHERE kind = $1 AND {DIRTY} AND next_attempt_at <= $2");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows: Vec<Claimed> = match &self.db {
            Db::Postgres(pool) => {
                let cols = OBJECT_COLUMNS.replace(", ", ", o.");
                let sql = format!(
                    "WITH due AS ({due} AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = objects.id \
                       AND (l.until >= $3 OR l.holder = $5)) ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
                     got AS (INSERT INTO leases (id, holder, until) SELECT id, $5, $6 FROM due \
                       ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until \
                       WHERE leases.until < $3 AND leases.holder <> $5 RETURNING id) \
                     SELECT o.{cols} FROM objects o JOIN got ON got.id = o.id"
                );
                sqlx::query_as(&sql)
                    .bind(kind)
                    .bind(due_by)
                    .bind(now)
                    .bind(limit)
                    .bind(holder)
                    .bind(lease_until)
                    .fetch_all(pool)
                    .await?
            }
            Db::Sqlite(pool) => {
                // The rows come back as one JSON array: a thousand rows through the driver's
                // row-by-row hand-over cost three times the query itself.
                let sql = format!(
                    "SELECT json_group_array(json_array({})) FROM objects WHERE id IN \
                     ({due} AND id NOT IN (SELECT value FROM json_each($3)) ORDER BY next_attempt_at LIMIT $4)",
                    super::objects::object_json_columns());
                let live = self.id_param(self.mem_leases.unavailable(now, holder));
                let text: String = sqlx::query_scalar(&sql)
                    .bind(kind)
                    .bind(due_by)
                    .bind(live)
                    .bind(limit)
                    .fetch_one(pool)
                    .await?;
                let rows: Vec<Claimed> = serde_json::from_str(&text)
                    .map_err(|e| StoreError::Invalid(format!("decoding claimed rows: {e}")))?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let taken = self.mem_leases.take(&ids, holder, lease_until, now);
                rows.into_iter()
                    .zip(taken)
                    .filter(|(_, t)| *t)
                    .map(|(r, _)| r)
                    .collect()
            }
        };
        rows.sort_by_key(|r| (r.next_attempt_at, r.id));
        Ok(rows)
    }

    /// For objects claimed a while ago (`(id, revision)` as claimed): returns the ids still
    /// leased and unchanged since the claim, and with `renew_until` extends `holder`'s leases
    /// on them. The others (changed, deleted, lease lost) are the caller's to give back.
    pub async fn renew_claims(
        &self,
        holder: &str,
        renew_until: Option<i64>,
        claimed: &[(i64, i64)],
    ) -> Result<Vec<i64>> {
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        match &self.db {
            Db::Sqlite(pool) => {
                let ids: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
                let held = self.mem_leases.renew(&ids, holder, renew_until);
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
                .fetch_one(pool)
                .await?;
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Invalid(format!("decoding claims: {e}")))
            }
            Db::Postgres(pool) => {
                let ids: Vec<i64> = claimed.iter().map(|(id, _)| *id).collect();
                let revisions: Vec<i64> = claimed.iter().map(|(_, r)| *r).collect();
                // Only unchanged objects are renewed; the others' leases are given back next.
                // Without a renewal the leases are young and still ours: only compare.
                let sql = match renew_until {
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
                    .bind(renew_until)
                    .bind(&revisions)
                    .fetch_all(pool)
                    .await?)
            }
        }
    }

    /// Gives back every lease (SQLite at start-up: the single process that held them is gone).
    pub async fn release_all_leases(&self) -> Result<u64> {
        match &self.db {
            Db::Sqlite(_) => Ok(self.mem_leases.clear()),
            Db::Postgres(pool) => Ok(sqlx::query("DELETE FROM leases")
                .execute(pool)
                .await?
                .rows_affected()),
        }
    }

    /// Extends to `until` the leases `holder` still has on `ids`, expired or not (a lease
    /// nobody took over is still the holder's); returns the ids still held. The others were
    /// taken over by another holder and must not run here.
    pub async fn extend_leases(&self, holder: &str, ids: &[i64], until: i64) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match &self.db {
            Db::Sqlite(_) => {
                let held = self.mem_leases.renew(ids, holder, Some(until));
                Ok(ids
                    .iter()
                    .zip(held)
                    .filter(|(_, h)| *h)
                    .map(|(id, _)| *id)
                    .collect())
            }
            Db::Postgres(pool) => {
                let sql = format!(
                    "UPDATE leases SET until = $1 WHERE holder = $2 AND id{} RETURNING id",
                    self.in_ids(3)
                );
                Ok(sqlx::query_scalar(&sql)
                    .bind(until)
                    .bind(holder)
                    .bind(self.id_param(ids.iter().copied()))
                    .fetch_all(pool)
                    .await?)
            }
        }
    }

    /// Gives back every lease `holder` has: after a pass that failed part-way (a database
    /// outage), its leases would otherwise block its own objects until they expire. Only
    /// call it when none of the holder's rounds is running.
    pub async fn release_holder_leases(&self, holder: &str) -> Result<u64> {
        match &self.db {
            Db::Sqlite(_) => Ok(self.mem_leases.release_holder(holder)),
            Db::Postgres(pool) => Ok(sqlx::query("DELETE FROM leases WHERE holder = $1")
                .bind(holder)
                .execute(pool)
                .await?
                .rows_affected()),
        }
    }

    /// Every lease, live or expired, by object id: what each replica holds.
    pub async fn leases(&self) -> Result<Vec<Lease>> {
        let mut leases: Vec<Lease> = match &self.db {
            Db::Sqlite(_) => self
                .mem_leases
                .all()
                .into_iter()
                .map(|(id, holder, until)| Lease { id, holder, until })
                .collect(),
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT id, holder, until FROM leases")
                    .fetch_all(pool)
                    .await?
            }
        };
        leases.sort_by_key(|l| l.id);
        Ok(leases)
    }
}
