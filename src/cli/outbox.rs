//! `thalamus outbox`: what thalamus has announced or is about to, and sending a message again.

use anyhow::bail;
use clap::Subcommand;

use super::output::{clip, out, outln, print_json, time_or_dash, Format, Table};
use crate::clock::{format_ms, Clock, SystemClock};
use crate::config::Settings;
use crate::store::{Open, OutboxRow, Store};

/// The outbox subcommands.
#[derive(Debug, Subcommand)]
pub enum Outbox {
    /// List outbox messages, newest first, with their depth and the oldest one waiting.
    List {
        /// Only the messages not yet confirmed by their broker.
        #[arg(long)]
        unsent: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show one message with its payload.
    Show {
        id: i64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Send a message again (a consumer lost it); it keeps its id, so one that has it can
    /// drop the copy.
    Retry { id: i64 },
}

async fn open(settings: &Settings) -> anyhow::Result<Store> {
    let store = crate::app::store(settings, Open::Existing).await?;
    store.ensure_migrated().await?;
    Ok(store)
}

/// Runs one outbox subcommand.
pub async fn run(settings: Settings, command: Outbox) -> anyhow::Result<()> {
    let store = open(&settings).await?;
    match command {
        Outbox::List {
            unsent,
            limit,
            output,
        } => {
            if limit < 1 {
                bail!("--limit must be at least 1");
            }
            let rows = store.outbox(unsent, limit).await?;
            let depth = store.outbox_depth().await?;
            if output == Format::Json {
                return print_json(&serde_json::json!({ "depth": depth, "messages": rows }));
            }
            let age = depth
                .oldest
                .map(|t| format!(", the oldest written {}", format_ms(t)))
                .unwrap_or_default();
            outln!("{} message(s) waiting for their broker{age}", depth.unsent);
            let mut table = Table::new(vec![
                "ID",
                "TYPE",
                "TRANSPORT",
                "TOPIC",
                "MODEL",
                "WRITTEN",
                "SENT",
                "ATTEMPTS",
                "ERROR",
            ]);
            for r in &rows {
                table.row(vec![
                    r.id.to_string(),
                    r.message_type.clone(),
                    r.transport.clone(),
                    r.topic.clone(),
                    r.model.clone(),
                    format_ms(r.created_at),
                    time_or_dash(r.sent_at),
                    r.attempts.to_string(),
                    clip(r.last_error.as_deref().unwrap_or("-"), 60),
                ]);
            }
            out!("{}", table.render());
            Ok(())
        }
        Outbox::Show { id, output } => {
            let Some(row) = store.outbox_row(id).await? else {
                bail!("no outbox message {id}");
            };
            if output == Format::Json {
                return print_json(&row);
            }
            print_row(&row)
        }
        Outbox::Retry { id } => {
            if !store.resend(id).await? {
                bail!("no outbox message {id}");
            }
            outln!(
                "outbox message {id} will be sent again by the relay of a running `thalamus run` \
                 (at {})",
                format_ms(SystemClock.now_ms())
            );
            Ok(())
        }
    }
}

fn print_row(r: &OutboxRow) -> anyhow::Result<()> {
    outln!("id:          {}", r.id);
    outln!("type:        {}", r.message_type);
    outln!(
        "transport:   {} {} ({})",
        r.transport,
        r.topic,
        r.routing_key
    );
    outln!("model:       {}", r.model);
    outln!("written:     {}", format_ms(r.created_at));
    outln!("sent:        {}", time_or_dash(r.sent_at));
    outln!("attempts:    {}", r.attempts);
    if let Some(e) = &r.last_error {
        outln!("last error:  {e}");
    }
    outln!("payload:     {}", r.payload);
    Ok(())
}
