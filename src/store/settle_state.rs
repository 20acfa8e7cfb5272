//! The settle state of the filesystem sources: per source and dataset, the fingerprint of its
//! files and since when it has been unchanged, so settle windows survive restarts.

use super::{with_pool, BeginWrite as _, Result, Store};

/// One dataset's stillness as recorded: what its files looked like, and since when.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SettleRecord {
    /// The dataset's directory name.
    pub name: String,
    /// A stable digest of its files' paths, sizes and mtimes (0: could not be listed).
    pub fingerprint: i64,
    /// When it was first seen with this fingerprint, in epoch milliseconds.
    pub since_ms: i64,
}

/// Rows (or names) per statement: 4 binds a row stays far below either backend's limit.
const CHUNK: usize = 500;

impl Store {
    /// Everything `source` recorded, to resume its settle windows after a restart.
    pub async fn settle_state(&self, source: &str) -> Result<Vec<SettleRecord>> {
        let sql = "SELECT name, fingerprint, since_ms FROM settle_state WHERE source = $1";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(source).fetch_all(pool).await?
        }))
    }

    /// Records what changed in `source`'s settle state, in one transaction: `changed`
    /// datasets are inserted or replaced (a row that already holds the same fingerprint keeps
    /// its earlier `since_ms`, so a replica that saw the dataset later never delays it), and
    /// `vanished` ones are deleted.
    pub async fn save_settle_state(
        &self,
        source: &str,
        changed: &[SettleRecord],
        vanished: &[String],
    ) -> Result<()> {
        if changed.is_empty() && vanished.is_empty() {
            return Ok(());
        }
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in changed.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO settle_state (source, name, fingerprint, since_ms) ");
                q.push_values(chunk, |mut row, r| {
                    row.push_bind(source).push_bind(&r.name).push_bind(r.fingerprint).push_bind(r.since_ms);
                });
                q.push(" ON CONFLICT (source, name) DO UPDATE SET fingerprint = excluded.fingerprint, \
                         since_ms = excluded.since_ms WHERE settle_state.fingerprint <> excluded.fingerprint");
                q.build().execute(&mut *tx).await?;
            }
            for chunk in vanished.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new("DELETE FROM settle_state WHERE source = ");
                q.push_bind(source).push(" AND name IN (");
                let mut names = q.separated(", ");
                for name in chunk {
                    names.push_bind(name);
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, super::StoreError>(())
        })
    }
}
