//! `thalamus rules`: the rules that would run, and what they would make of a message, without
//! touching the store.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::Settings;
use crate::rules::file::EventDef;
use crate::rules::fire::{message_vars, routing_matches};
use crate::rules::{Kinds, RuleSet, RulesSettings, Verdict};
use crate::step::{Event, Registry, Transport};

/// The rules subcommands.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// List the rules: name, event, condition, responses, and where each is written.
    List {
        /// These rules files instead of the configured ones (`rules.paths`).
        #[arg(long, value_name = "FILE", num_args = 1..)]
        rules: Vec<PathBuf>,
    },
    /// Show which rules a message matches and what each would do (nothing is stored).
    Test {
        /// The message: a JSON file.
        message: PathBuf,
        /// These rules files instead of the configured ones (`rules.paths`).
        #[arg(long, value_name = "FILE", num_args = 1..)]
        rules: Vec<PathBuf>,
        /// The exchange/topic it arrives on (default: whichever each rule names).
        #[arg(long)]
        topic: Option<String>,
        /// Its routing key (default: whichever each rule's pattern accepts).
        #[arg(long)]
        routing_key: Option<String>,
        /// The model a rule's `find` would look up, as `{kind, key, spec, status, generation}`
        /// JSON (default: none is looked up: the store is not touched).
        #[arg(long, value_name = "FILE")]
        found: Option<PathBuf>,
    },
}

/// The kinds the compiled steps name (the configured rules are not loaded for them).
fn kinds(settings: &Settings) -> anyhow::Result<Kinds> {
    let mut registry = Registry::new();
    crate::steps::register(&mut registry, &settings.steps)?;
    Ok(registry.kinds())
}

fn load(settings: &Settings, rules: Vec<PathBuf>) -> anyhow::Result<RuleSet> {
    let paths = if rules.is_empty() {
        settings.rules.clone()
    } else {
        RulesSettings { paths: rules }
    };
    let files = paths.files()?;
    Ok(RuleSet::load(&files, &kinds(settings)?)?)
}

fn event_text(event: &EventDef) -> String {
    match event {
        EventDef::Message(m) => {
            let mut s = format!("message on {}", m.topic);
            if let Some(t) = &m.message_type {
                s += &format!(" type {t}");
            }
            if let Some(k) = &m.routing_key {
                s += &format!(" routing key {k}");
            }
            if let Some(t) = &m.transport {
                s += &format!(" ({t})");
            }
            s
        }
        EventDef::Model(m) => format!("{} {}", m.kind.text, m.on.join("/")),
    }
}

/// Runs a `thalamus rules` command.
pub fn run(settings: Settings, command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::List { rules } => {
            let set = load(&settings, rules)?;
            for rule in &set.rules {
                let d = &rule.def;
                println!("{} ({}:{})", d.name, d.file.display(), d.line);
                println!("  event: {}", event_text(&d.event));
                if let Some(c) = &d.condition {
                    println!("  condition: {}", c.text);
                }
                for r in &d.responses {
                    println!("  response: {} (line {})", r.action.verb(), r.line);
                }
            }
            println!("{} rule(s) in {} file(s)", set.rules.len(), set.files.len());
            Ok(())
        }
        RulesCommand::Test {
            message,
            rules,
            topic,
            routing_key,
            found,
        } => {
            let set = load(&settings, rules)?;
            let kinds = kinds(&settings)?;
            let payload = std::fs::read(&message)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", message.display()))?;
            let json: serde_json::Value = serde_json::from_slice(&payload)
                .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", message.display()))?;
            let found: Option<serde_json::Value> = match found {
                Some(f) => Some(serde_json::from_slice(&std::fs::read(&f)?)?),
                None => None,
            };
            let mut matched = 0;
            for rule in &set.rules {
                let EventDef::Message(m) = &rule.def.event else {
                    continue;
                };
                // The message as it would arrive for this rule: on its topic, with a routing
                // key its pattern accepts, unless told otherwise.
                let event = Event {
                    transport: match m.transport.as_deref() {
                        Some("kafka") => Transport::Kafka,
                        _ => Transport::Amqp,
                    },
                    topic: topic.clone().unwrap_or_else(|| m.topic.clone()),
                    routing_key: routing_key
                        .clone()
                        .or_else(|| m.routing_key.clone().map(|p| p.replace(['*', '#'], "x"))),
                    payload: payload.clone(),
                    headers: Vec::new(),
                    position: message.display().to_string(),
                };
                if !set.for_message(&event).any(|r| r.name() == rule.name()) {
                    continue;
                }
                if let (Some(p), Some(k)) = (&m.routing_key, &routing_key) {
                    if !routing_matches(p, k) {
                        continue;
                    }
                }
                matched += 1;
                let mut vars = message_vars(&event, chrono::Utc::now().timestamp());
                let head = format!(
                    "rule {} ({}:{})",
                    rule.name(),
                    rule.def.file.display(),
                    rule.def.line
                );
                if let Some(lookup) = rule.lookup(&vars) {
                    match (lookup, &found) {
                        (Ok((find, value)), Some(model)) => {
                            let by = if find.by_request_id { "request" } else { "key" };
                            println!(
                                "{head}: finds {} by {by} {value} (given: --found)",
                                find.kind
                            );
                            vars.set("found", model.clone());
                        }
                        (Ok((find, value)), None) => {
                            let by = if find.by_request_id { "request" } else { "key" };
                            println!(
                                "{head}: matches; would look up {} by {by} {value} \
                                 (not looked up: give it with --found)",
                                find.kind
                            );
                            continue;
                        }
                        (Err(why), _) => {
                            println!("{head}: matches; cannot look up: {why}");
                            continue;
                        }
                    }
                }
                match rule.fire(&vars, &kinds) {
                    Verdict::Fired(effects) => {
                        println!("{head}: matches and fires");
                        for e in effects {
                            println!("  would {e}");
                        }
                    }
                    Verdict::NotMet => println!("{head}: matches; its condition is false"),
                    Verdict::NotFound(why) | Verdict::Failed(why) => {
                        println!("{head}: matches; fails: {why}")
                    }
                }
            }
            if matched == 0 {
                let t = json
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("(no type)");
                println!("no rule matches this message (type {t})");
            }
            Ok(())
        }
    }
}
