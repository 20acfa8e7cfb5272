//! Scratch databases for benchmarks and the raw SQL they are compared against.

use std::path::PathBuf;
use std::time::Instant;

use crate::store::{with_pool, BeginWrite, Open, Store};

/// Which store a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The name used in figure labels.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A migrated scratch database, removed on [`Scratch::drop_all`].
pub struct Scratch {
    pub store: Store,
    pub url: String,
    file: Option<PathBuf>,
    schema: Option<(String, String)>,
}

impl Scratch {
    /// A fresh SQLite file under `dir`, or a fresh schema on `pg_url`.
    pub async fn new(
        backend: Backend,
        dir: &std::path::Path,
        pg_url: &str,
    ) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tag = format!("thalamus_bench_{}_{nanos}", std::process::id());
        let (url, file, schema) = match backend {
            Backend::Sqlite => {
                let file = dir.join(format!("{tag}.db"));
                (format!("sqlite://{}", file.display()), Some(file), None)
            }
            Backend::Postgres => {
                // One schema per scratch store: a scenario may keep two at once.
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let schema = format!("bench_{}_{n}", std::process::id());
                let admin = sqlx::PgPool::connect(pg_url).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&admin)
                    .await?;
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                let sep = if pg_url.contains('?') { '&' } else { '?' };
                (
                    format!("{pg_url}{sep}options=-c%20search_path%3D{schema}"),
                    None,
                    Some((pg_url.to_string(), schema)),
                )
            }
        };
        let store = Store::connect(&url, 8, Open::Create).await?;
        store.migrate().await?;
        Ok(Self {
            store,
            url,
            file,
            schema,
        })
    }

    /// Whether it is a PostgreSQL schema (not a SQLite file).
    pub fn is_postgres(&self) -> bool {
        self.schema.is_some()
    }

    /// Closes and removes the scratch database.
    pub async fn drop_all(self) -> anyhow::Result<()> {
        self.store.close().await;
        if let Some(file) = self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            // Left by a `thalamus run` on this file (see `app::single_process_lock`).
            let _ = std::fs::remove_file(file.with_extension("lock"));
        }
        if let Some((url, schema)) = self.schema {
            let admin = sqlx::PgPool::connect(&url).await?;
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await?;
        }
        Ok(())
    }

    /// Executes one SQL statement.
    pub async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        with_pool!(self.store.db(), pool => sqlx::query(sql).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// The single integer one SQL query returns (e.g. a `COUNT(*)`).
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(
            with_pool!(self.store.db(), pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await)?,
        )
    }

    /// Inserts `n` clean objects of `kind` keyed `<prefix><i>`, each linking through `link`
    /// (field, target kind, target prefix) when given, in one statement each.
    pub async fn bulk_objects(
        &self,
        kind: &str,
        prefix: &str,
        n: usize,
        link: Option<(&str, &str, &str)>,
    ) -> anyhow::Result<()> {
        let spec = match link {
            Some((field, _, target)) => format!("'{{\"{field}\":\"{target}' || g || '\"}}'"),
            None => "'{}'".to_string(),
        };
        self.exec(&format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) \
             INSERT INTO objects (kind, key, spec, generation, enacted, revision, policed, backend_code, \
             next_attempt_at, created_at, updated_at) \
             SELECT '{kind}', '{prefix}' || g, {spec}, 1, 1, 1, 1, 1, 0, 0, 0 FROM s"
        ))
        .await?;
        if let Some((field, target_kind, target_prefix)) = link {
            let skip = prefix.len() + 1;
            self.exec(&format!(
                "INSERT INTO links (src_id, field, dst_kind, dst_key) \
                 SELECT id, '{field}', '{target_kind}', '{target_prefix}' || substr(key, {skip}) FROM objects WHERE kind = '{kind}'"
            ))
            .await?;
        }
        Ok(())
    }

    /// Inserts `n` Ingestions `VLA/<prefix><i>` whose request `i` is in flight in `state`,
    /// not yet enacted; with `recheck`, each is due (long ago) to look at its request again.
    pub async fn ingestions_in_flight(
        &self,
        prefix: &str,
        n: usize,
        state: &str,
        recheck: bool,
    ) -> anyhow::Result<()> {
        let (reason, due) = if recheck {
            ("recheck", "0")
        } else {
            ("new", "NULL")
        };
        self.exec(&format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) \
             INSERT INTO objects (kind, key, spec, status, request_id, generation, enacted, \
             revision, policed, reason, next_attempt_at, created_at, updated_at) \
             SELECT 'Ingestion', 'VLA/{prefix}' || g, \
             '{{\"instrument\":\"VLA\",\"name\":\"{prefix}' || g || '\",\"observation\":\"VLA/{prefix}' || g || '\",\"observation_generation\":1,\"product\":\"sdm\"}}', \
             '{{\"request_id\":' || g || ',\"state\":\"{state}\",\"external_id\":\"Ingestion/VLA/{prefix}' || g || '@1\",\"generation\":1}}', \
             g, 1, 0, 1, 1, '{reason}', {due}, 0, 0 FROM s"
        ))
        .await?;
        if self.is_postgres() {
            self.exec("ANALYZE objects").await?;
        }
        Ok(())
    }

    /// Marks every object (or those with `id <= max_id`) dirty and due.
    pub async fn make_dirty(&self, max_id: Option<i64>) -> anyhow::Result<()> {
        let filter = max_id
            .map(|m| format!(" WHERE id <= {m}"))
            .unwrap_or_default();
        self.exec(&format!(
            "UPDATE objects SET enacted = 0, next_attempt_at = 0{filter}"
        ))
        .await?;
        self.store.release_all_leases().await?;
        Ok(())
    }

    /// The baseline: `UPDATE … SET enacted = generation` plus one executions row per object,
    /// 1000 objects per transaction, written directly. Returns objects per second.
    pub async fn raw_batched_rate(&self) -> anyhow::Result<f64> {
        let ids: Vec<i64> = with_pool!(self.store.db(), pool => sqlx::query_scalar("SELECT id FROM objects ORDER BY id").fetch_all(pool).await)?;
        let started = Instant::now();
        for chunk in ids.chunks(1000) {
            with_pool!(self.store.db(), pool => {
                let mut tx = pool.begin_write().await?;
                let mut q = sqlx::QueryBuilder::new("UPDATE objects SET enacted = generation WHERE id IN (");
                let mut sep = q.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO executions (kind, key, step, generation, cause, holder, started_at, duration_ms, outcome) ");
                q.push_values(chunk.iter(), |mut b, id| {
                    b.push_bind("Bench").push_bind(id.to_string()).push_bind("sync").push_bind(1i64)
                        .push_bind("baseline").push_bind("raw").push_bind(0i64).push_bind(0i64).push_bind("ok");
                });
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
                Ok::<_, anyhow::Error>(())
            })?;
        }
        Ok(ids.len() as f64 / started.elapsed().as_secs_f64())
    }
}

/// Resident memory now and at its peak, in bytes (Linux `/proc/self/status`).
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name| status_bytes(&status, name).unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"))
}

/// A `kB` field of a `/proc/<pid>/status` text (`name` with its colon), in bytes.
pub fn status_bytes(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}
