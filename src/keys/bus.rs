//! Cache invalidation across nodes. A message ([`Invalidation`]: `key:<id>`, `org:<id>`,
//! `plans`, `platform_configs`, `all` on the wire) is applied to this node's caches at once (the
//! key cache, the request path's organization cache, the compiled policy matchers, the plan
//! catalogue, the platform configuration) and
//! broadcast: over Redis pub/sub when `redis_url` is set, else over the database's notifications
//! (PostgreSQL `LISTEN/NOTIFY`, see [`crate::storage::Listener`]), else (one SQLite node)
//! nowhere else. A listener that loses its connection clears the caches (it may have missed
//! messages) and reconnects.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;

use super::{cache::KeyCache, invalidation::Invalidation};
use crate::storage::{Db, Listener};
use crate::{
    billing::PlanCatalogue, error::Error, limits::middleware::RequestLimits,
    platform::PlatformConfigs, policies::store::MatcherCache,
};

const CHANNEL: &str = "gatehouse_invalidate";

#[derive(Clone)]
enum Transport {
    Local,
    /// The database's own notifications (PostgreSQL `LISTEN/NOTIFY`).
    Database {
        url: crate::secret::Secret,
    },
    Redis(redis::Client),
}

#[derive(Clone)]
pub struct Bus {
    transport: Transport,
    cache: Arc<KeyCache>,
    db: Db,
    redis: Option<crate::redis::Redis>,
    others: Arc<Others>,
}

/// An in-memory snapshot of stored rows that a message has the bus read again (the plan
/// catalogue, the platform configuration).
pub trait Reload: Send + Sync + 'static {
    /// What it is, for the log.
    const WHAT: &'static str;
    fn read_again(&self, db: &Db) -> impl std::future::Future<Output = Result<(), Error>> + Send;
}

impl Reload for PlanCatalogue {
    const WHAT: &'static str = "the plan catalogue";
    async fn read_again(&self, db: &Db) -> Result<(), Error> {
        Ok(self.reload(db).await?)
    }
}

impl Reload for PlatformConfigs {
    const WHAT: &'static str = "the platform configuration";
    async fn read_again(&self, db: &Db) -> Result<(), Error> {
        self.reload(db).await
    }
}

/// The caches besides the key cache that messages reach, attached once at start-up.
#[derive(Default)]
struct Others {
    plans: std::sync::OnceLock<Arc<PlanCatalogue>>,
    request_limits: std::sync::OnceLock<Arc<RequestLimits>>,
    policies: std::sync::OnceLock<Arc<MatcherCache>>,
    platform: std::sync::OnceLock<Arc<PlatformConfigs>>,
    usage: std::sync::OnceLock<crate::limits::usage::UsageMeter>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.transport {
            Transport::Local => "local",
            Transport::Database { .. } => self.db.backend().name(),
            Transport::Redis(_) => "redis",
        };
        write!(f, "Bus({kind})")
    }
}

impl Bus {
    fn apply(&self, message: &Invalidation) {
        let limits = self.others.request_limits.get();
        let policies = self.others.policies.get();
        let usage = self.others.usage.get();
        match message {
            Invalidation::Key(id) => self.cache.invalidate_key(id.as_str()),
            Invalidation::Organization(id) => {
                let id = id.as_str();
                self.cache.invalidate_org(id);
                if let Some(l) = limits {
                    l.invalidate_org(id);
                }
                if let Some(p) = policies {
                    p.invalidate_org(id);
                }
                if let Some(u) = usage {
                    u.forget_cycle(Some(id));
                }
            }
            Invalidation::Plans => self.reload(self.others.plans.get()),
            Invalidation::PlatformConfigs => self.reload(self.others.platform.get()),
            Invalidation::All => {
                self.cache.clear();
                if let Some(l) = limits {
                    l.clear();
                }
                if let Some(p) = policies {
                    p.clear();
                }
                if let Some(u) = usage {
                    u.forget_cycle(None);
                }
                self.reload(self.others.plans.get());
                self.reload(self.others.platform.get());
            }
        }
    }

    /// Lets `platform_configs` messages reload this node's platform configuration.
    pub fn attach_platform(&self, platform: Arc<PlatformConfigs>) {
        let _ = self.others.platform.set(platform);
    }

