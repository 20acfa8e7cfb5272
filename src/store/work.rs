//! The sync loop's side of the store: claiming due work under a lease, reading the state of
//! dependencies, and settling many outcomes in one transaction.

use super::executions::{InsertExecutions as _, NewExecution};
use super::objects::{ObjectRow, OBJECT_COLUMNS};
use super::{with_pool, BeginWrite, Db, Result, Store, StoreError};

/// A claimed object: the row as it was when the lease was taken.
pub type Claimed = ObjectRow;

/// Where a dependency (a parent of a syncing object, or a child of a deleting one) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyState {
    /// The linked object does not exist (yet).
    Missing,
    /// In sync: enacted at its current generation.
    Ready,
    /// Soft-deleted, its delete step not yet done.
    Deleting,
    /// Its last attempt failed with this error.
    Failed(String),
    /// Not yet synced at its current generation; the sentence says why.
    Pending(String),
}

/// One dependency edge of a claimed object.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// The claimed object this dependency belongs to.
    pub of: i64,
    pub kind: String,
    pub key: String,
    /// The linked object's id, if it exists.
    pub id: Option<i64>,
    pub state: DependencyState,
}

/// A dependency row by position: (of, kind, key, id, generation, enacted, backend_code,
/// backend_status, last_error, deleted_at). A tuple decodes by position from a PostgreSQL row
/// and from a SQLite JSON array alike, so both backends run the same SELECT list.
type DepRow = (
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

impl From<DepRow> for Dependency {
    fn from(row: DepRow) -> Self {
        let (
            of,
            kind,
            key,
            id,
            generation,
            enacted,
            backend_code,
            backend_status,
            last_error,
            deleted_at,
        ) = row;
        let state = match (id, deleted_at) {
            (None, _) => DependencyState::Missing,
            (Some(_), Some(_)) => DependencyState::Deleting,
            _ if enacted >= generation => DependencyState::Ready,
            _ if backend_code == Some(2) => {
                DependencyState::Failed(last_error.or(backend_status).unwrap_or_default())
            }
            _ => DependencyState::Pending(backend_status.unwrap_or_default()),
        };
        Dependency {
            of,
            kind,
            key,
            id,
            state,
        }
    }
}

/// How one attempt ended, as the store records it.
#[derive(Debug, Clone)]
pub enum Settled {
    /// The step converged the world to this generation.
    Synced { message: String },
    /// Still in progress; look again at `until` without counting a failure.
    Deferred { until: i64, message: String },
    /// Failed; retry at `until` (persisted backoff), having failed `attempts` times in a row.
    Failed {
        attempts: i32,
        until: i64,
        error: String,
    },
    /// Failed in a way retrying cannot fix; wait for a spec change or an operator retry.
    Permanent { error: String },
    /// Blocked by a dependency; recheck at `until` at the latest (it is also woken directly).
    Waiting { on: String, until: i64 },
    /// The delete step finished (or was not needed): remove the row.
    Reaped,
    /// Not run (shutdown, or changed since it was claimed ahead): give the lease back untouched.
    Released,
}

/// One settled object plus its audit row.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub id: i64,
    pub kind: String,
    pub key: String,
    /// The generation the attempt worked on.
    pub generation: i64,
    pub settled: Settled,
    /// The status the step read, and the one it left, when it changed it.
    pub status: Option<(String, String)>,
    pub execution: Option<NewExecution>,
    /// Whether other kinds link to this one, so its convergence may wake waiting dependents.
    pub has_dependents: bool,
}

