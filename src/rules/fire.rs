//! Firing rules: which rules an event matches, what their conditions say, the effects their
//! responses build (pure, so `thalamus rules test` can print them), and applying the effects
//! through the store and the outbox only, each recorded in the audit trail.

use serde_json::{json, Value};

use super::check::{Find, Response, Rule, RuleSet};
use super::condition::Vars;
use super::file::EventDef;
use crate::outbox::Announcement;
use crate::step::{Event, KindCheck, Models, Transport};
use crate::store::ObjectRow;

/// What one response would do, with every value built.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Upsert `kind`/`key` with `spec`.
    Upsert {
        kind: String,
        key: String,
        spec: Value,
    },
    /// Set these status fields of `kind`/`key`.
    SetStatus {
        kind: String,
        key: String,
        status: serde_json::Map<String, Value>,
    },
    /// Delete `kind`/`key`.
    Delete { kind: String, key: String },
    /// Retry `kind`/`key`.
    Retry { kind: String, key: String },
    /// Publish `payload` as a `message_type` message.
    Publish {
        message_type: &'static str,
        topic: String,
        routing_key: String,
        payload: Value,
    },
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Upsert { kind, key, spec } => write!(f, "upsert {kind} {key} spec {spec}"),
            Effect::SetStatus { kind, key, status } => {
                write!(
                    f,
                    "set status of {kind} {key}: {}",
                    Value::from(status.clone())
                )
            }
            Effect::Delete { kind, key } => write!(f, "delete {kind} {key}"),
            Effect::Retry { kind, key } => write!(f, "retry {kind} {key}"),
            Effect::Publish {
                message_type,
                topic,
                routing_key,
                payload,
            } => write!(
                f,
                "publish {message_type} to {topic} ({routing_key}): {payload}"
            ),
        }
    }
}

/// What one rule made of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Its condition held: these effects.
    Fired(Vec<Effect>),
    /// Its condition did not hold.
    NotMet,
    /// Its `find` found nothing.
    NotFound(String),
    /// Its condition or a response could not be evaluated over this event.
    Failed(String),
}

/// The rule's target as the store names it (`Kind/key`), or the message's topic.
impl Effect {
    /// The kind and key the effect is about (a publish is about the event's model or topic).
    pub fn target(&self) -> (String, String) {
        match self {
            Effect::Upsert { kind, key, .. }
            | Effect::SetStatus { kind, key, .. }
            | Effect::Delete { kind, key }
            | Effect::Retry { kind, key } => (kind.clone(), key.clone()),
            Effect::Publish {
                message_type,
                topic,
                ..
            } => (topic.clone(), message_type.to_string()),
        }
    }
}

/// An AMQP topic pattern: `*` is one word, `#` any number of words.
pub fn routing_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// The event's id in the audit trail: the message id its publisher gave, else its Kafka
/// position, else a digest of its exchange and body (stable across redeliveries).
pub fn event_id(event: &Event) -> String {
    if let Some((_, id)) = event
        .headers
        .iter()
        .find(|(n, _)| n == "message_id" || n == "message-id")
    {
        return id.clone();
    }
    if event.transport == Transport::Kafka {
        return format!("{}@{}", event.topic, event.position);
    }
    // FNV-1a: stable across builds, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in event
        .topic
        .bytes()
        .chain([0])
        .chain(event.payload.iter().copied())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}#{h:016x}", event.topic)
}

/// A stored object as rules see it: `{kind, key, spec, status, generation, enacted, revision,
/// deleted}`.
pub fn model_value(row: &ObjectRow) -> Value {
    let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap_or(Value::Null);
    json!({
        "kind": row.kind, "key": row.key, "spec": parse(&row.spec), "status": parse(&row.status),
        "generation": row.generation, "enacted": row.enacted, "revision": row.revision,
        "deleted": row.deleted_at.is_some(),
    })
}

/// The variables of a broker message.
pub fn message_vars(event: &Event, now_s: i64) -> Vars {
    let mut vars = Vars::default();
    let message = serde_json::from_slice(&event.payload).unwrap_or(Value::Null);
    vars.set("message", message);
    vars.set(
        "event",
        json!({
            "transport": format!("{:?}", event.transport).to_lowercase(),
            "topic": event.topic, "routing_key": event.routing_key, "id": event_id(event),
        }),
    );
    vars.set("now", now_s.into());
    vars
}

