//! Configuration: built-in defaults, then a TOML file (`--config FILE`), then `GATEHOUSE_*`
//! environment variables, validated once at start into typed values.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};

use crate::secret::Secret;

/// Every configuration key, its default and what it does. `gatehouse --help` prints this table,
/// and the README's configuration reference is the same list.
pub const REFERENCE: &[(&str, &str, &str)] = &[
    ("listen", "127.0.0.1:8080", "address and port the HTTP server binds"),
    ("database_url", "sqlite://gatehouse.db", "sqlite://PATH (embedded) or postgres://USER@HOST/DB"),
    ("database_max_connections", "16", "connection pool size"),
    ("redis_url", "(none)", "redis://HOST:PORT; shares limits, caches and invalidations between nodes"),
    ("master_key", "(none)", "64 hex characters (32 bytes) that encrypt secrets at rest"),
    ("master_key_file", "(beside the database)", "file holding the master key; generated (0600) on first start if absent"),
    ("smtp_url", "(none)", "smtp://user:pass@host:port for outgoing mail; otherwise mail goes to the log and the dev mailbox"),
    ("mail_from", "Gatehouse <no-reply@gatehouse.local>", "sender of outgoing mail"),
    ("public_url", "(the address listened on)", "the URL users reach this server at (links in emails; the token issuer); default http:// + the bound address, e.g. http://127.0.0.1:8080"),
    ("trusted_proxies", "[]", "CIDRs of reverse proxies whose X-Forwarded-For is believed"),
    ("allow_private_webhook_targets", "false", "allow webhook URLs that resolve to private/loopback addresses"),
    ("allow_private_provider_targets", "false", "allow gateway provider base URLs that resolve to private/loopback addresses (a local vLLM or Ollama)"),
    ("stripe_secret_key", "(none)", "Stripe secret key (sk_live_… / sk_test_…): with stripe_webhook_secret, invoices are collected through Stripe (docs/billing.md, Payments); payments are off without it"),
    ("stripe_webhook_secret", "(none)", "the signing secret (whsec_…) of the Stripe webhook endpoint; set together with stripe_secret_key"),
    ("stripe_base_url", "https://api.stripe.com", "the Stripe API's address (a local stand-in for tests); any other than the default must resolve to public addresses unless allow_private_stripe_target"),
    ("allow_private_stripe_target", "false", "allow a stripe_base_url that resolves to a private/loopback address (stripe-mock, a test server)"),
    ("billing_payment_max_attempts", "8", "failed attempts at collecting an invoice's payment through Stripe after which it is given up (invoice.payment_failed with final: true, an email to the billing email; the invoice stays open); 1 to 100"),
    ("billing_seller_name", "Gatehouse", "the seller named on invoice PDFs (docs/billing.md)"),
    ("billing_seller_address", "[]", "the seller's address on invoice PDFs, a list of lines (at most 8), e.g. [\"1 Main Street\", \"Springfield\"]"),
    ("billing_seller_email", "billing@gatehouse.local", "the seller's billing email on invoice PDFs"),
    ("webhook_timeout_secs", "15", "time limit for one webhook delivery attempt (connect, send, read the capped answer)"),
    ("log_format", "text", "text | json"),
    ("log_level", "info", "tracing filter, e.g. info or gatehouse=debug,tower_http=info"),
    ("request_timeout_secs", "30", "time limit for one control-plane request (503 after it)"),
    ("max_body_bytes", "1048576", "largest control-plane request body (413 above it; a larger declared Content-Length is refused before the body is read)"),
    ("header_read_timeout_secs", "10", "a connection that has not started a request (a complete request head) this long after it opened or after its last answer is closed (HTTP/1 and HTTP/2; within 1¼ × this)"),
    ("serve_threads", "0", "threads serving HTTP, each with its own event loop and upstream connections; 0 = one per CPU core (at most 1024)"),
    ("shutdown_grace_secs", "30", "how long SIGTERM waits for in-flight requests to finish"),
    ("usage_flush_ms", "1000", "how often metered usage (monthly quotas) is written to the database"),
    ("gateway_connect_timeout_secs", "10", "gateway: time to connect to a provider"),
    ("gateway_first_byte_timeout_secs", "60", "gateway: time for a provider to start answering (504 upstream_timeout after it)"),
    ("gateway_idle_timeout_secs", "120", "gateway: a streamed answer with no byte for this long ends"),
    ("gateway_max_body_bytes", "10485760", "gateway: largest request body (413 above it; a larger declared Content-Length is refused before the body is read)"),
    ("secret_key_prefix", "sk", "first part of new secret API keys, `<prefix>_live_…` / `<prefix>_test_…`: 2 to 8 lowercase letters or digits, starting with a letter, not `pk` (e.g. `tv` for seed 002's `tv_live_` keys); keys made under an earlier prefix keep working, publishable keys keep `pk`"),
    ("bootstrap_admin", "true", "create a platform admin (and print its password once) when the database has no users"),
    ("rate_limits.gateway_key_per_minute", "60", "requests per minute per API key on the gateway routes (a key's rate_limit.requests_per_minute wins); the platform setting of the same name (/v1/admin/configs) wins"),
    ("rate_limits.api_key_per_minute", "100", "requests per minute per API key on platform routes (a key's rate_limit.requests_per_minute wins); the platform setting of the same name (/v1/admin/configs) wins"),
    ("rate_limits.user_per_minute", "600", "requests per minute per signed-in user (access tokens); the platform setting of the same name (/v1/admin/configs) wins"),
    ("rate_limits.management_per_minute", "300", "mutating /v1/organizations/… requests per minute per user; the platform setting of the same name (/v1/admin/configs) wins"),
    ("rate_limits.analytics_per_minute", "60", "…/analytics… requests per minute per key or user; the platform setting of the same name (/v1/admin/configs) wins"),
    ("rate_limits.login_attempts", "10", "login attempts per (IP, email) per login window"),
    ("rate_limits.login_window_secs", "900", "the login window in seconds (10 per 15 minutes by default)"),
    ("rate_limits.password_reset_per_hour", "3", "password-reset and one-time-code emails per address per hour"),
    ("rate_limits.unauthenticated_per_minute", "120", "requests per minute per client IP without valid credentials (/health* and /metrics exempt); the platform setting of the same name (/v1/admin/configs) wins"),
];

