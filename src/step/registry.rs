//! The registry of steps: what `steps/` registers, and the type-erased wrappers the engine runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::context::{typed, Models, StepContext};
use super::model::{Link, Model};
use super::traits::{EventStep, ModelPolicy, PullStep, StepError, StepResult, SyncStep};
use crate::store::{ObjectRow, Unpoliced};

/// Every step the engine runs, collected by `steps::register`.
#[derive(Default, Clone)]
pub struct Registry {
    pub(crate) sync: BTreeMap<String, Arc<dyn DynSync>>,
    pub(crate) pulls: Vec<Arc<dyn PullStep>>,
    pub(crate) policies: BTreeMap<String, Vec<Arc<dyn DynPolicy>>>,
    pub(crate) events: Vec<Arc<dyn EventStep>>,
    pub(crate) announcers: super::Announcers,
    /// Every kind a step, policy or announcer names, with its decoders (rules check the JSON
    /// they build against them).
    pub(crate) kinds: BTreeMap<&'static str, KindCheck>,
    /// What `reload` runs (the rules, on SIGHUP).
    pub(crate) reloaders: Vec<Arc<dyn Fn() -> anyhow::Result<String> + Send + Sync>>,
    /// Per-rule counters for the operator surface (the rules register it).
    pub(crate) rule_counts: Option<Arc<RuleCountsFn>>,
    /// Kinds whose state transitions something reacts to: their settles that change the
    /// state (to ok, backoff, error) bump the revision so their policies see the change.
    pub(crate) transitions: std::collections::BTreeSet<String>,
}

/// Per rule: how often it matched an event, fired, and failed.
pub type RuleCountsFn = dyn Fn() -> Vec<(String, [u64; 3])> + Send + Sync;

impl Registry {
    /// An empty registry (tests register their own steps).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the sync step of its model's kind. One per kind: a second one is an error.
    pub fn sync<S: SyncStep>(&mut self, step: S) -> anyhow::Result<&mut Self> {
        let kind = <S::Model as Model>::KIND;
        if self.sync.contains_key(kind) {
            anyhow::bail!("two sync steps registered for kind {kind}");
        }
        self.sync
            .insert(kind.to_string(), Arc::new(TypedSync(step)));
        self.kinds.insert(kind, KindCheck::of::<S::Model>());
        Ok(self)
    }

    /// Registers a pull step.
    pub fn pull<P: PullStep>(&mut self, step: P) -> &mut Self {
        self.pulls.push(Arc::new(step));
        self
    }

    /// Registers a policy for its model's kind (several may share a kind).
    pub fn policy<P: ModelPolicy>(&mut self, policy: P) -> &mut Self {
        let kind = <P::Model as Model>::KIND.to_string();
        self.kinds
            .insert(<P::Model as Model>::KIND, KindCheck::of::<P::Model>());
        self.policies
            .entry(kind)
            .or_default()
            .push(Arc::new(TypedPolicy(policy)));
        self
    }

    /// Registers an event step.
    pub fn event<E: EventStep>(&mut self, step: E) -> &mut Self {
        self.events.push(Arc::new(step));
        self
    }

    /// Registers an announcer for its model's kind (several may share a kind).
    pub fn announcer<A: super::Announcer>(&mut self, announcer: A) -> &mut Self {
        self.announcers.add(announcer);
        self
    }

    /// Registers a policy for `kind` by name, for policies built from data (rules).
    pub(crate) fn dyn_policy(&mut self, kind: &str, policy: Arc<dyn DynPolicy>) -> &mut Self {
        self.policies
            .entry(kind.to_string())
            .or_default()
            .push(policy);
        self
    }

    /// Runs `reload` on [`Registry::reload`] (what SIGHUP asks for).
    pub fn on_reload(
        &mut self,
        reload: impl Fn() -> anyhow::Result<String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.reloaders.push(Arc::new(reload));
        self
    }

    /// Makes settles that change the state of `kind`'s objects visible to its policies (a
    /// transition rule's `from` → `to`); other kinds' settles are not worth a policy pass.
    pub fn watch_transitions(&mut self, kind: &str) -> &mut Self {
        self.transitions.insert(kind.to_string());
        self
    }

    /// Where the per-rule counters (matched, fired, failed) are read, for `/metrics`.
    pub fn on_rule_counts(
        &mut self,
        counts: impl Fn() -> Vec<(String, [u64; 3])> + Send + Sync + 'static,
    ) -> &mut Self {
        self.rule_counts = Some(Arc::new(counts));
        self
    }

    /// The per-rule counters (matched, fired, failed), by rule name; none without rules.
    pub fn rule_counts(&self) -> Vec<(String, [u64; 3])> {
        self.rule_counts.as_ref().map(|f| f()).unwrap_or_default()
    }

    /// Reloads what can be reloaded (the rules): what each reloader said, or why it refused.
    pub fn reload(&self) -> Vec<anyhow::Result<String>> {
        self.reloaders.iter().map(|r| r()).collect()
    }

