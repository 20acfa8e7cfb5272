//! The outbox's side of the store: rows written inside the transactions of the changes they
//! announce, and the relay's reads and marks. A row is sent only once its broker confirmed
//! it; the relay holds a lease (`relay_lease`) so replicas never publish at once.

use serde::Serialize;

use super::{with_pool, Result, Store};

/// A message to write to the outbox with the change it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxRow {
    /// `amqp` or `kafka`.
    pub transport: String,
    /// The exchange or topic.
    pub topic: String,
    /// The AMQP routing key, or the Kafka message key.
    pub routing_key: String,
    /// The message's `type`.
    pub message_type: String,
    /// `<kind>/<key>` of the model it is about: order holds per model.
    pub model: String,
    /// The JSON body.
    pub payload: String,
}

/// A row of the outbox, as the relay and `thalamus outbox` see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub transport: String,
    pub topic: String,
    pub routing_key: String,
    pub message_type: String,
    pub model: String,
    pub payload: String,
    #[serde(serialize_with = "crate::clock::rfc3339::ms")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::clock::rfc3339::opt_ms")]
    pub sent_at: Option<i64>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxDepth {
    /// Rows not yet sent.
    pub unsent: i64,
    /// When the oldest unsent row was written (epoch ms), if any.
    pub oldest: Option<i64>,
}

const COLUMNS: &str = "id, transport, topic, routing_key, message_type, model, payload, \
    created_at, sent_at, attempts, last_error";

pub(crate) const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (transport, topic, routing_key, message_type, model, \
    payload, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Writes outbox rows on an open connection (inside the transaction of the change).
macro_rules! insert_outbox {
    ($conn:expr, $rows:expr, $now:expr) => {{
        for row in $rows {
            let row: &NewOutboxRow = row;
            sqlx::query($crate::store::outbox::INSERT_OUTBOX)
                .bind(&row.transport)
                .bind(&row.topic)
                .bind(&row.routing_key)
                .bind(&row.message_type)
                .bind(&row.model)
                .bind(&row.payload)
                .bind($now)
                .execute(&mut *$conn)
                .await?;
        }
    }};
}
pub(crate) use insert_outbox;

impl Store {
    /// Records `firing` and writes `rows` in one transaction, unless `firing` was recorded
    /// already; returns whether it was new.
    pub async fn publish_once(
        &self,
        firing: &str,
        rows: &[NewOutboxRow],
        now: i64,
    ) -> Result<bool> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let new = sqlx::query(
                "INSERT INTO rule_firings (firing, fired_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(firing)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if new {
                insert_outbox!(tx, rows.iter(), now);
            }
            tx.commit().await?;
            Ok(new)
        })
    }

    /// Takes (or keeps) the relay's lease for `holder` until `until`, if nobody else holds a
    /// live one at `now`; returns whether `holder` is the relay now.
    pub async fn take_relay(&self, holder: &str, now: i64, until: i64) -> Result<bool> {
        let sql = "INSERT INTO relay_lease (name, holder, until) VALUES ('outbox', $1, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE relay_lease.holder = excluded.holder OR relay_lease.until < $2 \
             RETURNING holder";
        with_pool!(&self.db, pool => {
            let got: Option<String> = sqlx::query_scalar(sql)
                .bind(holder).bind(now).bind(until)
                .fetch_optional(pool).await?;
            Ok(got.is_some())
        })
    }

    /// Gives the relay's lease back (a clean shutdown), so another replica takes over at once.
    pub async fn leave_relay(&self, holder: &str) -> Result<()> {
        let sql = "DELETE FROM relay_lease WHERE name = 'outbox' AND holder = $1";
        with_pool!(&self.db, pool => {
            sqlx::query(sql).bind(holder).execute(pool).await?;
            Ok(())
        })
    }

    /// Up to `limit` unsent rows for `transports`, oldest first (rows for a transport no
    /// longer configured wait until it is again).
    pub async fn unsent(&self, limit: i64, transports: &[&str]) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM outbox WHERE sent_at IS NULL AND transport{} ORDER BY id LIMIT $1",
            self.in_texts(2)
        );
        let transports = self.text_param(transports.iter().copied());
        with_pool!(&self.db, pool => Ok(sqlx::query_as(&sql).bind(limit).bind(&transports).fetch_all(pool).await?))
    }

    /// Marks rows sent at `now`, if `holder` still holds the relay's lease (a relay that
    /// stalled past it marks nothing; the new relay publishes them again, under the same id).
    pub async fn mark_sent(&self, holder: &str, ids: &[i64], now: i64) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE outbox SET sent_at = $1, attempts = attempts + 1, last_error = NULL \
             WHERE sent_at IS NULL AND id{} AND EXISTS (SELECT 1 FROM relay_lease \
             WHERE name = 'outbox' AND holder = $3)",
            self.in_ids(2)
        );
        let ids = self.id_param(ids.iter().copied());
        with_pool!(&self.db, pool => Ok(sqlx::query(&sql)
            .bind(now).bind(ids).bind(holder)
            .execute(pool).await?.rows_affected()))
    }

    /// Records that publishing row `id` failed (it stays unsent, and is tried again).
    pub async fn mark_failed(&self, id: i64, error: &str) -> Result<()> {
        let sql = "UPDATE outbox SET attempts = attempts + 1, last_error = $2 \
                   WHERE id = $1 AND sent_at IS NULL";
        with_pool!(&self.db, pool => {
            sqlx::query(sql).bind(id).bind(error).execute(pool).await?;
            Ok(())
        })
    }

    /// The newest `limit` rows (unsent only, with `unsent`), newest first.
    pub async fn outbox(&self, unsent: bool, limit: i64) -> Result<Vec<OutboxRow>> {
        let filter = if unsent { "WHERE sent_at IS NULL" } else { "" };
        let sql = format!("SELECT {COLUMNS} FROM outbox {filter} ORDER BY id DESC LIMIT $1");
        with_pool!(&self.db, pool => Ok(sqlx::query_as(&sql).bind(limit).fetch_all(pool).await?))
    }

    /// One row by id.
    pub async fn outbox_row(&self, id: i64) -> Result<Option<OutboxRow>> {
        let sql = format!("SELECT {COLUMNS} FROM outbox WHERE id = $1");
        with_pool!(&self.db, pool => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    /// Sends row `id` again (an operator's retry: a consumer lost it); returns whether it
    /// exists. It keeps its id, so consumers that have it can drop the copy.
    pub async fn resend(&self, id: i64) -> Result<bool> {
        let sql = "UPDATE outbox SET sent_at = NULL, last_error = NULL WHERE id = $1";
        with_pool!(&self.db, pool => Ok(sqlx::query(sql).bind(id).execute(pool).await?.rows_affected() > 0))
    }

    /// Unsent rows and the age of the oldest, for the operator surface.
    pub async fn outbox_depth(&self) -> Result<OutboxDepth> {
        let sql = "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL";
        let (unsent, oldest): (i64, Option<i64>) =
            with_pool!(&self.db, pool => sqlx::query_as(sql).fetch_one(pool).await?);
        Ok(OutboxDepth { unsent, oldest })
    }

    /// Deletes rows sent before `before`; returns how many.
    pub async fn prune_outbox(&self, before: i64) -> Result<u64> {
        let sql = "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1";
        with_pool!(&self.db, pool => Ok(sqlx::query(sql).bind(before).execute(pool).await?.rows_affected()))
    }
}
