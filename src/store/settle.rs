//! Settling a round's outcomes: many objects' results and their audit rows in one
//! transaction, each written only while its lease is still the writer's, and each written so
//! that nothing that happened while its step ran is lost (a status an event wrote, a new
//! spec, a deletion).

use super::executions::{InsertExecutions as _, NewExecution};
use super::{with_pool, BeginWrite, Db, Result, Store};

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

impl Settled {
    /// The outcome's name in the settle statement.
    fn code(&self) -> &'static str {
        match self {
            Settled::Synced { .. } => "synced",
            Settled::Deferred { .. } => "deferred",
            Settled::Failed { .. } => "failed",
            Settled::Permanent { .. } => "permanent",
            Settled::Waiting { .. } => "waiting",
            Settled::Reaped => "reaped",
            Settled::Released => "released",
        }
    }

    /// (message, until, attempts) as bound in the settle statement.
    fn params(&self) -> (&str, i64, i32) {
        match self {
            Settled::Synced { message } => (message, 0, 0),
            Settled::Deferred { until, message } => (message, *until, 0),
            Settled::Failed {
                attempts,
                until,
                error,
            } => (error, *until, *attempts),
            Settled::Permanent { error } => (error, 0, 0),
            Settled::Waiting { on, until } => (on, *until, 0),
            Settled::Reaped | Settled::Released => ("", 0, 0),
        }
    }
}

/// One settled object plus its audit row.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub id: i64,
    pub kind: String,
    pub key: String,
    /// The generation the attempt worked on.
    pub generation: i64,
    /// The object's revision when its step started: a different one now means something
    /// (an event, a new spec, a deletion) changed it while the step ran.
    pub revision: i64,
    /// Whether the attempt was a sync (not a delete): a deletion that arrived meanwhile then
    /// supersedes its outcome.
    pub sync_job: bool,
    pub settled: Settled,
    /// The status the step read, and the one it left, when it changed it.
    pub status: Option<(String, String)>,
    pub execution: Option<NewExecution>,
    /// Whether other kinds link to this one, so its convergence may wake waiting dependents.
    pub has_dependents: bool,
}

/// What [`Store::settle`] did with a batch of outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Outcomes dropped, audit row included, because their lease had passed to another
    /// holder: that holder runs the object now.
    pub lost: Vec<i64>,
    /// Outcomes not applied because an event rewrote the object's status while its step ran:
    /// the object is due again at once, so its step re-reads the world from the new status.
    pub rerun: Vec<i64>,
}

/// Whether the object changed so that the attempt's outcome no longer decides what happens
/// next: a new generation, or a deletion that arrived while a sync ran. Its status write and
/// audit row still land; its scheduling and error state are left to the change.
const SUPERSEDED: &str = "(generation > $5 OR (deleted_at IS NOT NULL AND $9))";

/// The one statement that writes an outcome; `$11` names it. Parameters: $1 id, $2 now,
/// $3 status read, $4 status written, $5 generation, $6 message, $7 until, $8 attempts,
/// $9 sync job, $10 revision at the start, $11 outcome. Status is compare-and-set: if an
/// event rewrote it meanwhile, nothing is written (see [`Settlement::rerun`]).
fn outcome_sql() -> String {
    let sup = SUPERSEDED;
    format!(
        "UPDATE objects SET status = COALESCE($4, status), \
         revision = revision + CASE WHEN $4 IS NULL THEN 0 ELSE 1 END, updated_at = $2, \
         enacted = CASE WHEN $11 = 'synced' AND $5 > enacted THEN $5 ELSE enacted END, \
         backend_code = CASE WHEN {sup} THEN backend_code WHEN $11 = 'synced' THEN 1 \
           WHEN $11 = 'deferred' THEN 0 WHEN $11 IN ('failed', 'permanent') THEN 2 ELSE backend_code END, \
         backend_status = CASE WHEN {sup} THEN backend_status ELSE $6 END, \
         last_error = CASE WHEN $11 IN ('failed', 'permanent') THEN $6 WHEN {sup} THEN last_error \
           WHEN $11 = 'synced' THEN NULL ELSE last_error END, \
         waiting_on = CASE WHEN {sup} THEN waiting_on WHEN $11 = 'waiting' THEN $6 ELSE NULL END, \
         attempts = CASE WHEN {sup} THEN attempts WHEN $11 = 'synced' THEN 0 \
           WHEN $11 = 'failed' THEN $8 ELSE attempts END, \
         last_success_at = CASE WHEN $11 = 'synced' THEN $2 ELSE last_success_at END, \
         need_delete = CASE WHEN $11 = 'waiting' THEN need_delete ELSE TRUE END, \
         next_attempt_at = CASE WHEN {sup} THEN COALESCE(next_attempt_at, $2) \
           WHEN $11 IN ('synced', 'permanent') THEN NULL \
           WHEN $11 = 'deferred' AND revision <> $10 THEN $2 ELSE $7 END \
         WHERE id = $1 AND ($3 IS NULL OR status = $3)"
    )
}

