//! Observed status: finding the objects behind Workspaces requests, and writing many statuses
//! in one transaction, so an event step can apply a broker's batch in a few statements.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::Row as _;

use super::objects::{canonical, object_json_columns, ObjectRow, OBJECT_COLUMNS};
use super::outbox::{insert_outbox, NewOutboxRow};
use super::{BeginWrite, Db, Result, Store, StoreError};

/// The Workspaces request an observed status records (an integer `request_id` in it): stored
/// beside the status by every writer, so a status message finds its model by index without
/// the database parsing status texts.
pub(crate) fn request_id_of(status: &Value) -> Option<i64> {
    status.get("request_id")?.as_i64()
}

/// A status to write to one object, by key.
#[derive(Debug, Clone)]
pub struct StatusWrite {
    pub key: String,
    pub status: Value,
    /// Write only if the object's revision is still this (nobody changed it since it was
    /// read); `None` writes whatever it is.
    pub revision: Option<i64>,
    /// What the change announces: written to the outbox with it, in the same transaction,
    /// or not at all when the status is not written.
    pub announce: Vec<NewOutboxRow>,
}

/// The request id of a status text (see [`request_id_of`]), reading only that field.
pub(crate) fn request_id_in(text: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Requested {
        request_id: Option<Value>,
    }
    serde_json::from_str::<Requested>(text)
        .ok()?
        .request_id?
        .as_i64()
}

impl Store {
    /// Replaces an object's observed status; bumps `revision` only if it changed. Returns
    /// whether it changed.
    pub async fn set_status(
        &self,
        kind: &str,
        key: &str,
        status: &Value,
        now: i64,
    ) -> Result<bool> {
        let write = StatusWrite {
            key: key.to_string(),
            status: status.clone(),
            revision: None,
            announce: Vec::new(),
        };
        Ok(self.set_statuses(kind, &[write], now, false).await? > 0)
    }

    /// Replaces the observed status of objects of `kind` in one statement (a key given twice
    /// takes its last status), each only if it differs and its revision is still the one
    /// given; with `resync`, each one that changed is also due at once, as
    /// [`Store::resync`] does. Returns how many changed.
    pub async fn set_statuses(
        &self,
        kind: &str,
        items: &[StatusWrite],
        now: i64,
        resync: bool,
    ) -> Result<u64> {
        let mut seen = HashSet::new();
        let mut keys = Vec::with_capacity(items.len());
        let mut statuses = Vec::with_capacity(items.len());
        let mut revisions = Vec::with_capacity(items.len());
        let mut request_ids = Vec::with_capacity(items.len());
        let mut announce: HashMap<&str, &[NewOutboxRow]> = HashMap::new();
        for w in items.iter().rev() {
            if seen.insert(w.key.as_str()) {
                keys.push(w.key.as_str());
                statuses.push(canonical(&w.status));
                revisions.push(w.revision);
                request_ids.push(request_id_of(&w.status));
                if !w.announce.is_empty() {
                    announce.insert(w.key.as_str(), &w.announce);
                }
            }
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let resyncs = "$4 AND (enacted < generation OR deleted_at IS NOT NULL) \
                   AND backend_code <> 2 AND (next_attempt_at IS NULL OR next_attempt_at > $2)";
        let set = format!(
            "status = j.status, request_id = j.request_id, revision = revision + 1, updated_at = $2, \
             next_attempt_at = CASE WHEN {resyncs} THEN $2 ELSE next_attempt_at END, \
             reason = CASE WHEN {resyncs} THEN 'event' ELSE reason END"
        );
        // The keys written come back, so their announcements are written with them. With
        // nothing to announce the UPDATE is its own transaction, one statement instead of
        // three, and returns only its count.
        let returning = if announce.is_empty() {
            ""
        } else {
            " RETURNING objects.key"
        };
        // In one write transaction with the outbox rows of the keys it wrote.
        macro_rules! announcing {
            ($pool:expr, $update:expr) => {{
                let mut tx = $pool.begin_write().await?;
                let written = $update.fetch_all(&mut *tx).await?;
                for row in &written {
                    let key: String = row.try_get(0)?;
                    if let Some(rows) = announce.get(key.as_str()) {
                        insert_outbox!(tx, rows.iter(), now);
                    }
                }
                tx.commit().await?;
                written.len() as u64
            }};
        }
        let written: u64 = match &self.db {
            Db::Sqlite(pool) => {
                let rows: Vec<(&str, &str, Option<i64>, Option<i64>)> = keys
                    .iter()
                    .zip(&statuses)
                    .zip(&revisions)
                    .zip(&request_ids)
                    .map(|(((k, s), r), id)| (*k, s.as_str(), *r, *id))
                    .collect();
                // Materialised, so the plan walks the batch and looks each key up, rather
                // than walking every object of the kind and the batch for each.
                let sql = format!(
                    "WITH j(key, status, expected, request_id) AS MATERIALIZED \
                     (SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each($1)) \
                     UPDATE objects SET {set} FROM j \
                     WHERE objects.kind = $3 AND objects.key = j.key AND objects.status <> j.status \
                     AND (j.expected IS NULL OR objects.revision = j.expected){returning}"
                );
                let rows = serde_json::to_string(&rows)
                    .map_err(|e| StoreError::Invalid(format!("encoding statuses: {e}")))?;
                let update = sqlx::query(&sql)
                    .bind(rows)
                    .bind(now)
                    .bind(kind)
                    .bind(resync);
                if announce.is_empty() {
                    update.execute(pool).await?.rows_affected()
                } else {
                    announcing!(pool, update)
                }
            }
            Db::Postgres(pool) => {
                let sql = format!(
                    "UPDATE objects SET {set} \
                     FROM UNNEST(CAST($1 AS TEXT[]), CAST($5 AS TEXT[]), CAST($6 AS BIGINT[]), \
                     CAST($7 AS BIGINT[])) AS j(key, status, expected, request_id) \
                     WHERE objects.kind = $3 AND objects.key = j.key AND objects.status <> j.status \
                     AND (j.expected IS NULL OR objects.revision = j.expected){returning}"
                );
                let update = sqlx::query(&sql)
                    .bind(&keys)
                    .bind(now)
                    .bind(kind)
                    .bind(resync)
                    .bind(&statuses)
                    .bind(&revisions)
                    .bind(&request_ids);
                if announce.is_empty() {
                    update.execute(pool).await?.rows_affected()
                } else {
                    announcing!(pool, update)
                }
            }
        };
        Ok(written)
    }

    /// Objects of `kinds` whose observed status has a `request_id` among `ids` (indexed; see
    /// [`request_id_of`]).
    pub async fn find_by_request_ids(&self, kinds: &[&str], ids: &[i64]) -> Result<Vec<ObjectRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let set = self.id_param(ids.iter().copied());
        let kinds_param = self.text_param(kinds.iter().copied());
        let filter = format!(
            "WHERE request_id IS NOT NULL AND request_id{} AND kind{}",
            self.in_ids(1),
            self.in_texts(2)
        );
        let rows: Vec<ObjectRow> = match &self.db {
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT json_group_array(json_array({})) FROM objects {filter}",
                    object_json_columns()
                );
                let text: String = sqlx::query_scalar(&sql)
                    .bind(set)
                    .bind(kinds_param)
                    .fetch_one(pool)
                    .await?;
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Invalid(format!("decoding objects: {e}")))?
            }
            Db::Postgres(pool) => {
                let sql = format!("SELECT {OBJECT_COLUMNS} FROM objects {filter}");
                sqlx::query_as(&sql)
                    .bind(set)
                    .bind(kinds_param)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows)
    }
}
