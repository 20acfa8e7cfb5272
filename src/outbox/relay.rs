//! The relay: publishes outbox rows in order, marking them sent only after their broker
//! confirmed them. One replica relays at a time (a lease in `relay_lease`), so no row goes out
//! twice at once and messages about one model keep their order; a row published but not yet
//! marked when the relay dies goes out again under the same id, which consumers can drop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::OutboxSettings;
use crate::clock::Clock;
use crate::store::{OutboxRow, Store};

/// How long the relay's lease lasts; it is renewed every pass.
const LEASE_MS: i64 = 30_000;
/// How often an idle relay looks for rows (it is also woken when rows are written).
const IDLE: Duration = Duration::from_secs(5);
/// The longest wait between passes while a broker or the store fails.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Publishes rows on one transport and reports, per row, whether its broker confirmed it.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// The transport it publishes on (`amqp`, `kafka`), as outbox rows name it.
    fn transport(&self) -> &'static str;

    /// Publishes `rows` in order, each with its message id; one result per row, in order.
    async fn publish(&self, rows: &[&OutboxRow]) -> Vec<anyhow::Result<()>>;
}

/// The stable id a published row carries (AMQP `message_id`, a Kafka header).
pub fn message_id(row: &OutboxRow) -> String {
    format!("thalamus-outbox-{}", row.id)
}

/// What one pass of the relay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Whether this process holds the relay's lease (another replica relays otherwise).
    pub relaying: bool,
    /// Rows confirmed and marked sent.
    pub sent: usize,
    /// The first row that failed, and why (later rows wait for it).
    pub failed: Option<(i64, String)>,
}

/// Publishes the outbox as the holder `holder`.
pub struct Relay {
    store: Store,
    holder: String,
    clock: Arc<dyn Clock>,
    settings: OutboxSettings,
    publishers: BTreeMap<&'static str, Arc<dyn Publisher>>,
}

impl Relay {
    /// A relay publishing through `publishers` (one per enabled transport).
    pub fn new(
        store: Store,
        holder: &str,
        clock: Arc<dyn Clock>,
        settings: OutboxSettings,
        publishers: Vec<Arc<dyn Publisher>>,
    ) -> Self {
        Self {
            store,
            holder: holder.to_string(),
            clock,
            settings,
            publishers: publishers.into_iter().map(|p| (p.transport(), p)).collect(),
        }
    }

    /// One pass: takes (or keeps) the relay's lease, then publishes unsent rows in id order,
    /// a batch at a time, marking each batch's confirmed prefix sent; stops at the first row
    /// that fails, so nothing overtakes it.
    pub async fn pass(&self) -> anyhow::Result<RelayPass> {
        let now = self.clock.now_ms();
        let mut pass = RelayPass::default();
        if !self
            .store
            .take_relay(&self.holder, now, now + LEASE_MS)
            .await?
        {
            return Ok(pass);
        }
        pass.relaying = true;
        let batch = i64::try_from(self.settings.batch).unwrap_or(i64::MAX);
        let transports: Vec<&str> = self.publishers.keys().copied().collect();
        loop {
            let rows = self.store.unsent(batch, &transports).await?;
            if rows.is_empty() {
                return Ok(pass);
            }
            let (sent, failed) = self.publish(&rows).await;
            let marked = self
                .store
                .mark_sent(&self.holder, &sent, self.clock.now_ms())
                .await?;
            pass.sent += usize::try_from(marked).unwrap_or(0);
            if let Some((id, error)) = failed {
                self.store.mark_failed(id, &error).await?;
                pass.failed = Some((id, error));
                return Ok(pass);
            }
            if (marked as usize) < sent.len() {
                // The lease passed to another replica meanwhile: it relays from here.
                pass.relaying = false;
                return Ok(pass);
            }
            let now = self.clock.now_ms();
            if !self
                .store
                .take_relay(&self.holder, now, now + LEASE_MS)
                .await?
            {
                pass.relaying = false;
                return Ok(pass);
            }
        }
    }

    /// Publishes `rows` in order, runs of one transport at a time; returns the ids confirmed
    /// before the first failure, and that failure.
    async fn publish(&self, rows: &[OutboxRow]) -> (Vec<i64>, Option<(i64, String)>) {
        let mut sent = Vec::with_capacity(rows.len());
        let mut start = 0;
        while start < rows.len() {
            let transport = rows[start].transport.as_str();
            let end = rows[start..]
                .iter()
                .position(|r| r.transport != transport)
                .map_or(rows.len(), |n| start + n);
            let run: Vec<&OutboxRow> = rows[start..end].iter().collect();
            let Some(publisher) = self.publishers.get(transport) else {
                let why = format!("no {transport} publisher (outbox.{transport}.enabled)");
                return (sent, Some((rows[start].id, why)));
            };
            for (row, result) in run.iter().zip(publisher.publish(&run).await) {
                match result {
                    Ok(()) => sent.push(row.id),
                    Err(e) => return (sent, Some((row.id, format!("{e:#}")))),
                }
            }
            start = end;
        }
        (sent, None)
    }

    /// Relays until `shutdown`: a pass when `written` says rows were written, or every few
    /// seconds; while a broker or the store fails, ever less often (up to 30 s), logging once
    /// per change of state. Prunes sent rows older than `outbox.retain_days`.
    pub async fn run(self, written: Arc<Notify>, shutdown: CancellationToken) {
        let mut wait = IDLE;
        let mut failing: Option<String> = None;
        let mut next_prune = 0;
        loop {
            match self.pass().await {
                Ok(pass) => {
                    if pass.sent > 0 {
                        debug!(sent = pass.sent, "outbox relayed");
                    }
                    match pass.failed {
                        Some((id, error)) => {
                            if failing.as_deref() != Some(error.as_str()) {
                                warn!(
                                    row = id,
                                    "outbox: cannot publish (retrying with backoff): {error}"
                                );
                                failing = Some(error);
                            }
                            wait = (wait * 2).clamp(Duration::from_millis(500), RETRY_MAX);
                        }
                        None => {
                            if failing.take().is_some() {
                                info!("outbox: publishing again");
                            }
                            wait = IDLE;
                        }
                    }
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    if failing.as_deref() != Some(error.as_str()) {
                        warn!("outbox: the store failed (retrying with backoff): {error}");
                        failing = Some(error);
                    }
                    wait = (wait * 2).clamp(Duration::from_millis(500), RETRY_MAX);
                }
            }
            let now = self.clock.now_ms();
            if now >= next_prune {
                next_prune = now + 3_600_000;
                self.prune(now).await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = written.notified(), if failing.is_none() => {}
            }
        }
        let _ = self.store.leave_relay(&self.holder).await;
    }

    async fn prune(&self, now: i64) {
        let days = i64::try_from(self.settings.retain_days).unwrap_or(i64::MAX);
        if days == 0 {
            return;
        }
        match self
            .store
            .prune_outbox(now.saturating_sub(days.saturating_mul(86_400_000)))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "pruned outbox rows sent over {days} days ago"),
            Err(e) => debug!("could not prune the outbox: {e}"),
        }
    }
}
