//! The sync pass: claim due dirty objects a page at a time (kinds in dependency order), run
//! their steps concurrently where dependencies allow, and settle outcomes in batches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::{debug, info};

use super::report::SyncReport;
use super::round::{Node, Round};
use super::Engine;
use crate::store::{ClaimRequest, DependencyState, Lane, ObjectRow, OutcomeRecord, Settled};

impl Engine {
    /// Runs every object that is dirty and due, in rounds of at most `sync.page_size`
    /// objects: news first, as it comes, then what was due again as of the start of the
    /// pass (rechecks and retries rescheduled during the pass wait for the next; see
    /// [`Lane`]). A round of rechecks and retries yields when news comes, and so does the
    /// pass, so policies and news run before the backlog goes on.
    /// The next page is claimed while a round runs, so the claim's SQL overlaps the steps;
    /// its dependencies are read only when it runs, after the round's outcomes are stored.
    /// A pass that fails part-way (the store is down) leaves no lease behind for long: the
    /// next pass gives back whatever this holder still holds before claiming.
    pub async fn sync_pass(&self) -> anyhow::Result<SyncReport> {
        // One pass at a time per engine, so a pass may treat every lease of its holder as
        // left over from an earlier one.
        let _pass = self.pass_lock.lock().await;
        if self.stray_leases.load(Ordering::SeqCst) {
            let n = self
                .store
                .timed(self.store.release_holder_leases(self.holder()))
                .await
                .context("giving back leases left by a failed pass")?;
            self.stray_leases.store(false, Ordering::SeqCst);
            if n > 0 {
                info!(leases = n, "gave back leases left by a failed pass");
            }
        }
        let result = self.sync_rounds().await;
        if result.is_err() {
            self.stray_leases.store(true, Ordering::SeqCst);
        }
        result
    }

    async fn sync_rounds(&self) -> anyhow::Result<SyncReport> {
        let due_by = self.clock.now_ms();
        let mut news = self.news.subscribe();
        let mut report = SyncReport::default();
        let mut ahead: Option<(Vec<ObjectRow>, i64)> = None;
        while !self.shutdown.is_cancelled() {
            let (rows, lease_until) = match ahead.take() {
                Some((rows, until)) => self.renew(rows, until).await?,
                None => (Vec::new(), 0),
            };
            let (rows, lease_until) = if rows.is_empty() {
                self.claim_round(due_by)
                    .await
                    .context("claiming due objects")?
            } else {
                (rows, lease_until)
            };
            if rows.is_empty() {
                break;
            }
            let again = rows.iter().any(|r| Lane::of(&r.reason) == Lane::Again);
            if again && news.has_changed().unwrap_or(false) {
                // News came while this page of rechecks and retries waited its turn.
                report.yielded += 1;
                report.released += self.release(rows).await?;
                break;
            }
            // The next page never takes an object of this round: a claim skips whatever its
            // holder already leases, even once the lease has run out.
            let news = again.then_some(&mut news);
            let (round, next) = tokio::join!(
                self.run_round(rows, lease_until, news),
                self.claim_round(due_by)
            );
            match (round, next) {
                (Ok(round), Ok(next)) if round.yielded > 0 => {
                    report += round;
                    report.released += self.release(next.0).await?;
                    break;
                }
                (Ok(round), Ok(next)) => {
                    report += round;
                    ahead = Some(next);
                }
                (Err(e), Ok((next, _))) => {
                    self.release(next).await?;
                    return Err(e);
                }
                (Ok(round), Err(e)) => {
                    // The round's outcomes are stored; only the page ahead is missing (the
                    // store failed meanwhile). Claim afresh; a claim that landed unanswered
                    // is given back at the next pass.
                    debug!("claiming the next page ahead failed: {e:#}");
                    self.stray_leases.store(true, Ordering::SeqCst);
                    report += round;
                }
                (Err(e), Err(_)) => return Err(e),
            }
        }
        if let Some((rows, _)) = ahead {
            report.released += self.release(rows).await?;
        }
        Ok(report)
    }

