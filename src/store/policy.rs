//! The policy loop's side of the store: objects changed since policies last saw them.

use super::objects::{ObjectRow, OBJECT_COLUMNS};
use super::query::{State, STATE_SQL};
use super::{with_pool, BeginWrite, Result, Store};

/// An object due for its policies, with the state they last saw it in and the state it is in.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unpoliced {
    #[sqlx(flatten)]
    pub row: ObjectRow,
    /// The state policies last saw (`''`: never).
    policed_state: String,
    /// The state it is in now.
    state: String,
}

impl Unpoliced {
    /// The state its policies last saw it in; `None` when they have not seen it.
    pub fn from(&self) -> Option<State> {
        State::parse(&self.policed_state)
    }

    /// The state it is in now.
    pub fn to(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Pending)
    }
}

impl Store {
    /// Up to `limit` objects whose `revision` is newer than `policed`, in id order after `after`.
    pub async fn unpoliced(&self, after: i64, limit: usize) -> Result<Vec<Unpoliced>> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS}, policed_state, {STATE_SQL} AS state FROM objects \
             WHERE policed < revision AND id > $1 ORDER BY id LIMIT $2"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_pool!(&self.db, pool => Ok(sqlx::query_as(&sql).bind(after).bind(limit).fetch_all(pool).await?))
    }

    /// Marks objects as policed at the revision (and in the state) the policies saw; a newer
    /// revision stays due.
    pub async fn mark_policed(&self, seen: &[(i64, i64, State)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in seen.chunks(500) {
                // A CTE with a keyed lookup: SQLite runs `UPDATE … FROM (VALUES …)` as a scan.
                let mut q = sqlx::QueryBuilder::new("WITH v (id, rev, state) AS (VALUES ");
                let mut sep = q.separated(", ");
                for (id, revision, state) in chunk {
                    sep.push("(CAST(").push_bind_unseparated(*id).push_unseparated(" AS BIGINT), CAST(")
                        .push_bind_unseparated(*revision).push_unseparated(" AS BIGINT), CAST(")
                        .push_bind_unseparated(state.as_str()).push_unseparated(" AS TEXT))");
                }
                q.push(") UPDATE objects SET policed = (SELECT v.rev FROM v WHERE v.id = objects.id), \
                        policed_state = (SELECT v.state FROM v WHERE v.id = objects.id) \
                        WHERE id IN (SELECT v.id FROM v) AND policed < (SELECT v.rev FROM v WHERE v.id = objects.id)");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}