impl RuleSet {
    /// The message rules whose event `event` is: transport, exchange/topic, routing key, type.
    pub fn for_message<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = &'a Rule> + 'a {
        let message: Option<Value> = serde_json::from_slice(&event.payload).ok();
        let message_type = message
            .as_ref()
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
            .map(str::to_string);
        self.rules.iter().filter(move |r| {
            let EventDef::Message(m) = &r.def.event else {
                return false;
            };
            let transport = format!("{:?}", event.transport).to_lowercase();
            m.topic == event.topic
                && m.transport.as_ref().is_none_or(|t| *t == transport)
                && m.routing_key.as_ref().is_none_or(|p| {
                    event
                        .routing_key
                        .as_deref()
                        .is_some_and(|k| routing_matches(p, k))
                })
                && m.message_type
                    .as_ref()
                    .is_none_or(|t| message_type.as_deref() == Some(t.as_str()))
        })
    }

    /// The model rules of `kind` reacting to `hook` (`created`, `updated`, `deleted`) that
    /// took the model from state `from` (none: policies had not seen it) to `to`. A
    /// transition rule reacts only when the state changed.
    pub fn for_model<'a>(
        &'a self,
        kind: &'a str,
        hook: &'a str,
        from: Option<&'a str>,
        to: &'a str,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| match &r.def.event {
            EventDef::Model(m) => {
                m.kind.text == kind
                    && m.on.iter().any(|h| h == hook)
                    && (!m.is_transition()
                        || (from != Some(to)
                            && (m.from.is_empty()
                                || m.from.iter().any(|s| Some(s.as_str()) == from))
                            && (m.to.is_empty() || m.to.iter().any(|s| s == to))))
            }
            _ => false,
        })
    }
}

impl Rule {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// What `find` looks up over `vars`: kind, by request id, and the key or id.
    pub fn lookup(&self, vars: &Vars) -> Option<Result<(&Find, Value), String>> {
        let find = self.find.as_ref()?;
        Some(find.value.eval(vars).map(|v| (find, v)))
    }

    /// Evaluates the condition and, if it holds, builds the responses' effects over `vars`
    /// (with `found` already set when the rule finds a model).
    pub fn fire(&self, vars: &Vars, kinds: &super::Kinds) -> Verdict {
        match self.condition.as_ref().map(|c| c.test(vars)) {
            Some(Ok(false)) => return Verdict::NotMet,
            Some(Err(why)) => return Verdict::Failed(format!("condition: {why}")),
            _ => {}
        }
        let mut effects = Vec::new();
        for response in &self.responses {
            match build(response, vars, kinds) {
                Ok(effect) => effects.push(effect),
                Err(why) => return Verdict::Failed(why),
            }
        }
        Verdict::Fired(effects)
    }
}

fn text(v: Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("{what} is {other}, not a text")),
    }
}

fn fields(
    fields: &[(String, super::condition::Expr)],
    vars: &Vars,
    what: &str,
) -> Result<serde_json::Map<String, Value>, String> {
    fields
        .iter()
        .map(|(n, e)| {
            e.eval(vars)
                .map(|v| (n.clone(), v))
                .map_err(|why| format!("{what}.{n}: {why}"))
        })
        .collect()
}

fn check(kinds: &super::Kinds, kind: &str) -> Result<KindCheck, String> {
    kinds
        .get(kind)
        .copied()
        .ok_or_else(|| format!("no kind {kind}"))
}

