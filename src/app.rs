//! The application state: one small `Clone` handle (configuration, database, master key,
//! metrics, optional Redis) that every handler receives.

use std::{sync::Arc, time::Instant};

use crate::{
    auth::tokens::KeyRing,
    config::Config,
    crypto::MasterKey,
    limits::{RateLimiter, UsageMeter},
    mail::Mailer,
    metrics::Metrics,
    storage::Db,
};

#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub master_key: MasterKey,
    pub metrics: Metrics,
    pub redis: Option<crate::redis::Redis>,
    pub keys: KeyRing,
    pub mailer: Arc<dyn Mailer>,
    /// Verified API keys (no database round trip for a known key).
    pub api_keys: Arc<crate::keys::cache::KeyCache>,
    /// Cache invalidation across nodes.
    pub bus: crate::keys::bus::Bus,
    /// The gateway's batching usage-log writer.
    pub gateway: Arc<crate::gateway::usage::UsageWriter>,
    /// The outbound client for providers.
    pub gateway_client: crate::gateway::client::GatewayClient,
    /// Rate limits: Redis with in-memory failover when `redis_url` is set, else memory.
    pub limiter: Arc<dyn RateLimiter>,
    /// Monthly usage counters (quotas), flushed to the database.
    pub usage: UsageMeter,
    /// The plan catalogue, in memory (the request path never queries it).
    pub plans: Arc<crate::billing::PlanCatalogue>,
    /// Request-path caches of the limits middleware (organization plans, memberships).
    pub request_limits: Arc<crate::limits::middleware::RequestLimits>,
    /// Each organization's policy rules compiled into one matcher (the gateway's hot path).
    pub policies: Arc<crate::policies::store::MatcherCache>,
    /// The platform configuration (SPEC §8) in effect on this node, kept fresh over the bus.
    pub platform: Arc<crate::platform::PlatformConfigs>,
    /// The payment provider (Stripe) when configured: invoices are collected through it.
    pub payments: Option<Arc<dyn crate::billing::payments::PaymentProvider>>,
    pub started_at: Instant,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }
}