/// An outcome whose status write lost to an event: due again now, nothing else changed.
const RERUN_SQL: &str = "UPDATE objects SET need_delete = TRUE, updated_at = $2, \
    next_attempt_at = CASE WHEN next_attempt_at IS NULL OR next_attempt_at > $2 THEN $2 \
    ELSE next_attempt_at END WHERE id = $1";

/// Wakes deleting parents that were waiting for a dependent (`$2`) to go.
const WAKE_PARENTS_SQL: &str =
    "UPDATE objects SET next_attempt_at = $1 WHERE waiting_on IS NOT NULL \
    AND deleted_at IS NOT NULL AND EXISTS (SELECT 1 FROM links l WHERE l.src_id = $2 \
    AND l.dst_kind = objects.kind AND l.dst_key = objects.key)";

/// Writes one outcome inside an open transaction; evaluates to whether it was applied
/// (false: its status write lost to an event, and it was made due again instead).
macro_rules! settle_one {
    ($tx:ident, $now:expr, $r:expr, $sql:expr) => {{
        let r: &OutcomeRecord = $r;
        match &r.settled {
            Settled::Released => true,
            Settled::Reaped => {
                sqlx::query(WAKE_PARENTS_SQL)
                    .bind($now).bind(r.id).execute(&mut *$tx).await?;
                // A deletion undone meanwhile (a new spec revived it) keeps the row.
                sqlx::query("DELETE FROM objects WHERE id = $1 AND deleted_at IS NOT NULL")
                    .bind(r.id).execute(&mut *$tx).await?;
                true
            }
            settled => {
                let (old_status, new_status) = match &r.status {
                    Some((old, new)) => (Some(old.as_str()), Some(new.as_str())),
                    None => (None, None),
                };
                let (message, until, attempts) = settled.params();
                let done = sqlx::query($sql)
                    .bind(r.id).bind($now).bind(old_status).bind(new_status).bind(r.generation)
                    .bind(message).bind(until).bind(attempts).bind(r.sync_job).bind(r.revision)
                    .bind(settled.code())
                    .execute(&mut *$tx).await?;
                if done.rows_affected() == 0 && old_status.is_some() {
                    sqlx::query(RERUN_SQL).bind(r.id).bind($now).execute(&mut *$tx).await?;
                    false
                } else {
                    if r.has_dependents && matches!(settled, Settled::Synced { .. }) {
                        // Wake dependents that were waiting on this object.
                        sqlx::query(
                            "UPDATE objects SET next_attempt_at = $1 WHERE waiting_on IS NOT NULL AND deleted_at IS NULL \
                             AND id IN (SELECT src_id FROM links WHERE dst_kind = $2 AND dst_key = $3)")
                            .bind($now).bind(&r.kind).bind(&r.key).execute(&mut *$tx).await?;
                    }
                    true
                }
            }
        }
    }};
}

