//! Leases: which holder runs which object, and until when. Two books keep them behind one
//! trait, [`LeaseBook`]: in memory for SQLite, which one process holds ([`memory`]), and the
//! `leases` table for PostgreSQL, shared by replicas ([`table`]). A claim picks due objects and
//! leases them in one step, so two claimers never both get one; an object its holder already
//! leases is never claimed again by that holder, even once its lease has run out (it belongs
//! to one of the holder's rounds, which extend their leases as they go, or was left by a
//! failed pass or a dead predecessor, which give theirs back first).

mod memory;
mod memory_table;
mod table;

use async_trait::async_trait;

pub(crate) use memory::MemoryBook;
pub(crate) use memory_table::MemLeases;
pub(crate) use table::TableBook;

use super::objects::ObjectRow;
use super::{Lane, Result, Store};

/// Who holds an object, and until when (epoch ms; an expired lease may be taken over).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Lease {
    pub id: i64,
    pub holder: String,
    pub until: i64,
}

/// What a claim asks for: up to `limit` dirty objects of `kinds` (in sync order, so parents
/// come with their children) not leased as of `now`, leased to `holder` until `until`. It
/// takes news due by `news_due_by` if there is any, else what is due again by
/// `again_due_by`: a page never mixes the lanes ([`Lane`]), so news never shares the steps'
/// concurrency (and Workspaces' rate limit) with a backlog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimRequest<'a> {
    pub kinds: &'a [&'a str],
    pub news_due_by: i64,
    pub again_due_by: i64,
    pub now: i64,
    pub limit: usize,
    pub holder: &'a str,
    pub until: i64,
}

/// The condition that an object needs work (a newer generation, or a deletion).
pub(crate) const DIRTY: &str = "(enacted < generation OR deleted_at IS NOT NULL)";

/// One backend's way of keeping leases.
#[async_trait]
pub(crate) trait LeaseBook: Send + Sync + std::fmt::Debug {
    /// Claims what `request` asks for, in `(next_attempt_at, id)` order.
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ObjectRow>>;

    /// Of objects claimed a while ago (`(id, revision)` as claimed), the ids still `holder`'s
    /// and unchanged since; with `until`, their leases are extended to it.
    async fn renew(
        &self,
        holder: &str,
        until: Option<i64>,
        claimed: &[(i64, i64)],
    ) -> Result<Vec<i64>>;

    /// Extends to `until` the leases `holder` still has on `ids`, expired or not (a lease
    /// nobody took over is still the holder's); returns the ids still held.
    async fn extend(&self, holder: &str, ids: &[i64], until: i64) -> Result<Vec<i64>>;

    /// Gives back every lease of `holder`; returns how many there were.
    async fn release_holder(&self, holder: &str) -> Result<u64>;

    /// Gives back every lease; returns how many there were.
    async fn release_all(&self) -> Result<u64>;

    /// Every lease, live or expired.
    async fn all(&self) -> Result<Vec<Lease>>;

    /// For a settle: whether `holder` still has each of `ids`, if this book can say so
    /// outside the settle's transaction (memory); `None` when the transaction must check
    /// (the table: `Store::settle` deletes the rows there, locking them until it commits).
    fn held_outside_settle(&self, ids: &[i64], holder: &str) -> Option<Vec<bool>>;

    /// After a settle committed: gives back the leases of `ids` kept outside the database.
    fn release_after_settle(&self, ids: &[i64], holder: &str);
}

impl Store {
    /// Claims what `request` asks for in one statement, news before what is due again
    /// ([`Lane`]); an expired lease of another holder is taken over (see the module
    /// documentation).
    pub(crate) async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ObjectRow>> {
        if request.kinds.is_empty() || request.limit == 0 {
            return Ok(Vec::new());
        }
        self.leases.claim(request).await
    }

    /// Claims up to `limit` dirty objects of `kind` due by `due_by` (news if there is any,
    /// else what is due again), leasing them to `holder` until `lease_until`.
    pub async fn claim_due(
        &self,
        kind: &str,
        due_by: i64,
        now: i64,
        limit: usize,
        holder: &str,
        lease_until: i64,
    ) -> Result<Vec<ObjectRow>> {
        self.claim(ClaimRequest {
            kinds: &[kind],
            news_due_by: due_by,
            again_due_by: due_by,
            now,
            limit,
            holder,
            until: lease_until,
        })
        .await
    }

    /// For objects claimed a while ago (`(id, revision)` as claimed): returns the ids still
    /// leased and unchanged since the claim, and with `renew_until` extends `holder`'s leases
    /// on them. The others (changed, deleted, lease lost) are the caller's to give back.
    pub async fn renew_claims(
        &self,
        holder: &str,
        renew_until: Option<i64>,
        claimed: &[(i64, i64)],
    ) -> Result<Vec<i64>> {
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        self.leases.renew(holder, renew_until, claimed).await
    }

    /// Extends to `until` the leases `holder` still has on `ids`; returns the ids still held.
    /// The others were taken over by another holder and must not run here.
    pub async fn extend_leases(&self, holder: &str, ids: &[i64], until: i64) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.leases.extend(holder, ids, until).await
    }

    /// Gives back every lease (SQLite at start-up: the single process that held them is gone).
    pub async fn release_all_leases(&self) -> Result<u64> {
        self.leases.release_all().await
    }

    /// Gives back every lease `holder` has: after a pass that failed part-way (a database
    /// outage), or when a process takes over the id of a dead one. Only call it when none of
    /// the holder's rounds is running.
    pub async fn release_holder_leases(&self, holder: &str) -> Result<u64> {
        self.leases.release_holder(holder).await
    }

    /// Every lease, live or expired, by object id: what each replica holds.
    pub async fn leases(&self) -> Result<Vec<Lease>> {
        let mut leases = self.leases.all().await?;
        leases.sort_by_key(|l| l.id);
        Ok(leases)
    }
}

/// `(row, taken)` pairs to the rows taken, in claim order.
fn taken(rows: Vec<ObjectRow>, taken: Vec<bool>) -> Vec<ObjectRow> {
    let mut rows: Vec<ObjectRow> = rows
        .into_iter()
        .zip(taken)
        .filter(|(_, t)| *t)
        .map(|(r, _)| r)
        .collect();
    rows.sort_by_key(|r| (r.next_attempt_at, r.id));
    rows
}
