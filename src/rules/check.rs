//! Compiling rules files into a [`RuleSet`], refusing before anything runs: an unknown field,
//! a condition that is not CEL or is a type error, a bad regex, a response naming a kind that
//! does not exist or building a spec that is not one, two rules of one name, and two rules
//! whose responses contradict for the same model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::condition::{Expr, Vars};
use super::file::{
    self, Action, EventDef, FindBy, ModelEvent, RuleDef, RuleError, RuleErrors, Spanned,
};
use crate::step::{KindCheck, Registry};

/// The kinds rules may name, with their decoders.
pub type Kinds = BTreeMap<&'static str, KindCheck>;

/// The kinds a registry's steps name.
pub fn kinds(registry: &Registry) -> Kinds {
    registry.kinds()
}

/// A compiled response.
#[derive(Debug, Clone)]
pub enum Response {
    /// Upsert `kind` at `key` with `spec`.
    Upsert {
        kind: String,
        key: Expr,
        spec: Vec<(String, Expr)>,
    },
    /// Set `status` fields of `kind` at `key`.
    SetStatus {
        kind: String,
        key: Expr,
        status: Vec<(String, Expr)>,
    },
    /// Delete `kind` at `key`.
    Delete { kind: String, key: Expr },
    /// Retry `kind` at `key`.
    Retry { kind: String, key: Expr },
    /// Publish a message through the outbox.
    Publish {
        message_type: &'static str,
        topic: String,
        routing_key: String,
        payload: Vec<(String, Expr)>,
    },
}

/// A compiled `find`.
#[derive(Debug, Clone)]
pub struct Find {
    /// The kind looked up.
    pub kind: String,
    /// By key, or by request id.
    pub by_request_id: bool,
    /// The key or request id.
    pub value: Expr,
}

/// A rule, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as written (name, file, line, event).
    pub def: RuleDef,
    /// The compiled condition.
    pub condition: Option<Expr>,
    /// The compiled lookup.
    pub find: Option<Find>,
    /// The compiled responses.
    pub responses: Vec<Response>,
}

/// Every rule, compiled and checked.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// The files they came from.
    pub files: Vec<PathBuf>,
}

/// A message's `type` made `'static` once (announcements name their type so).
fn intern(text: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<std::collections::BTreeSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(name) = names.get(text) {
        return name;
    }
    let name: &'static str = Box::leak(text.to_string().into_boxed_str());
    names.insert(name);
    name
}

/// A message of `type` as the checks imagine it: each field the archive's consumers read,
/// with a value of its type.
fn sample_message(message_type: Option<&str>) -> serde_json::Value {
    use serde_json::json;
    match message_type {
        Some(t @ ("capability-status" | "workflow-status")) => json!({
            "type": t, "capability_request_id": 1, "workflow_request_id": 1,
            "capability": "std_calibration", "state": "Failed", "message": "text",
            "timestamp": "2026-01-01T00:00:00Z",
        }),
        Some(t @ "ingestion-complete") => json!({
            "type": t, "application": "ingestion", "instrument": "VLA", "name": "name",
        }),
        Some(t) => json!({ "type": t }),
        None => json!({}),
    }
}

/// What the checks evaluate a rule's expressions over.
fn sample_vars(def: &RuleDef) -> Vars {
    let mut vars = Vars::default();
    vars.set("now", 1_767_225_600.into());
    match &def.event {
        EventDef::Message(m) => {
            vars.set(
                "event",
                serde_json::json!({"transport": "amqp", "topic": "topic", "routing_key": "key", "id": "id"}),
            );
            vars.set("message", sample_message(m.message_type.as_deref()));
        }
        EventDef::Model(m) => {
            vars.set(
                "event",
                serde_json::json!({"hook": "updated", "from": "pending", "to": "ok", "id": "id"}),
            );
            let mut model = sample_model(&m.kind.text);
            model["state"] = "ok".into();
            vars.set("model", model);
        }
    }
    if let Some(find) = match &def.event {
        EventDef::Message(m) => &m.find,
        EventDef::Model(m) => &m.find,
    } {
        vars.set("found", sample_model(&find.kind.text));
    }
    vars
}

