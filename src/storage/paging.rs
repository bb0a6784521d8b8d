//! The SQL side of list paging (SPEC §1): how a [`Page`] becomes ` ORDER BY … LIMIT … OFFSET …`
//! or a keyset condition, and the one implementation of "count, then fetch one page" every list
//! uses. The request side (parsing `limit`/`offset`/`page`/`cursor`, the response shape) is in
//! [`crate::http::pagination`].

use super::{Db, Sql};
use crate::{
    error::Error,
    http::pagination::{HasId, List, Page},
};

impl Page {
    /// Appends ` ORDER BY … LIMIT … OFFSET …` for an offset page, or the keyset condition for a
    /// cursor page over a time-sortable id column (newest first). Fetches one row more than the
    /// limit so that [`List::from_rows`] can tell whether more follow.
    pub fn apply_newest_first(&self, sql: &mut Sql, id_column: &str) {
        if let Some(after) = &self.after_id {
            sql.and(&format!("{id_column} < ?"), after.as_str());
            sql.push(&format!(" ORDER BY {id_column} DESC LIMIT "))
                .bind(self.limit + 1);
        } else {
            sql.push(&format!(" ORDER BY {id_column} DESC LIMIT "))
                .bind(self.limit + 1)
                .push(" OFFSET ")
                .bind(self.offset);
        }
    }

    /// Appends ` ORDER BY <order> LIMIT … OFFSET …` (offset paging, one extra row).
    pub fn apply_offset(&self, sql: &mut Sql, order_by: &str) {
        sql.push(&format!(" ORDER BY {order_by} LIMIT "))
            .bind(self.limit + 1)
            .push(" OFFSET ")
            .bind(self.offset);
    }

    /// One offset page of a list: the total of rows matching `filter` (` FROM … WHERE …`, with
    /// its bound values), then the page's rows (`select` + `filter` + `ORDER BY order_by`),
    /// decoded by `decode` — the one implementation every offset-paged list uses.
    pub async fn fetch<T: HasId>(
        &self,
        db: &Db,
        key: &'static str,
        select: &str,
        filter: &Sql,
        order_by: &str,
        decode: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
    ) -> Result<List<T>, Error> {
        let total = count(db, filter).await?;
        let mut q = Sql::prefixed(select, filter);
        self.apply_offset(&mut q, order_by);
        let rows = q.query().fetch_all(db.pool()).await?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(List::from_rows(key, items, total, self))
    }

    /// One page of an append-only stream, newest first: by cursor (`starting_after`) or offset,
    /// over the time-sortable `id` column — the logs, violations and other streams.
    pub async fn fetch_newest_first<T: HasId>(
        &self,
        db: &Db,
        key: &'static str,
        select: &str,
        filter: &Sql,
        decode: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
    ) -> Result<List<T>, Error> {
        let total = count(db, filter).await?;
        let mut q = Sql::prefixed(select, filter);
        self.apply_newest_first(&mut q, "id");
        let rows = q.query().fetch_all(db.pool()).await?;
        let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(List::from_rows(key, items, total, self))
    }
}

/// The number of rows matching `filter` (` FROM … WHERE …`).
async fn count(db: &Db, filter: &Sql) -> Result<i64, Error> {
    Ok(Sql::prefixed("SELECT COUNT(*)", filter)
        .query_scalar()
        .fetch_one(db.pool())
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_paging_binds_limit_plus_one() {
        let mut sql = Sql::new("SELECT id FROM t WHERE org_id = ");
        sql.bind("org_1");
        Page::parse("cursor=bG9nXzE")
            .unwrap()
            .apply_newest_first(&mut sql, "id");
        assert_eq!(
            sql.text(),
            "SELECT id FROM t WHERE org_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        );
    }

    #[test]
    fn offset_paging_binds_limit_plus_one_and_offset() {
        let mut sql = Sql::new("SELECT id FROM t WHERE org_id = ");
        sql.bind("org_1");
        Page::parse("page=3&limit=10")
            .unwrap()
            .apply_offset(&mut sql, "created_at, id");
        assert_eq!(
            sql.text(),
            "SELECT id FROM t WHERE org_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
        );
    }
}
