//! Notifications between the nodes sharing a database: PostgreSQL `LISTEN/NOTIFY`. SQLite has
//! none (it serves one node); [`super::Backend::has_notifications`] says which.

use super::Db;

impl Db {
    /// Sends `payload` on `channel` to every connection listening to it (on every node),
    /// outside any transaction. Only on a backend that [has notifications].
    ///
    /// [has notifications]: super::Backend::has_notifications
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(self.pool())
            .await
            .map(|_| ())
    }
}

/// A connection of its own (outside the pool) that receives one channel's notifications.
pub struct Listener {
    inner: sqlx::postgres::PgListener,
}

impl Listener {
    /// Connects to the database at `url` and listens to `channel`. Notifications sent before
    /// this returns are not received.
    pub async fn connect(url: &str, channel: &str) -> Result<Listener, sqlx::Error> {
        let mut inner = sqlx::postgres::PgListener::connect(url).await?;
        inner.listen(channel).await?;
        Ok(Listener { inner })
    }

    /// The next notification's payload. A lost connection is re-established by the next call
    /// (notifications sent meanwhile are lost); an error means that failed.
    pub async fn recv(&mut self) -> Result<String, sqlx::Error> {
        let n = self.inner.recv().await?;
        Ok(n.payload().to_string())
    }
}