fn build(response: &Response, vars: &Vars, kinds: &super::Kinds) -> Result<Effect, String> {
    let key = |e: &super::condition::Expr| {
        e.eval(vars)
            .map_err(|why| format!("key: {why}"))
            .and_then(|v| text(v, "key"))
    };
    Ok(match response {
        Response::Upsert { kind, key: k, spec } => {
            let spec = Value::from(fields(spec, vars, "spec")?);
            (check(kinds, kind)?.spec)(&spec)
                .map_err(|why| format!("the spec is not a {kind}: {why}"))?;
            Effect::Upsert {
                kind: kind.clone(),
                key: key(k)?,
                spec,
            }
        }
        Response::SetStatus {
            kind,
            key: k,
            status,
        } => Effect::SetStatus {
            kind: kind.clone(),
            key: key(k)?,
            status: fields(status, vars, "status")?,
        },
        Response::Delete { kind, key: k } => Effect::Delete {
            kind: kind.clone(),
            key: key(k)?,
        },
        Response::Retry { kind, key: k } => Effect::Retry {
            kind: kind.clone(),
            key: key(k)?,
        },
        Response::Publish {
            message_type,
            topic,
            routing_key,
            payload,
        } => Effect::Publish {
            message_type,
            topic: topic.clone(),
            routing_key: routing_key.clone(),
            payload: fields(payload, vars, "payload")?.into(),
        },
    })
}

/// Looks up the rule's `find` in the store and binds it as `found`; `Err` is why nothing was
/// found (the rule does not fire).
pub async fn bind_found(
    rule: &Rule,
    vars: &mut Vars,
    models: &Models,
) -> anyhow::Result<Result<(), String>> {
    let Some(lookup) = rule.lookup(vars) else {
        return Ok(Ok(()));
    };
    let (find, value) = match lookup {
        Ok(found) => found,
        Err(why) => return Ok(Err(format!("find: {why}"))),
    };
    let row = if find.by_request_id {
        let Some(id) = value.as_i64() else {
            return Ok(Err(format!("find: request id {value} is not an int")));
        };
        let rows = models
            .store()
            .find_by_request_ids(&[&find.kind], &[id])
            .await?;
        rows.into_iter().next()
    } else {
        let key = match text(value, "find key") {
            Ok(k) => k,
            Err(why) => return Ok(Err(why)),
        };
        models.store().get(&find.kind, &key).await?
    };
    match row {
        Some(row) => {
            vars.set("found", model_value(&row));
            Ok(Ok(()))
        }
        None => Ok(Err(format!("no {} found", find.kind))),
    }
}

/// Applies `effects` through the store and the outbox; `firing` (rule and event id) makes a
/// publish happen once however often the event comes. `about` is the `Kind`/`key` a publish
/// is said about. Returns a sentence per effect that changed something.
pub async fn apply(
    effects: &[Effect],
    firing: &str,
    about: (&str, &str),
    models: &Models,
) -> anyhow::Result<Vec<String>> {
    let now = models.now_ms();
    let store = models.store();
    let mut said = Vec::new();
    let mut publish = Vec::new();
    for effect in effects {
        match effect {
            Effect::Upsert { kind, key, spec } => {
                let change = models
                    .upsert_kind(kind, vec![(key.clone(), spec.clone())])
                    .await?;
                if change
                    .iter()
                    .any(|c| c.change != crate::store::Change::Unchanged)
                {
                    said.push(format!("upserted {kind} {key}"));
                }
            }
            Effect::SetStatus { kind, key, status } => {
                let Some(row) = store.get(kind, key).await? else {
                    said.push(format!("no {kind} {key} to set the status of"));
                    continue;
                };
                let mut current: Value = serde_json::from_str(&row.status).unwrap_or(json!({}));
                if let Value::Object(fields) = &mut current {
                    for (k, v) in status {
                        fields.insert(k.clone(), v.clone());
                    }
                }
                if store.set_status(kind, key, &current, now).await? {
                    said.push(format!("set the status of {kind} {key}"));
                }
            }
            Effect::Delete { kind, key } => {
                if store.delete(kind, key, now).await? > 0 {
                    said.push(format!("deleted {kind} {key}"));
                }
            }
            Effect::Retry { kind, key } => {
                store.retry(kind, key, now).await?;
                said.push(format!("retried {kind} {key}"));
            }
            Effect::Publish {
                message_type,
                topic,
                routing_key,
                payload,
            } => publish.push(Announcement {
                message_type,
                topic: topic.clone(),
                routing_key: routing_key.clone(),
                payload: payload.clone(),
            }),
        }
    }
    if !publish.is_empty() {
        let types: Vec<&str> = publish.iter().map(|a| a.message_type).collect();
        if models
            .publish_once(firing, about.0, about.1, publish)
            .await?
        {
            said.push(format!("published {}", types.join(", ")));
        }
    }
    Ok(said)
}