/// Writes one outcome inside an open transaction (see [`Store::settle`]).
macro_rules! settle_one {
    ($tx:ident, $holder:expr, $now:expr, $r:expr, $guard:expr) => {{
        let r: &OutcomeRecord = $r;
        let (old_status, new_status) = match &r.status {
            Some((old, new)) => (Some(old.as_str()), Some(new.as_str())),
            None => (None, None),
        };
        // Status is compare-and-set: if an event rewrote it during the step, the event wins.
        const STATUS: &str = "status = CASE WHEN $3 IS NOT NULL AND status = $3 THEN $4 ELSE status END, \
            revision = revision + CASE WHEN $3 IS NOT NULL AND status = $3 THEN 1 ELSE 0 END, \
            updated_at = $5";
        let guard: &str = $guard;
        let where_ = format!("WHERE id = $1 {guard}");
        let sql = match &r.settled {
            Settled::Synced { .. } => format!(
                "UPDATE objects SET {STATUS}, enacted = CASE WHEN $6 > enacted THEN $6 ELSE enacted END, \
                 backend_code = 1, backend_status = $7, attempts = 0, waiting_on = NULL, last_error = NULL, \
                 last_success_at = $5, need_delete = TRUE, \
                 next_attempt_at = CASE WHEN generation > $6 OR deleted_at IS NOT NULL THEN next_attempt_at ELSE NULL END {where_}"),
            Settled::Deferred { .. } => format!(
                "UPDATE objects SET {STATUS}, backend_code = 0, backend_status = $7, waiting_on = NULL, \
                 need_delete = TRUE, next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE $8 END {where_}"),
            Settled::Failed { .. } => format!(
                "UPDATE objects SET {STATUS}, backend_code = 2, backend_status = $7, last_error = $7, \
                 waiting_on = NULL, need_delete = TRUE, \
                 attempts = CASE WHEN generation > $6 THEN attempts ELSE $9 END, \
                 next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE $8 END {where_}"),
            Settled::Permanent { .. } => format!(
                "UPDATE objects SET {STATUS}, backend_code = 2, backend_status = $7, last_error = $7, \
                 waiting_on = NULL, need_delete = TRUE, \
                 next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE NULL END {where_}"),
            Settled::Waiting { .. } => format!(
                "UPDATE objects SET {STATUS}, backend_status = $7, waiting_on = $7, \
                 next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE $8 END {where_}"),
            Settled::Reaped | Settled::Released => format!("UPDATE objects SET {STATUS} {where_}"),
        };
        let (message, until, attempts): (&str, i64, i32) = match &r.settled {
            Settled::Synced { message } => (message, 0, 0),
            Settled::Deferred { until, message } => (message, *until, 0),
            Settled::Failed { attempts, until, error } => (error, *until, *attempts),
            Settled::Permanent { error } => (error, 0, 0),
            Settled::Waiting { on, until } => (on, *until, 0),
            Settled::Reaped | Settled::Released => ("", 0, 0),
        };
        if matches!(r.settled, Settled::Reaped) {
            // Wake deleting parents that were waiting for this dependent to go, then reap it.
            sqlx::query(
                "UPDATE objects SET next_attempt_at = $1 WHERE waiting_on IS NOT NULL AND deleted_at IS NOT NULL \
                 AND EXISTS (SELECT 1 FROM links l WHERE l.src_id = $2 AND l.dst_kind = objects.kind AND l.dst_key = objects.key)")
                .bind($now).bind(r.id).execute(&mut *$tx).await?;
            sqlx::query(&format!("DELETE FROM objects WHERE id = $1 AND deleted_at IS NOT NULL {guard}"))
                .bind(r.id).bind($holder).execute(&mut *$tx).await?;
        }
        let mut q = sqlx::query(&sql).bind(r.id).bind($holder).bind(old_status).bind(new_status).bind($now);
        if !matches!(r.settled, Settled::Reaped | Settled::Released) {
            q = q.bind(r.generation).bind(message);
            if !matches!(r.settled, Settled::Synced { .. } | Settled::Permanent { .. }) {
                q = q.bind(until);
            }
            if matches!(r.settled, Settled::Failed { .. }) {
                q = q.bind(attempts);
            }
        }
        q.execute(&mut *$tx).await?;
        if r.has_dependents && matches!(r.settled, Settled::Synced { .. }) {
            // Wake dependents that were waiting on this object.
            sqlx::query(
                "UPDATE objects SET next_attempt_at = $1 WHERE waiting_on IS NOT NULL AND deleted_at IS NULL \
                 AND id IN (SELECT src_id FROM links WHERE dst_kind = $2 AND dst_key = $3)")
                .bind($now).bind(&r.kind).bind(&r.key).execute(&mut *$tx).await?;
        }
    }};
}

const DIRTY: &str = "(enacted < generation OR deleted_at IS NOT NULL)";

