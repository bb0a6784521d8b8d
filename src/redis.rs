//! The optional Redis connection (`redis_url`): one multiplexed connection manager, created
//! lazily so that a node starts (degraded) while Redis is down and reconnects when it is back.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    manager: std::sync::Arc<OnceCell<ConnectionManager>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redis")
    }
}

impl Redis {
    pub fn new(url: &str) -> anyhow::Result<Redis> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid redis_url: {e}"))?;
        Ok(Redis {
            client,
            manager: Default::default(),
        })
    }

    /// The shared connection, connecting on first use (bounded by `timeout`).
    pub async fn connection(&self, timeout: Duration) -> anyhow::Result<ConnectionManager> {
        let manager = tokio::time::timeout(
            timeout,
            self.manager
                .get_or_try_init(|| ConnectionManager::new(self.client.clone())),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to Redis"))??;
        Ok(manager.clone())
    }

    /// One PING round trip, timed.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = std::time::Instant::now();
        let mut conn = self.connection(timeout).await?;
        tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map_err(|_| anyhow::anyhow!("Redis did not answer PING in time"))??;
        Ok(start.elapsed())
    }
}
