//! Event counters, kept so the operator surface can export them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use crate::step::Transport;

/// Counters of the event transports since start.
#[derive(Debug, Default)]
pub struct EventMetrics {
    consumed: AtomicU64,
    applied: AtomicU64,
    unchanged: AtomicU64,
    dead_lettered: AtomicU64,
    retried: AtomicU64,
    /// Kafka consumer lag in messages, summed over partitions; -1 when unknown.
    lag: AtomicI64,
    /// The same counters per transport (Kafka, AMQP, direct), and whether each broker is
    /// connected now.
    per: [PerTransport; 3],
}

#[derive(Debug, Default)]
struct PerTransport {
    consumed: AtomicU64,
    applied: AtomicU64,
    unchanged: AtomicU64,
    dead_lettered: AtomicU64,
    retried: AtomicU64,
    connected: AtomicBool,
}

/// One transport's counters, and whether its broker is connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransportSnapshot {
    pub connected: bool,
    pub consumed: u64,
    pub applied: u64,
    pub unchanged: u64,
    pub dead_lettered: u64,
    pub retried: u64,
}

fn slot(transport: Transport) -> usize {
    match transport {
        Transport::Kafka => 0,
        Transport::Amqp => 1,
        Transport::Direct => 2,
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    pub consumed: u64,
    pub applied: u64,
    /// Duplicates and stale messages.
    pub unchanged: u64,
    pub dead_lettered: u64,
    /// Times a message's effect could not be stored and was retried.
    pub retried: u64,
    /// Kafka lag in messages, if known.
    pub lag: Option<i64>,
}

impl EventMetrics {
    /// Counters starting at zero, lag unknown.
    pub fn new() -> Self {
        let m = Self::default();
        m.lag.store(-1, Ordering::Relaxed);
        m
    }

    pub(crate) fn consumed(&self, t: Transport, n: usize) {
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        self.per[slot(t)]
            .consumed
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn applied(&self, t: Transport, n: usize) {
        self.applied.fetch_add(n as u64, Ordering::Relaxed);
        self.per[slot(t)]
            .applied
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn unchanged(&self, t: Transport, n: usize) {
        self.unchanged.fetch_add(n as u64, Ordering::Relaxed);
        self.per[slot(t)]
            .unchanged
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn dead_lettered(&self, t: Transport, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Ordering::Relaxed);
        self.per[slot(t)]
            .dead_lettered
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn retried(&self, t: Transport) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        self.per[slot(t)].retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether `transport`'s broker is connected now (the transports say so).
    pub fn set_connected(&self, transport: Transport, connected: bool) {
        self.per[slot(transport)]
            .connected
            .store(connected, Ordering::Relaxed);
    }

    /// One transport's counters now.
    pub fn transport(&self, transport: Transport) -> TransportSnapshot {
        let p = &self.per[slot(transport)];
        TransportSnapshot {
            connected: p.connected.load(Ordering::Relaxed),
            consumed: p.consumed.load(Ordering::Relaxed),
            applied: p.applied.load(Ordering::Relaxed),
            unchanged: p.unchanged.load(Ordering::Relaxed),
            dead_lettered: p.dead_lettered.load(Ordering::Relaxed),
            retried: p.retried.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let lag = self.lag.load(Ordering::Relaxed);
        MetricsSnapshot {
            consumed: self.consumed.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            lag: (lag >= 0).then_some(lag),
        }
    }
}