/// `database_url` when none is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://gatehouse.db";

/// The access tokens' issuer when no `public_url` is configured: fixed, so that nodes listening
/// on different ports accept each other's tokens.
pub const DEFAULT_ISSUER: &str = "http://127.0.0.1:8080";

/// The most serving threads a configuration may ask for.
pub const MAX_SERVE_THREADS: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    /// May hold a password (`postgres://user:pass@…`).
    #[serde(serialize_with = "redacted")]
    pub database_url: Secret,
    pub database_max_connections: u32,
    /// May hold a password (`redis://:pass@…`).
    #[serde(serialize_with = "redacted_option")]
    pub redis_url: Option<Secret>,
    #[serde(serialize_with = "redacted_option")]
    pub master_key: Option<Secret>,
    pub master_key_file: Option<PathBuf>,
    /// May hold a password (`smtp://user:pass@…`).
    #[serde(serialize_with = "redacted_option")]
    pub smtp_url: Option<Secret>,
    pub mail_from: String,
    /// Configured, or (`None`) the address actually listened on: [`Config::link`].
    pub public_url: Option<String>,
    /// The address the server listens on, known once it is bound (set at start, not configured).
    #[serde(skip)]
    pub bound: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub allow_private_webhook_targets: bool,
    pub allow_private_provider_targets: bool,
    pub webhook_timeout_secs: u64,
    #[serde(serialize_with = "redacted_option")]
    pub stripe_secret_key: Option<Secret>,
    #[serde(serialize_with = "redacted_option")]
    pub stripe_webhook_secret: Option<Secret>,
    pub stripe_base_url: String,
    pub allow_private_stripe_target: bool,
    pub billing_payment_max_attempts: u32,
    pub billing_seller_name: String,
    pub billing_seller_address: Vec<String>,
    pub billing_seller_email: String,
    pub log_format: LogFormat,
    pub log_level: String,
    pub request_timeout_secs: u64,
    pub max_body_bytes: usize,
    pub header_read_timeout_secs: u64,
    pub serve_threads: usize,
    pub shutdown_grace_secs: u64,
    pub usage_flush_ms: u64,
    pub bootstrap_admin: bool,
    pub secret_key_prefix: String,
    pub gateway_connect_timeout_secs: u64,
    pub gateway_first_byte_timeout_secs: u64,
    pub gateway_idle_timeout_secs: u64,
    pub gateway_max_body_bytes: usize,
    pub rate_limits: RateLimits,
}

