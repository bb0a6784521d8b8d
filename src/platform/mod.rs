//! Platform configuration (SPEC §8, `GET/PUT /v1/admin/configs[/{key}]`): a fixed set of typed
//! keys ([`ConfigKey`]), each with its value type, bounds, default and description. A key an
//! admin has set is a row of `platform_configs` (migration 18, queries in [`store`]); a key
//! without a row has its default.
//!
//! Every node holds the effective values in memory ([`PlatformConfigs`], one `RwLock` read of an
//! `Arc` per request): the request path (the maintenance check, the rate limits, registration,
//! invitation lifetimes) never queries the database for them. They are loaded at start, read
//! again when a change is announced on the invalidation bus (`configs`, see
//! [`crate::keys::invalidation::Invalidation::PlatformConfigs`]) and, as a safety net for a lost
//! message, every [`REFRESH_EVERY`].
//!
//! The defaults of the rate-limit keys are the server's `[rate_limits]` configuration (file or
//! environment; built in: today's values), so a platform setting overrides the file's value on
//! every node and removing nothing from the file changes nothing until an admin sets a key.

pub mod store;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;

use crate::{config::RateLimits, error::Error, storage::Db};

/// How often each node reads the stored settings again, whatever the bus says.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Seconds a client is asked to wait (`Retry-After`) while the platform is in maintenance.
pub const MAINTENANCE_RETRY_AFTER_SECS: u64 = 60;

/// Every platform configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigKey {
    SignupOpen,
    MaintenanceMode,
    InvitationTtlDays,
    ApiKeyPerMinute,
    GatewayKeyPerMinute,
    UserPerMinute,
    ManagementPerMinute,
    AnalyticsPerMinute,
    UnauthenticatedPerMinute,
}

/// The type of a key's value, with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Boolean,
    Integer { min: i64, max: i64 },
}

/// Per-minute limits: at least one request, at most ten million.
const PER_MINUTE: Kind = Kind::Integer {
    min: 1,
    max: 10_000_000,
};

/// A key's value, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ConfigValue {
    Boolean(bool),
    Integer(i64),
}

impl ConfigKey {
    pub const ALL: [ConfigKey; 9] = [
        ConfigKey::SignupOpen,
        ConfigKey::MaintenanceMode,
        ConfigKey::InvitationTtlDays,
        ConfigKey::ApiKeyPerMinute,
        ConfigKey::GatewayKeyPerMinute,
        ConfigKey::UserPerMinute,
        ConfigKey::ManagementPerMinute,
        ConfigKey::AnalyticsPerMinute,
        ConfigKey::UnauthenticatedPerMinute,
    ];

