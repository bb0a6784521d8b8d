//! A small query builder that numbers placeholders `$1, $2, …` (valid on both SQLite and
//! PostgreSQL; sqlx's own `QueryBuilder<Any>` writes `?`, which PostgreSQL refuses), for queries
//! whose filters depend on the request.

use sqlx::{any::AnyArguments, query::Query, Any};

#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_string())
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::Float(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}
impl<T: Into<Arg>> From<Option<T>> for Arg {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Arg::Null)
    }
}

/// Binds one [`Arg`] to a `Query` or `QueryScalar` (they share no trait for `bind`).
macro_rules! bind_arg {
    ($q:expr, $arg:expr) => {
        match $arg {
            Arg::Text(s) => $q.bind(s.as_str()),
            Arg::Int(i) => $q.bind(*i),
            Arg::Float(f) => $q.bind(*f),
            Arg::Bool(b) => $q.bind(*b),
            Arg::Null => $q.bind(Option::<String>::None),
        }
    };
}

#[derive(Debug, Default, Clone)]
pub struct Sql {
    text: String,
    args: Vec<Arg>,
    /// Plain `?` placeholders (SQLite): SQLite finds a named parameter (`$N`) by walking a list,
    /// so binding n of them costs O(n²) — a multi-row insert of thousands of values spent more
    /// time there than in writing. `?` are bound in order, in O(1) each.
    positional: bool,
}

impl Sql {
    pub fn new(text: &str) -> Self {
        Sql {
            text: text.to_string(),
            args: Vec::new(),
            positional: false,
        }
    }

    /// A statement for this backend: plain `?` placeholders on SQLite (bound in order, so the
    /// text must not be combined with another statement's), `$N` on PostgreSQL.
    pub fn for_backend(backend: super::Backend, text: &str) -> Self {
        let mut sql = Sql::new(text);
        sql.positional = backend.positional_placeholders();
        sql
    }

    /// `prefix` (with no placeholders of its own) followed by `filter` and its bound values:
    /// one filter serves both the `COUNT(*)` and the page query of a list.
    pub fn prefixed(prefix: &str, filter: &Sql) -> Self {
        Sql {
            text: format!("{prefix}{}", filter.text),
            args: filter.args.clone(),
            positional: filter.positional,
        }
    }

    /// Appends raw SQL (never user input).
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind(&mut self, value: impl Into<Arg>) -> &mut Self {
        self.args.push(value.into());
        if self.positional {
            self.text.push('?');
        } else {
            self.text.push('$');
            self.text.push_str(&self.args.len().to_string());
        }
        self
    }

    /// Appends `(…)` with one placeholder per value: a row of a multi-row `VALUES`.
    pub fn tuple(&mut self, values: impl IntoIterator<Item = Arg>) -> &mut Self {
        self.push("(");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self.push(")")
    }

    /// Appends ` AND <sql>` where `sql` contains one `?` that becomes the next placeholder.
    pub fn and(&mut self, clause: &str, value: impl Into<Arg>) -> &mut Self {
        let (before, after) = clause.split_once('?').unwrap_or((clause, ""));
        self.push(" AND ").push(before).bind(value).push(after)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for arg in &self.args {
            q = bind_arg!(q, arg);
        }
        q
    }

    pub fn query_scalar<O>(&self) -> sqlx::query::QueryScalar<'_, Any, O, AnyArguments<'_>>
    where
        O: Send + Unpin,
        (O,): for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let mut q = sqlx::query_scalar(&self.text);
        for arg in &self.args {
            q = bind_arg!(q, arg);
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut sql = Sql::new("SELECT * FROM t WHERE org_id = ");
        sql.bind("org_1")
            .and("status = ?", "active")
            .and("n > ?", 3i64);
        assert_eq!(
            sql.text(),
            "SELECT * FROM t WHERE org_id = $1 AND status = $2 AND n > $3"
        );
    }
}
