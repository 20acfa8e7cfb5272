//! How the engine runs rules: message rules as one event step on every exchange/topic they
//! name, model rules as a policy of each kind they name. Both read the running [`RuleSet`],
//! which a reload replaces only with one that passed the same checks. Every firing is an
//! execution in the audit trail: step `rule:<name>`, cause the event's id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use tracing::{info, warn};

use super::check::{Kinds, Rule, RuleSet};
use super::condition::Vars;
use super::fire::{self, Verdict};
use super::RulesSettings;
use crate::step::{
    DynPolicy, Event, EventError, EventOutcome, EventStep, Models, PolicyHook, Registry,
};
use crate::store::{NewExecution, Outcome, State, Unpoliced};

/// How often each rule matched an event, fired, and failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleCounts {
    /// Events of its kind whose `find` and condition were evaluated.
    pub matched: u64,
    /// Times its condition held and its responses were applied.
    pub fired: u64,
    /// Times it could not be evaluated or applied.
    pub failed: u64,
}

/// The running rules, shared by the event step and the policies, replaced by a reload.
#[derive(Clone)]
pub struct Rules {
    set: Arc<RwLock<Arc<RuleSet>>>,
    kinds: Arc<Kinds>,
    settings: RulesSettings,
    counts: Arc<Mutex<BTreeMap<String, RuleCounts>>>,
}

impl Rules {
    /// Rules running `set`, checked against `kinds`, reloaded from `settings`.
    pub fn new(set: RuleSet, kinds: Kinds, settings: RulesSettings) -> Self {
        Self {
            set: Arc::new(RwLock::new(Arc::new(set))),
            kinds: Arc::new(kinds),
            settings,
            counts: Default::default(),
        }
    }

    /// The rules running now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The per-rule counters since the start.
    pub fn counts(&self) -> BTreeMap<String, RuleCounts> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn count(&self, rule: &str, f: impl FnOnce(&mut RuleCounts)) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        f(counts.entry(rule.to_string()).or_default());
    }

    /// Reads the files again; runs them if they pass the checks, else keeps the running ones
    /// and says why. (Topics and kinds a new rule names that no running rule did are not
    /// subscribed until the next start.)
    pub fn reload(&self) -> anyhow::Result<String> {
        let files = self.settings.files()?;
        let set = RuleSet::load(&files, &self.kinds)?;
        let n = set.rules.len();
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(format!("{n} rule(s) loaded from {} file(s)", files.len()))
    }

    /// Fires the rules `rules` over `vars`; records each firing as an execution as `event`
    /// says; returns what changed and what failed.
    async fn run<'r>(
        &self,
        rules: impl Iterator<Item = &'r Rule>,
        mut vars: Vars,
        event: &Occasion<'_>,
        models: &Models,
    ) -> anyhow::Result<(Vec<String>, Vec<String>, usize)> {
        let Occasion {
            cause,
            about,
            generation,
            dedupe,
        } = *event;
        let (mut changed, mut failed, mut fired) = (Vec::new(), Vec::new(), 0);
        let mut executions = Vec::new();
        for rule in rules {
            let started = models.now_ms();
            self.count(rule.name(), |c| c.matched += 1);
            vars.0.retain(|(n, _)| *n != "found");
            if let Err(why) = fire::bind_found(rule, &mut vars, models).await? {
                failed.push(format!("rule {}: {why}", rule.name()));
                continue;
            }
            let effects = match rule.fire(&vars, &self.kinds) {
                Verdict::Fired(effects) => effects,
                Verdict::NotMet | Verdict::NotFound(_) => continue,
                Verdict::Failed(why) => {
                    warn!(rule = rule.name(), cause, "rule failed: {why}");
                    self.count(rule.name(), |c| c.failed += 1);
                    failed.push(format!("rule {}: {why}", rule.name()));
                    continue;
                }
            };
            fired += 1;
            let firing = format!("{}|{dedupe}", rule.name());
            let said = fire::apply(&effects, &firing, about, models).await?;
            self.count(rule.name(), |c| c.fired += 1);
            info!(rule = rule.name(), cause, "rule fired: {}", said.join("; "));
            let (kind, key) = effects
                .iter()
                .find(|e| !matches!(e, fire::Effect::Publish { .. }))
                .map(|e| e.target())
                .unwrap_or((about.0.to_string(), about.1.to_string()));
            executions.push(NewExecution {
                kind,
                key,
                step: format!("rule:{}", rule.name()),
                generation,
                cause: cause.to_string(),
                holder: models.holder().to_string(),
                started_at: started,
                duration_ms: (models.now_ms() - started).max(0),
                outcome: if said.is_empty() {
                    Outcome::Unchanged
                } else {
                    Outcome::Ok
                },
                error: None,
            });
            if !said.is_empty() {
                changed.push(format!("rule {}: {}", rule.name(), said.join("; ")));
            }
        }
        models.store().record(&executions).await?;
        Ok((changed, failed, fired))
    }
}