    /// The key's name in the API and in `platform_configs.key`. The rate-limit keys are named
    /// as the `[rate_limits]` settings of the configuration file whose values they override.
    pub fn name(self) -> &'static str {
        match self {
            ConfigKey::SignupOpen => "signup_open",
            ConfigKey::MaintenanceMode => "maintenance_mode",
            ConfigKey::InvitationTtlDays => "invitation_ttl_days",
            ConfigKey::ApiKeyPerMinute => "rate_limits.api_key_per_minute",
            ConfigKey::GatewayKeyPerMinute => "rate_limits.gateway_key_per_minute",
            ConfigKey::UserPerMinute => "rate_limits.user_per_minute",
            ConfigKey::ManagementPerMinute => "rate_limits.management_per_minute",
            ConfigKey::AnalyticsPerMinute => "rate_limits.analytics_per_minute",
            ConfigKey::UnauthenticatedPerMinute => "rate_limits.unauthenticated_per_minute",
        }
    }

    pub fn parse(name: &str) -> Option<ConfigKey> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The known keys, for the message of an unknown one.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.into_iter().map(ConfigKey::name).collect()
    }

    pub fn description(self) -> &'static str {
        match self {
            ConfigKey::SignupOpen => {
                "Anyone may register (POST /v1/auth/register); when false only registration with an invitation_token is accepted"
            }
            ConfigKey::MaintenanceMode => {
                "Every request except /health*, /metrics, /v1/admin/* and signing in answers 503 service_unavailable with Retry-After"
            }
            ConfigKey::InvitationTtlDays => {
                "Days an invitation (new or resent) can be accepted (1 to 365)"
            }
            ConfigKey::ApiKeyPerMinute => {
                "Requests per minute per API key on platform routes, unless the key sets rate_limit.requests_per_minute"
            }
            ConfigKey::GatewayKeyPerMinute => {
                "Requests per minute per API key on the gateway routes, unless the key sets rate_limit.requests_per_minute"
            }
            ConfigKey::UserPerMinute => "Requests per minute per signed-in user (access tokens)",
            ConfigKey::ManagementPerMinute => {
                "Mutating /v1/organizations/… requests per minute per user"
            }
            ConfigKey::AnalyticsPerMinute => "…/analytics… requests per minute per key or user",
            ConfigKey::UnauthenticatedPerMinute => {
                "Requests per minute per client IP without valid credentials"
            }
        }
    }

    fn kind(self) -> Kind {
        match self {
            ConfigKey::SignupOpen | ConfigKey::MaintenanceMode => Kind::Boolean,
            ConfigKey::InvitationTtlDays => Kind::Integer { min: 1, max: 365 },
            _ => PER_MINUTE,
        }
    }

    /// The value when no admin has set one; rate limits from the server's configuration.
    pub fn default_value(self, limits: &RateLimits) -> ConfigValue {
        let per_minute = |v: u64| ConfigValue::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        match self {
            ConfigKey::SignupOpen => ConfigValue::Boolean(true),
            ConfigKey::MaintenanceMode => ConfigValue::Boolean(false),
            ConfigKey::InvitationTtlDays => ConfigValue::Integer(30),
            ConfigKey::ApiKeyPerMinute => per_minute(limits.api_key_per_minute),
            ConfigKey::GatewayKeyPerMinute => per_minute(limits.gateway_key_per_minute),
            ConfigKey::UserPerMinute => per_minute(limits.user_per_minute),
            ConfigKey::ManagementPerMinute => per_minute(limits.management_per_minute),
            ConfigKey::AnalyticsPerMinute => per_minute(limits.analytics_per_minute),
            ConfigKey::UnauthenticatedPerMinute => per_minute(limits.unauthenticated_per_minute),
        }
    }

    /// `value` as this key's type within its bounds, else 400 `invalid_request` naming `value`.
    pub fn validate(self, value: &Value) -> Result<ConfigValue, Error> {
        match (self.kind(), value) {
            (Kind::Boolean, Value::Bool(b)) => Ok(ConfigValue::Boolean(*b)),
            (Kind::Boolean, _) => Err(Error::invalid_field(
                "value",
                format!("{} takes a boolean (true or false)", self.name()),
            )),
            (Kind::Integer { min, max }, v) => match v.as_i64() {
                Some(n) if (min..=max).contains(&n) => Ok(ConfigValue::Integer(n)),
                _ => Err(Error::invalid_field(
                    "value",
                    format!("{} takes an integer from {min} to {max}", self.name()),
                )),
            },
        }
    }
}

/// A key an admin has set.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConfig {
    pub key: ConfigKey,
    pub value: ConfigValue,
    pub updated_at: String,
    pub updated_by: Option<String>,
}

/// One key as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConfigEntry {
    pub key: &'static str,
    pub value: ConfigValue,
    pub default: ConfigValue,
    pub description: &'static str,
    /// When an admin last set it; `null` for a key at its default that was never set.
    pub updated_at: Option<String>,
    pub updated_by: Option<String>,
}

/// The effective settings of this node: what the request path reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub signup_open: bool,
    pub maintenance_mode: bool,
    pub invitation_ttl_days: i64,
    /// The server's `[rate_limits]` with the per-minute limits an admin has set.
    pub rate_limits: RateLimits,
    defaults: RateLimits,
    stored: BTreeMap<ConfigKey, StoredConfig>,
}

impl Settings {
    fn new(defaults: &RateLimits, stored: Vec<StoredConfig>) -> Settings {
        let stored: BTreeMap<_, _> = stored.into_iter().map(|s| (s.key, s)).collect();
        let value = |key: ConfigKey| {
            stored
                .get(&key)
                .map(|s| s.value)
                .unwrap_or_else(|| key.default_value(defaults))
        };
        let bool_of = |key| matches!(value(key), ConfigValue::Boolean(true));
        let int_of = |key| match value(key) {
            ConfigValue::Integer(n) => n,
            ConfigValue::Boolean(_) => 0,
        };
        let per_minute = |key| u64::try_from(int_of(key)).unwrap_or(1);
        let rate_limits = RateLimits {
            api_key_per_minute: per_minute(ConfigKey::ApiKeyPerMinute),
            gateway_key_per_minute: per_minute(ConfigKey::GatewayKeyPerMinute),
            user_per_minute: per_minute(ConfigKey::UserPerMinute),
            management_per_minute: per_minute(ConfigKey::ManagementPerMinute),
            analytics_per_minute: per_minute(ConfigKey::AnalyticsPerMinute),
            unauthenticated_per_minute: per_minute(ConfigKey::UnauthenticatedPerMinute),
            ..defaults.clone()
        };
        Settings {
            signup_open: bool_of(ConfigKey::SignupOpen),
            maintenance_mode: bool_of(ConfigKey::MaintenanceMode),
            invitation_ttl_days: int_of(ConfigKey::InvitationTtlDays),
            rate_limits,
            defaults: defaults.clone(),
            stored,
        }
    }

