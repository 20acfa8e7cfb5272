//! The ALMA source: rows from the archive's metadata database (configured SQL queries). Three
//! independent duties, as Amygdala's loader had: ASDMs to (re)ingest and calibrations to
//! (re)ingest become Observations (a newer `requested_at` re-runs the ingestion); ASDMs known
//! not to be calibratable become CalibrationMarks, which the archive is told about, and an
//! ASDM no longer listed there is marked calibratable again. One bad row is skipped and
//! reported (query and row position), one broken query is reported while the others go on.
//! Configured by `sources.alma`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use sqlx::postgres::{PgColumn, PgConnectOptions, PgRow, PgValueFormat};
use sqlx::{Column, Connection, Executor, PgConnection, Row, TypeInfo, ValueRef};

use super::archive::CalibrationMark;
use super::models::{Instrument, Observation, Product};
use crate::steps::prelude::*;

/// `sources.alma`: rows from the archive's metadata database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlmaSettings {
    /// Whether the source is polled.
    pub enabled: bool,
    /// `postgres://…` of the metadata database (secret: never printed).
    pub database_url: Option<String>,
    /// How often the queries run.
    pub poll_seconds: u64,
    /// How long connecting may take before the poll fails, naming the host.
    pub connect_timeout_seconds: u64,
    /// Returns `uid` (text) and `requested_at` (timestamptz, timestamp, date or text;
    /// nullable): ASDMs to (re)ingest.
    pub asdm_query: Option<String>,
    /// Returns `uid` and `requested_at` as `asdm_query`: calibrations to (re)ingest.
    pub calibration_query: Option<String>,
    /// Returns `uid` (text) and `reason` (text, nullable): ASDMs known not to be calibratable.
    pub not_calibratable_query: Option<String>,
}

impl Default for AlmaSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            database_url: None,
            poll_seconds: 300,
            connect_timeout_seconds: 10,
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
        if self.connect_timeout_seconds == 0 {
            return Err(("sources.alma.connect_timeout_seconds", "must be at least 1"));
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
        if self.asdm_query.is_none()
            && self.calibration_query.is_none()
            && self.not_calibratable_query.is_none()
        {
            return Err((
                "sources.alma.asdm_query",
                "or calibration_query or not_calibratable_query must be set when sources.alma.enabled",
            ));
        }
        Ok(())
    }

    /// The configured queries, in the order they run.
    fn queries(&self) -> Vec<(Query, &str)> {
        [
            (Query::Asdm, &self.asdm_query),
            (Query::Calibration, &self.calibration_query),
            (Query::NotCalibratable, &self.not_calibratable_query),
        ]
        .into_iter()
        .filter_map(|(q, sql)| Some((q, sql.as_deref()?)))
        .collect()
    }
}

/// One of the three queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Asdm,
    Calibration,
    NotCalibratable,
}

impl Query {
    /// Its settings key, which names it in every message.
    fn key(self) -> &'static str {
        match self {
            Query::Asdm => "sources.alma.asdm_query",
            Query::Calibration => "sources.alma.calibration_query",
            Query::NotCalibratable => "sources.alma.not_calibratable_query",
        }
    }

    /// Its second column, besides `uid`.
    fn second(self) -> &'static str {
        match self {
            Query::NotCalibratable => "reason",
            _ => "requested_at",
        }
    }

    /// The types its second column may have.
    fn second_types(self) -> &'static str {
        match self {
            Query::NotCalibratable => "text",
            _ => "timestamptz, timestamp, date or text",
        }
    }
}

/// A PostgreSQL type name that reads as text.
fn is_text(type_name: &str) -> bool {
    matches!(
        type_name.to_ascii_uppercase().as_str(),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "UNKNOWN"
    )
}

/// A PostgreSQL type name of a point in time.
fn is_time(type_name: &str) -> bool {
    matches!(
        type_name.to_ascii_uppercase().as_str(),
        "TIMESTAMPTZ" | "TIMESTAMP" | "DATE"
    )
}

