//! Dependencies of claimed work: the parents a syncing object waits for, and the dependents
//! a deleting object must outlive, read in one call for a whole round.

use super::{Db, Result, Store, StoreError};

/// Where a dependency (a parent of a syncing object, or a child of a deleting one) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyState {
    /// The linked object does not exist (yet).
    Missing,
    /// In sync: enacted at its current generation.
    Ready,
    /// Soft-deleted, its delete step not yet done.
    Deleting,
    /// Its last attempt failed with this error.
    Failed(String),
    /// Not yet synced at its current generation; the sentence says why.
    Pending(String),
}

/// One dependency edge of a claimed object.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// The claimed object this dependency belongs to.
    pub of: i64,
    pub kind: String,
    pub key: String,
    /// The linked object's id, if it exists.
    pub id: Option<i64>,
    pub state: DependencyState,
}

/// A dependency row by position: (of, kind, key, id, generation, enacted, backend_code,
/// backend_status, last_error, deleted_at). A tuple decodes by position from a PostgreSQL row
/// and from a SQLite JSON array alike, so both backends run the same SELECT list.
type DepRow = (
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

impl From<DepRow> for Dependency {
    fn from(row: DepRow) -> Self {
        let (
            of,
            kind,
            key,
            id,
            generation,
            enacted,
            backend_code,
            backend_status,
            last_error,
            deleted_at,
        ) = row;
        let state = match (id, deleted_at) {
            (None, _) => DependencyState::Missing,
            (Some(_), Some(_)) => DependencyState::Deleting,
            _ if enacted >= generation => DependencyState::Ready,
            _ if backend_code == Some(2) => {
                DependencyState::Failed(last_error.or(backend_status).unwrap_or_default())
            }
            _ => DependencyState::Pending(backend_status.unwrap_or_default()),
        };
        Dependency {
            of,
            kind,
            key,
            id,
            state,
        }
    }
}

impl Store {
    /// For syncing objects: the objects they link to. For deleting objects: the objects that
    /// link to them. Both in one call, keyed by the claimed object's id in [`Dependency::of`].
    pub async fn dependencies(&self, syncing: &[i64], deleting: &[i64]) -> Result<Vec<Dependency>> {
        const COLS: &str = "o.id, o.generation, o.enacted, o.backend_code, o.backend_status, o.last_error, o.deleted_at";
        let mut out = Vec::new();
        if !syncing.is_empty() {
            let cols = format!("l.src_id, l.dst_kind, l.dst_key, {COLS}");
            let from = format!(
                "links l LEFT JOIN objects o ON o.kind = l.dst_kind AND o.key = l.dst_key WHERE l.src_id{}",
                self.in_ids(1)
            );
            out.extend(self.dep_rows(&cols, &from, syncing).await?);
        }
        if !deleting.is_empty() {
            let cols = format!("p.id, o.kind, o.key, {COLS}");
            let from = format!(
                "objects p JOIN links l ON l.dst_kind = p.kind AND l.dst_key = p.key \
                 JOIN objects o ON o.id = l.src_id WHERE p.id{}",
                self.in_ids(1)
            );
            out.extend(self.dep_rows(&cols, &from, deleting).await?);
        }
        Ok(out)
    }

    /// `SELECT cols FROM from` over `ids` as [`DepRow`]s; on SQLite the rows come back as one
    /// JSON array (see `MemoryBook::claim`).
    async fn dep_rows(
        &self,
        cols: &str,
        from: &str,
        ids: &[i64],
    ) -> Result<impl Iterator<Item = Dependency>> {
        let ids = self.id_param(ids.iter().copied());
        let rows: Vec<DepRow> = match &self.db {
            Db::Sqlite(pool) => {
                let sql = format!("SELECT json_group_array(json_array({cols})) FROM {from}");
                let text: String = sqlx::query_scalar(&sql).bind(&ids).fetch_one(pool).await?;
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Invalid(format!("decoding dependencies: {e}")))?
            }
            Db::Postgres(pool) => {
                let sql = format!("SELECT {cols} FROM {from}");
                sqlx::query_as(&sql).bind(&ids).fetch_all(pool).await?
            }
        };
        Ok(rows.into_iter().map(Dependency::from))
    }
}
