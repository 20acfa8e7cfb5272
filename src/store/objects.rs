//! Writing desired state: upserts that only move the generation when the spec moves, soft
//! deletes that cascade to dependents, status writes, and operator retries.

use std::collections::HashMap;

use serde_json::Value;

use super::outbox::{insert_outbox, NewOutboxRow};
use super::{with_pool, BeginWrite, Result, Store, StoreError};

/// One object as stored, every column; steps see it through typed wrappers.
#[derive(Debug, Clone, serde::Deserialize, sqlx::FromRow)]
pub struct ObjectRow {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub spec: String,
    pub status: String,
    pub generation: i64,
    pub enacted: i64,
    pub revision: i64,
    pub policed: i64,
    pub backend_code: i32,
    pub backend_status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<i64>,
    pub waiting_on: Option<String>,
    pub last_error: Option<String>,
    pub last_success_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    pub need_delete: bool,
    /// Why it is due ([`super::Reason`]'s code).
    pub reason: String,
}

/// The column list matching [`ObjectRow`].
pub(crate) const OBJECT_COLUMNS: &str = "id, kind, key, spec, status, generation, enacted, \
    revision, policed, backend_code, backend_status, attempts, next_attempt_at, waiting_on, \
    last_error, last_success_at, created_at, updated_at, deleted_at, need_delete, reason";

/// [`OBJECT_COLUMNS`] as SQLite JSON values, for `json_array(…)`: the row decodes from the
/// array by position (`need_delete` is stored as 0/1 and must read as a JSON boolean).
pub(crate) fn object_json_columns() -> String {
    OBJECT_COLUMNS.replace(
        "need_delete",
        "json(CASE WHEN need_delete THEN 'true' ELSE 'false' END)",
    )
}

/// What an upsert did, so pull steps can log and count real changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated { generation: i64 },
    Unchanged,
}

/// The change made to one key by [`Store::upsert_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecChange {
    pub key: String,
    pub change: Change,
}

/// What an operator retry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryResult {
    Scheduled,
    InSync,
    NotFound,
}

#[derive(sqlx::FromRow)]
struct Existing {
    id: i64,
    key: String,
    spec: String,
    deleted_at: Option<i64>,
}

const CHUNK: usize = 500;

