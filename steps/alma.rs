//! The ALMA pull step: rows from the archive's metadata database (configured SQL queries)
//! become Observations. A newer request timestamp in a row changes the spec, so the
//! ingestion runs again; ASDMs known not to be calibratable carry the reason. Configured by
//! `sources.alma`.

use std::collections::HashMap;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use super::models::{Instrument, Observation, Product};
use crate::steps::prelude::*;

/// `sources.alma`: rows from the archive's metadata database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlmaSettings {
    pub enabled: bool,
    /// `postgres://…` of the metadata database (secret: never printed).
    pub database_url: Option<String>,
    pub poll_seconds: u64,
    /// Returns text columns `uid` and `requested_at` (nullable): ASDMs to (re)ingest.
    pub asdm_query: Option<String>,
    /// Returns text columns `uid` and `requested_at`: calibrations to (re)ingest.
    pub calibration_query: Option<String>,
    /// Returns text columns `uid` and `reason`: ASDMs known not to be calibratable.
    pub not_calibratable_query: Option<String>,
}

impl Default for AlmaSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            database_url: None,
            poll_seconds: 300,
            asdm_query: None,
            calibration_query: None,
            not_calibratable_query: None,
        }
    }
}

impl AlmaSettings {
    /// Checks what the ALMA source cannot run without; the error names the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.enabled {
            return Ok(());
        }
        if self.poll_seconds == 0 {
            return Err(("sources.alma.poll_seconds", "must be at least 1"));
        }
        if !self
            .database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres"))
        {
            return Err((
                "sources.alma.database_url",
                "must be a postgres:// URL when sources.alma.enabled",
            ));
        }
        if self.asdm_query.is_none() && self.calibration_query.is_none() {
            return Err((
                "sources.alma.asdm_query",
                "or sources.alma.calibration_query must be set when sources.alma.enabled",
            ));
        }
        Ok(())
    }
}

/// Polls the ALMA metadata database.
pub struct AlmaSource {
    pool: PgPool,
    settings: AlmaSettings,
}

impl AlmaSource {
    /// Rows of `(uid, second column)` from the query configured under `key`.
    async fn rows(
        &self,
        key: &str,
        sql: &str,
        second: &str,
    ) -> anyhow::Result<Vec<(String, Option<String>)>> {
        let rows = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .with_context(|| format!("running {key}"))?;
        rows.iter()
            .map(|row| {
                let uid: String = row.try_get("uid")?;
                let other: Option<String> = row.try_get(second)?;
                Ok((uid, other))
            })
            .collect::<Result<_, sqlx::Error>>()
            .with_context(|| format!("{key} must return text columns `uid` and `{second}`"))
    }
}

#[async_trait]
impl PullStep for AlmaSource {
    fn name(&self) -> &str {
        "alma"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.settings.poll_seconds)
    }

    async fn pull(&self, models: &Models) -> anyhow::Result<PullReport> {
        let s = &self.settings;
        let not_calibratable: HashMap<String, String> = match &s.not_calibratable_query {
            Some(sql) => self
                .rows("sources.alma.not_calibratable_query", sql, "reason")
                .await?
                .into_iter()
                .map(|(uid, reason)| {
                    (
                        uid,
                        reason.unwrap_or_else(|| "marked not calibratable".into()),
                    )
                })
                .collect(),
            None => HashMap::new(),
        };
        let mut items: Vec<(String, Observation)> = Vec::new();
        let queries = [
            (&s.asdm_query, "sources.alma.asdm_query", Product::Sdm),
            (
                &s.calibration_query,
                "sources.alma.calibration_query",
                Product::Calibration,
            ),
        ];
        for (sql, key, product) in queries {
            let Some(sql) = sql else { continue };
            let mut latest: HashMap<String, Option<String>> = HashMap::new();
            for (uid, requested_at) in self.rows(key, sql, "requested_at").await? {
                // Several requests for one UID: the newest one counts.
                let slot = latest.entry(uid).or_default();
                if requested_at > *slot {
                    *slot = requested_at;
                }
            }
            for (uid, requested_at) in latest {
                let obs = Observation {
                    instrument: Instrument::ALMA,
                    product,
                    not_calibratable: (product == Product::Sdm)
                        .then(|| not_calibratable.get(&uid).cloned())
                        .flatten(),
                    location: uid.clone(),
                    name: uid,
                    files: Vec::new(),
                    requested_at,
                    missing_files: Vec::new(),
                };
                items.push((obs.key(), obs));
            }
        }
        let mut report = PullReport {
            seen: items.len(),
            ..Default::default()
        };
        for chunk in items.chunks(500) {
            for change in models.upsert_many(chunk).await? {
                match change.change {
                    Change::Created => report.created += 1,
                    Change::Updated { .. } => report.updated += 1,
                    Change::Unchanged => {}
                }
            }
        }
        Ok(report)
    }
}

/// Registers the ALMA source when `sources.alma.enabled`.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    let alma = &settings.sources.alma;
    if !alma.enabled {
        return Ok(());
    }
    let url = alma
        .database_url
        .as_deref()
        .context("sources.alma.database_url is required")?;
    // Connect lazily: an unreachable archive database is a failed poll, retried, not a
    // failed start.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy(url)
        .context("sources.alma.database_url is not a valid PostgreSQL URL")?;
    registry.pull(AlmaSource {
        pool,
        settings: alma.clone(),
    });
    Ok(())
}