    /// The key as the API shows it.
    pub fn entry(&self, key: ConfigKey) -> ConfigEntry {
        let default = key.default_value(&self.defaults);
        let stored = self.stored.get(&key);
        ConfigEntry {
            key: key.name(),
            value: stored.map(|s| s.value).unwrap_or(default),
            default,
            description: key.description(),
            updated_at: stored.map(|s| crate::storage::api_time(&s.updated_at)),
            updated_by: stored.and_then(|s| s.updated_by.clone()),
        }
    }

    /// Every key, in [`ConfigKey::ALL`]'s order.
    pub fn entries(&self) -> Vec<ConfigEntry> {
        ConfigKey::ALL.into_iter().map(|k| self.entry(k)).collect()
    }
}

/// This node's settings, read again on a bus message and every [`REFRESH_EVERY`].
#[derive(Debug)]
pub struct PlatformConfigs {
    defaults: RateLimits,
    current: RwLock<Arc<Settings>>,
    /// `current().maintenance_mode`, for the check every request makes (one atomic load).
    maintenance: AtomicBool,
    /// Reloads run one at a time, so a slower, older read never replaces a newer one.
    reloading: tokio::sync::Mutex<()>,
}

impl PlatformConfigs {
    /// Reads the stored settings (at start: a failure stops the start).
    pub async fn load(db: &Db, defaults: RateLimits) -> Result<PlatformConfigs, Error> {
        let settings = Settings::new(&defaults, store::all(db).await?);
        Ok(PlatformConfigs {
            defaults,
            maintenance: AtomicBool::new(settings.maintenance_mode),
            current: RwLock::new(Arc::new(settings)),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The settings in effect (no database round trip).
    pub fn current(&self) -> Arc<Settings> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the platform is in maintenance (`maintenance_mode`).
    pub fn in_maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Relaxed)
    }

    /// Reads the stored settings again.
    pub async fn reload(&self, db: &Db) -> Result<(), Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let settings = Settings::new(&self.defaults, store::all(db).await?);
        let maintenance = settings.maintenance_mode;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        self.maintenance.store(maintenance, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the settings again every `every` (the safety net for a lost bus message).
    pub fn spawn_refresher(self: &Arc<Self>, db: Db, every: Duration) {
        let configs = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(configs) = configs.upgrade() else {
                    return;
                };
                if let Err(e) = configs.reload(&db).await {
                    tracing::warn!(error = %e, "could not read the platform configuration");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_key_reads_back_from_its_name() {
        for key in ConfigKey::ALL {
            assert_eq!(ConfigKey::parse(key.name()), Some(key));
        }
        assert_eq!(ConfigKey::parse("signup"), None);
    }

    #[test]
    fn values_are_checked_against_the_key_type_and_bounds() {
        let ok = |k: ConfigKey, v: Value| k.validate(&v).is_ok();
        assert!(ok(ConfigKey::SignupOpen, json!(false)));
        assert!(!ok(ConfigKey::SignupOpen, json!("false")));
        assert!(!ok(ConfigKey::SignupOpen, json!(0)));
        assert!(ok(ConfigKey::InvitationTtlDays, json!(1)));
        assert!(ok(ConfigKey::InvitationTtlDays, json!(365)));
        assert!(!ok(ConfigKey::InvitationTtlDays, json!(0)));
        assert!(!ok(ConfigKey::InvitationTtlDays, json!(366)));
        assert!(!ok(ConfigKey::InvitationTtlDays, json!(1.5)));
        assert!(!ok(ConfigKey::ApiKeyPerMinute, json!(0)));
        assert!(ok(ConfigKey::ApiKeyPerMinute, json!(5)));
    }

    #[test]
    fn defaults_are_todays_values_and_the_configuration_file() {
        let file = RateLimits {
            user_per_minute: 7,
            ..RateLimits::default()
        };
        let s = Settings::new(&file, Vec::new());
        assert!(s.signup_open && !s.maintenance_mode);
        assert_eq!(s.invitation_ttl_days, 30);
        assert_eq!(s.rate_limits.api_key_per_minute, 100);
        assert_eq!(s.rate_limits.user_per_minute, 7);
        let set = StoredConfig {
            key: ConfigKey::ApiKeyPerMinute,
            value: ConfigValue::Integer(3),
            updated_at: crate::storage::now(),
            updated_by: None,
        };
        let s = Settings::new(&file, vec![set]);
        assert_eq!(s.rate_limits.api_key_per_minute, 3);
        assert_eq!(
            s.entry(ConfigKey::ApiKeyPerMinute).default,
            ConfigValue::Integer(100)
        );
    }
}
