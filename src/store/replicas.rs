//! The processes sharing a PostgreSQL store, each under its holder id: one live process per
//! id, proven by a heartbeat, so a process restarted under the same id may take its dead
//! predecessor's leases over at once instead of waiting for them to expire.

use super::{Db, Result, Store};

/// One process registered under a holder id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Replica {
    pub holder: String,
    /// Which process: a new one on every start.
    pub instance: String,
    pub started_at: i64,
    /// Until when (epoch ms) its heartbeat says it is alive.
    pub heartbeat_until: i64,
}

impl Store {
    /// Registers `instance` as the process running as `holder`, alive until `until`, unless
    /// another instance's heartbeat under that id is still live: then returns that one.
    /// SQLite needs no registry (its lock file admits one process) and always admits.
    pub async fn join_replicas(
        &self,
        holder: &str,
        instance: &str,
        now: i64,
        until: i64,
    ) -> Result<Option<Replica>> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(None);
        };
        let joined: Option<String> = sqlx::query_scalar(
            "INSERT INTO replicas (holder, instance, started_at, heartbeat_until) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (holder) DO UPDATE SET \
             instance = excluded.instance, started_at = excluded.started_at, \
             heartbeat_until = excluded.heartbeat_until \
             WHERE replicas.heartbeat_until < $3 OR replicas.instance = excluded.instance \
             RETURNING instance",
        )
        .bind(holder)
        .bind(instance)
        .bind(now)
        .bind(until)
        .fetch_optional(pool)
        .await?;
        if joined.is_some() {
            return Ok(None);
        }
        Ok(sqlx::query_as(
            "SELECT holder, instance, started_at, heartbeat_until FROM replicas WHERE holder = $1",
        )
        .bind(holder)
        .fetch_optional(pool)
        .await?)
    }

    /// Extends `instance`'s heartbeat under `holder` to `until`; false if another instance
    /// has taken the id over (this process must stop working under it).
    pub async fn heartbeat(&self, holder: &str, instance: &str, until: i64) -> Result<bool> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(true);
        };
        let done = sqlx::query(
            "UPDATE replicas SET heartbeat_until = $3 WHERE holder = $1 AND instance = $2",
        )
        .bind(holder)
        .bind(instance)
        .bind(until)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends `instance`'s registration (a clean shutdown): the next process under the same
    /// id starts at once.
    pub async fn leave_replicas(&self, holder: &str, instance: &str) -> Result<()> {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("DELETE FROM replicas WHERE holder = $1 AND instance = $2")
                .bind(holder)
                .bind(instance)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Every registered process, live or lapsed, by holder id.
    pub async fn replicas(&self) -> Result<Vec<Replica>> {
        let sql =
            "SELECT holder, instance, started_at, heartbeat_until FROM replicas ORDER BY holder";
        super::with_pool!(&self.db, pool => Ok(sqlx::query_as(sql).fetch_all(pool).await?))
    }
}