    /// Reads `snapshot` (if attached) again in the background; its own refresher retries on
    /// failure.
    fn reload<T: Reload>(&self, snapshot: Option<&Arc<T>>) {
        if let Some(snapshot) = snapshot {
            let (snapshot, db) = (snapshot.clone(), self.db.clone());
            tokio::spawn(async move {
                if let Err(e) = snapshot.read_again(&db).await {
                    tracing::warn!(error = %e, "could not read {} again", T::WHAT);
                }
            });
        }
    }

    /// Lets `plans` messages reload this catalogue.
    pub fn attach_plans(&self, plans: Arc<PlanCatalogue>) {
        let _ = self.others.plans.set(plans);
    }

    /// Lets `org:<id>` messages drop the organization's compiled policy matcher.
    pub fn attach_policies(&self, policies: Arc<MatcherCache>) {
        let _ = self.others.policies.set(policies);
    }

    /// Lets `org:<id>` messages drop the organization's billing cycle kept by the usage meter.
    pub fn attach_usage(&self, usage: crate::limits::usage::UsageMeter) {
        let _ = self.others.usage.set(usage);
    }

    /// Lets `org:<id>` messages reach the request path's organization cache.
    pub fn attach_request_limits(&self, limits: Arc<RequestLimits>) {
        let _ = self.others.request_limits.set(limits);
    }
}

impl Bus {
    pub fn new(
        cache: Arc<KeyCache>,
        db: Db,
        database_url: &crate::secret::Secret,
        redis_url: Option<&crate::secret::Secret>,
        redis: Option<crate::redis::Redis>,
    ) -> anyhow::Result<Bus> {
        let transport = match redis_url {
            Some(url) => Transport::Redis(redis::Client::open(url.expose())?),
            None if db.backend().has_notifications() => Transport::Database {
                url: database_url.clone(),
            },
            None => Transport::Local,
        };
        Ok(Bus {
            transport,
            cache,
            db,
            redis,
            others: Arc::default(),
        })
    }

    /// Applies the message here and sends it to every other node. A failed broadcast is
    /// logged; other nodes then catch up within the cache's maximum age.
    pub async fn publish(&self, message: Invalidation) {
        self.apply(&message);
        let topic = message.topic();
        let message = topic.as_str();
        let result: anyhow::Result<()> = match &self.transport {
            Transport::Local => Ok(()),
            Transport::Database { .. } => {
                self.db.notify(CHANNEL, message).await.map_err(Into::into)
            }
            Transport::Redis(_) => match &self.redis {
                Some(r) => {
                    async {
                        let mut conn = r.connection(Duration::from_secs(1)).await?;
                        redis::cmd("PUBLISH")
                            .arg(CHANNEL)
                            .arg(message)
                            .query_async::<i64>(&mut conn)
                            .await?;
                        Ok(())
                    }
                    .await
                }
                None => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::error!(error = %e, message, "cache invalidation broadcast failed");
        }
    }

    /// Listens for other nodes' messages until the process ends.
    pub fn spawn_listener(&self) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let result = match &bus.transport {
                    Transport::Local => return,
                    Transport::Database { url } => bus.listen_database(url.expose()).await,
                    Transport::Redis(client) => bus.listen_redis(client).await,
                };
                bus.apply(&Invalidation::All);
                if let Err(e) = result {
                    tracing::warn!(error = %e, "invalidation listener lost its connection; reconnecting");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    async fn listen_database(&self, url: &str) -> anyhow::Result<()> {
        let mut listener = Listener::connect(url, CHANNEL).await?;
        // Messages sent while we were not listening are lost: start from an empty cache.
        self.apply(&Invalidation::All);
        loop {
            let payload = listener.recv().await?;
            self.apply(&Invalidation::parse(&payload));
        }
    }

    async fn listen_redis(&self, client: &redis::Client) -> anyhow::Result<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        self.apply(&Invalidation::All);
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let payload: String = msg.get_payload()?;
            self.apply(&Invalidation::parse(&payload));
        }
        anyhow::bail!("Redis pub/sub stream ended")
    }
}
