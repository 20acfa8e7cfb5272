//! The model store: generic objects (kind, key, spec, status and XOS bookkeeping), their links,
//! and the executions audit trail, over SQLite (embedded default) or PostgreSQL (production).
//!
//! One SQL text serves both backends (`$N` placeholders work in both); [`with_pool!`] expands a
//! body once per backend so each runs on its native driver. Times are epoch milliseconds.

mod dead_letters;
mod deps;
mod executions;
mod ids;
mod leases;
mod objects;
mod operator;
mod outbox;
mod policy;
mod query;
mod reason;
mod replicas;
mod settings;
mod settle;
mod settle_state;
mod source_health;
mod statement;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use dead_letters::{DeadLetter, NewDeadLetter};
pub use deps::{Dependency, DependencyState};
pub use executions::{Execution, NewExecution, Outcome};
pub(crate) use leases::ClaimRequest;
pub use leases::Lease;
pub use objects::{canonical, Change, ObjectRow, RetryResult, SpecChange};
pub use operator::DeadLetterCount;
pub use outbox::{NewOutboxRow, OutboxDepth, OutboxRow};
pub use policy::Unpoliced;
pub use query::{ListFilter, ObjectSummary, PageFilter, State, StateCount};
pub use reason::{Lane, Reason};
pub use replicas::Replica;
pub use settings::{Backend, DatabaseSettings};
pub use settle::{synced_message, OutcomeRecord, Settled, Settlement};
pub use settle_state::SettleRecord;
pub use source_health::SourceHealth;
pub use status::StatusWrite;

/// Why a store operation failed; callers branch on `NotInitialised` to tell the operator what to run.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no thalamus database at {0}: run `thalamus migrate` (or `thalamus run`) first")]
    NotInitialised(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the database did not answer within {0}s")]
    Timeout(u64),
}

/// How long a store call may take by default (`database.timeout_seconds`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Result alias for store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The backend behind a [`Store`].
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the native pool of whichever backend the store uses.
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Which link fields each kind declares (from `model-deps.json`): kind → [(field, target kind)].
pub type LinkFields = HashMap<String, Vec<(String, String)>>;

/// Handle to the model store; cheap to clone, shared by every loop.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: Db,
    pub(crate) links: Arc<LinkFields>,
    /// Who runs which object: in memory on SQLite, the `leases` table on PostgreSQL.
    pub(crate) leases: Arc<dyn leases::LeaseBook>,
    url: String,
    /// How long a connection or one of the sync loop's calls may take before it fails.
    timeout: Duration,
}

/// Opening mode: whether a missing SQLite file may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Create the database file if it does not exist (run, migrate).
    Create,
    /// Fail with [`StoreError::NotInitialised`] if it does not exist (read commands).
    Existing,
}

impl Store {
    /// Connects to `url` (`sqlite://FILE`, `sqlite::memory:` or `postgres://…`), waiting at
    /// most [`DEFAULT_TIMEOUT`] for a connection or a sync-loop call.
    pub async fn connect(url: &str, max_connections: u32, open: Open) -> Result<Self> {
        Self::connect_with_timeout(url, max_connections, open, DEFAULT_TIMEOUT).await
    }

    /// Like [`Store::connect`], with `database.timeout_seconds`: a database that stops
    /// answering mid-call is an outage too, and the loops must notice it to retry.
    pub async fn connect_with_timeout(
        url: &str,
        max_connections: u32,
        open: Open,
        timeout: Duration,
    ) -> Result<Self> {
        let sqlite = settings::Backend::of(url) == Some(settings::Backend::Sqlite);
        let (db, leases): (Db, Arc<dyn leases::LeaseBook>) = if sqlite {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(open == Open::Create)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // The driver's thread hands rows over through this buffer; at the default (50)
                // it stalls on every full buffer, and a claim of 1000 rows took 2-3× longer.
                .row_buffer_size(1024);
            let path = opts.get_filename().to_path_buf();
            if open == Open::Existing && !is_memory(url) && !path.exists() {
                return Err(StoreError::NotInitialised(path.display().to_string()));
            }
            // SQLite has one writer; a single connection queues work instead of failing with
            // "database is locked", and keeps an in-memory database one database.
            // A file cannot drop a connection as a server can: no ping before each use
            // (a round trip to the driver's thread, as dear as a small query).
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .connect_with(opts)
                .await?;
            let table = if is_memory(url) {
                Arc::default()
            } else {
                leases::MemLeases::for_file(&path)
            };
            let book = leases::MemoryBook {
                pool: pool.clone(),
                table,
            };
            (Db::Sqlite(pool), Arc::new(book))
        } else {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = match PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(timeout)
                .connect_with(opts.clone())
                .await
            {
                // The pool retried until its timeout and kept only "timed out": one more
                // attempt, alone, says why (refused, unknown host, bad password…).
                Err(sqlx::Error::PoolTimedOut) => {
                    let once = <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts);
                    let why: Option<sqlx::Error> = match tokio::time::timeout(timeout, once).await {
                        Ok(Err(e)) => Some(e),
                        _ => None,
                    };
                    return Err(why.unwrap_or(sqlx::Error::PoolTimedOut).into());
                }
                connected => connected?,
            };
            let book = leases::TableBook { pool: pool.clone() };
            (Db::Postgres(pool), Arc::new(book))
        };
        Ok(Self {
            db,
            links: Arc::new(LinkFields::new()),
            leases,
            url: url.to_string(),
            timeout,
        })
    }

    /// Runs one of the sync loop's store calls, failing it after the store's timeout.
    pub(crate) async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.timeout.as_secs())),
        }
    }

    /// Tells the store which spec fields are links, so upserts index them for dependency checks.
    pub fn with_links(mut self, links: LinkFields) -> Self {
        self.links = Arc::new(links);
        self
    }

    /// Creates or updates the schema; safe to run concurrently from several replicas.
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
            Db::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Fails with a helpful message when the schema has not been created yet.
    pub async fn ensure_migrated(&self) -> Result<()> {
        let sql = "SELECT COUNT(*) FROM objects WHERE 1 = 0";
        let probe = with_pool!(&self.db, pool => sqlx::query(sql).execute(pool).await.map(|_| ()));
        probe.map_err(|_| StoreError::NotInitialised(crate::secret::redact_url(&self.url)))
    }

    /// Whether the database answers at all (`SELECT 1`), for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(&self.db, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Whether this store is the embedded single-process SQLite backend.
    pub fn is_sqlite(&self) -> bool {
        matches!(self.db, Db::Sqlite(_))
    }

    /// The SQLite file behind this store, if it is a file-backed SQLite store.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        if !self.is_sqlite() || is_memory(&self.url) {
            return None;
        }
        SqliteConnectOptions::from_str(&self.url)
            .ok()
            .map(|o| o.get_filename().to_path_buf())
    }

    /// The native pool, for benchmarks and tests that measure raw SQL next to the store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Closes every connection, flushing SQLite's write-ahead log.
    pub async fn close(&self) {
        with_pool!(&self.db, pool => pool.close().await)
    }
}

fn is_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Opens a write transaction; on SQLite it takes the write lock up front (`BEGIN IMMEDIATE`) so
/// a concurrent writer in another process waits instead of failing mid-transaction.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>>;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.begin_with("BEGIN IMMEDIATE").await?)
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.begin().await?)
    }
}
