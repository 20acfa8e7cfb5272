//! Settling a round's outcomes: many objects' results and their audit rows in one
//! transaction, each written only while its lease is still the writer's, and each written so
//! that nothing that happened while its step ran is lost (a status an event wrote, a new
//! spec, a deletion).

use super::executions::{InsertExecutions as _, NewExecution, Outcome};
use super::outbox::{insert_outbox, NewOutboxRow};
use super::statement::{Param, Statement};
use super::status::request_id_in;
use super::{with_pool, BeginWrite, Result, Store};

/// How one attempt ended, as the store records it.
#[derive(Debug, Clone)]
pub enum Settled {
    /// The step converged the world to the attempt's generation.
    Synced,
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
    /// What the outcome announces (a status change worth saying): written with it, or not
    /// at all when it is not applied (a lost lease, a status that lost to an event).
    pub announce: Vec<NewOutboxRow>,
    /// Whether something reacts to the kind's state transitions: an outcome that changes the
    /// state then bumps the revision, so its policies see it.
    pub transitions: bool,
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

/// Writes one outcome (none for a lease given back or a reaped object, which have their own
/// statements). Status is compare-and-set: if an event rewrote it while the step ran, the
/// statement changes no row (see [`Settlement::rerun`]). An object changed meanwhile so that
/// the outcome no longer decides what happens next (a new generation; a deletion that came
/// while a sync ran) keeps its own schedule and error state; its status write still lands.
/// `busy`: a dependency of a waiting object is being written by another transaction right
/// now (PostgreSQL: its row is locked) and may be converging; that transaction's wake-up
/// cannot see this wait yet, so the wait is rechecked within [`BUSY_RECHECK_MS`].
fn outcome_statement(r: &OutcomeRecord, now_ms: i64, busy: bool) -> Option<Statement<'_>> {
    let mut st = Statement::default();
    let id = st.param(Param::Int(r.id));
    let now = st.param(Param::Int(now_ms));
    let generation = st.param(Param::Int(r.generation));
    let sup = if r.sync_job {
        format!("(generation > {generation} OR deleted_at IS NOT NULL)")
    } else {
        format!("(generation > {generation})")
    };
    let keep = |column: &str, otherwise: &str| {
        format!("{column} = CASE WHEN {sup} THEN {column} ELSE {otherwise} END")
    };
    let reschedule = |otherwise: &str| {
        format!("next_attempt_at = CASE WHEN {sup} THEN COALESCE(next_attempt_at, {now}) ELSE {otherwise} END")
    };
    let mut set = vec![format!("updated_at = {now}")];
    // When the outcome moves the object into another state (see `STATE_SQL`) that transition
    // rules react to: ok, backoff, error. (Waiting is not woken for.)
    let enters: Option<String>;
    match &r.settled {
        Settled::Released | Settled::Reaped => return None,
        Settled::Synced => {
            enters = Some(format!("NOT {sup} AND enacted < generation"));
            let message = st.param(Param::Text(synced_message(r.generation).into()));
            set.extend([
                format!(
                    "enacted = CASE WHEN {generation} > enacted THEN {generation} ELSE enacted END"
                ),
                keep("backend_code", "1"),
                keep("backend_status", &message),
                keep("attempts", "0"),
                keep("waiting_on", "NULL"),
                keep("last_error", "NULL"),
                format!("last_success_at = {now}"),
                "need_delete = TRUE".into(),
                reschedule("NULL"),
            ]);
        }
        Settled::Deferred { until, message } => {
            enters = None;
            let message = st.param(Param::Text(message.into()));
            let until = st.param(Param::Int(*until));
            let revision = st.param(Param::Int(r.revision));
            set.extend([
                keep("backend_code", "0"),
                keep("backend_status", &message),
                keep("waiting_on", "NULL"),
                keep("reason", "'recheck'"),
                "need_delete = TRUE".into(),
                // An event that changed the object meanwhile asked for a look now.
                reschedule(&format!(
                    "CASE WHEN revision <> {revision} THEN {now} ELSE {until} END"
                )),
            ]);
        }
        Settled::Failed {
            attempts,
            until,
            error,
        } => {
            enters = Some(format!(
                "NOT {sup} AND enacted < generation AND (backend_code <> 2 OR waiting_on IS NOT NULL)"
            ));
            let error = st.param(Param::Text(error.into()));
            let attempts = st.param(Param::Int(i64::from(*attempts)));
            let until = st.param(Param::Int(*until));
            set.extend([
                keep("backend_code", "2"),
                keep("backend_status", &error),
                format!("last_error = {error}"),
                keep("waiting_on", "NULL"),
                keep("attempts", &attempts),
                keep("reason", "'retry'"),
                "need_delete = TRUE".into(),
                reschedule(&until),
            ]);
        }
        Settled::Permanent { error } => {
            enters = Some(format!(
                "NOT {sup} AND enacted < generation AND NOT (backend_code = 2 \
                 AND next_attempt_at IS NULL AND waiting_on IS NULL)"
            ));
            let error = st.param(Param::Text(error.into()));
            set.extend([
                keep("backend_code", "2"),
                keep("backend_status", &error),
                format!("last_error = {error}"),
                keep("waiting_on", "NULL"),
                "need_delete = TRUE".into(),
                reschedule("NULL"),
            ]);
        }
        Settled::Waiting { on, until } => {
            enters = None;
            let on = st.param(Param::Text(on.into()));
            let until = if busy {
                (*until).min(now_ms.saturating_add(BUSY_RECHECK_MS))
            } else {
                *until
            };
            let until = st.param(Param::Int(until));
            // The dependency it waits on may have converged since its round read it (another
            // replica synced it): that replica's wake-up found this object not yet waiting,
            // so it would sleep out the whole recheck. If every dependency is in sync now,
            // it is due now instead.
            let when = if r.sync_job {
                format!(
                    "CASE WHEN EXISTS (SELECT 1 FROM links l WHERE l.src_id = {id}) \
                     AND NOT EXISTS (SELECT 1 FROM links l WHERE l.src_id = {id} AND NOT EXISTS \
                     (SELECT 1 FROM objects d WHERE d.kind = l.dst_kind AND d.key = l.dst_key \
                     AND d.deleted_at IS NULL AND d.enacted >= d.generation)) \
                     THEN {now} ELSE {until} END"
                )
            } else {
                until.clone()
            };
            set.extend([
                keep("backend_status", &on),
                keep("waiting_on", &on),
                keep("reason", "'waiting'"),
                reschedule(&when),
            ]);
        }
    }
    let mut filter = format!("id = {id}");
    if let Some((read, written)) = &r.status {
        // The request id is kept beside the status (see `request_id_in`).
        let request_id = request_id_in(written)
            .map_or_else(|| "NULL".to_string(), |id| st.param(Param::Int(id)));
        let read = st.param(Param::Text(read.into()));
        let written = st.param(Param::Text(written.into()));
        set.push(format!(
            "status = {written}, request_id = {request_id}, revision = revision + 1"
        ));
        filter.push_str(&format!(" AND status = {read}"));
    } else if let Some(enters) = enters.filter(|_| r.transitions) {
        set.push(format!(
            "revision = revision + CASE WHEN {enters} THEN 1 ELSE 0 END"
        ));
    }
    st.sql = format!("UPDATE objects SET {} WHERE {filter}", set.join(", "));
    Some(st)
}