fn sample_model(kind: &str) -> serde_json::Value {
    serde_json::json!({"kind": kind, "key": "key", "spec": {}, "status": {}, "generation": 1,
        "enacted": 1, "revision": 1, "deleted": false})
}

struct Compiler<'a> {
    kinds: &'a Kinds,
    errors: Vec<RuleError>,
}

impl Compiler<'_> {
    fn fail(&mut self, def: &RuleDef, line: usize, message: String) {
        self.errors.push(RuleError {
            file: def.file.clone(),
            line,
            rule: Some(def.name.clone()),
            message,
        });
    }

    /// Compiles `s` and evaluates it over the sample: a type error is refused here.
    fn expr(&mut self, def: &RuleDef, what: &str, s: &Spanned, vars: &Vars) -> Option<Expr> {
        match Expr::compile(&s.text) {
            Ok(e) => {
                if let Err(why) = e.eval(vars) {
                    if super::condition::is_type_error(&why) {
                        self.fail(
                            def,
                            s.line,
                            format!("{what} {:?}: type error: {why}", s.text),
                        );
                        return None;
                    }
                }
                Some(e)
            }
            Err(why) => {
                self.fail(def, s.line, format!("{what} {:?}: {why}", s.text));
                None
            }
        }
    }

    fn kind(&mut self, def: &RuleDef, kind: &Spanned) -> Option<KindCheck> {
        match self.kinds.get(kind.text.as_str()) {
            Some(check) => Some(*check),
            None => {
                let known: Vec<&str> = self.kinds.keys().copied().collect();
                self.fail(
                    def,
                    kind.line,
                    format!("no kind {:?} (known: {})", kind.text, known.join(", ")),
                );
                None
            }
        }
    }

    fn fields(
        &mut self,
        def: &RuleDef,
        what: &str,
        fields: &[(String, Spanned)],
        vars: &Vars,
    ) -> Option<Vec<(String, Expr)>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (name, s) in fields {
            match self.expr(def, &format!("{what}.{name}"), s, vars) {
                Some(e) => out.push((name.clone(), e)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn rule(&mut self, def: RuleDef) -> Option<Rule> {
        let vars = sample_vars(&def);
        let before = self.errors.len();
        if let EventDef::Model(m) = &def.event {
            self.kind(&def, &m.kind);
        }
        let find = match &def.event {
            EventDef::Message(m) => m.find.clone(),
            EventDef::Model(m) => m.find.clone(),
        };
        let find = find.and_then(|f| {
            self.kind(&def, &f.kind)?;
            let (by_request_id, value) = match &f.by {
                FindBy::Key(k) => (false, k),
                FindBy::RequestId(r) => (true, r),
            };
            let value = self.expr(&def, "find", value, &vars)?;
            Some(Find {
                kind: f.kind.text.clone(),
                by_request_id,
                value,
            })
        });
        let condition = def
            .condition
            .as_ref()
            .and_then(|c| self.expr(&def, "condition", c, &vars));
        if let (Some(c), Some(s)) = (&condition, &def.condition) {
            if let Ok(v) = c.eval(&vars) {
                if !v.is_boolean() {
                    self.fail(
                        &def,
                        s.line,
                        format!("condition {:?} gives {v}, not a bool", s.text),
                    );
                }
            }
        }
        let mut responses = Vec::new();
        for r in &def.responses {
            let response = match &r.action {
                Action::Upsert { kind, key, spec } => {
                    let check = self.kind(&def, kind);
                    let key = self.expr(&def, "upsert.key", key, &vars);
                    let spec = self.fields(&def, "upsert.spec", spec, &vars);
                    if let (Some(check), Some(spec)) = (check, &spec) {
                        // The spec the sample builds must be one of the kind, when every
                        // field could be built from it.
                        let built: Option<serde_json::Map<_, _>> = spec
                            .iter()
                            .map(|(n, e)| e.eval(&vars).ok().map(|v| (n.clone(), v)))
                            .collect();
                        if let Some(built) = built {
                            if let Err(why) = (check.spec)(&built.into()) {
                                let spec_is = format!("upsert.spec is not a {}: {why}", kind.text);
                                self.fail(&def, r.line, spec_is);
                            }
                        }
                    }
                    Response::Upsert {
                        kind: kind.text.clone(),
                        key: key?,
                        spec: spec?,
                    }
                }
                Action::SetStatus { kind, key, status } => {
                    self.kind(&def, kind);
                    let key = self.expr(&def, "set_status.key", key, &vars);
                    let status = self.fields(&def, "set_status.status", status, &vars);
                    Response::SetStatus {
                        kind: kind.text.clone(),
                        key: key?,
                        status: status?,
                    }
                }
                Action::Delete { kind, key } | Action::Retry { kind, key } => {
                    self.kind(&def, kind);
                    let verb = r.action.verb();
                    let key = self.expr(&def, &format!("{verb}.key"), key, &vars)?;
                    match r.action {
                        Action::Delete { .. } => Response::Delete {
                            kind: kind.text.clone(),
                            key,
                        },
                        _ => Response::Retry {
                            kind: kind.text.clone(),
                            key,
                        },
                    }
                }
                Action::Publish {
                    message_type,
                    topic,
                    routing_key,
                    payload,
                } => Response::Publish {
                    message_type: intern(&message_type.text),
                    topic: topic.text.clone(),
                    routing_key: routing_key.text.clone(),
                    payload: self.fields(&def, "publish.payload", payload, &vars)?,
                },
            };
            responses.push(response);
        }
        (self.errors.len() == before).then_some(Rule {
            def,
            condition,
            find,
            responses,
        })
    }
}

/// What a response does to which model, for finding contradictions.
struct Target {
    /// The kind, and the key as written.
    model: (String, String),
    /// `write` or `delete`.
    op: &'static str,
    /// The field written and the expression written to it.
    field: Option<(String, String)>,
    /// The response's line.
    line: usize,
}

/// Every model a rule's responses write or delete.
fn targets(def: &RuleDef) -> Vec<Target> {
    let mut out = Vec::new();
    for r in &def.responses {
        let (kind, key, op, fields) = match &r.action {
            Action::Upsert { kind, key, spec } => (kind, key, "write", Some(("spec", spec))),
            Action::SetStatus { kind, key, status } => {
                (kind, key, "write", Some(("status", status)))
            }
            Action::Delete { kind, key } => (kind, key, "delete", None),
            Action::Retry { .. } | Action::Publish { .. } => continue,
        };
        let model = (kind.text.clone(), key.text.clone());
        let fields: Vec<Option<(String, String)>> = match fields {
            Some((part, fields)) if !fields.is_empty() => fields
                .iter()
                .map(|(f, e)| Some((format!("{part}.{f}"), e.text.clone())))
                .collect(),
            _ => vec![None],
        };
        for field in fields {
            out.push(Target {
                model: model.clone(),
                op,
                field,
                line: r.line,
            });
        }
    }
    out
}

/// Which events two rules can both react to: the same exchange/topic and message type (or
/// either takes any type), or the same kind.
fn same_event(a: &EventDef, b: &EventDef) -> bool {
    match (a, b) {
        (EventDef::Message(a), EventDef::Message(b)) => {
            a.topic == b.topic
                && match (&a.message_type, &b.message_type) {
                    (Some(x), Some(y)) => x == y,
                    _ => true,
                }
        }
        (EventDef::Model(a), EventDef::Model(b)) => a.kind.text == b.kind.text,
        _ => false,
    }
}

/// Two rules reacting to the same event whose responses contradict for the same model: one
/// deletes what the other writes, or both set one field to different values.
fn contradictions(defs: &[RuleDef]) -> Vec<RuleError> {
    let mut errors = Vec::new();
    for (i, a) in defs.iter().enumerate() {
        for b in &defs[i + 1..] {
            if !same_event(&a.event, &b.event) {
                continue;
            }
            'pairs: for ta in targets(a) {
                for tb in targets(b) {
                    if ta.model != tb.model {
                        continue;
                    }
                    let why = match (ta.op, tb.op, &ta.field, &tb.field) {
                        ("delete", "write", _, _) | ("write", "delete", _, _) => {
                            "one deletes what the other writes".to_string()
                        }
                        ("write", "write", Some((f1, e1)), Some((f2, e2)))
                            if f1 == f2 && e1 != e2 =>
                        {
                            format!("both set {f1}, to {e1:?} and {e2:?}")
                        }
                        _ => continue,
                    };
                    let (line, ta) = (tb.line, &ta.model);
                    errors.push(RuleError {
                        file: b.file.clone(),
                        line,
                        rule: Some(b.name.clone()),
                        message: format!(
                            "contradicts rule {} ({}:{}) for {} {}: {why}",
                            a.name,
                            a.file.display(),
                            a.line,
                            ta.0,
                            ta.1
                        ),
                    });
                    break 'pairs;
                }
            }
        }
    }
    errors
}

impl RuleSet {
    /// Reads, compiles and checks `files` against `kinds`; every refusal, or the rules.
    pub fn load(files: &[PathBuf], kinds: &Kinds) -> Result<Self, RuleErrors> {
        let mut texts = Vec::new();
        let mut errors = Vec::new();
        for path in files {
            match std::fs::read_to_string(path) {
                Ok(text) => texts.push((path.clone(), text)),
                Err(e) => errors.push(RuleError {
                    file: path.clone(),
                    line: 1,
                    rule: None,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        let sources: Vec<(&Path, &str)> = texts
            .iter()
            .map(|(p, t)| (p.as_path(), t.as_str()))
            .collect();
        match Self::compile(&sources, kinds) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(RuleErrors(errors)),
            Err(RuleErrors(more)) => {
                errors.extend(more);
                Err(RuleErrors(errors))
            }
        }
    }

    /// Compiles rules texts (file name, text) and checks them against `kinds`.
    pub fn compile(sources: &[(&Path, &str)], kinds: &Kinds) -> Result<Self, RuleErrors> {
        let mut errors = Vec::new();
        let mut defs = Vec::new();
        for (path, text) in sources {
            defs.extend(file::read(path, text, &mut errors));
        }
        let mut seen: BTreeMap<&str, &RuleDef> = BTreeMap::new();
        for def in &defs {
            if let Some(first) = seen.insert(&def.name, def) {
                errors.push(RuleError {
                    file: def.file.clone(),
                    line: def.line,
                    rule: Some(def.name.clone()),
                    message: format!(
                        "a second rule of this name (the first is at {}:{})",
                        first.file.display(),
                        first.line
                    ),
                });
            }
        }
        errors.extend(contradictions(&defs));
        let mut compiler = Compiler {
            kinds,
            errors: Vec::new(),
        };
        let rules: Vec<Rule> = defs.into_iter().filter_map(|d| compiler.rule(d)).collect();
        errors.extend(compiler.errors);
        if !errors.is_empty() {
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            return Err(RuleErrors(errors));
        }
        Ok(Self {
            rules,
            files: sources.iter().map(|(p, _)| p.to_path_buf()).collect(),
        })
    }

    /// The kinds model rules react to.
    pub fn model_kinds(&self) -> Vec<String> {
        self.kinds_where(|_| true)
    }

    /// The kinds transition rules (`from`/`to`) react to.
    pub fn transition_kinds(&self) -> Vec<String> {
        self.kinds_where(ModelEvent::is_transition)
    }

    fn kinds_where(&self, f: impl Fn(&ModelEvent) -> bool) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .rules
            .iter()
            .filter_map(|r| match &r.def.event {
                EventDef::Model(m) if f(m) => Some(m.kind.text.clone()),
                _ => None,
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    /// The exchanges/topics message rules react to.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .rules
            .iter()
            .filter_map(|r| match &r.def.event {
                EventDef::Message(m) => Some(m.topic.clone()),
                _ => None,
            })
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }
}
