//! Dead letters: messages no event step could apply, stored with their raw payload.

use serde::Serialize;

use super::{with_pool, BeginWrite as _, Result, Store};

/// A message to keep (see [`Store::add_dead_letters`]).
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub transport: String,
    pub topic: String,
    pub routing_key: Option<String>,
    pub position: String,
    /// Headers as a JSON array of `[name, value]` pairs.
    pub headers: String,
    pub payload: Vec<u8>,
    pub reason: String,
    pub received_at: i64,
}

/// A stored dead letter.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub transport: String,
    pub topic: String,
    pub routing_key: Option<String>,
    pub position: String,
    pub headers: String,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub reason: String,
    #[serde(serialize_with = "crate::clock::rfc3339::ms")]
    pub received_at: i64,
    pub attempts: i32,
}

impl DeadLetter {
    /// The payload as text (lossy), for tables and JSON output.
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

const COLUMNS: &str =
    "id, transport, topic, routing_key, position, headers, payload, reason, received_at, attempts";

impl Store {
    /// Keeps messages that could not be applied, all or none; returns their ids in order.
    pub async fn add_dead_letters(&self, letters: &[NewDeadLetter]) -> Result<Vec<i64>> {
        let sql = "INSERT INTO dead_letters (transport, topic, routing_key, position, headers, payload, reason, received_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let mut ids = Vec::with_capacity(letters.len());
            for d in letters {
                ids.push(sqlx::query_scalar(sql)
                    .bind(&d.transport).bind(&d.topic).bind(&d.routing_key).bind(&d.position)
                    .bind(&d.headers).bind(&d.payload).bind(&d.reason).bind(d.received_at)
                    .fetch_one(&mut *tx).await?);
            }
            tx.commit().await?;
            Ok(ids)
        })
    }

    /// Dead letters, newest first, at most `limit` (all when `None`).
    pub async fn dead_letters(&self, limit: Option<i64>) -> Result<Vec<DeadLetter>> {
        let sql = format!("SELECT {COLUMNS} FROM dead_letters ORDER BY id DESC LIMIT $1");
        let limit = limit.unwrap_or(i64::MAX);
        with_pool!(&self.db, pool => Ok(sqlx::query_as(&sql).bind(limit).fetch_all(pool).await?))
    }

    /// One dead letter.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>> {
        let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
        with_pool!(&self.db, pool => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    /// Records another failed replay of a dead letter.
    pub async fn dead_letter_failed_again(&self, id: i64, reason: &str) -> Result<()> {
        let sql = "UPDATE dead_letters SET reason = $1, attempts = attempts + 1 WHERE id = $2";
        with_pool!(&self.db, pool => sqlx::query(sql).bind(reason).bind(id).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Removes one dead letter (after a successful replay); returns whether it existed.
    pub async fn remove_dead_letter(&self, id: i64) -> Result<bool> {
        let sql = "DELETE FROM dead_letters WHERE id = $1";
        with_pool!(&self.db, pool => Ok(sqlx::query(sql).bind(id).execute(pool).await?.rows_affected() > 0))
    }

    /// Removes every dead letter received before `before`; returns how many.
    pub async fn purge_dead_letters(&self, before: i64) -> Result<u64> {
        let sql = "DELETE FROM dead_letters WHERE received_at < $1";
        with_pool!(&self.db, pool => Ok(sqlx::query(sql).bind(before).execute(pool).await?.rows_affected()))
    }
}
