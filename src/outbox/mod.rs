//! Announcements: what thalamus says to the systems downstream (new data, a workflow status
//! re-said as capability status, completions), written to the outbox in the same transaction
//! as the change they announce, and published by the [`relay`] at least once, each with a
//! stable id. [`Herald`] turns an [`Announcement`] into outbox rows, one per configured
//! transport; `outbox.*` settings say what is announced and where.

mod herald;
pub mod relay;
mod settings;

pub use herald::{Announcement, Herald, ORIGIN_HEADER};
pub use relay::{Publisher, Relay};
pub use settings::{OutboxAmqp, OutboxKafka, OutboxSettings};