/// How soon a wait behind a dependency being written by another transaction is rechecked.
const BUSY_RECHECK_MS: i64 = 1_000;

/// PostgreSQL: share-locks the dependency rows of a waiting object that no other transaction
/// is writing, and counts those it could not lock. Once locked, no waker can commit a change
/// to them before this settle commits (so its wake-up sees this wait), and the wait's own
/// statement, in a later snapshot, sees every change committed before.
const LOCK_DEPENDENCIES_SQL: &str = "SELECT (SELECT COUNT(*) FROM links l JOIN objects d \
    ON d.kind = l.dst_kind AND d.key = l.dst_key WHERE l.src_id = $1) - \
    (SELECT COUNT(*) FROM (SELECT d.id FROM links l JOIN objects d ON d.kind = l.dst_kind \
    AND d.key = l.dst_key WHERE l.src_id = $1 FOR SHARE OF d SKIP LOCKED) locked)";

/// An outcome whose status write lost to an event: due again now, nothing else changed.
const RERUN_SQL: &str = "UPDATE objects SET need_delete = TRUE, updated_at = $2, \
    reason = 'status_changed', next_attempt_at = CASE WHEN next_attempt_at IS NULL \
    OR next_attempt_at > $2 THEN $2 ELSE next_attempt_at END WHERE id = $1";

