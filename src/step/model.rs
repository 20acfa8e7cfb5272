//! Typed views of stored objects: a kind's spec and status as serde structs, and the links a
//! kind declares to other kinds.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A kind of desired-state model. The spec is what should be true; the status is what was
/// observed. Both are stored as JSON; steps see these types.
pub trait Model: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind's name, as in `model-deps.json` and the CLI.
    const KIND: &'static str;
    /// The links from this kind's spec to other objects: the one place they are declared.
    /// `model-deps.json` must list exactly these (`thalamus check` and the start compare).
    const LINKS: &'static [Link] = &[];
    /// Observed state written by sync and event steps.
    type Status: Serialize + DeserializeOwned + Default + Send + Sync + 'static;
}

/// One link a model declares: its spec's `field` holds the key of a `target` object, which
/// calls the objects linking to it `reverse`. In `model-deps.json`:
/// `"Kind": [["target", "field", "reverse"]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    /// The kind linked to; it syncs first and is deleted last.
    pub target: &'static str,
    /// The spec field holding the target's key.
    pub field: &'static str,
    /// The name of the relation seen from the target (shown by `describe`).
    pub reverse: &'static str,
}

impl Link {
    /// A link through `field` to an object of kind `T`, which calls its linkers `reverse`.
    pub const fn to<T: Model>(field: &'static str, reverse: &'static str) -> Self {
        Self {
            target: T::KIND,
            field,
            reverse,
        }
    }
}

/// As in `model-deps.json`: `["Target", "field", "reverse"]`.
impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:?}, {:?}, {:?}]",
            self.target, self.field, self.reverse
        )
    }
}

/// One object as a step sees it.
#[derive(Debug, Clone)]
pub struct Obj<M: Model> {
    pub key: String,
    pub spec: M,
    pub status: M::Status,
    /// The desired generation this attempt works on.
    pub generation: i64,
    /// The generation last synced successfully (0 if never).
    pub enacted: i64,
    /// Failed attempts in a row before this one.
    pub attempts: i32,
    /// Soft-deleted: the sync loop is running `delete`.
    pub deleted: bool,
    /// The object's revision when it was read (every change bumps it), so a write can insist
    /// that nobody changed the object since.
    pub revision: i64,
    /// The status as it was stored when read, so a write can tell what changed (and what
    /// that announces).
    pub(crate) stored_status: std::sync::Arc<str>,
}
