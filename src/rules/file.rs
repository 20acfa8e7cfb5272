//! The rules file format: each rule's name, event, condition and responses, read with the
//! line of every field so a refusal names file, rule and line. Unknown fields are refused.

use std::path::{Path, PathBuf};

use super::yaml::{self, Node, Value};

/// Why a rules file is refused: where, which rule, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The file.
    pub file: PathBuf,
    /// The line (1-based).
    pub line: usize,
    /// The rule's name, when the fault is inside one.
    pub rule: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(rule) = &self.rule {
            write!(f, "rule {rule}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for RuleError {}

/// Every refusal found in a set of rules files, one per line of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleErrors(pub Vec<RuleError>);

impl std::fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rules refused:")?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// A text with the line it sits on: a CEL expression, a kind, a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned {
    /// The text.
    pub text: String,
    /// Its line.
    pub line: usize,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDef {
    /// Its unique name (the audit trail's step is `rule:<name>`).
    pub name: String,
    /// The file it is in.
    pub file: PathBuf,
    /// The line its entry starts on.
    pub line: usize,
    /// What it reacts to.
    pub event: EventDef,
    /// A CEL expression that must be true for it to fire (none: always).
    pub condition: Option<Spanned>,
    /// What it does when it fires, in order.
    pub responses: Vec<ResponseDef>,
}

/// What a rule reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum EventDef {
    /// A broker message.
    Message(MessageEvent),
    /// A model created, changed or deleted inside thalamus.
    Model(ModelEvent),
}

/// A broker message: which exchange/topic, routing key pattern and `type`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageEvent {
    /// `amqp` or `kafka`; none: either.
    pub transport: Option<String>,
    /// The AMQP exchange or Kafka topic.
    pub topic: String,
    /// An AMQP-style pattern (`*` one word, `#` any words) the routing key must match.
    pub routing_key: Option<String>,
    /// The message's `type` field must equal this.
    pub message_type: Option<String>,
    /// A model to look up for the condition and responses (`found`).
    pub find: Option<Find>,
}

/// A model of a kind created, updated or deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEvent {
    /// The kind.
    pub kind: Spanned,
    /// Which changes: `created`, `updated`, `deleted` (default: created and updated; with
    /// `from` or `to`, all three).
    pub on: Vec<String>,
    /// A transition only: the states the model may have left (empty: any, or none yet).
    pub from: Vec<String>,
    /// A transition only: the states it may have entered (empty: any).
    pub to: Vec<String>,
    /// A model to look up for the condition and responses (`found`).
    pub find: Option<Find>,
}

impl ModelEvent {
    /// Whether the rule reacts to transitions (it names `from` or `to`), not to every change.
    pub fn is_transition(&self) -> bool {
        !self.from.is_empty() || !self.to.is_empty()
    }
}

/// A model looked up when the event comes, bound as `found`.
#[derive(Debug, Clone, PartialEq)]
pub struct Find {
    /// The kind.
    pub kind: Spanned,
    /// How: by key, or by the Workspaces request id its status records.
    pub by: FindBy,
}

/// The field a model is found by.
#[derive(Debug, Clone, PartialEq)]
pub enum FindBy {
    /// Its key (a CEL expression).
    Key(Spanned),
    /// The request id in its status (a CEL expression giving an int).
    RequestId(Spanned),
}

/// One response, with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseDef {
    /// Its line.
    pub line: usize,
    /// What it does.
    pub action: Action,
}

/// What a response does; every value is a CEL expression over the event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Upsert a model of `kind` at `key` with a spec built from fields.
    Upsert {
        kind: Spanned,
        key: Spanned,
        spec: Vec<(String, Spanned)>,
    },
    /// Set status fields on an existing model of `kind` at `key`.
    SetStatus {
        kind: Spanned,
        key: Spanned,
        status: Vec<(String, Spanned)>,
    },
    /// Delete the model of `kind` at `key` (and its dependents).
    Delete { kind: Spanned, key: Spanned },
    /// Clear the backoff of the model of `kind` at `key`.
    Retry { kind: Spanned, key: Spanned },
    /// Publish a message through the outbox.
    Publish {
        message_type: Spanned,
        topic: Spanned,
        routing_key: Spanned,
        payload: Vec<(String, Spanned)>,
    },
}

impl Action {
    /// The response's name as written (`upsert`, `set_status`, …).
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Upsert { .. } => "upsert",
            Action::SetStatus { .. } => "set_status",
            Action::Delete { .. } => "delete",
            Action::Retry { .. } => "retry",
            Action::Publish { .. } => "publish",
        }
    }
}

/// Reads fields of one mapping, refusing unknown ones.
struct Fields<'a> {
    file: &'a Path,
    rule: Option<&'a str>,
    line: usize,
    entries: &'a [(String, usize, Node)],
    errors: &'a mut Vec<RuleError>,
}

