//! SQL statements built together with their parameters, so each placeholder is numbered as
//! its value is pushed and a statement can never bind a value it does not use (or miss one it
//! does). One text serves both backends (`$N` works in SQLite and PostgreSQL).

use std::borrow::Cow;

/// One value bound into a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param<'a> {
    Int(i64),
    Text(Cow<'a, str>),
}

/// A statement's text and the values of its placeholders, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Statement<'a> {
    pub sql: String,
    pub params: Vec<Param<'a>>,
}

impl<'a> Statement<'a> {
    /// Adds `value` as the next parameter and returns its placeholder (`$n`).
    pub fn param(&mut self, value: Param<'a>) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }

    /// The statement, ready to execute on either backend.
    pub fn query<DB: sqlx::Database>(
        &'a self,
    ) -> sqlx::query::Query<'a, DB, <DB as sqlx::Database>::Arguments<'a>>
    where
        i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    {
        let mut query = sqlx::query(&self.sql);
        for param in &self.params {
            query = match param {
                Param::Int(value) => query.bind(*value),
                Param::Text(value) => query.bind(value.as_ref()),
            };
        }
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_push_order() {
        let mut s = Statement::default();
        let a = s.param(Param::Int(7));
        let b = s.param(Param::Text("x".into()));
        assert_eq!((a.as_str(), b.as_str()), ("$1", "$2"));
        assert_eq!(s.params, [Param::Int(7), Param::Text("x".into())]);
    }
}