    /// Every kind the registered steps name, with its decoders.
    pub fn kinds(&self) -> BTreeMap<&'static str, KindCheck> {
        self.kinds.clone()
    }

    /// Kinds that have a sync step, each with the links its model declares, by name.
    pub fn sync_kinds(&self) -> Vec<SyncKind> {
        self.sync.values().map(|step| step.kind()).collect()
    }

    /// Names of the registered pull steps.
    pub fn pull_names(&self) -> Vec<String> {
        self.pulls.iter().map(|p| p.name().to_string()).collect()
    }

    /// Names of the registered policies, as `Kind:name`.
    pub fn policy_names(&self) -> Vec<String> {
        self.policies
            .iter()
            .flat_map(|(k, ps)| ps.iter().map(move |p| format!("{k}:{}", p.name())))
            .collect()
    }

    /// Names of the registered event steps.
    pub fn event_names(&self) -> Vec<String> {
        self.events.iter().map(|e| e.name().to_string()).collect()
    }
}

/// Decodes JSON as one kind's spec or status, saying why it is not one.
#[derive(Debug, Clone, Copy)]
pub struct KindCheck {
    /// Checks a spec.
    pub spec: fn(&serde_json::Value) -> Result<(), String>,
    /// Checks a status.
    pub status: fn(&serde_json::Value) -> Result<(), String>,
}

impl KindCheck {
    /// Model `M`'s decoders.
    pub fn of<M: Model>() -> Self {
        fn spec<M: Model>(v: &serde_json::Value) -> Result<(), String> {
            serde_json::from_value::<M>(v.clone())
                .map(drop)
                .map_err(|e| e.to_string())
        }
        fn status<M: Model>(v: &serde_json::Value) -> Result<(), String> {
            serde_json::from_value::<M::Status>(v.clone())
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Self {
            spec: spec::<M>,
            status: status::<M>,
        }
    }
}

/// A kind that has a sync step, and the links its model declares ([`Model::LINKS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncKind {
    /// The kind's name ([`Model::KIND`]).
    pub name: &'static str,
    /// The links its model declares.
    pub links: &'static [Link],
}

impl SyncKind {
    /// Model `M`'s kind and links.
    pub const fn of<M: Model>() -> Self {
        Self {
            name: M::KIND,
            links: M::LINKS,
        }
    }

    /// A kind known by name only, declaring no links (graphs built in tests).
    pub const fn named(name: &'static str) -> Self {
        Self { name, links: &[] }
    }
}

/// The kind's name.
impl std::fmt::Display for SyncKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Which half of a sync step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Sync,
    Delete,
}

/// A sync step with its model type erased, so the engine can hold every kind in one map.
#[async_trait]
pub(crate) trait DynSync: Send + Sync {
    /// The kind this step syncs, and its model's links.
    fn kind(&self) -> SyncKind;

    /// Runs `sync` or `delete`; returns the outcome and the status JSON, if the step changed it.
    async fn run(&self, op: Op, row: &ObjectRow, ctx: &StepContext)
        -> (StepResult, Option<String>);
}

struct TypedSync<S>(S);

#[async_trait]
impl<S: SyncStep> DynSync for TypedSync<S> {
    fn kind(&self) -> SyncKind {
        SyncKind::of::<S::Model>()
    }

    async fn run(
        &self,
        op: Op,
        row: &ObjectRow,
        ctx: &StepContext,
    ) -> (StepResult, Option<String>) {
        let mut obj = match typed::<S::Model>(row) {
            Ok(obj) => obj,
            Err(e) => return (Err(StepError::Permanent(format!("{e:#}"))), None),
        };
        let text = |status: &<S::Model as Model>::Status| {
            serde_json::to_value(status)
                .ok()
                .map(|v| crate::store::canonical(&v))
        };
        let before = text(&obj.status);
        let result = match op {
            Op::Sync => self.0.sync(&mut obj, ctx).await,
            Op::Delete => self.0.delete(&mut obj, ctx).await,
        };
        // Only a status the step changed is written (and bumps the revision).
        let after = text(&obj.status);
        (result, after.filter(|a| Some(a) != before.as_ref()))
    }
}

/// Which policy hook runs: the object was created, updated or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyHook {
    Create,
    Update,
    Delete,
}

/// A policy with its model type erased. `seen` is the object with the state its policies last
/// saw it in and the state it is in now (what transition rules react to).
#[async_trait]
pub(crate) trait DynPolicy: Send + Sync {
    fn name(&self) -> &str;
    async fn run(&self, hook: PolicyHook, seen: &Unpoliced, models: &Models) -> anyhow::Result<()>;
}

struct TypedPolicy<P>(P);

#[async_trait]
impl<P: ModelPolicy> DynPolicy for TypedPolicy<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn run(&self, hook: PolicyHook, seen: &Unpoliced, models: &Models) -> anyhow::Result<()> {
        let obj = typed::<P::Model>(&seen.row)?;
        match hook {
            PolicyHook::Create => self.0.handle_create(&obj, models).await,
            PolicyHook::Update => self.0.handle_update(&obj, models).await,
            PolicyHook::Delete => self.0.handle_delete(&obj, models).await,
        }
    }
}
