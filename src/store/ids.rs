//! Id sets bound as one parameter. A list of 1000 ids as 1000 placeholders costs more to bind
//! and plan than the statement's work, and PostgreSQL may plan such a list badly; one text
//! parameter does not: a JSON array on SQLite (`json_each`), an array literal on PostgreSQL.

use std::fmt::Write as _;

use super::{Db, Store};

impl Store {
    /// `IN <set>` for parameter `$n`, to follow a column: ` IN (SELECT value FROM json_each($n))`
    /// or ` = ANY(CAST($n AS BIGINT[]))`. Bind [`Store::id_param`] as `$n`.
    pub(crate) fn in_ids(&self, n: usize) -> String {
        match self.db {
            Db::Sqlite(_) => format!(" IN (SELECT value FROM json_each(${n}))"),
            Db::Postgres(_) => format!(" = ANY(CAST(${n} AS BIGINT[]))"),
        }
    }

    /// The text to bind for an [`Store::in_ids`] parameter.
    pub(crate) fn id_param(&self, ids: impl IntoIterator<Item = i64>) -> String {
        let (open, close) = match self.db {
            Db::Sqlite(_) => ('[', ']'),
            Db::Postgres(_) => ('{', '}'),
        };
        let mut out = String::with_capacity(16);
        out.push(open);
        for (i, id) in ids.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{id}");
        }
        out.push(close);
        out
    }

    /// `IN <set>` of text values for parameter `$n` (keys), bound with [`Store::text_param`].
    pub(crate) fn in_texts(&self, n: usize) -> String {
        match self.db {
            Db::Sqlite(_) => format!(" IN (SELECT value FROM json_each(${n}))"),
            Db::Postgres(_) => format!(" IN (SELECT json_array_elements_text(CAST(${n} AS JSON)))"),
        }
    }

    /// The text to bind for an [`Store::in_texts`] parameter: a JSON array of strings.
    pub(crate) fn text_param<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> String {
        serde_json::to_string(&values.into_iter().collect::<Vec<_>>()).unwrap_or_default()
    }
}