/// Wakes deleting parents that were waiting for a dependent (`$2`) to go.
const WAKE_PARENTS_SQL: &str =
    "UPDATE objects SET next_attempt_at = $1 WHERE waiting_on IS NOT NULL \
    AND deleted_at IS NOT NULL AND EXISTS (SELECT 1 FROM links l WHERE l.src_id = $2 \
    AND l.dst_kind = objects.kind AND l.dst_key = objects.key)";

/// Wakes dependents that were waiting on the object `($2, $3)` (kind, key).
const WAKE_DEPENDENTS_SQL: &str =
    "UPDATE objects SET next_attempt_at = $1 WHERE waiting_on IS NOT NULL \
    AND deleted_at IS NULL AND id IN (SELECT src_id FROM links WHERE dst_kind = $2 AND dst_key = $3)";

/// Writes one outcome inside an open transaction `$tx`; evaluates to whether it was applied
/// (false: its status write lost to an event, and it was made due again instead). A macro
/// only because the two backends' transactions are different types.
macro_rules! settle_one {
    ($tx:ident, $now:expr, $r:expr, $pg:expr) => {{
        let r: &OutcomeRecord = $r;
        let busy = if $pg && r.sync_job && matches!(r.settled, Settled::Waiting { .. }) {
            let busy: i64 = sqlx::query_scalar(LOCK_DEPENDENCIES_SQL)
                .bind(r.id)
                .fetch_one(&mut *$tx)
                .await?;
            busy > 0
        } else {
            false
        };
        match outcome_statement(r, $now, busy) {
            None if matches!(r.settled, Settled::Reaped) => {
                sqlx::query(WAKE_PARENTS_SQL)
                    .bind($now)
                    .bind(r.id)
                    .execute(&mut *$tx)
                    .await?;
                // A deletion undone meanwhile (a new spec revived it) keeps the row.
                sqlx::query("DELETE FROM objects WHERE id = $1 AND deleted_at IS NOT NULL")
                    .bind(r.id)
                    .execute(&mut *$tx)
                    .await?;
                true
            }
            None => true,
            Some(statement) => {
                let done = statement.query().execute(&mut *$tx).await?;
                if done.rows_affected() == 0 && r.status.is_some() {
                    sqlx::query(RERUN_SQL)
                        .bind(r.id)
                        .bind($now)
                        .execute(&mut *$tx)
                        .await?;
                    false
                } else {
                    // What the applied outcome announces goes out with it, in this
                    // transaction: never the message without the change, nor the change
                    // without the message.
                    insert_outbox!($tx, r.announce.iter(), $now);
                    if r.has_dependents && matches!(r.settled, Settled::Synced) {
                        sqlx::query(WAKE_DEPENDENTS_SQL)
                            .bind($now)
                            .bind(&r.kind)
                            .bind(&r.key)
                            .execute(&mut *$tx)
                            .await?;
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
        let pg = matches!(self.db, super::Db::Postgres(_));
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            // Which leases are still ours. PostgreSQL deletes them here: the rows stay locked
            // until commit, so no claim can take one mid-settle, and a rollback restores them.
            // SQLite's are in memory, checked now (the one connection is ours, so no claim
            // interleaves) and given back only once the commit succeeded.
            let held: std::collections::HashSet<i64> = match self.leases.held_outside_settle(&ids, holder) {
                Some(held) => ids.iter().zip(held).filter(|(_, h)| *h).map(|(id, _)| *id).collect(),
                None => {
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
            let (bulk, single): (Vec<&OutcomeRecord>, Vec<&OutcomeRecord>) = records
                .iter()
                .partition(|r| {
                    r.status.is_none() && r.sync_job && r.announce.is_empty() && !r.transitions
                        && matches!(r.settled, Settled::Synced)
                });
            for r in &single {
                if !settle_one!(tx, now, r, pg) {
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
                    outcome: Outcome::Superseded,
                    error: Some(format!(
                        "the step ended {} but an event changed the status while it ran: \
                         not recorded, running again", e.outcome.code())),
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
        let mine: Vec<i64> = records
            .iter()
            .map(|r| r.id)
            .filter(|id| !settlement.lost.contains(id))
            .collect();
        self.leases.release_after_settle(&mine, holder);
        Ok(settlement)
    }
}

/// The backend status of an object synced at `generation`.
pub fn synced_message(generation: i64) -> String {
    format!("synced generation {generation}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(settled: Settled, status: bool, sync_job: bool) -> OutcomeRecord {
        OutcomeRecord {
            id: 5,
            kind: "Ingestion".into(),
            key: "VLA/x".into(),
            generation: 2,
            revision: 9,
            sync_job,
            settled,
            status: status.then(|| ("{}".to_string(), r#"{"request_id":1}"#.to_string())),
            execution: None,
            has_dependents: false,
            announce: Vec::new(),
            transitions: true,
        }
    }

    fn every_outcome() -> Vec<Settled> {
        vec![
            Settled::Synced,
            Settled::Deferred {
                until: 10,
                message: "request 1 is Executing".into(),
            },
            Settled::Failed {
                attempts: 3,
                until: 20,
                error: "503".into(),
            },
            Settled::Permanent {
                error: "400".into(),
            },
            Settled::Waiting {
                on: "waiting on Observation x".into(),
                until: 30,
            },
        ]
    }

    /// The `$n` placeholders a statement's text uses.
    fn placeholders(sql: &str) -> std::collections::BTreeSet<usize> {
        sql.split('$')
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect()
    }

    #[test]
    fn every_parameter_is_used_and_every_placeholder_bound() {
        for settled in every_outcome() {
            for (status, sync_job) in [(false, true), (true, true), (true, false)] {
                let r = record(settled.clone(), status, sync_job);
                let st = outcome_statement(&r, 1_000, false).expect("a statement");
                let used = placeholders(&st.sql);
                let bound: std::collections::BTreeSet<usize> = (1..=st.params.len()).collect();
                assert_eq!(used, bound, "{:?}: {}", r.settled, st.sql);
            }
        }
    }

    #[test]
    fn a_status_write_is_compare_and_set_and_a_deletion_supersedes_only_a_sync() {
        let sql = |status, sync_job| {
            let r = record(Settled::Synced, status, sync_job);
            outcome_statement(&r, 1, false).unwrap().sql
        };
        assert!(sql(true, true).contains("AND status = $"));
        assert!(sql(true, true).contains("OR deleted_at IS NOT NULL"));
        assert!(!sql(false, true).contains("revision = revision + 1"));
        assert!(!sql(false, false).contains("deleted_at"));
    }

    #[test]
    fn released_and_reaped_outcomes_write_no_outcome_statement() {
        assert!(outcome_statement(&record(Settled::Released, false, true), 1, false).is_none());
        assert!(outcome_statement(&record(Settled::Reaped, false, false), 1, false).is_none());
    }
}