/// Inserts `(field, dst_kind, dst_key)` links for `src_id` inside an open transaction.
macro_rules! insert_links {
    ($tx:ident, $id:expr, $links:expr) => {
        for (field, dst_kind, dst_key) in $links.iter() {
            sqlx::query("INSERT INTO links (src_id, field, dst_kind, dst_key) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind($id).bind(field).bind(dst_kind).bind(dst_key)
                .execute(&mut *$tx).await?;
        }
    };
}

impl Store {
    /// Upserts one object; see [`Store::upsert_many`].
    pub async fn upsert(&self, kind: &str, key: &str, spec: &Value, now: i64) -> Result<Change> {
        let items = [(key.to_string(), spec.clone())];
        Ok(self.upsert_many(kind, &items, now).await?.remove(0).change)
    }

    /// Upserts many objects of one kind in one transaction. An unchanged spec changes nothing;
    /// a changed spec bumps `generation` (and `revision`), clears backoff and revives a
    /// soft-deleted object.
    pub async fn upsert_many(
        &self,
        kind: &str,
        items: &[(String, Value)],
        now: i64,
    ) -> Result<Vec<SpecChange>> {
        self.upsert_announcing(kind, items, &[], now).await
    }

    /// [`Store::upsert_many`], writing `announce[i]` to the outbox in the same transaction
    /// when item `i` is created or changed (nothing when it is unchanged). `announce` may be
    /// empty (no announcements) or as long as `items`.
    pub async fn upsert_announcing(
        &self,
        kind: &str,
        items: &[(String, Value)],
        announce: &[Vec<NewOutboxRow>],
        now: i64,
    ) -> Result<Vec<SpecChange>> {
        let mut announcements: HashMap<&str, &[NewOutboxRow]> = HashMap::new();
        for ((key, _), rows) in items.iter().zip(announce) {
            announcements.insert(key.as_str(), rows.as_slice());
        }
        let mut prepared = Vec::with_capacity(items.len());
        let mut given: HashMap<&str, String> = HashMap::with_capacity(items.len());
        for (key, spec) in items {
            let text = canonical(spec);
            match given.get(key.as_str()) {
                // The same desired state twice is one; two different ones for one key would
                // make the spec (and the generation) flip between them on every poll.
                Some(first) if *first == text => continue,
                Some(_) => {
                    return Err(StoreError::Invalid(format!(
                        "{kind} {key} is given twice with different specs in one upsert"
                    )))
                }
                None => {
                    given.insert(key, text.clone());
                }
            }
            let links = self.links_of(kind, key, spec)?;
            prepared.push((key.as_str(), text, links));
        }
        let mut out = Vec::with_capacity(items.len());
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in prepared.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, key, spec, deleted_at FROM objects WHERE kind = ");
                q.push_bind(kind).push(" AND key IN (");
                let mut sep = q.separated(", ");
                for (key, _, _) in chunk {
                    sep.push_bind(*key);
                }
                q.push(")");
                let found: Vec<Existing> = q.build_query_as().fetch_all(&mut *tx).await?;
                let found: HashMap<String, Existing> = found.into_iter().map(|e| (e.key.clone(), e)).collect();
                for (key, spec, links) in chunk {
                    let existing = match found.get(*key) {
                        Some(e) => Some(e.id),
                        None => {
                            let id: Option<i64> = sqlx::query_scalar(
                                "INSERT INTO objects (kind, key, spec, next_attempt_at, created_at, updated_at, \
                                 backend_status) VALUES ($1, $2, $3, $4, $4, $4, 'new') \
                                 ON CONFLICT (kind, key) DO NOTHING RETURNING id")
                                .bind(kind).bind(*key).bind(spec).bind(now)
                                .fetch_optional(&mut *tx).await?;
                            match id {
                                Some(id) => {
                                    insert_links!(tx, id, links);
                                    None
                                }
                                // Another writer created it meanwhile (and has committed: the
                                // insert waited for it): compare with what it wrote.
                                None => Some(sqlx::query_scalar("SELECT id FROM objects WHERE kind = $1 AND key = $2")
                                    .bind(kind).bind(*key).fetch_one(&mut *tx).await?),
                            }
                        }
                    };
                    let change = match existing {
                        None => Change::Created,
                        Some(_) if found.get(*key).is_some_and(|e| e.spec == *spec && e.deleted_at.is_none()) => {
                            Change::Unchanged
                        }
                        Some(id) => {
                            // The spec is compared again as the row is now, not as it was read:
                            // two writers upserting the same new spec move the generation once.
                            let generation: Option<i64> = sqlx::query_scalar(
                                "UPDATE objects SET spec = $1, generation = generation + 1, \
                                 revision = revision + 1, next_attempt_at = $2, attempts = 0, \
                                 backend_code = 0, backend_status = 'spec changed', reason = 'spec_changed', waiting_on = NULL, \
                                 deleted_at = NULL, updated_at = $2 \
                                 WHERE id = $3 AND (spec <> $1 OR deleted_at IS NOT NULL) RETURNING generation")
                                .bind(spec).bind(now).bind(id)
                                .fetch_optional(&mut *tx).await?;
                            match generation {
                                Some(generation) => {
                                    sqlx::query("DELETE FROM links WHERE src_id = $1").bind(id).execute(&mut *tx).await?;
                                    insert_links!(tx, id, links);
                                    Change::Updated { generation }
                                }
                                None => Change::Unchanged,
                            }
                        }
                    };
                    if change != Change::Unchanged {
                        if let Some(rows) = announcements.get(*key) {
                            insert_outbox!(tx, rows.iter(), now);
                        }
                    }
                    out.push(SpecChange { key: key.to_string(), change });
                }
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        })?;
        Ok(out)
    }

    /// The links a spec declares through the fields named in `model-deps.json`.
    fn links_of(
        &self,
        kind: &str,
        key: &str,
        spec: &Value,
    ) -> Result<Vec<(String, String, String)>> {
        let mut links = Vec::new();
        for (field, target) in self.links.get(kind).map(Vec::as_slice).unwrap_or_default() {
            let bad = || {
                StoreError::Invalid(format!(
                "{kind} {key}: link field `{field}` must be a {target} key (a string or a list of strings)"))
            };
            match spec.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => links.push((field.clone(), target.clone(), s.clone())),
                Some(Value::Array(items)) => {
                    for item in items {
                        let s = item.as_str().ok_or_else(bad)?;
                        links.push((field.clone(), target.clone(), s.to_string()));
                    }
                }
                Some(_) => return Err(bad()),
            }
        }
        Ok(links)
    }

    /// Soft-deletes an object and, transitively, everything that links to it. Returns how many
    /// objects were marked; the sync loop runs their `delete` steps dependents first.
    pub async fn delete(&self, kind: &str, key: &str, now: i64) -> Result<usize> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let mut frontier = vec![(kind.to_string(), key.to_string())];
            let mut marked = 0;
            while let Some((k, name)) = frontier.pop() {
                let done = sqlx::query(
                    "UPDATE objects SET deleted_at = $1, next_attempt_at = $1, revision = revision + 1, \
                     attempts = 0, backend_code = 0, backend_status = 'deletion requested', reason = 'deletion', \
                     waiting_on = NULL, updated_at = $1 \
                     WHERE kind = $2 AND key = $3 AND deleted_at IS NULL")
                    .bind(now).bind(&k).bind(&name).execute(&mut *tx).await?;
                if done.rows_affected() == 0 {
                    continue;
                }
                marked += 1;
                let children: Vec<(String, String)> = sqlx::query_as(
                    "SELECT o.kind, o.key FROM links l JOIN objects o ON o.id = l.src_id \
                     WHERE l.dst_kind = $1 AND l.dst_key = $2 AND o.deleted_at IS NULL")
                    .bind(&k).bind(&name).fetch_all(&mut *tx).await?;
                frontier.extend(children);
            }
            tx.commit().await?;
            Ok(marked)
        })
    }

    /// One object by kind and key, deleted or not.
    pub async fn get(&self, kind: &str, key: &str) -> Result<Option<ObjectRow>> {
        let sql = format!("SELECT {OBJECT_COLUMNS} FROM objects WHERE kind = $1 AND key = $2");
        with_pool!(&self.db, pool => Ok(sqlx::query_as(&sql).bind(kind).bind(key).fetch_optional(pool).await?))
    }

    /// Every object of `kind` that is not deleted, ordered by key.
    pub async fn all_of(&self, kind: &str) -> Result<Vec<ObjectRow>> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS} FROM objects WHERE kind = $1 AND deleted_at IS NULL ORDER BY key"
        );
        with_pool!(&self.db, pool => Ok(sqlx::query_as(&sql).bind(kind).fetch_all(pool).await?))
    }

    /// Asks for an immediate re-sync (an event said something changed). Never shortens the
    /// backoff of an object whose last attempt failed.
    pub async fn resync(&self, kind: &str, key: &str, now: i64) -> Result<bool> {
        with_pool!(&self.db, pool => {
            let done = sqlx::query(
                "UPDATE objects SET next_attempt_at = $1, reason = 'event' WHERE kind = $2 AND key = $3 \
                 AND (enacted < generation OR deleted_at IS NOT NULL) AND backend_code <> 2 \
                 AND (next_attempt_at IS NULL OR next_attempt_at > $1)")
                .bind(now).bind(kind).bind(key).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Operator retry: clears backoff or a permanent failure so the object runs now.
    pub async fn retry(&self, kind: &str, key: &str, now: i64) -> Result<RetryResult> {
        with_pool!(&self.db, pool => {
            let done = sqlx::query(
                "UPDATE objects SET attempts = 0, next_attempt_at = $1, backend_code = 0, \
                 backend_status = 'retry requested by operator', reason = 'operator_retry', waiting_on = NULL, updated_at = $1 \
                 WHERE kind = $2 AND key = $3 AND (enacted < generation OR deleted_at IS NOT NULL)")
                .bind(now).bind(kind).bind(key).execute(pool).await?;
            if done.rows_affected() > 0 {
                return Ok(RetryResult::Scheduled);
            }
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM objects WHERE kind = $1 AND key = $2")
                .bind(kind).bind(key).fetch_optional(pool).await?;
            Ok(if exists.is_some() { RetryResult::InSync } else { RetryResult::NotFound })
        })
    }
}

/// Canonical JSON text (object keys sorted), so equal specs compare equal as strings.
pub fn canonical(value: &Value) -> String {
    // serde_json's maps iterate in key order unless its `preserve_order` feature is on:
    // then the text is canonical as written, with no sorted copy (every status write's cost).
    fn sorted(v: &Value) -> bool {
        match v {
            Value::Object(map) => map.keys().is_sorted() && map.values().all(sorted),
            Value::Array(items) => items.iter().all(sorted),
            _ => true,
        }
    }
    if sorted(value) {
        return value.to_string();
    }
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sort(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn equal_values_written_in_any_key_order_have_one_text() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [{"z": 0, "y": 1}], "c": null}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a": {"c": null, "d": [{"y": 1, "z": 0}]}, "b": 1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a),
            r#"{"a":{"c":null,"d":[{"y":1,"z":0}]},"b":1}"#
        );
    }
}
