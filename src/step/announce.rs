//! Announcers: what a change of one kind's objects says to the systems downstream. The engine
//! asks a kind's announcers whenever a write changes an object's spec (pull steps, policies)
//! or its status (sync steps, event steps), and writes what they say to the outbox in the same
//! transaction as the change, so a crash never keeps one without the other.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Notify;

use super::context::Undecodable;
use super::model::Model;
use crate::outbox::{Announcement, Herald};
use crate::store::NewOutboxRow;

/// Says what a change of one kind's objects announces.
pub trait Announcer: Send + Sync + 'static {
    type Model: Model;

    /// The object `key` was created, or its spec changed, to `spec`.
    fn on_spec(&self, key: &str, spec: &Self::Model) -> Vec<Announcement> {
        let _ = (key, spec);
        Vec::new()
    }

    /// The status of `key` changed from `before` to `after`.
    fn on_status(
        &self,
        key: &str,
        spec: &Self::Model,
        before: &<Self::Model as Model>::Status,
        after: &<Self::Model as Model>::Status,
    ) -> Vec<Announcement> {
        let _ = (key, spec, before, after);
        Vec::new()
    }
}

/// An announcer behind JSON, as the engine holds it.
pub(crate) trait DynAnnouncer: Send + Sync {
    fn on_spec(&self, key: &str, spec: &serde_json::Value) -> anyhow::Result<Vec<Announcement>>;
    fn on_status(
        &self,
        key: &str,
        spec: &str,
        before: &str,
        after: &str,
    ) -> anyhow::Result<Vec<Announcement>>;
}

struct TypedAnnouncer<A>(A);

/// A stored status, `{}` being the default (nothing observed yet).
fn status<M: Model>(text: &str) -> anyhow::Result<M::Status> {
    if text == "{}" {
        return Ok(M::Status::default());
    }
    serde_json::from_str(text)
        .map_err(|e| anyhow::Error::new(Undecodable(format!("a {} status: {e}", M::KIND))))
}

impl<A: Announcer> DynAnnouncer for TypedAnnouncer<A> {
    fn on_spec(&self, key: &str, spec: &serde_json::Value) -> anyhow::Result<Vec<Announcement>> {
        let spec: A::Model = serde_json::from_value(spec.clone())?;
        Ok(self.0.on_spec(key, &spec))
    }

    fn on_status(
        &self,
        key: &str,
        spec: &str,
        before: &str,
        after: &str,
    ) -> anyhow::Result<Vec<Announcement>> {
        let spec: A::Model = serde_json::from_str(spec)?;
        let (before, after) = (status::<A::Model>(before)?, status::<A::Model>(after)?);
        Ok(self.0.on_status(key, &spec, &before, &after))
    }
}

/// Every announcer by kind, and the herald that turns what they say into outbox rows.
#[derive(Clone, Default)]
pub(crate) struct Announcers {
    by_kind: BTreeMap<&'static str, Vec<Arc<dyn DynAnnouncer>>>,
    herald: Herald,
    /// Woken whenever rows were handed to the store, so the relay publishes at once.
    pub written: Arc<Notify>,
}

impl Announcers {
    /// Adds an announcer for its model's kind.
    pub fn add<A: Announcer>(&mut self, announcer: A) {
        self.by_kind
            .entry(<A::Model as Model>::KIND)
            .or_default()
            .push(Arc::new(TypedAnnouncer(announcer)));
    }

    /// The same announcers, writing as `herald` says.
    pub fn with_herald(mut self, herald: Herald) -> Self {
        self.herald = herald;
        self
    }

    /// Whether a change of `kind` may announce anything.
    pub fn announces(&self, kind: &str) -> bool {
        self.herald.announces() && self.by_kind.contains_key(kind)
    }

    /// The rows `said` about `kind`/`key` becomes, as the herald says.
    pub fn rows(&self, kind: &str, key: &str, said: Vec<Announcement>) -> Vec<NewOutboxRow> {
        self.herald.rows(kind, key, said)
    }

    /// The rows a new or changed spec of `kind`/`key` announces.
    pub fn on_spec(
        &self,
        kind: &str,
        key: &str,
        spec: &serde_json::Value,
    ) -> anyhow::Result<Vec<NewOutboxRow>> {
        let mut said = Vec::new();
        for a in self.by_kind.get(kind).into_iter().flatten() {
            said.extend(a.on_spec(key, spec)?);
        }
        Ok(self.herald.rows(kind, key, said))
    }

    /// The rows a status change of `kind`/`key` announces, plus `extra` said by its writer.
    pub fn on_status(
        &self,
        kind: &str,
        key: &str,
        spec: &str,
        before: &str,
        after: &str,
        extra: Vec<Announcement>,
    ) -> anyhow::Result<Vec<NewOutboxRow>> {
        let mut said = extra;
        for a in self.by_kind.get(kind).into_iter().flatten() {
            said.extend(a.on_status(key, spec, before, after)?);
        }
        Ok(self.herald.rows(kind, key, said))
    }
}
