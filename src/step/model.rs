//! Typed views of stored objects: a kind's spec and status as serde structs.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A kind of desired-state model. The spec is what should be true; the status is what was
/// observed. Both are stored as JSON; steps see these types.
pub trait Model: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind's name, as in `model-deps.json` and the CLI.
    const KIND: &'static str;
    /// Observed state written by sync and event steps.
    type Status: Serialize + DeserializeOwned + Default + Send + Sync + 'static;
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
}