impl<'a> Fields<'a> {
    fn new(
        file: &'a Path,
        rule: Option<&'a str>,
        node: &'a Node,
        what: &str,
        allowed: &[&str],
        errors: &'a mut Vec<RuleError>,
    ) -> Option<Self> {
        let Value::Map(entries) = &node.value else {
            errors.push(err(
                file,
                node.line,
                rule,
                format!("{what} must be a mapping"),
            ));
            return None;
        };
        for (key, line, _) in entries {
            if !allowed.contains(&key.as_str()) {
                errors.push(err(
                    file,
                    *line,
                    rule,
                    format!(
                        "unknown field {key:?} in {what} (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Some(Self {
            file,
            rule,
            line: node.line,
            entries,
            errors,
        })
    }

    fn node(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v)
    }

    fn fail(&mut self, line: usize, message: String) {
        self.errors.push(err(self.file, line, self.rule, message));
    }

    fn text(&mut self, key: &str, required: bool) -> Option<Spanned> {
        match self.node(key) {
            Some(node) => match node.as_str() {
                Some(text) => Some(Spanned {
                    text: text.to_string(),
                    line: node.line,
                }),
                None => {
                    self.fail(node.line, format!("{key} must be a text"));
                    None
                }
            },
            None if required => {
                let line = self.line;
                self.fail(line, format!("{key} is missing"));
                None
            }
            None => None,
        }
    }

    /// A word or list of words from `allowed` (none when the field is absent).
    fn words(&mut self, key: &str, allowed: &[&str]) -> Vec<String> {
        let Some(node) = self.node(key) else {
            return Vec::new();
        };
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        for item in items {
            match item.as_str().filter(|w| allowed.contains(w)) {
                Some(w) => out.push(w.to_string()),
                None => self.fail(
                    item.line,
                    format!("{key} takes {} (or a list of them)", allowed.join(", ")),
                ),
            }
        }
        out
    }

    fn exprs(&mut self, key: &str) -> Vec<(String, Spanned)> {
        let Some(node) = self.node(key) else {
            return Vec::new();
        };
        let Value::Map(entries) = &node.value else {
            self.fail(
                node.line,
                format!("{key} must map field names to CEL expressions"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (field, _, value) in entries {
            match value.as_str() {
                Some(text) => out.push((
                    field.clone(),
                    Spanned {
                        text: text.to_string(),
                        line: value.line,
                    },
                )),
                None => self.fail(
                    value.line,
                    format!("{key}.{field} must be a CEL expression"),
                ),
            }
        }
        out
    }
}

fn err(file: &Path, line: usize, rule: Option<&str>, message: String) -> RuleError {
    RuleError {
        file: file.to_path_buf(),
        line,
        rule: rule.map(str::to_string),
        message,
    }
}

/// Reads the rules of one file (`rules:` a list of rules); every refusal goes to `errors`.
pub fn read(file: &Path, text: &str, errors: &mut Vec<RuleError>) -> Vec<RuleDef> {
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let line = e
                .strip_prefix("line ")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            errors.push(err(file, line, None, format!("not YAML: {e}")));
            return Vec::new();
        }
    };
    let Some(mut top) = Fields::new(file, None, &root, "a rules file", &["rules"], errors) else {
        return Vec::new();
    };
    let Some(list) = top.node("rules") else {
        return Vec::new();
    };
    let Value::Seq(items) = &list.value else {
        top.fail(list.line, "rules must be a list".into());
        return Vec::new();
    };
    let errors = top.errors;
    items
        .iter()
        .filter_map(|item| read_rule(file, item, errors))
        .collect()
}

fn read_rule(file: &Path, node: &Node, errors: &mut Vec<RuleError>) -> Option<RuleDef> {
    let name = match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _, _)| k == "name")
            .and_then(|(_, _, v)| v.as_str().map(str::to_string)),
        _ => None,
    };
    let rule = name.as_deref();
    let allowed = ["name", "description", "event", "condition", "responses"];
    let mut f = Fields::new(file, rule, node, "a rule", &allowed, errors)?;
    let name = f.text("name", true)?.text;
    let event = match f.node("event") {
        Some(event) => read_event(file, &name, event, f.errors),
        None => {
            f.fail(node.line, "event is missing".into());
            None
        }
    };
    let condition = f.text("condition", false);
    let mut responses = Vec::new();
    match f.node("responses") {
        Some(Node {
            value: Value::Seq(items),
            line,
        }) => {
            if items.is_empty() {
                f.fail(*line, "responses is empty".into());
            }
            for item in items {
                if let Some(r) = read_response(file, &name, item, f.errors) {
                    responses.push(r);
                }
            }
        }
        Some(other) => f.fail(other.line, "responses must be a list".into()),
        None => f.fail(node.line, "responses is missing".into()),
    }
    Some(RuleDef {
        name,
        file: file.to_path_buf(),
        line: node.line,
        event: event?,
        condition,
        responses,
    })
}