/// Where `uid` and the second column are in a query's result, or what is wrong with them.
fn columns(query: Query, columns: &[PgColumn]) -> Result<(usize, usize), String> {
    let find = |name: &str| columns.iter().position(|c| c.name() == name);
    let names = || {
        let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    };
    let (Some(uid), Some(second)) = (find("uid"), find(query.second())) else {
        return Err(format!(
            "{} must return columns `uid` and `{}` (name them with AS); it returns {}",
            query.key(),
            query.second(),
            names()
        ));
    };
    let uid_type = columns[uid].type_info().name();
    if !is_text(uid_type) {
        return Err(format!(
            "{}: column `uid` is {}; it must be text",
            query.key(),
            uid_type.to_lowercase()
        ));
    }
    let second_type = columns[second].type_info().name();
    let fits = match query {
        Query::NotCalibratable => is_text(second_type),
        _ => is_text(second_type) || is_time(second_type),
    };
    if !fits {
        return Err(format!(
            "{}: column `{}` is {}; it must be {}",
            query.key(),
            query.second(),
            second_type.to_lowercase(),
            query.second_types()
        ));
    }
    Ok((uid, second))
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A value as text: text as it is, a time as PostgreSQL prints it in UTC
/// (`2026-03-01 00:00:00+00`, the same as `requested_at::text` in thalamus's sessions, which
/// sqlx sets to UTC, so a query may switch between the two without re-running any
/// ingestion). `None` for NULL.
fn text_of(row: &PgRow, index: usize) -> Result<Option<String>, String> {
    let raw = row.try_get_raw(index).map_err(|e| sql_text(&e))?;
    if raw.is_null() {
        return Ok(None);
    }
    let type_name = raw.type_info().name().to_ascii_uppercase();
    if !is_time(&type_name) || raw.format() == PgValueFormat::Text {
        let text = raw.as_str().map_err(|e| e.to_string())?;
        let text = if type_name == "BPCHAR" {
            text.trim_end()
        } else {
            text
        };
        return Ok(Some(text.to_string()));
    }
    let bytes = raw.as_bytes().map_err(|e| e.to_string())?;
    let time = |us: i64| chrono::DateTime::from_timestamp_micros(us.saturating_add(PG_EPOCH_US));
    let text = match (type_name.as_str(), bytes.len()) {
        ("DATE", 4) => {
            let days = i32::from_be_bytes(bytes.try_into().unwrap_or_default());
            time(i64::from(days) * 86_400_000_000).map(|t| t.format("%Y-%m-%d").to_string())
        }
        (kind, 8) => {
            let us = i64::from_be_bytes(bytes.try_into().unwrap_or_default());
            let zone = if kind == "TIMESTAMPTZ" { "+00" } else { "" };
            time(us).map(|t| {
                // As PostgreSQL prints it: fractional seconds only when there are some,
                // without trailing zeros.
                let mut text = t.format("%Y-%m-%d %H:%M:%S").to_string();
                let micros = us.rem_euclid(1_000_000);
                if micros != 0 {
                    text.push('.');
                    text.push_str(format!("{micros:06}").trim_end_matches('0'));
                }
                text.push_str(zone);
                text
            })
        }
        _ => None,
    };
    // `infinity`, or a time past chrono's range: say so rather than invent a time.
    text.map(Some)
        .ok_or_else(|| format!("a {} value thalamus cannot read", type_name.to_lowercase()))
}

/// A database error said once: the server's message, or the error itself (sqlx's own text
/// repeats the server's message as its cause).
fn sql_text(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// What one query returned: `(uid, second column)` per usable row, and a sentence per row
/// skipped (the first [`NAMED_ROWS`] of them; `skipped_count` counts them all).
struct Listing {
    rows: Vec<(String, Option<String>)>,
    skipped: Vec<String>,
    skipped_count: usize,
}

/// How many skipped rows of one query are named, so a table full of bad rows makes one
/// readable sentence, not thousands.
const NAMED_ROWS: usize = 10;

impl Listing {
    /// Counts a skipped row, naming it if fewer than [`NAMED_ROWS`] are named yet.
    fn skip(&mut self, why: impl FnOnce() -> String) {
        self.skipped_count += 1;
        if self.skipped.len() < NAMED_ROWS {
            self.skipped.push(why());
        }
    }

    /// The sentences naming the skipped rows, with how many more were skipped unnamed.
    fn problems(mut self, query: Query) -> Vec<String> {
        let unnamed = self.skipped_count - self.skipped.len();
        if unnamed > 0 {
            self.skipped
                .push(format!("{}: {unnamed} more rows skipped", query.key()));
        }
        self.skipped
    }
}

/// Polls the ALMA metadata database.
pub struct AlmaSource {
    options: PgConnectOptions,
    /// `host:port/database`, as messages name it (never the password).
    target: String,
    settings: AlmaSettings,
}

impl AlmaSource {
    /// A source reading `settings.database_url`.
    pub fn new(settings: &AlmaSettings) -> anyhow::Result<Self> {
        let url = settings
            .database_url
            .as_deref()
            .context("sources.alma.database_url is required")?;
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            anyhow!(
                "sources.alma.database_url is not a valid PostgreSQL URL: {}",
                sql_text(&e)
            )
        })?;
        let target = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        let target = match options.get_database() {
            Some(db) => format!("{target}/{db}"),
            None => target,
        };
        Ok(Self {
            options,
            target,
            settings: settings.clone(),
        })
    }

    /// A connection for one poll, or an error naming what could not be reached, at once
    /// (a refused connection) or after `connect_timeout_seconds` (no answer).
    async fn connect(&self) -> anyhow::Result<PgConnection> {
        let secs = self.settings.connect_timeout_seconds;
        let what = format!("cannot reach the ALMA metadata database at {}", self.target);
        match tokio::time::timeout(
            Duration::from_secs(secs),
            PgConnection::connect_with(&self.options),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(anyhow!("{what}: {}", sql_text(&e))),
            Err(_) => Err(anyhow!("{what}: no answer within {secs}s")),
        }
    }

    /// Runs one query and reads its rows; an error is the query's alone.
    async fn list(
        &self,
        conn: &mut PgConnection,
        query: Query,
        sql: &str,
    ) -> Result<Listing, String> {
        // Prepared (not a simple query), so values come in binary: a time is read as the
        // instant it is, whatever the session's time zone.
        let rows = sqlx::query(sql)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| format!("{}: {}", query.key(), sql_text(&e)))?;
        let mut listing = Listing {
            rows: Vec::with_capacity(rows.len()),
            skipped: Vec::new(),
            skipped_count: 0,
        };
        let Some(first) = rows.first() else {
            return Ok(listing);
        };
        let (uid_at, second_at) = columns(query, first.columns())?;
        for (i, row) in rows.iter().enumerate() {
            let position = || format!("{} row {}", query.key(), i + 1);
            let second = match text_of(row, second_at) {
                Ok(v) => v,
                Err(e) => {
                    listing
                        .skip(|| format!("{}: `{}` is {e}; skipped", position(), query.second()));
                    continue;
                }
            };
            let shown = second.as_deref().unwrap_or("NULL");
            match text_of(row, uid_at) {
                Ok(Some(uid)) if !uid.trim().is_empty() => listing.rows.push((uid, second)),
                Ok(uid) => {
                    let what = if uid.is_some() { "empty" } else { "NULL" };
                    listing.skip(|| {
                        format!(
                            "{} ({} {shown}): `uid` is {what}; skipped",
                            position(),
                            query.second()
                        )
                    })
                }
                Err(e) => listing.skip(|| format!("{}: `uid` is {e}; skipped", position())),
            }
        }
        Ok(listing)
    }

    /// Upserts Observations of `product` for the rows of one reingestion query; the newest
    /// `requested_at` of a uid counts.
    async fn observe(
        &self,
        models: &Models,
        product: Product,
        rows: Vec<(String, Option<String>)>,
        report: &mut PullReport,
    ) -> anyhow::Result<()> {
        let mut latest: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (uid, requested_at) in rows {
            let slot = latest.entry(uid).or_default();
            if requested_at > *slot {
                *slot = requested_at;
            }
        }
        let items: Vec<(String, Observation)> = latest
            .into_iter()
            .map(|(uid, requested_at)| {
                let obs = Observation {
                    instrument: Instrument::ALMA,
                    product,
                    location: uid.clone(),
                    name: uid,
                    files: Vec::new(),
                    requested_at,
                    missing_files: Vec::new(),
                };
                (obs.key(), obs)
            })
            .collect();
        report.seen += items.len();
        for chunk in items.chunks(500) {
            let (changes, refused) = models.upsert_each(chunk).await?;
            count(&changes, report);
            for (key, e) in refused {
                report.skipped += 1;
                report.problems.push(format!("Observation {key}: {e:#}"));
            }
        }
        Ok(())
    }

    /// Upserts a CalibrationMark per uid listed not calibratable, and marks calibratable
    /// again every ASDM marked before and no longer listed.
    async fn mark(
        &self,
        models: &Models,
        rows: Vec<(String, Option<String>)>,
        report: &mut PullReport,
    ) -> anyhow::Result<()> {
        // Several rows for one uid: every distinct reason, in a stable order, so the mark
        // never flips between them from one poll to the next.
        let mut reasons: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (uid, reason) in rows {
            let set = reasons.entry(uid).or_default();
            if let Some(reason) = reason.filter(|r| !r.trim().is_empty()) {
                set.insert(reason);
            }
        }
        let mut items: HashMap<String, CalibrationMark> = reasons
            .into_iter()
            .map(|(uid, reasons)| {
                let reason = if reasons.is_empty() {
                    super::archive::NO_REASON.to_string()
                } else {
                    reasons.into_iter().collect::<Vec<_>>().join("; ")
                };
                (
                    CalibrationMark::key(&uid),
                    CalibrationMark::not_calibratable(&uid, &reason),
                )
            })
            .collect();
        report.seen += items.len();
        for stored in models.all::<CalibrationMark>().await? {
            // A mark someone else made (a rule, say) is theirs to lift.
            let ours = stored.spec.by.is_none();
            if ours && !stored.spec.calibratable && !items.contains_key(&stored.key) {
                items.insert(
                    stored.key.clone(),
                    CalibrationMark::calibratable(&stored.spec.uid),
                );
            }
        }
        let mut items: Vec<(String, CalibrationMark)> = items.into_iter().collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        for chunk in items.chunks(500) {
            let (changes, refused) = models.upsert_each(chunk).await?;
            count(&changes, report);
            for (key, e) in refused {
                report.skipped += 1;
                report
                    .problems
                    .push(format!("CalibrationMark {key}: {e:#}"));
            }
        }
        Ok(())
    }
}