impl Store {
    /// Records many outcomes and their executions in one transaction, gives their leases
    /// back, and wakes objects waiting on the ones that converged. An outcome whose lease
    /// passed to another holder is not written at all, audit row included; one whose status
    /// write lost to an event is made due again instead of applied. If the transaction fails,
    /// nothing was written and every lease is still held: the caller may simply retry.
    pub async fn settle(
        &self,
        holder: &str,
        now: i64,
        records: &[OutcomeRecord],
    ) -> Result<Settlement> {
        let mut settlement = Settlement::default();
        if records.is_empty() {
            return Ok(settlement);
        }
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        let outcome_sql = outcome_sql();
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            // Which leases are still ours. PostgreSQL deletes them here: the rows stay locked
            // until commit, so no claim can take one mid-settle, and a rollback restores them.
            // SQLite's are in memory, checked now (the one connection is ours, so no claim
            // interleaves) and given back only once the commit succeeded.
            let held: std::collections::HashSet<i64> = match &self.db {
                Db::Sqlite(_) => ids
                    .iter()
                    .zip(self.mem_leases.held_by(&ids, holder))
                    .filter(|(_, h)| *h)
                    .map(|(id, _)| *id)
                    .collect(),
                Db::Postgres(_) => {
                    let sql = format!("DELETE FROM leases WHERE holder = $1 AND id{} RETURNING id", self.in_ids(2));
                    let held: Vec<i64> = sqlx::query_scalar(&sql)
                        .bind(holder).bind(self.id_param(ids.iter().copied()))
                        .fetch_all(&mut *tx).await?;
                    held.into_iter().collect()
                }
            };
            let (records, lost): (Vec<&OutcomeRecord>, Vec<&OutcomeRecord>) =
                records.iter().partition(|r| held.contains(&r.id));
            settlement.lost = lost.iter().map(|r| r.id).collect();
            // The common case (a sync converged and left its status alone) is written in bulk:
            // one statement per generation instead of one per object.
            let (bulk, single): (Vec<&OutcomeRecord>, Vec<&OutcomeRecord>) = records.iter().partition(|r| {
                r.status.is_none() && r.sync_job
                    && matches!(&r.settled, Settled::Synced { message } if is_synced_message(message, r.generation))
            });
            for r in &single {
                if !settle_one!(tx, now, r, &outcome_sql) {
                    settlement.rerun.push(r.id);
                }
            }
            let mut by_generation: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
            for r in &bulk {
                by_generation.entry(r.generation).or_default().push(r.id);
            }
            // A row changed meanwhile (new generation, deleted) keeps its own schedule.
            let sup = "(generation > $1 OR deleted_at IS NOT NULL)";
            let bulk_sql = format!(
                "UPDATE objects SET enacted = CASE WHEN $1 > enacted THEN $1 ELSE enacted END, \
                 backend_status = CASE WHEN {sup} THEN backend_status ELSE $2 END, \
                 next_attempt_at = CASE WHEN {sup} THEN COALESCE(next_attempt_at, $3) ELSE NULL END, \
                 backend_code = CASE WHEN {sup} THEN backend_code ELSE 1 END, \
                 attempts = CASE WHEN {sup} THEN attempts ELSE 0 END, \
                 waiting_on = CASE WHEN {sup} THEN waiting_on ELSE NULL END, \
                 last_error = CASE WHEN {sup} THEN last_error ELSE NULL END, \
                 need_delete = TRUE, last_success_at = $3, updated_at = $3 WHERE id{}",
                self.in_ids(4));
            for (generation, ids) in &by_generation {
                sqlx::query(&bulk_sql)
                    .bind(*generation).bind(synced_message(*generation)).bind(now)
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
            let annotated: Vec<NewExecution> = records
                .iter()
                .filter(|r| settlement.rerun.contains(&r.id))
                .filter_map(|r| r.execution.as_ref())
                .map(|e| NewExecution {
                    outcome: "superseded".into(),
                    error: Some(format!(
                        "the step ended {} but an event changed the status while it ran: \
                         not recorded, running again", e.outcome)),
                    ..e.clone()
                })
                .collect();
            let executions: Vec<&NewExecution> = records
                .iter()
                .filter(|r| !settlement.rerun.contains(&r.id))
                .filter_map(|r| r.execution.as_ref())
                .chain(annotated.iter())
                .collect();
            tx.insert_executions(&executions).await?;
            tx.commit().await?;
            Ok::<_, super::StoreError>(())
        })?;
        if self.is_sqlite() {
            let mine: Vec<i64> = records
                .iter()
                .map(|r| r.id)
                .filter(|id| !settlement.lost.contains(id))
                .collect();
            self.mem_leases.release(&mine, holder);
        }
        Ok(settlement)
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