/// What fired the rules, as the audit trail and the outbox record it.
#[derive(Clone, Copy)]
struct Occasion<'a> {
    /// Why, in words (`message <id>`, `updated Kind/key (revision n, a → b)`).
    cause: &'a str,
    /// The model (or topic and message id) a firing that changes no model is about.
    about: (&'a str, &'a str),
    /// The generation of the model it is about (0 for a message).
    generation: i64,
    /// What makes a publish once-only: the message id, or the model at its generation.
    dedupe: &'a str,
}

/// Message rules, as the event step of every exchange/topic they name.
pub struct RulesStep {
    rules: Rules,
    topics: Vec<String>,
}

#[async_trait]
impl EventStep for RulesStep {
    fn name(&self) -> &str {
        "rules"
    }

    fn topics(&self) -> Vec<String> {
        self.topics.clone()
    }

    async fn handle(&self, event: &Event, models: &Models) -> Result<EventOutcome, EventError> {
        let set = self.rules.current();
        let vars = fire::message_vars(event, models.now_ms() / 1000);
        let id = fire::event_id(event);
        let cause = format!("message {id}");
        let (changed, failed, fired) = self
            .rules
            .run(
                set.for_message(event),
                vars,
                &Occasion {
                    cause: &cause,
                    about: (&event.topic, &id),
                    generation: 0,
                    dedupe: &id,
                },
                models,
            )
            .await?;
        if !changed.is_empty() {
            return Ok(EventOutcome::Applied(changed.join("; ")));
        }
        if fired > 0 {
            return Ok(EventOutcome::Unchanged(format!(
                "{fired} rule(s) fired; nothing new to do"
            )));
        }
        // Neutral: another step's outcome decides; alone, it is a dead letter.
        let why = if failed.is_empty() {
            "no rule fired".to_string()
        } else {
            failed.join("; ")
        };
        Err(EventError::Reject(why))
    }
}

/// Model rules of one kind, as one of its policies.
struct RulePolicy {
    rules: Rules,
    kind: String,
}

#[async_trait]
impl DynPolicy for RulePolicy {
    fn name(&self) -> &str {
        "rules"
    }

    async fn run(&self, hook: PolicyHook, seen: &Unpoliced, models: &Models) -> anyhow::Result<()> {
        let row = &seen.row;
        let hook = match hook {
            PolicyHook::Create => "created",
            PolicyHook::Update => "updated",
            PolicyHook::Delete => "deleted",
        };
        let (from, to) = (seen.from().map(State::as_str), seen.to().as_str());
        let set = self.rules.current();
        let mut vars = Vars::default();
        let mut model = fire::model_value(row);
        model["state"] = to.into();
        vars.set("model", model);
        vars.set("now", (models.now_ms() / 1000).into());
        vars.set(
            "event",
            serde_json::json!({"hook": hook, "from": from, "to": to,
                "id": format!("{}/{}@{}", row.kind, row.key, row.revision)}),
        );
        let moved = match from {
            Some(from) if from != to => format!(", {from} → {to}"),
            None => format!(", → {to}"),
            _ => String::new(),
        };
        let cause = format!(
            "{hook} {}/{} (revision {}{moved})",
            row.kind, row.key, row.revision
        );
        // A publish is said once per generation and message: a status change that says the
        // same again says nothing new.
        let dedupe = format!("{}/{}@{}", row.kind, row.key, row.generation);
        let (_, failed, _) = self
            .rules
            .run(
                set.for_model(&self.kind, hook, from, to),
                vars,
                &Occasion {
                    cause: &cause,
                    about: (&row.kind, &row.key),
                    generation: row.generation,
                    dedupe: &dedupe,
                },
                models,
            )
            .await?;
        if !failed.is_empty() {
            anyhow::bail!("{}", failed.join("; "));
        }
        Ok(())
    }
}

/// Loads the rules `settings` names, checks them against the kinds `registry` knows, and
/// registers them: an event step for their topics, a policy per kind they watch, and their
/// reload. `None` when there are no rules files.
pub fn register(
    registry: &mut Registry,
    settings: &RulesSettings,
) -> anyhow::Result<Option<Rules>> {
    let files = settings.files()?;
    if files.is_empty() {
        return Ok(None);
    }
    let kinds = registry.kinds();
    let set = RuleSet::load(&files, &kinds)?;
    let topics = set.topics();
    let model_kinds = set.model_kinds();
    for kind in set.transition_kinds() {
        registry.watch_transitions(&kind);
    }
    let rules = Rules::new(set, kinds, settings.clone());
    if !topics.is_empty() {
        registry.event(RulesStep {
            rules: rules.clone(),
            topics,
        });
    }
    for kind in model_kinds {
        registry.dyn_policy(
            &kind,
            Arc::new(RulePolicy {
                rules: rules.clone(),
                kind: kind.clone(),
            }),
        );
    }
    let reload = rules.clone();
    registry.on_reload(move || reload.reload());
    let counted = rules.clone();
    registry.on_rule_counts(move || {
        counted
            .counts()
            .into_iter()
            .map(|(rule, c)| (rule, [c.matched, c.fired, c.failed]))
            .collect()
    });
    Ok(Some(rules))
}