/// A secret field of a serialized `Config` (the key list `--help` and the tests read): the value
/// never leaves through `Serialize`. `Config` is read from its sources with `Deserialize` only.
fn redacted<S: Serializer>(_: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[redacted]")
}

fn redacted_option<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

/// `[rate_limits]`: the per-endpoint and per-caller limits of the request path (SPEC §5). The
/// per-organization hourly limits and monthly quotas come from the plan catalogue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub api_key_per_minute: u64,
    pub gateway_key_per_minute: u64,
    pub user_per_minute: u64,
    pub management_per_minute: u64,
    pub analytics_per_minute: u64,
    pub unauthenticated_per_minute: u64,
    pub login_attempts: u64,
    pub login_window_secs: u64,
    pub password_reset_per_hour: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            api_key_per_minute: 100,
            gateway_key_per_minute: 60,
            user_per_minute: 600,
            management_per_minute: 300,
            analytics_per_minute: 60,
            unauthenticated_per_minute: 120,
            login_attempts: 10,
            login_window_secs: 15 * 60,
            password_reset_per_hour: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: Secret::from(DEFAULT_DATABASE_URL),
            database_max_connections: 16,
            redis_url: None,
            master_key: None,
            master_key_file: None,
            smtp_url: None,
            mail_from: "Gatehouse <no-reply@gatehouse.local>".into(),
            public_url: None,
            bound: None,
            trusted_proxies: Vec::new(),
            allow_private_webhook_targets: false,
            allow_private_provider_targets: false,
            webhook_timeout_secs: 15,
            secret_key_prefix: "sk".into(),
            stripe_secret_key: None,
            stripe_webhook_secret: None,
            stripe_base_url: crate::billing::payments::stripe::DEFAULT_BASE_URL.into(),
            allow_private_stripe_target: false,
            billing_payment_max_attempts: 8,
            billing_seller_name: "Gatehouse".into(),
            billing_seller_address: Vec::new(),
            billing_seller_email: "billing@gatehouse.local".into(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            request_timeout_secs: 30,
            max_body_bytes: 1024 * 1024,
            header_read_timeout_secs: 10,
            serve_threads: 0,
            shutdown_grace_secs: 30,
            usage_flush_ms: 1000,
            bootstrap_admin: true,
            gateway_connect_timeout_secs: 10,
            gateway_first_byte_timeout_secs: 60,
            gateway_idle_timeout_secs: 120,
            gateway_max_body_bytes: 10 * 1024 * 1024,
            rate_limits: RateLimits::default(),
        }
    }
}