fn read_event(
    file: &Path,
    rule: &str,
    node: &Node,
    errors: &mut Vec<RuleError>,
) -> Option<EventDef> {
    let mut f = Fields::new(
        file,
        Some(rule),
        node,
        "event",
        &["message", "model"],
        errors,
    )?;
    match (f.node("message"), f.node("model")) {
        (Some(m), None) => {
            let allowed = ["transport", "topic", "routing_key", "type", "find"];
            let mut m_f = Fields::new(file, Some(rule), m, "event.message", &allowed, f.errors)?;
            let transport = m_f.text("transport", false);
            if let Some(t) = &transport {
                if t.text != "amqp" && t.text != "kafka" {
                    m_f.fail(
                        t.line,
                        format!("transport {:?} is not amqp or kafka", t.text),
                    );
                }
            }
            let topic = m_f.text("topic", true)?.text;
            let routing_key = m_f.text("routing_key", false).map(|s| s.text);
            let message_type = m_f.text("type", false).map(|s| s.text);
            let find = m_f
                .node("find")
                .and_then(|n| read_find(file, rule, n, m_f.errors));
            Some(EventDef::Message(MessageEvent {
                transport: transport.map(|t| t.text),
                topic,
                routing_key,
                message_type,
                find,
            }))
        }
        (None, Some(m)) => {
            let mut m_f = Fields::new(
                file,
                Some(rule),
                m,
                "event.model",
                &["kind", "on", "from", "to", "find"],
                f.errors,
            )?;
            let kind = m_f.text("kind", true)?;
            let hooks = ["created", "updated", "deleted"];
            let mut on = m_f.words("on", &hooks);
            // The states of `thalamus get`'s STATE column.
            let states = crate::store::State::ALL.map(crate::store::State::as_str);
            let from = m_f.words("from", &states);
            let to = m_f.words("to", &states);
            if from.len() == 1 && to == from {
                let line = m_f.node("to").map_or(m.line, |n| n.line);
                m_f.fail(
                    line,
                    format!(
                        "from and to are both {}: a transition leaves the state it came from",
                        to[0]
                    ),
                );
            }
            if m_f.node("on").is_none() {
                on = if from.is_empty() && to.is_empty() {
                    hooks[..2].iter().map(|h| h.to_string()).collect()
                } else {
                    hooks.iter().map(|h| h.to_string()).collect()
                };
            }
            let find = m_f
                .node("find")
                .and_then(|n| read_find(file, rule, n, m_f.errors));
            Some(EventDef::Model(ModelEvent {
                kind,
                on,
                from,
                to,
                find,
            }))
        }
        _ => {
            f.fail(
                node.line,
                "event takes exactly one of message or model".into(),
            );
            None
        }
    }
}

fn read_find(file: &Path, rule: &str, node: &Node, errors: &mut Vec<RuleError>) -> Option<Find> {
    let allowed = ["kind", "key", "request_id"];
    let mut f = Fields::new(file, Some(rule), node, "find", &allowed, errors)?;
    let kind = f.text("kind", true)?;
    let by = match (f.text("key", false), f.text("request_id", false)) {
        (Some(k), None) => FindBy::Key(k),
        (None, Some(r)) => FindBy::RequestId(r),
        _ => {
            f.fail(
                node.line,
                "find takes exactly one of key or request_id".into(),
            );
            return None;
        }
    };
    Some(Find { kind, by })
}

fn read_response(
    file: &Path,
    rule: &str,
    node: &Node,
    errors: &mut Vec<RuleError>,
) -> Option<ResponseDef> {
    let verbs = ["upsert", "set_status", "delete", "retry", "publish"];
    let f = Fields::new(file, Some(rule), node, "a response", &verbs, errors)?;
    let Value::Map(entries) = &node.value else {
        return None;
    };
    if entries.len() != 1 {
        let errors = f.errors;
        errors.push(err(
            file,
            node.line,
            Some(rule),
            format!("a response takes exactly one of: {}", verbs.join(", ")),
        ));
        return None;
    }
    let (verb, _, body) = &entries[0];
    let errors = f.errors;
    let action = match verb.as_str() {
        "upsert" => {
            let mut b = Fields::new(
                file,
                Some(rule),
                body,
                "upsert",
                &["kind", "key", "spec"],
                errors,
            )?;
            Action::Upsert {
                kind: b.text("kind", true)?,
                key: b.text("key", true)?,
                spec: b.exprs("spec"),
            }
        }
        "set_status" => {
            let allowed = ["kind", "key", "status"];
            let mut b = Fields::new(file, Some(rule), body, "set_status", &allowed, errors)?;
            Action::SetStatus {
                kind: b.text("kind", true)?,
                key: b.text("key", true)?,
                status: b.exprs("status"),
            }
        }
        "delete" | "retry" => {
            let mut b = Fields::new(file, Some(rule), body, verb, &["kind", "key"], errors)?;
            let (kind, key) = (b.text("kind", true)?, b.text("key", true)?);
            if verb == "delete" {
                Action::Delete { kind, key }
            } else {
                Action::Retry { kind, key }
            }
        }
        "publish" => {
            let allowed = ["type", "topic", "routing_key", "payload"];
            let mut b = Fields::new(file, Some(rule), body, "publish", &allowed, errors)?;
            Action::Publish {
                message_type: b.text("type", true)?,
                topic: b.text("topic", true)?,
                routing_key: b.text("routing_key", true)?,
                payload: b.exprs("payload"),
            }
        }
        _ => return None,
    };
    Some(ResponseDef {
        line: node.line,
        action,
    })
}
