//! What steps may touch: typed access to models, over the store and the engine's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use super::announce::Announcers;
use super::model::{Model, Obj};
use crate::clock::Clock;
use crate::outbox::Announcement;
use crate::store::{
    canonical, Change, ObjectRow, SettleRecord, SpecChange, StatusWrite, Store, StoreError,
};

/// Typed read/write access to models, for pull steps, policies and event steps.
#[derive(Clone)]
pub struct Models {
    store: Store,
    clock: Arc<dyn Clock>,
    /// What a write's changes announce (nothing unless the engine was given announcers).
    announcers: Announcers,
    /// Writes through this handle (and its clones) that changed something.
    changes: Arc<AtomicU64>,
    /// The replica writing (its lease holder id), named in audit rows written through it.
    holder: Arc<str>,
}

impl Models {
    /// Access over `store`, timestamped by `clock`.
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            announcers: Announcers::default(),
            changes: Arc::default(),
            holder: Arc::from(""),
        }
    }

    /// The same access, naming `holder` as the replica whose writes these are.
    pub(crate) fn held_by(mut self, holder: &str) -> Self {
        self.holder = Arc::from(holder);
        self
    }

    /// The replica writing through this handle (empty outside an engine).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The same access, writing what each change announces to the outbox with it.
    pub(crate) fn with_announcers(mut self, announcers: Announcers) -> Self {
        self.announcers = announcers;
        self
    }

    /// The same access with its own count of [`Models::changes`], from zero.
    pub fn counting(&self) -> Self {
        Self::new(self.store.clone(), self.clock.clone())
            .with_announcers(self.announcers.clone())
            .held_by(&self.holder)
    }

    /// How many writes through this handle changed something (a policy that changed
    /// nothing leaves no row in the audit trail).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn changed(&self, n: u64) {
        self.changes.fetch_add(n, Ordering::Relaxed);
    }

    /// Now, in epoch milliseconds, from the engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// One object of kind `M`, deleted or not.
    pub async fn get<M: Model>(&self, key: &str) -> anyhow::Result<Option<Obj<M>>> {
        match self.store.get(M::KIND, key).await? {
            Some(row) => Ok(Some(typed(&row)?)),
            None => Ok(None),
        }
    }

    /// Every object of kind `M` that is not deleted, ordered by key: what a pull step
    /// compares its listing with, to learn what the source no longer lists.
    pub async fn all<M: Model>(&self) -> anyhow::Result<Vec<Obj<M>>> {
        let rows = self.store.all_of(M::KIND).await?;
        rows.iter().map(typed).collect()
    }

    /// Upserts one desired state; unchanged specs change nothing.
    pub async fn upsert<M: Model>(&self, key: &str, spec: &M) -> anyhow::Result<Change> {
        let value = serde_json::to_value(spec).context("serialising spec")?;
        let mut changes = self
            .upsert_values::<M>(vec![(key.to_string(), value)])
            .await?;
        Ok(changes.remove(0).change)
    }

    /// Upserts many desired states of one kind in one transaction.
    pub async fn upsert_many<M: Model>(
        &self,
        items: &[(String, M)],
    ) -> anyhow::Result<Vec<SpecChange>> {
        let values = items
            .iter()
            .map(|(k, m)| Ok((k.clone(), serde_json::to_value(m)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .context("serialising specs")?;
        self.upsert_values::<M>(values).await
    }

    /// Upserts serialised specs of kind `M`, with what each announces if it is new or changed.
    async fn upsert_values<M: Model>(
        &self,
        values: Vec<(String, serde_json::Value)>,
    ) -> anyhow::Result<Vec<SpecChange>> {
        self.upsert_kind(M::KIND, values).await
    }

    /// Upserts serialised specs of `kind` (its name), announcing as its announcers say: for
    /// specs built from data (rules), checked against the kind's type beforehand.
    pub(crate) async fn upsert_kind(
        &self,
        kind: &str,
        values: Vec<(String, serde_json::Value)>,
    ) -> anyhow::Result<Vec<SpecChange>> {
        // What each item announces if it turns out new or changed (the store writes it only
        // then, in the same transaction).
        let announce = if self.announcers.announces(kind) {
            values
                .iter()
                .map(|(key, spec)| self.announcers.on_spec(kind, key, spec))
                .collect::<anyhow::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let changes = self
            .store
            .upsert_announcing(kind, &values, &announce, self.now_ms())
            .await?;
        if announce.iter().any(|rows| !rows.is_empty()) {
            self.announcers.written.notify_one();
        }
        let changed = changes.iter().filter(|c| c.change != Change::Unchanged);
        self.changed(changed.count() as u64);
        Ok(changes)
    }

    /// Upserts many desired states of one kind like [`Models::upsert_many`]; when the store
    /// refuses the batch because of an item (not because it failed), upserts each item alone,
    /// so one bad item never stops the others. Returns the changes made and, per item still
    /// refused, its key and why; an error means the store itself failed.
    pub async fn upsert_each<M: Model>(
        &self,
        items: &[(String, M)],
    ) -> anyhow::Result<(Vec<SpecChange>, Vec<(String, anyhow::Error)>)> {
        let refused = |e: &anyhow::Error| {
            matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Invalid(_)))
        };
        match self.upsert_many(items).await {
            Ok(changes) => return Ok((changes, Vec::new())),
            Err(e) if !refused(&e) => return Err(e),
            Err(_) => {}
        }
        let (mut changes, mut failed) = (Vec::new(), Vec::new());
        for (key, spec) in items {
            match self.upsert(key, spec).await {
                Ok(change) => changes.push(SpecChange {
                    key: key.clone(),
                    change,
                }),
                Err(e) if refused(&e) => failed.push((key.clone(), e)),
                Err(e) => return Err(e),
            }
        }
        Ok((changes, failed))
    }

    /// What the filesystem source `source` recorded of its datasets' settle windows, so a
    /// restarted process resumes them.
    pub async fn settle_state(&self, source: &str) -> anyhow::Result<Vec<SettleRecord>> {
        Ok(self.store.settle_state(source).await?)
    }

    /// Stores what changed in `source`'s settle windows since the last save: datasets
    /// `changed` (first seen, or seen with other files) and datasets `vanished`.
    pub async fn save_settle_state(
        &self,
        source: &str,
        changed: &[SettleRecord],
        vanished: &[String],
    ) -> anyhow::Result<()> {
        Ok(self
            .store
            .save_settle_state(source, changed, vanished)
            .await?)
    }

    /// Soft-deletes an object and its dependents; returns how many were marked.
    pub async fn delete<M: Model>(&self, key: &str) -> anyhow::Result<usize> {
        let marked = self.store.delete(M::KIND, key, self.now_ms()).await?;
        self.changed(marked as u64);
        Ok(marked)
    }

    /// Replaces an object's observed status; returns whether it changed.
    pub async fn set_status<M: Model>(
        &self,
        key: &str,
        status: &M::Status,
    ) -> anyhow::Result<bool> {
        let value = serde_json::to_value(status).context("serialising status")?;
        let changed = self
            .store
            .set_status(M::KIND, key, &value, self.now_ms())
            .await?;
        self.changed(u64::from(changed));
        Ok(changed)
    }

    /// Writes back the observed status of objects read earlier, in one statement, each only
    /// if nobody changed the object since it was read (its revision); with `resync`, each one
    /// written is due at once (as [`Models::resync`]). Returns how many were written: fewer
    /// than given means some changed meanwhile and should be read again.
    pub async fn set_statuses<M: Model>(
        &self,
        objects: &[&Obj<M>],
        resync: bool,
    ) -> anyhow::Result<u64> {
        let objects: Vec<(&Obj<M>, Vec<Announcement>)> =
            objects.iter().map(|o| (*o, Vec::new())).collect();
        self.set_statuses_saying(&objects, resync).await
    }

    /// [`Models::set_statuses`], each object's write also announcing what its writer says
    /// (beside what its kind's announcers say of the change): e.g. a workflow status re-said
    /// as capability status. Written only with the status, in the same transaction.
    pub async fn set_statuses_saying<M: Model>(
        &self,
        objects: &[(&Obj<M>, Vec<Announcement>)],
        resync: bool,
    ) -> anyhow::Result<u64> {
        let mut writes = Vec::with_capacity(objects.len());
        for (o, extra) in objects {
            let status = serde_json::to_value(&o.status).context("serialising status")?;
            let announce = if self.announcers.announces(M::KIND) || !extra.is_empty() {
                let spec = serde_json::to_string(&o.spec).context("serialising spec")?;
                self.announcers.on_status(
                    M::KIND,
                    &o.key,
                    &spec,
                    &o.stored_status,
                    &canonical(&status),
                    extra.clone(),
                )?
            } else {
                Vec::new()
            };
            writes.push(StatusWrite {
                key: o.key.clone(),
                status,
                revision: Some(o.revision),
                announce,
            });
        }
        let said = writes.iter().any(|w| !w.announce.is_empty());
        let written = self
            .store
            .set_statuses(M::KIND, &writes, self.now_ms(), resync)
            .await?;
        if said && written > 0 {
            self.announcers.written.notify_one();
        }
        self.changed(written);
        Ok(written)
    }

    /// Objects of kind `M` whose observed status records one of the requests `ids`, in one
    /// indexed query.
    pub async fn with_request_ids<M: Model>(&self, ids: &[i64]) -> anyhow::Result<Vec<Obj<M>>> {
        let rows = self.store.find_by_request_ids(&[M::KIND], ids).await?;
        rows.iter().map(typed).collect()
    }

    /// [`Models::with_request_ids`] for two kinds in one query: a request id may belong to
    /// either (an ingestion's or a calibration's), and a batch of status messages asks once.
    pub async fn with_request_ids_of<A: Model, B: Model>(
        &self,
        ids: &[i64],
    ) -> anyhow::Result<(Vec<Obj<A>>, Vec<Obj<B>>)> {
        let rows = self
            .store
            .find_by_request_ids(&[A::KIND, B::KIND], ids)
            .await?;
        let (a, b): (Vec<&ObjectRow>, Vec<&ObjectRow>) =
            rows.iter().partition(|r| r.kind == A::KIND);
        Ok((
            a.into_iter().map(typed).collect::<anyhow::Result<_>>()?,
            b.into_iter().map(typed).collect::<anyhow::Result<_>>()?,
        ))
    }

    /// The store itself, for what rules do by kind name (their JSON is checked first).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Writes what `said` announces about `kind`/`key` to the outbox, once per `firing`: a
    /// firing already recorded writes nothing (a redelivered message, a policy run again).
    /// Returns whether it wrote.
    pub(crate) async fn publish_once(
        &self,
        firing: &str,
        kind: &str,
        key: &str,
        said: Vec<Announcement>,
    ) -> anyhow::Result<bool> {
        let rows = self.announcers.rows(kind, key, said);
        let wrote = self
            .store
            .publish_once(firing, &rows, self.now_ms())
            .await?;
        if wrote && !rows.is_empty() {
            self.announcers.written.notify_one();
        }
        Ok(wrote)
    }

    /// Asks the sync loop to look at an object now (never shortening a failure's backoff).
    pub async fn resync<M: Model>(&self, key: &str) -> anyhow::Result<bool> {
        let due = self.store.resync(M::KIND, key, self.now_ms()).await?;
        self.changed(u64::from(due));
        Ok(due)
    }
}

/// What a sync step may use besides its own object: read access to other models.
#[derive(Clone)]
pub struct StepContext {
    models: Models,
    /// Why this attempt runs (new generation, retry after backoff, …), for logs.
    pub cause: String,
}

impl StepContext {
    pub(crate) fn new(models: Models, cause: String) -> Self {
        Self { models, cause }
    }

    /// Now, in epoch milliseconds, from the engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.models.now_ms()
    }

    /// Reads another object, e.g. a calibration's ingestion.
    pub async fn get<M: Model>(&self, key: &str) -> anyhow::Result<Option<Obj<M>>> {
        self.models.get::<M>(key).await
    }
}

/// A stored object does not decode as its kind's type: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Undecodable(pub String);

/// Decodes a stored row into a typed object, naming the kind and key on failure.
pub(crate) fn typed<M: Model>(row: &ObjectRow) -> anyhow::Result<Obj<M>> {
    let undecodable = |what: &str, e: serde_json::Error| {
        anyhow::Error::new(Undecodable(format!(
            "the {what} of {} {} is not a valid {}: {e}",
            row.kind,
            row.key,
            M::KIND
        )))
    };
    let spec = serde_json::from_str(&row.spec).map_err(|e| undecodable("spec", e))?;
    // A new object's status is `{}`: "nothing observed yet", which is the default status.
    let status = if row.status == "{}" {
        M::Status::default()
    } else {
        serde_json::from_str(&row.status).map_err(|e| undecodable("status", e))?
    };
    Ok(Obj {
        key: row.key.clone(),
        spec,
        status,
        generation: row.generation,
        enacted: row.enacted,
        attempts: row.attempts,
        deleted: row.deleted_at.is_some(),
        revision: row.revision,
        stored_status: Arc::from(row.status.as_str()),
    })
}
