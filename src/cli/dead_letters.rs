//! `thalamus dead-letters`: inspect, replay and purge messages no event step could apply.

use anyhow::bail;
use clap::Subcommand;

use super::output::{clip, out, outln, print_json, Format, Table};
use crate::clock::{format_ms, Clock, SystemClock};
use crate::config::Settings;
use crate::engine::{Engine, EventReport};
use crate::step::{Event, Transport};
use crate::store::{DeadLetter, Open, Store};

/// The dead-letter subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLetters {
    /// List dead letters, newest first.
    List {
        /// At most this many (default: all).
        #[arg(long)]
        limit: Option<i64>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show one dead letter with its payload and headers.
    Show {
        id: i64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Apply a dead letter again (e.g. after the model it names was created); removed on success.
    Replay { id: i64 },
    /// Delete dead letters older than --older-than-days, or --all of them (one is required).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["older_than_days", "all"])))]
    Purge {
        #[arg(long, value_name = "DAYS")]
        older_than_days: Option<u64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

async fn open(settings: &Settings) -> anyhow::Result<Store> {
    let store = crate::app::store(settings, Open::Existing).await?;
    store.ensure_migrated().await?;
    Ok(store)
}

fn json(d: &DeadLetter) -> serde_json::Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    v["payload"] = serde_json::Value::String(d.payload_text());
    v["headers"] = serde_json::from_str(&d.headers).unwrap_or_default();
    v
}

/// Runs one dead-letter subcommand.
pub async fn run(settings: Settings, command: DeadLetters) -> anyhow::Result<()> {
    let store = open(&settings).await?;
    match command {
        DeadLetters::List { limit, output } => {
            if limit.is_some_and(|l| l < 1) {
                bail!("--limit must be at least 1");
            }
            let letters = store.dead_letters(limit).await?;
            if output == Format::Json {
                return print_json(&letters.iter().map(json).collect::<Vec<_>>());
            }
            if letters.is_empty() {
                outln!("no dead letters");
                return Ok(());
            }
            let mut table = Table::new(vec![
                "ID",
                "RECEIVED",
                "TRANSPORT",
                "TOPIC",
                "POSITION",
                "ATTEMPTS",
                "REASON",
            ]);
            for d in &letters {
                table.row(vec![
                    d.id.to_string(),
                    format_ms(d.received_at),
                    d.transport.clone(),
                    d.topic.clone(),
                    d.position.clone(),
                    d.attempts.to_string(),
                    clip(&d.reason, 100),
                ]);
            }
            out!("{}", table.render());
        }
        DeadLetters::Show { id, output } => {
            let Some(d) = store.dead_letter(id).await? else {
                bail!("no dead letter {id}")
            };
            if output == Format::Json {
                return print_json(&json(&d));
            }
            outln!("dead letter {}", d.id);
            outln!("  received:    {}", format_ms(d.received_at));
            outln!("  transport:   {}", d.transport);
            outln!("  topic:       {}", d.topic);
            outln!("  routing key: {}", d.routing_key.as_deref().unwrap_or("-"));
            outln!("  position:    {}", d.position);
            outln!("  attempts:    {}", d.attempts);
            outln!("  reason:      {}", d.reason);
            outln!("  headers:     {}", d.headers);
            outln!("payload:\n{}", d.payload_text());
        }
        DeadLetters::Replay { id } => {
            let Some(d) = store.dead_letter(id).await? else {
                bail!("no dead letter {id}")
            };
            let engine = replay_engine(settings, store.clone())?;
            let event = Event {
                transport: Transport::Direct,
                topic: d.topic.clone(),
                routing_key: d.routing_key.clone(),
                payload: d.payload.clone(),
                headers: serde_json::from_str(&d.headers).unwrap_or_default(),
                position: format!("dead letter {id}"),
            };
            match engine.apply_event(&event).await? {
                EventReport::Applied(what) | EventReport::Unchanged(what) => {
                    store.remove_dead_letter(id).await?;
                    outln!("dead letter {id} replayed: {}", what.join("; "));
                }
                EventReport::Rejected(reason) => {
                    store.dead_letter_failed_again(id, &reason).await?;
                    bail!("dead letter {id} still cannot be applied: {reason}");
                }
            }
        }
        DeadLetters::Purge {
            older_than_days, ..
        } => {
            let now = SystemClock.now_ms();
            let before = match older_than_days {
                Some(days) => now - (days as i64) * 86_400_000,
                None => i64::MAX,
            };
            let n = store.purge_dead_letters(before).await?;
            outln!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}

/// An engine for replays: the shipped steps on the existing store, without taking the
/// single-process lock (a running controller may hold it; replay only applies one event).
fn replay_engine(settings: Settings, store: Store) -> anyhow::Result<Engine> {
    crate::app::EngineBuilder::new(&settings).build(store)
}
