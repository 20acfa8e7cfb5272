//! What a running controller has stored, read straight from its database (SQLite file or
//! PostgreSQL schema) by plain SQL, so a test can wait on observable conditions (a row
//! appeared, a lease changed hands) without going through the process under test.

use std::str::FromStr;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

/// One stored object, as far as these tests look at it.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub generation: i64,
    pub enacted: i64,
    pub status: Value,
    pub backend_status: String,
    pub next_attempt_at: Option<i64>,
    pub deleted: bool,
}

impl Row {
    /// Whether the current generation is enacted and nothing else is due.
    pub fn in_sync(&self) -> bool {
        self.enacted == self.generation && !self.deleted
    }

    /// The Workspaces request id recorded in the status, if any.
    pub fn request_id(&self) -> Option<i64> {
        self.status["request_id"].as_i64()
    }

    /// The request state recorded in the status, if any.
    pub fn request_state(&self) -> Option<&str> {
        self.status["state"].as_str()
    }

    /// The external id the status's request was made for, if any.
    pub fn external_id(&self) -> Option<&str> {
        self.status["external_id"].as_str()
    }
}

/// A lease row (PostgreSQL only: SQLite keeps leases in the controller's memory).
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub holder: String,
    pub until: i64,
}

/// A read-only view on a controller's database.
pub enum StoreView {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

const ROWS: &str = "SELECT id, kind, key, generation, enacted, status, backend_status, \
                    next_attempt_at, deleted_at IS NOT NULL FROM objects ORDER BY id";

type RawRow = (
    i64,
    String,
    String,
    i64,
    i64,
    String,
    String,
    Option<i64>,
    bool,
);

impl StoreView {
    /// Connects to `url` (the database must exist: run `thalamus migrate` first).
    pub async fn connect(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .unwrap()
                .busy_timeout(std::time::Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .expect("open the controller's SQLite file");
            Self::Sqlite(pool)
        } else {
            let opts = PgConnectOptions::from_str(url).unwrap();
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect_with(opts)
                .await
                .expect("connect to PostgreSQL");
            Self::Postgres(pool)
        }
    }

    /// Every object, in id order.
    pub async fn rows(&self) -> Vec<Row> {
        let raw: Vec<RawRow> = match self {
            Self::Sqlite(p) => sqlx::query_as(ROWS).fetch_all(p).await,
            Self::Postgres(p) => sqlx::query_as(ROWS).fetch_all(p).await,
        }
        .expect("read objects");
        raw.into_iter()
            .map(|r| Row {
                id: r.0,
                kind: r.1,
                key: r.2,
                generation: r.3,
                enacted: r.4,
                status: serde_json::from_str(&r.5).unwrap_or(Value::Null),
                backend_status: r.6,
                next_attempt_at: r.7,
                deleted: r.8,
            })
            .collect()
    }

    /// Every object of one kind, in id order.
    pub async fn kind(&self, kind: &str) -> Vec<Row> {
        self.rows()
            .await
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    /// Every lease row with its object's kind and key (empty on SQLite).
    pub async fn leases(&self) -> Vec<Lease> {
        let Self::Postgres(p) = self else {
            return Vec::new();
        };
        let raw: Vec<(i64, String, String, String, i64)> = sqlx::query_as(
            "SELECT l.id, o.kind, o.key, l.holder, l.until \
             FROM leases l JOIN objects o ON o.id = l.id ORDER BY l.id",
        )
        .fetch_all(p)
        .await
        .expect("read leases");
        raw.into_iter()
            .map(|r| Lease {
                id: r.0,
                kind: r.1,
                key: r.2,
                holder: r.3,
                until: r.4,
            })
            .collect()
    }

    /// How many dead letters are stored.
    pub async fn dead_letters(&self) -> i64 {
        let sql = "SELECT COUNT(*) FROM dead_letters";
        match self {
            Self::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            Self::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        }
        .expect("count dead letters")
    }

    /// The reasons of the stored dead letters.
    pub async fn dead_letter_reasons(&self) -> Vec<String> {
        let sql = "SELECT reason FROM dead_letters ORDER BY id";
        match self {
            Self::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
            Self::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        }
        .expect("read dead letters")
    }

    /// Closes the connections.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(p) => p.close().await,
            Self::Postgres(p) => p.close().await,
        }
    }
}