impl Config {
    /// A link to a page of this server, for emails: the public URL + `path` (which starts with
    /// `/`), e.g. `/accept-invitation?token=…`. The public URL is `public_url` when configured,
    /// else `http://` + the address the server listens on (a wildcard address as loopback).
    pub fn link(&self, path: &str) -> String {
        match (&self.public_url, self.bound) {
            (Some(url), _) => format!("{}{path}", url.trim_end_matches('/')),
            (None, Some(addr)) => {
                let ip = match addr.ip() {
                    std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    }
                    std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    }
                    ip => ip,
                };
                format!("http://{}{path}", SocketAddr::new(ip, addr.port()))
            }
            (None, None) => format!("{DEFAULT_ISSUER}{path}"),
        }
    }

    /// The `iss` of the access tokens: `public_url` when configured, else [`DEFAULT_ISSUER`]
    /// (not the listened-on address, which may differ between nodes).
    pub fn issuer(&self) -> &str {
        self.public_url.as_deref().unwrap_or(DEFAULT_ISSUER)
    }

    /// Defaults, then the TOML file (if any), then `GATEHOUSE_*` variables. (A key neither
    /// source sets takes its value from `Config::default()` through `#[serde(default)]`.)
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("configuration file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("GATEHOUSE_").split("__"));
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let database_url = self.database_url.expose();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            anyhow::bail!("database_url must start with sqlite: or postgres://");
        }
        if self.database_max_connections == 0 {
            anyhow::bail!("database_max_connections must be at least 1");
        }
        if let Some(key) = &self.master_key {
            crate::crypto::MasterKey::from_hex(key.expose())
                .map_err(|_| anyhow::anyhow!("master_key must be 64 hexadecimal characters"))?;
        }
        if let Some(url) = self.redis_url.as_ref().map(Secret::expose) {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                anyhow::bail!("redis_url must start with redis:// or rediss://");
            }
        }
        if let Some(public_url) = &self.public_url {
            url::Url::parse(public_url)
                .map_err(|e| anyhow::anyhow!("public_url is not a URL: {e}"))?;
        }
        if self.stripe_secret_key.is_some() != self.stripe_webhook_secret.is_some() {
            anyhow::bail!(
                "stripe_secret_key and stripe_webhook_secret are set together (payments need both)"
            );
        }
        crate::events::ssrf::parse_url(&self.stripe_base_url)
            .map_err(|e| anyhow::anyhow!("stripe_base_url {e}"))?;
        if !(1..=100).contains(&self.billing_payment_max_attempts) {
            anyhow::bail!("billing_payment_max_attempts must be 1 to 100");
        }
        let seller_text = |s: &str| !s.trim().is_empty() && s.chars().count() <= 200;
        if !seller_text(&self.billing_seller_name)
            || !seller_text(&self.billing_seller_email)
            || self.billing_seller_address.len() > 8
            || !self.billing_seller_address.iter().all(|l| seller_text(l))
        {
            anyhow::bail!(
                "billing_seller_name, billing_seller_email and each billing_seller_address line \
                 (at most 8) must be 1 to 200 characters"
            );
        }
        if self.request_timeout_secs == 0
            || self.max_body_bytes == 0
            || self.webhook_timeout_secs == 0
            || self.header_read_timeout_secs == 0
        {
            anyhow::bail!(
                "request_timeout_secs, max_body_bytes, webhook_timeout_secs and \
                 header_read_timeout_secs must be positive"
            );
        }
        if !crate::keys::valid_secret_prefix(&self.secret_key_prefix) {
            anyhow::bail!(
                "secret_key_prefix must be 2 to 8 lowercase letters or digits starting with a \
                 letter, and not pk (publishable keys use it)"
            );
        }
        if self.rate_limits.login_window_secs == 0 {
            anyhow::bail!("rate_limits.login_window_secs must be positive");
        }
        if self.serve_threads > MAX_SERVE_THREADS {
            anyhow::bail!(
                "serve_threads must be at most {MAX_SERVE_THREADS} (0: one per CPU core)"
            );
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose().starts_with("sqlite:")
    }

    /// Where the master key lives when it is not given inline: the configured file, or
    /// `<database file>.master.key` beside an SQLite database, or `gatehouse.master.key`.
    pub fn master_key_path(&self) -> PathBuf {
        if let Some(p) = &self.master_key_file {
            return p.clone();
        }
        if self.is_sqlite() {
            if let Some(path) = crate::storage::sqlite_file_path(self.database_url.expose()) {
                let mut name = path.file_name().unwrap_or_default().to_os_string();
                name.push(".master.key");
                return path.with_file_name(name);
            }
        }
        PathBuf::from("gatehouse.master.key")
    }

    /// The help text section listing every key (used by `gatehouse --help`).
    pub fn help_text() -> String {
        let mut s = String::from(
            "CONFIGURATION (TOML file keys; the environment variable GATEHOUSE_<KEY> wins over the file):\n",
        );
        for (key, default, what) in REFERENCE {
            s.push_str(&format!("  {key:<30} {what} [default: {default}]\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_documented() {
        let value = serde_json::to_value(Config::default()).unwrap();
        // A table's keys are documented as `table.key`.
        let mut keys: Vec<String> = Vec::new();
        for (k, v) in value.as_object().unwrap() {
            match v.as_object() {
                Some(table) => keys.extend(table.keys().map(|sub| format!("{k}.{sub}"))),
                None => keys.push(k.clone()),
            }
        }
        for k in &keys {
            assert!(
                REFERENCE.iter().any(|(name, _, _)| *name == k.as_str()),
                "config key {k} missing from REFERENCE"
            );
        }
        assert_eq!(keys.len(), REFERENCE.len());
    }

    #[test]
    fn debug_and_serialize_show_no_secret() {
        let config = Config {
            database_url: "postgres://gh:db-pass-1@db.internal/gh".into(),
            redis_url: Some("redis://:redis-pass-2@cache.internal:6379".into()),
            master_key: Some("ab".repeat(32).into()),
            smtp_url: Some("smtp://mailer:smtp-pass-3@mail.internal:587".into()),
            stripe_secret_key: Some("sk_test_stripe-pass-4".into()),
            stripe_webhook_secret: Some("whsec_stripe-pass-5".into()),
            ..Config::default()
        };
        let debug = format!("{config:?}");
        let json = serde_json::to_string(&config).unwrap();
        for shown in [&debug, &json] {
            for secret in [
                "db-pass-1",
                "redis-pass-2",
                &"ab".repeat(32),
                "smtp-pass-3",
                "stripe-pass-4",
                "stripe-pass-5",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        // The values themselves are intact for the code that needs them.
        assert!(config.database_url.expose().contains("db-pass-1"));
        assert!(Config::default().is_sqlite());
    }

    #[test]
    fn defaults_apply_when_no_source_sets_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.database_url.expose(), DEFAULT_DATABASE_URL);
        assert!(c.master_key.is_none());
        assert_eq!(c.rate_limits.login_attempts, 10);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9\"\nlistne = 1\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn file_values_are_read_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9\"\nlog_format = \"json\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.trusted_proxies.len(), 1);
        std::fs::write(&path, "database_url = \"mysql://x\"\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
        std::fs::write(&path, "database_url = \"postgres://u:p@h/d\"\n").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.database_url.expose(), "postgres://u:p@h/d");
        assert_eq!(c.listen.port(), 8080);
        std::fs::write(&path, "master_key = \"abc\"\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
        std::fs::write(&path, "serve_threads = 100000\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("serve_threads"), "{err}");
        std::fs::write(&path, "secret_key_prefix = \"tv\"\n").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().secret_key_prefix, "tv");
        std::fs::write(&path, "secret_key_prefix = \"pk\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("secret_key_prefix"), "{err}");
        assert_eq!(c.billing_payment_max_attempts, 8);
        std::fs::write(&path, "billing_payment_max_attempts = 3\n").unwrap();
        assert_eq!(
            Config::load(Some(&path))
                .unwrap()
                .billing_payment_max_attempts,
            3
        );
        for bad in ["0", "101"] {
            std::fs::write(&path, format!("billing_payment_max_attempts = {bad}\n")).unwrap();
            let err = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains("billing_payment_max_attempts"), "{err}");
        }
    }

    #[test]
    fn the_rate_limits_table_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "[rate_limits]\nmanagement_per_minute = 5\nanalytics_per_minute = 7\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.rate_limits.management_per_minute, 5);
        assert_eq!(c.rate_limits.analytics_per_minute, 7);
        assert_eq!(c.rate_limits.api_key_per_minute, 100);
        std::fs::write(&path, "[rate_limits]\nmanagment_per_minute = 5\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("managment_per_minute"), "{err}");
    }
}
