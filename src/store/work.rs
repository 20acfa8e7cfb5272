//! The sync loop's side of the store: claiming due work under a lease, reading the state of
//! dependencies, and settling many outcomes in one transaction.

use super::executions::{insert_executions, NewExecution};
use super::objects::{ObjectRow, OBJECT_COLUMNS};
use super::{with_pool, BeginWrite, Db, Result, Store};

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

#[derive(sqlx::FromRow)]
struct DepRow {
    of: i64,
    kind: String,
    key: String,
    id: Option<i64>,
    generation: Option<i64>,
    enacted: Option<i64>,
    backend_code: Option<i32>,
    backend_status: Option<String>,
    last_error: Option<String>,
    deleted_at: Option<i64>,
}

impl From<DepRow> for Dependency {
    fn from(r: DepRow) -> Self {
        let state = match (r.id, r.deleted_at) {
            (None, _) => DependencyState::Missing,
            (Some(_), Some(_)) => DependencyState::Deleting,
            _ if r.enacted >= r.generation => DependencyState::Ready,
            _ if r.backend_code == Some(2) => {
                DependencyState::Failed(r.last_error.or(r.backend_status).unwrap_or_default())
            }
            _ => DependencyState::Pending(r.backend_status.unwrap_or_default()),
        };
        Dependency {
            of: r.of,
            kind: r.kind,
            key: r.key,
            id: r.id,
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
    /// Not run (shutdown): give the lease back untouched.
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
}

/// Writes one outcome inside an open transaction (see [`Store::settle`]).
macro_rules! settle_one {
    ($tx:ident, $holder:expr, $now:expr, $r:expr) => {{
        let r: &OutcomeRecord = $r;
        let (old_status, new_status) = match &r.status {
            Some((old, new)) => (Some(old.as_str()), Some(new.as_str())),
            None => (None, None),
        };
        // Status is compare-and-set: if an event rewrote it during the step, the event wins.
        const STATUS: &str = "status = CASE WHEN $3 IS NOT NULL AND status = $3 THEN $4 ELSE status END, \
            revision = revision + CASE WHEN $3 IS NOT NULL AND status = $3 THEN 1 ELSE 0 END, \
            lease_holder = NULL, lease_until = NULL, updated_at = $5";
        const WHERE: &str = "WHERE id = $1 AND lease_holder = $2";
        let sql = match &r.settled {
            Settled::Synced { .. } => format!(
                "UPDATE objects SET {STATUS}, enacted = CASE WHEN $6 > enacted THEN $6 ELSE enacted END, \
                 backend_code = 1, backend_status = $7, attempts = 0, waiting_on = NULL, last_error = NULL, \
                 last_success_at = $5, need_delete = TRUE, \
                 next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE NULL END {WHERE}"),
            Settled::Deferred { .. } => format!(
                "UPDATE objects SET {STATUS}, backend_code = 0, backend_status = $7, waiting_on = NULL, \
                 need_delete = TRUE, next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE $8 END {WHERE}"),
            Settled::Failed { .. } => format!(
                "UPDATE objects SET {STATUS}, backend_code = 2, backend_status = $7, last_error = $7, \
                 waiting_on = NULL, need_delete = TRUE, \
                 attempts = CASE WHEN generation > $6 THEN attempts ELSE $9 END, \
                 next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE $8 END {WHERE}"),
            Settled::Permanent { .. } => format!(
                "UPDATE objects SET {STATUS}, backend_code = 2, backend_status = $7, last_error = $7, \
                 waiting_on = NULL, need_delete = TRUE, \
                 next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE NULL END {WHERE}"),
            Settled::Waiting { .. } => format!(
                "UPDATE objects SET {STATUS}, backend_status = $7, waiting_on = $7, \
                 next_attempt_at = CASE WHEN generation > $6 THEN next_attempt_at ELSE $8 END {WHERE}"),
            Settled::Reaped | Settled::Released => format!("UPDATE objects SET {STATUS} {WHERE}"),
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
            sqlx::query("DELETE FROM objects WHERE id = $1 AND lease_holder = $2 AND deleted_at IS NOT NULL")
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
        if matches!(r.settled, Settled::Synced { .. }) {
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
    /// leasing them to `holder` until `lease_until`. On PostgreSQL, rows another claimer has
    /// locked are skipped rather than waited for.
    pub async fn claim_due(
        &self,
        kind: &str,
        due_by: i64,
        now: i64,
        limit: usize,
        holder: &str,
        lease_until: i64,
    ) -> Result<Vec<Claimed>> {
        let skip_locked = if matches!(self.db, Db::Postgres(_)) {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE objects SET lease_holder = $1, lease_until = $2 WHERE id IN (\
               SELECT id FROM objects WHERE kind = $3 AND {DIRTY} AND next_attempt_at <= $4 \
               AND (lease_until IS NULL OR lease_until < $6) ORDER BY next_attempt_at LIMIT $5{skip_locked}) \
             RETURNING {OBJECT_COLUMNS}");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows: Vec<Claimed> = with_pool!(&self.db, pool => sqlx::query_as(&sql)
            .bind(holder).bind(lease_until).bind(kind).bind(due_by).bind(limit).bind(now)
            .fetch_all(pool).await)?;
        rows.sort_by_key(|r| (r.next_attempt_at, r.id));
        Ok(rows)
    }

    /// Gives back every lease (SQLite at start-up: the single process that held them is gone).
    pub async fn release_all_leases(&self) -> Result<u64> {
        let sql = "UPDATE objects SET lease_holder = NULL, lease_until = NULL WHERE lease_holder IS NOT NULL";
        with_pool!(&self.db, pool => Ok(sqlx::query(sql).execute(pool).await?.rows_affected()))
    }

    /// For syncing objects: the objects they link to. For deleting objects: the objects that
    /// link to them. Both in one call, keyed by the claimed object's id in [`Dependency::of`].
    pub async fn dependencies(&self, syncing: &[i64], deleting: &[i64]) -> Result<Vec<Dependency>> {
        const COLS: &str = "o.id AS id, o.generation, o.enacted, o.backend_code, o.backend_status, o.last_error, o.deleted_at";
        let mut out = Vec::new();
        for chunk in syncing.chunks(500) {
            let rows: Vec<DepRow> = with_pool!(&self.db, pool => {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "SELECT l.src_id AS of, l.dst_kind AS kind, l.dst_key AS key, {COLS} FROM links l \
                     LEFT JOIN objects o ON o.kind = l.dst_kind AND o.key = l.dst_key WHERE l.src_id IN ("));
                push_ids(&mut q, chunk);
                q.build_query_as().fetch_all(pool).await
            })?;
            out.extend(rows.into_iter().map(Dependency::from));
        }
        for chunk in deleting.chunks(500) {
            let rows: Vec<DepRow> = with_pool!(&self.db, pool => {
                let mut q = sqlx::QueryBuilder::new(format!(
                    "SELECT p.id AS of, o.kind, o.key, {COLS} FROM objects p \
                     JOIN links l ON l.dst_kind = p.kind AND l.dst_key = p.key \
                     JOIN objects o ON o.id = l.src_id WHERE p.id IN ("));
                push_ids(&mut q, chunk);
                q.build_query_as().fetch_all(pool).await
            })?;
            out.extend(rows.into_iter().map(Dependency::from));
        }
        Ok(out)
    }

    /// Records many outcomes and their executions in one transaction, releasing the leases and
    /// waking objects that were waiting on the ones that converged. An outcome whose lease was
    /// lost (taken over by another holder) is not written over the new holder's work.
    pub async fn settle(&self, holder: &str, now: i64, records: &[OutcomeRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        // The common case (a step converged and left its status alone) is written in bulk:
        // one statement per 500 objects instead of two per object.
        let (bulk, single): (Vec<&OutcomeRecord>, Vec<&OutcomeRecord>) = records.iter().partition(|r| {
            r.status.is_none()
                && matches!(&r.settled, Settled::Synced { message } if *message == synced_message(r.generation))
        });
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            for r in single {
                settle_one!(tx, holder, now, r);
            }
            // Grouped by generation (usually one or two groups), each an id list: SQLite runs
            // `UPDATE … FROM (VALUES …)` as a scan on large tables, an `IN` list by key.
            let mut by_generation: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
            for r in &bulk {
                by_generation.entry(r.generation).or_default().push(r.id);
            }
            for (generation, ids) in &by_generation {
                for chunk in ids.chunks(500) {
                    let mut q = sqlx::QueryBuilder::new("UPDATE objects SET enacted = CASE WHEN ");
                    q.push_bind(*generation).push(" > enacted THEN ").push_bind(*generation)
                        .push(" ELSE enacted END, backend_status = ").push_bind(synced_message(*generation))
                        .push(", next_attempt_at = CASE WHEN generation > ").push_bind(*generation)
                        .push(" THEN next_attempt_at ELSE NULL END, backend_code = 1, attempts = 0, waiting_on = NULL, \
                               last_error = NULL, need_delete = TRUE, lease_holder = NULL, lease_until = NULL, last_success_at = ")
                        .push_bind(now).push(", updated_at = ").push_bind(now).push(" WHERE lease_holder = ")
                        .push_bind(holder).push(" AND id IN (");
                    push_ids(&mut q, chunk);
                    q.build().execute(&mut *tx).await?;
                    // Wake the dependents that were waiting on any of these.
                    let mut q = sqlx::QueryBuilder::new("UPDATE objects SET next_attempt_at = ");
                    q.push_bind(now).push(
                        " WHERE waiting_on IS NOT NULL AND deleted_at IS NULL AND id IN (SELECT l.src_id FROM links l \
                         JOIN objects p ON p.kind = l.dst_kind AND p.key = l.dst_key WHERE p.id IN (");
                    push_ids(&mut q, chunk);
                    q.push(")");
                    q.build().execute(&mut *tx).await?;
                }
            }
            let executions: Vec<&NewExecution> = records.iter().filter_map(|r| r.execution.as_ref()).collect();
            insert_executions!(tx, executions);
            tx.commit().await?;
            Ok::<_, super::StoreError>(())
        })
    }
}

/// The backend status of an object synced at `generation`.
pub fn synced_message(generation: i64) -> String {
    format!("synced generation {generation}")
}

fn push_ids<'a, DB: sqlx::Database>(q: &mut sqlx::QueryBuilder<'a, DB>, ids: &'a [i64])
where
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    q.push(")");
}
