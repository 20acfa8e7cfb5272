//! Each source's health as the controller last stored it (`source_health`): what `thalamus
//! status`, the API and metrics show of the pull steps.

use serde::Serialize;

use super::{with_pool, Result, Store};

/// How one source's polls have been going.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SourceHealth {
    /// The pull step's name (`vla`, `vlba`, `alma`).
    pub source: String,
    /// `ok` (the last poll worked, nothing skipped), `degraded` (it worked, with problems)
    /// or `failing` (it failed).
    pub state: String,
    /// When the last poll that worked ended.
    #[serde(serialize_with = "crate::clock::rfc3339::opt_ms")]
    pub last_success_at: Option<i64>,
    /// What last went wrong (a failed poll, skipped rows, a broken query); kept after the
    /// source recovers, with `last_error_at`.
    pub last_error: Option<String>,
    /// When `last_error` first happened (a repeat of the same error keeps the time).
    #[serde(serialize_with = "crate::clock::rfc3339::opt_ms")]
    pub last_error_at: Option<i64>,
    /// Failed polls in a row.
    pub failures: i32,
    /// Items the last poll that worked listed.
    pub seen: i64,
    /// Items it skipped (each named in `last_error`).
    pub skipped: i64,
    /// When this was stored.
    #[serde(serialize_with = "crate::clock::rfc3339::ms")]
    pub updated_at: i64,
}

impl Store {
    /// Stores one source's health, replacing what was stored.
    pub async fn save_source_health(&self, h: &SourceHealth) -> Result<()> {
        let sql = "INSERT INTO source_health (source, state, last_success_at, last_error, \
                   last_error_at, failures, seen, skipped, updated_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (source) DO UPDATE SET \
                   state = excluded.state, last_success_at = excluded.last_success_at, \
                   last_error = excluded.last_error, last_error_at = excluded.last_error_at, \
                   failures = excluded.failures, seen = excluded.seen, \
                   skipped = excluded.skipped, updated_at = excluded.updated_at";
        with_pool!(&self.db, pool => {
            sqlx::query(sql)
                .bind(&h.source).bind(&h.state).bind(h.last_success_at).bind(&h.last_error)
                .bind(h.last_error_at).bind(h.failures).bind(h.seen).bind(h.skipped)
                .bind(h.updated_at)
                .execute(pool).await?;
            Ok(())
        })
    }

    /// Every source's stored health, by name.
    pub async fn source_health(&self) -> Result<Vec<SourceHealth>> {
        let sql = "SELECT source, state, last_success_at, last_error, last_error_at, failures, \
                   seen, skipped, updated_at FROM source_health ORDER BY source";
        with_pool!(&self.db, pool => Ok(sqlx::query_as(sql).fetch_all(pool).await?))
    }
}