impl Store {
    /// Claims up to `limit` dirty objects of `kind` due by `due_by` and not leased as of `now`,
    /// leasing them to `holder` until `lease_until`; an expired lease is taken over. Leases
    /// are rows in `leases` on PostgreSQL, where concurrent claimers never both get an object
    /// (the second insert of a lease waits for the first to commit, then finds it live), and
    /// in memory on SQLite (`leases.rs`).
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
                       AND l.until >= $3) ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
                     got AS (INSERT INTO leases (id, holder, until) SELECT id, $5, $6 FROM due \
                       ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until \
                       WHERE leases.until < $3 RETURNING id) \
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
                let live = self.id_param(self.mem_leases.live(now));
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

    /// For syncing objects: the objects they link to. For deleting objects: the objects that
    /// link to them. Both in one call, keyed by the claimed object's id in [`Dependency::of`].
    pub async fn dependencies(&self, syncing: &[i64], deleting: &[i64]) -> Result<Vec<Dependency>> {
        const COLS: &str = "o.id, o.generation, o.enacted, o.backend_code, o.backend_status, o.last_error, o.deleted_at";
        let mut out = Vec::new();
        if !syncing.is_empty() {
            let cols = format!("l.src_id, l.dst_kind, l.dst_key, {COLS}");
            let from = format!(
                "links l LEFT JOIN objects o ON o.kind = l.dst_kind AND o.key = l.dst_key WHERE l.src_id{}",
                self.in_ids(1)
            );
            out.extend(self.dep_rows(&cols, &from, syncing).await?);
        }
        if !deleting.is_empty() {
            let cols = format!("p.id, o.kind, o.key, {COLS}");
            let from = format!(
                "objects p JOIN links l ON l.dst_kind = p.kind AND l.dst_key = p.key \
                 JOIN objects o ON o.id = l.src_id WHERE p.id{}",
                self.in_ids(1)
            );
            out.extend(self.dep_rows(&cols, &from, deleting).await?);
        }
        Ok(out)
    }

    /// `SELECT cols FROM from` over `ids` as [`DepRow`]s; on SQLite the rows come back as one
    /// JSON array (see [`Store::claim_due`]).
    async fn dep_rows(
        &self,
        cols: &str,
        from: &str,
        ids: &[i64],
    ) -> Result<impl Iterator<Item = Dependency>> {
        let ids = self.id_param(ids.iter().copied());
        let rows: Vec<DepRow> = match &self.db {
            Db::Sqlite(pool) => {
                let sql = format!("SELECT json_group_array(json_array({cols})) FROM {from}");
                let text: String = sqlx::query_scalar(&sql).bind(&ids).fetch_one(pool).await?;
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Invalid(format!("decoding dependencies: {e}")))?
            }
            Db::Postgres(pool) => {
                let sql = format!("SELECT {cols} FROM {from}");
                sqlx::query_as(&sql).bind(&ids).fetch_all(pool).await?
            }
        };
        Ok(rows.into_iter().map(Dependency::from))
    }

    /// Records many outcomes and their executions in one transaction, releasing the leases and
    /// waking objects that were waiting on the ones that converged. An outcome whose lease was
    /// lost (taken over by another holder) is not written over the new holder's work.
    pub async fn settle(&self, holder: &str, now: i64, records: &[OutcomeRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let guard = self.lease_guard("objects.id", "$2");
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            // SQLite: the one connection is ours now, so no claim can interleave; give the
            // in-memory leases back and drop outcomes whose lease was lost. PostgreSQL
            // checks the lease in each statement and releases at the end.
            let records: Vec<&OutcomeRecord> = match &self.db {
                Db::Sqlite(_) => {
                    let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
                    let held = self.mem_leases.release(&ids, holder);
                    records.iter().zip(held).filter(|(_, h)| *h).map(|(r, _)| r).collect()
                }
                Db::Postgres(_) => records.iter().collect(),
            };
            // The common case (a step converged and left its status alone) is written in
            // bulk: one statement per generation instead of two per object.
            let (bulk, single): (Vec<&OutcomeRecord>, Vec<&OutcomeRecord>) = records.iter().partition(|r| {
                r.status.is_none()
                    && matches!(&r.settled, Settled::Synced { message } if is_synced_message(message, r.generation))
            });
            for r in &single {
                settle_one!(tx, holder, now, r, &guard);
            }
            // Grouped by generation (usually one), each group one statement with its ids bound
            // as one parameter.
            let mut by_generation: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
            for r in &bulk {
                by_generation.entry(r.generation).or_default().push(r.id);
            }
            // On PostgreSQL the leases of these objects are deleted in the same statement,
            // and only the objects whose lease was still ours are written.
            let (mine, targets) = match &self.db {
                Db::Sqlite(_) => (String::new(), format!("id{} AND $4 IS NOT NULL", self.in_ids(5))),
                Db::Postgres(_) => (
                    format!("WITH mine AS (DELETE FROM leases WHERE holder = $4 AND id{} RETURNING id) ", self.in_ids(5)),
                    "id IN (SELECT id FROM mine)".to_string(),
                ),
            };
            let bulk_sql = format!(
                "{mine}UPDATE objects SET enacted = CASE WHEN $1 > enacted THEN $1 ELSE enacted END, backend_status = $2, \
                 next_attempt_at = CASE WHEN generation > $1 OR deleted_at IS NOT NULL THEN next_attempt_at ELSE NULL END, backend_code = 1, \
                 attempts = 0, waiting_on = NULL, last_error = NULL, need_delete = TRUE, last_success_at = $3, \
                 updated_at = $3 WHERE {targets}");
            for (generation, ids) in &by_generation {
                sqlx::query(&bulk_sql)
                    .bind(*generation).bind(synced_message(*generation)).bind(now).bind(holder)
                    .bind(self.id_param(ids.iter().copied()))
                    .execute(&mut *tx).await?;
            }
            // Wake the dependents that were waiting on any of these, by kind.
            let mut woken: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for r in bulk.iter().filter(|r| r.has_dependents) {
                woken.entry(r.kind.as_str()).or_default().push(r.key.as_str());
            }
            let wake_sql = format!(
                "UPDATE objects SET next_attempt_at = $1 WHERE waiting_on IS NOT NULL AND deleted_at IS NULL \
                 AND EXISTS (SELECT 1 FROM links l WHERE l.src_id = objects.id AND l.dst_kind = $2 AND l.dst_key{})",
                self.in_texts(3));
            for (kind, keys) in &woken {
                sqlx::query(&wake_sql)
                    .bind(now).bind(*kind).bind(self.text_param(keys.iter().copied()))
                    .execute(&mut *tx).await?;
            }
            if !self.is_sqlite() && !single.is_empty() {
                let release = format!("DELETE FROM leases WHERE holder = $1 AND id{}", self.in_ids(2));
                sqlx::query(&release)
                    .bind(holder).bind(self.id_param(single.iter().map(|r| r.id)))
                    .execute(&mut *tx).await?;
            }
            let executions: Vec<&NewExecution> = records.iter().filter_map(|r| r.execution.as_ref()).collect();
            tx.insert_executions(&executions).await?;
            tx.commit().await?;
            Ok::<_, super::StoreError>(())
        })
    }
}

impl Store {
    /// The condition that `holder_param` still leases the object `id_expr`: a lookup in
    /// `leases` on PostgreSQL; on SQLite the in-memory leases were checked before writing
    /// (the parameter is still used, as every bound parameter must be).
    fn lease_guard(&self, id_expr: &str, holder_param: &str) -> String {
        match self.db {
            Db::Sqlite(_) => format!("AND {holder_param} IS NOT NULL"),
            Db::Postgres(_) => format!(
                "AND EXISTS (SELECT 1 FROM leases l WHERE l.id = {id_expr} AND l.holder = {holder_param})"
            ),
        }
    }
}

/// The backend status of an object synced at `generation`.
pub fn synced_message(generation: i64) -> String {
    format!("synced generation {generation}")
}

/// Whether `message` is [`synced_message`]`(generation)`, without building it.
fn is_synced_message(message: &str, generation: i64) -> bool {
    message
        .strip_prefix("synced generation ")
        .and_then(|g| g.parse::<i64>().ok())
        == Some(generation)
}
