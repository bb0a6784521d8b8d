//! Start-up: configuration → database (migrated) → master key → bootstrap admin → HTTP.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpListener;

use crate::{
    app::{AppState, Inner},
    auth::{tokens::KeyRing, users},
    config::Config,
    crypto::{self, MasterKey},
    limits::{self, UsageMeter},
    mail::{DevMailbox, Mailer, SmtpMailer},
    metrics::Metrics,
    storage::Db,
};

/// Connects and migrates the database named by the configuration.
pub async fn open_database(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(
        config.database_url.expose(),
        config.database_max_connections,
    )
    .await?;
    db.migrate().await?;
    Ok(db)
}

/// The master key: inline from the configuration, else from its file, else generated into that
/// file (0600) with a warning.
pub fn load_master_key(config: &Config) -> anyhow::Result<MasterKey> {
    if let Some(hex_key) = &config.master_key {
        return Ok(MasterKey::from_hex(hex_key.expose())?);
    }
    let path = config.master_key_path();
    let (key, created) = MasterKey::load_or_create(&path)?;
    if created {
        tracing::warn!(
            path = %path.display(),
            "generated a new master key; back this file up (or set GATEHOUSE_MASTER_KEY): \
             secrets stored with it cannot be read without it"
        );
    }
    Ok(key)
}

/// With an empty database, creates a platform admin and prints its credentials once.
pub async fn bootstrap_admin(db: &Db) -> anyhow::Result<()> {
    if users::count(db).await? > 0 {
        return Ok(());
    }
    let email = "admin@gatehouse.local";
    let password = crypto::random_base62(24);
    users::create(
        db,
        &crate::events::ActorContext::system(),
        users::NewUser::platform_admin(email, "Platform admin", &password),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot create the bootstrap admin: {e}"))?;
    // Printed, not logged: the password must not end up in log files.
    println!(
        "\n  Created the first platform admin (shown only this once):\n    email:    {email}\n    password: {password}\n"
    );
    tracing::warn!(
        email,
        "created the bootstrap platform admin; its password was printed once to stdout"
    );
    Ok(())
}

pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let db = open_database(&config).await?;
    let master_key = load_master_key(&config)?;
    if config.bootstrap_admin {
        bootstrap_admin(&db).await?;
    }
    let redis = config
        .redis_url
        .as_ref()
        .map(|url| crate::redis::Redis::new(url.expose()))
        .transpose()?;
    let keys = KeyRing::load(db.clone(), master_key.clone(), config.issuer().to_string()).await?;
    let mailer: Arc<dyn Mailer> = match &config.smtp_url {
        Some(url) => Arc::new(SmtpMailer::new(url.expose(), &config.mail_from)?),
        None => {
            tracing::info!("no smtp_url: mail goes to the log and the development mailbox (GET /v1/admin/mailbox)");
            Arc::new(DevMailbox::new(db.clone()))
        }
    };
    let limiter = limits::from_config(redis.as_ref());
    let usage = UsageMeter::new(db.clone());
    usage.spawn_flusher(Duration::from_millis(config.usage_flush_ms.max(10)));
    let api_keys = Arc::new(crate::keys::cache::KeyCache::new());
    let bus = crate::keys::bus::Bus::new(
        api_keys.clone(),
        db.clone(),
        &config.database_url,
        config.redis_url.as_ref(),
        redis.clone(),
    )?;
    bus.spawn_listener();
    let metrics = Metrics::new();
    let (gateway, _usage_task) = crate::gateway::usage::UsageWriter::spawn(
        db.clone(),
        metrics.gateway.clone(),
        usage.clone(),
        limiter.clone(),
    );
    let gateway_client = crate::gateway::client::GatewayClient::new(
        Duration::from_secs(config.gateway_connect_timeout_secs),
        config.allow_private_provider_targets,
    );
    let plans = Arc::new(crate::billing::PlanCatalogue::load(&db).await?);
    plans.spawn_refresher(db.clone(), crate::billing::REFRESH_EVERY);
    let request_limits = Arc::new(crate::limits::middleware::RequestLimits::new());
    bus.attach_plans(plans.clone());
    bus.attach_request_limits(request_limits.clone());
    bus.attach_usage(usage.clone());
    let policies = Arc::new(crate::policies::store::MatcherCache::default());
    bus.attach_policies(policies.clone());
    let platform = Arc::new(
        crate::platform::PlatformConfigs::load(&db, config.rate_limits.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the platform configuration: {e}"))?,
    );
    platform.spawn_refresher(db.clone(), crate::platform::REFRESH_EVERY);
    bus.attach_platform(platform.clone());
    let payments = crate::billing::payments::from_config(&config).await?;
    Ok(AppState::new(Inner {
        config,
        db,
        master_key,
        metrics,
        redis,
        keys,
        mailer,
        api_keys,
        bus,
        gateway,
        gateway_client,
        limiter,
        usage,
        plans,
        request_limits,
        policies,
        platform,
        payments,
        started_at: Instant::now(),
    }))
}

/// Runs the server until SIGTERM/SIGINT.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    // Links in emails point at the address actually listened on unless public_url says otherwise.
    config.bound = Some(listener.local_addr()?);
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let state = build_state(config).await?;
    tracing::info!(
        address = %listener.local_addr()?,
        database = state.db.backend().name(),
        allocator = crate::memory::allocator(),
        "gatehouse listening"
    );
    let worker = crate::events::delivery::spawn(state.clone())?;
    crate::billing::subscriptions::spawn_cycle_job(state.clone());
    crate::billing::thresholds::spawn_threshold_job(state.clone(), Duration::from_secs(1));
    let idempotency_cleanup = crate::http::idempotency::spawn_cleanup(state.clone());
    let flusher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                if let Err(e) = state.api_keys.flush_last_used(&state.db).await {
                    tracing::warn!(error = %e, "writing API keys' last_used_at failed");
                }
            }
        })
    };
    let app = crate::http::router(state.clone());
    crate::http::serve(listener, app, crate::http::shutdown_signal(), grace).await?;
    worker.stop().await;
    state.gateway.shutdown();
    flusher.abort();
    idempotency_cleanup.abort();
    if let Err(e) = state.api_keys.flush_last_used(&state.db).await {
        tracing::warn!(error = %e, "writing API keys' last_used_at failed");
    }
    if let Err(e) = state.usage.flush().await {
        tracing::error!(error = %e, "could not flush usage counters at shutdown");
    }
    state.db.close().await;
    tracing::info!("stopped");
    Ok(())
}