/// Adds what an upsert did to the report.
fn count(changes: &[crate::store::SpecChange], report: &mut PullReport) {
    for change in changes {
        match change.change {
            Change::Created => report.created += 1,
            Change::Updated { .. } => report.updated += 1,
            Change::Unchanged => {}
        }
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

    /// Runs each configured query on one connection. A query that fails, or a row that
    /// cannot be used, is a problem of the poll (reported; the rest goes on); the poll fails
    /// only when the database cannot be reached or no query worked. Marks are made
    /// calibratable again only from a `not_calibratable_query` that worked.
    async fn pull(&self, models: &Models) -> anyhow::Result<PullReport> {
        let mut conn = self.connect().await?;
        let mut report = PullReport::default();
        let mut listings = Vec::new();
        let mut failed = Vec::new();
        for (query, sql) in self.settings.queries() {
            match self.list(&mut conn, query, sql).await {
                Ok(listing) => listings.push((query, listing)),
                Err(e) => failed.push(e),
            }
        }
        let _ = conn.close().await;
        if listings.is_empty() {
            bail!("{}", failed.join("; "));
        }
        report.problems.extend(failed);
        for (query, mut listing) in listings {
            let rows = std::mem::take(&mut listing.rows);
            report.skipped += listing.skipped_count;
            report.problems.extend(listing.problems(query));
            match query {
                Query::Asdm => {
                    self.observe(models, Product::Sdm, rows, &mut report)
                        .await?
                }
                Query::Calibration => {
                    self.observe(models, Product::Calibration, rows, &mut report)
                        .await?
                }
                Query::NotCalibratable => self.mark(models, rows, &mut report).await?,
            }
        }
        Ok(report)
    }

    /// Asks the metadata database to describe each query (without running it) and checks
    /// its columns; when the database cannot be reached, says so and checks nothing.
    async fn check(&self) -> anyhow::Result<Vec<String>> {
        let mut conn = match self.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                return Ok(vec![format!(
                    "warning: {e:#}; the queries were not checked"
                )])
            }
        };
        let mut notes = Vec::new();
        let mut wrong = Vec::new();
        for (query, sql) in self.settings.queries() {
            match conn.describe(sql).await {
                Ok(described) => match columns(query, described.columns()) {
                    Ok(_) => notes.push(format!("{} OK", query.key())),
                    Err(e) => wrong.push(e),
                },
                Err(e) => wrong.push(format!("{}: {}", query.key(), sql_text(&e))),
            }
        }
        let _ = conn.close().await;
        if !wrong.is_empty() {
            bail!("{}", wrong.join("; "));
        }
        Ok(notes)
    }
}

/// Registers the ALMA source when `sources.alma.enabled`. It connects at each poll, so an
/// unreachable archive database is a failed poll (retried with backoff), not a failed start.
pub fn register(registry: &mut Registry, settings: &Settings) -> anyhow::Result<()> {
    let alma = &settings.sources.alma;
    if !alma.enabled {
        return Ok(());
    }
    registry.pull(AlmaSource::new(alma)?);
    Ok(())
}