    /// Makes a page claimed during the last round current: the objects that changed since
    /// the claim (a new spec, a deletion, an event) or whose lease another holder took are
    /// given back, to be claimed again as they are now; if the leases no longer cover a step,
    /// they start afresh. Returns the rows to run and until when they are leased.
    async fn renew(
        &self,
        rows: Vec<ObjectRow>,
        lease_until: i64,
    ) -> anyhow::Result<(Vec<ObjectRow>, i64)> {
        if rows.is_empty() {
            return Ok((rows, lease_until));
        }
        let now = self.clock.now_ms();
        let sync = &self.settings.sync;
        let slack = (sync.lease_ms() - sync.step_timeout_ms()) / 2;
        let fresh = now.saturating_add(sync.lease_ms());
        let renew_until = (lease_until - now < sync.step_timeout_ms() + slack).then_some(fresh);
        let claimed: Vec<(i64, i64)> = rows.iter().map(|r| (r.id, r.revision)).collect();
        let current: HashSet<i64> = self
            .store
            .timed(
                self.store
                    .renew_claims(self.holder(), renew_until, &claimed),
            )
            .await
            .context("renewing claims")?
            .into_iter()
            .collect();
        let (keep, stale): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|r| current.contains(&r.id));
        self.release(stale).await?;
        Ok((keep, renew_until.unwrap_or(lease_until)))
    }

    /// Gives back the leases of claimed objects that will not run: at shutdown, after a failed
    /// round, or changed since they were claimed ahead.
    async fn release(&self, rows: Vec<ObjectRow>) -> anyhow::Result<usize> {
        let records: Vec<OutcomeRecord> = rows
            .into_iter()
            .map(|row| OutcomeRecord {
                id: row.id,
                kind: row.kind.clone(),
                key: row.key.clone(),
                generation: row.generation,
                revision: row.revision,
                sync_job: false,
                settled: Settled::Released,
                status: None,
                execution: None,
                has_dependents: false,
                announce: Vec::new(),
                transitions: false,
            })
            .collect();
        let now = self.clock.now_ms();
        self.store
            .timed(self.store.settle(self.holder(), now, &records))
            .await
            .context("giving back leases")?;
        Ok(records.len())
    }

    /// Claims up to a page of due objects, kinds in sync order so parents come with children:
    /// news due now if there is any, else what was due again by `again_due_by` (one
    /// statement; see [`ClaimRequest`]). Returns the rows and until when they are leased.
    async fn claim_round(&self, again_due_by: i64) -> anyhow::Result<(Vec<ObjectRow>, i64)> {
        let now = self.clock.now_ms();
        let until = now.saturating_add(self.settings.sync.lease_ms());
        let kinds: Vec<&str> = self.graph.sync_order().iter().map(String::as_str).collect();
        let claim = self.store.claim(ClaimRequest {
            kinds: &kinds,
            news_due_by: now,
            again_due_by,
            now,
            limit: self.settings.sync.page_size,
            holder: self.holder(),
            until,
        });
        Ok((self.store.timed(claim).await?, until))
    }

    /// Builds the round's dependency DAG and runs it.
    async fn run_round(
        &self,
        rows: Vec<ObjectRow>,
        lease_until: i64,
        news: Option<&mut watch::Receiver<u64>>,
    ) -> anyhow::Result<SyncReport> {
        let index: HashMap<i64, usize> = rows.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        // Only kinds that link to others have parents to check, and only kinds others link
        // to have dependents to wait for: the rest skip the dependency query.
        let deps = self.graph.dependencies();
        let syncing: Vec<i64> = rows
            .iter()
            .filter(|r| r.deleted_at.is_none() && deps.iter().any(|d| d.kind == r.kind))
            .map(|r| r.id)
            .collect();
        let deleting: Vec<i64> = rows
            .iter()
            .filter(|r| r.deleted_at.is_some() && deps.iter().any(|d| d.target == r.kind))
            .map(|r| r.id)
            .collect();
        let deps = self
            .store
            .timed(self.store.dependencies(&syncing, &deleting))
            .await
            .context("reading dependencies")?;
        let mut nodes: Vec<Node> = rows.into_iter().map(Node::new).collect();
        let mut blocked: Vec<(usize, String)> = Vec::new();
        for dep in deps {
            let i = index[&dep.of];
            let i_deleting = nodes[i].job.deletes();
            if let Some(&j) = dep.id.as_ref().and_then(|id| index.get(id)) {
                let j_deleting = nodes[j].job.deletes();
                // Same direction of travel inside the round: order in memory, no waiting.
                if i_deleting == j_deleting {
                    nodes[j].dependents.push(i);
                    nodes[i].blockers += 1;
                    continue;
                }
            }
            let message = if i_deleting {
                format!(
                    "waiting on dependents: {} {} must be deleted first",
                    dep.kind, dep.key
                )
            } else {
                match &dep.state {
                    DependencyState::Ready => continue,
                    DependencyState::Missing => {
                        format!("waiting on {} {}: it does not exist yet", dep.kind, dep.key)
                    }
                    DependencyState::Deleting => {
                        format!("waiting on {} {}: it is being deleted", dep.kind, dep.key)
                    }
                    DependencyState::Failed(e) => {
                        format!("waiting on {} {}: {e}", dep.kind, dep.key)
                    }
                    DependencyState::Pending(s) if s.is_empty() => {
                        format!("waiting on {} {}: not in sync yet", dep.kind, dep.key)
                    }
                    DependencyState::Pending(s) => {
                        format!("waiting on {} {}: not in sync yet ({s})", dep.kind, dep.key)
                    }
                }
            };
            if !blocked.iter().any(|(b, _)| *b == i) {
                blocked.push((i, message));
            }
        }
        Ok(Round::new(self, nodes, lease_until)
            .run(blocked, news)
            .await)
    }
}
