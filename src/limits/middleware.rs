//! The request path of SPEC §5: one middleware decides, for every control-plane request, which
//! limits apply, checks them all in **one** `limiter.check`, puts `X-RateLimit-*` on every
//! authenticated response (the most restrictive limit), refuses with 429 `rate_limit_exceeded`
//! and `Retry-After`, and meters and enforces the monthly `api_requests` quota of organization
//! requests (429 `quota_exceeded`, one `quota.exceeded` event per organization and period).
//! The caller it verifies is also left on a `POST` that carries an `Idempotency-Key`
//! ([`crate::http::idempotency::Caller`]), so that layer keys requests by it.
//!
//! Limits (keys of the limiter in brackets); each `rate_limits.*` value below is the platform
//! configuration's (`/v1/admin/configs`, [`crate::platform`]), whose default is the server's
//! `[rate_limits]` setting:
//! - API key: its `rate_limit.requests_per_minute`, else `rate_limits.api_key_per_minute`
//!   (`key:<id>:min`); authenticated from the key cache (no database round trip);
//! - user: `rate_limits.user_per_minute` (`user:<id>:min`), from the access token's claims;
//! - organization, per hour, from its plan in the catalogue (`org:<id>:hour`): for keys, for
//!   tenant-scoped tokens and for users on `/v1/organizations/{org_id}/…` routes (or seed 001's
//!   tenant routes with `X-Tenant-Slug`) of an organization they belong to;
//! - per endpoint: `rate_limits.management_per_minute` for a user's mutating
//!   `/v1/organizations/…` requests (and seed 001's tenant routes) (`mgmt:user:<id>:min`), `rate_limits.analytics_per_minute`
//!   for `…/analytics…` routes (`analytics:<caller>:min`);
//! - unauthenticated requests: `rate_limits.unauthenticated_per_minute` per client IP
//!   (`ip:<addr>:min`); `/health*`, `/metrics` and the console's files (`/console/…`) are
//!   never limited.

use std::{
    collections::HashMap,
    future::Future,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::Request,
    http::Method,
    response::{IntoResponse, Response},
};

use super::LimitSpec;
use crate::{
    app::AppState,
    error::{Error, ErrorCode},
    events::{ActorContext, NewEvent},
    http::{idempotency::Caller, request_meta::client_ip},
    keys::cache::looks_like_key,
    orgs::access::presented_key_in,
};

/// How long an organization's plan (and a user's membership) is trusted without a re-read.
pub const ORG_CACHE_AGE: Duration = Duration::from_secs(30);
/// A plan in use older than this is re-read in the background (no request waits for it).
const ORG_REFRESH_AHEAD: Duration = Duration::from_secs(20);
const MAX_ENTRIES: usize = 100_000;

/// The metric metered for every organization request.
pub const API_REQUESTS: &str = "api_requests";
pub const GATEWAY_REQUESTS: &str = "gateway_requests";
pub const GATEWAY_TOKENS: &str = "gateway_tokens";
/// The gateway's cost (from the price table), in millionths of a USD.
pub const GATEWAY_COST_MICROS: &str = "gateway_cost_micros";

/// An organization as the request path needs it: its plan, and its hourly limit's key.
#[derive(Debug)]
struct OrgLimits {
    plan: String,
    /// `org:<id>:hour`.
    hour_key: Arc<str>,
    /// A background re-read has been started.
    refreshing: std::sync::atomic::AtomicBool,
}

impl OrgLimits {
    fn new(org_id: &str, plan: String) -> Arc<Self> {
        Arc::new(OrgLimits {
            plan,
            hour_key: format!("org:{org_id}:hour").into(),
            refreshing: Default::default(),
        })
    }
}

/// (user id, `{org_id}` as given) → the organization's id (the user belongs to it), and when.
type Memberships = HashMap<(String, String), (Option<String>, Instant)>;

/// Caches of the request path: organization → plan, (user, `{org_id}`) → organization, and the
/// quota notices already sent (so the table is not asked again on every refused request).
#[derive(Debug, Default)]
pub struct RequestLimits {
    org_plans: Mutex<HashMap<String, (Arc<OrgLimits>, Instant)>>,
    /// Bumped (under `org_plans`' lock) by every invalidation: a plan read before one is not
    /// cached after it.
    generation: std::sync::atomic::AtomicU64,
    memberships: Mutex<Memberships>,
    notified: Mutex<HashMap<(String, String), String>>,
}

impl RequestLimits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets what is cached about an organization (its plan changed, it was deleted).
    pub fn invalidate_org(&self, org_id: &str) {
        let mut plans = lock(&self.org_plans);
        self.generation.fetch_add(1, Ordering::AcqRel);
        plans.remove(org_id);
        drop(plans);
        lock(&self.memberships).retain(|_, (id, _)| id.as_deref() != Some(org_id));
    }

    pub fn clear(&self) {
        let mut plans = lock(&self.org_plans);
        self.generation.fetch_add(1, Ordering::AcqRel);
        plans.clear();
        drop(plans);
        lock(&self.memberships).clear();
    }

    async fn plan_of(&self, state: &AppState, org_id: &str) -> Result<Arc<OrgLimits>, Error> {
        if let Some((org, at)) = lock(&self.org_plans).get(org_id) {
            let age = at.elapsed();
            if age < ORG_CACHE_AGE {
                if age >= ORG_REFRESH_AHEAD && !org.refreshing.swap(true, Ordering::Relaxed) {
                    let (state, org_id, old) = (state.clone(), org_id.to_string(), org.clone());
                    tokio::spawn(async move {
                        let limits = &state.request_limits;
                        if let Err(e) = limits.read_plan(&state, &org_id).await {
                            tracing::warn!(error = %e, "re-reading a plan failed");
                        }
                        // Replaced, this entry is gone; failed or discarded (an invalidation
                        // came meanwhile), the next request starts another re-read.
                        old.refreshing.store(false, Ordering::Relaxed);
                    });
                }
                return Ok(org.clone());
            }
        }
        self.read_plan(state, org_id).await
    }

    /// Reads an organization's plan and caches it (unless an invalidation came meanwhile).
    async fn read_plan(&self, state: &AppState, org_id: &str) -> Result<Arc<OrgLimits>, Error> {
        let generation = self.generation.load(Ordering::Acquire);
        let plan = super::store::plan_of(&state.db, org_id).await?;
        let org = OrgLimits::new(
            org_id,
            plan.unwrap_or_else(|| crate::billing::DEFAULT_PLAN.to_string()),
        );
        let mut map = lock(&self.org_plans);
        if self.generation.load(Ordering::Acquire) != generation {
            return Ok(org);
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(org_id.to_string(), (org.clone(), Instant::now()));
        Ok(org)
    }

    /// Makes every cached plan look `by` older (tests of the re-reads, without waiting).
    #[doc(hidden)]
    pub fn age_entries(&self, by: Duration) {
        for (_, at) in lock(&self.org_plans).values_mut() {
            *at = at.checked_sub(by).unwrap_or(*at);
        }
    }

    /// The organization `{org_id}` (id or slug) names, if the user belongs to it.
    async fn membership(
        &self,
        state: &AppState,
        user_id: &str,
        org_param: &str,
    ) -> Result<Option<String>, Error> {
        let k = (user_id.to_string(), org_param.to_string());
        if let Some((org, at)) = lock(&self.memberships).get(&k) {
            if at.elapsed() < ORG_CACHE_AGE {
                return Ok(org.clone());
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row = crate::orgs::organizations::store::with_membership(
            &state.db,
            &crate::ids::UserId(user_id.to_string()),
            org_param,
        )
        .await?;
        let org = match row {
            Some((crate::orgs::organizations::store::OrgRow { id, plan, .. }, _)) => {
                let mut plans = lock(&self.org_plans);
                if self.generation.load(Ordering::Acquire) == generation {
                    if plans.len() >= MAX_ENTRIES {
                        plans.clear();
                    }
                    plans.insert(id.0.clone(), (OrgLimits::new(&id, plan), Instant::now()));
                }
                Some(id.0)
            }
            None => None,
        };
        // Only memberships are remembered: a user who joins is counted against the
        // organization from their next request on.
        if org.is_some() {
            let mut map = lock(&self.memberships);
            // `invalidate_org` bumps the generation before it drops memberships.
            if self.generation.load(Ordering::Acquire) != generation {
                return Ok(org);
            }
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(k, (org.clone(), Instant::now()));
        }
        Ok(org)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who a request comes from, as far as limits care.
enum Who {
    Key(std::sync::Arc<crate::keys::cache::CachedKey>),
    User {
        id: String,
        tenant_org: Option<String>,
        environment: Option<String>,
    },
    Anonymous,
}

/// The AI gateway's proxy routes (their own per-key default and monthly quotas), also where
/// seed 001 mounts them (`/trueportai-services/openai/…`, `src/compat/seed001`).
pub fn is_gateway_path(path: &str) -> bool {
    const PROXIES: [&str; 4] = ["/openai/", "/anthropic/", "/google/", "/azure/"];
    PROXIES.iter().any(|p| path.starts_with(p))
        || path
            .strip_prefix("/trueportai-services")
            .is_some_and(|rest| PROXIES.iter().any(|p| rest.starts_with(p)))
}

/// Seed 001's routes acting in one tenant (`src/compat/seed001`): management requests as
/// `/v1/organizations/{org_id}/…` are.
fn is_seed_tenant_path(path: &str) -> bool {
    path.starts_with("/platform/api/service/") || path.starts_with("/trueportai-services/api/")
}

/// The organization `X-Tenant-Slug` names on seed 001's tenant routes.
fn seed_tenant<'a>(path: &str, headers: &'a axum::http::HeaderMap) -> Option<&'a str> {
    if !is_seed_tenant_path(path) {
        return None;
    }
    let named = headers.get("x-tenant-slug")?.to_str().ok()?.trim();
    (!named.is_empty() && named.len() <= 100).then_some(named)
}

/// The key a token-per-minute limit is kept under (charged when a gateway response ends).
pub fn tokens_key(key_id: &str) -> String {
    format!("tpm:{key_id}:min")
}

/// `{org_id}` of a `/v1/organizations/{org_id}[/…]` path.
fn org_param(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/organizations/")?;
    let seg = rest.split('/').next()?;
    (!seg.is_empty()).then_some(seg)
}

/// Never limited: health, metrics and the console's static files (`/console/…`, served from
/// memory; a page load fetches a dozen of them).
fn exempt(path: &str) -> bool {
    path == "/metrics"
        || path == "/health"
        || path.starts_with("/health/")
        || path == "/trueportai-services/health"
        || path.starts_with("/console/")
}

/// Decides every limit of a request in one check; a request that passes goes on to `next`.
pub async fn rate_limit<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if exempt(req.uri().path()) || req.method() == Method::OPTIONS {
        return next(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let ip = client_ip(&parts, &state.config.trusted_proxies);
    let who = identify(state, &parts, ip).await;
    if let Who::Key(key) = &who {
        parts
            .extensions
            .insert(crate::keys::cache::VerifiedKey(key.clone()));
    }
    if Caller::wanted(&parts) {
        match &who {
            Who::Key(key) => parts.extensions.insert(Caller::key(&key.id)),
            Who::User {
                id,
                tenant_org,
                environment,
            } => parts.extensions.insert(Caller::user(
                id,
                tenant_org.as_deref(),
                environment.as_deref(),
            )),
            Who::Anonymous => None,
        };
    }
    match decide(state, &parts, ip, &who).await {
        Ok(Decision::Pass { headers }) => {
            let mut res = next(Request::from_parts(parts, body)).await;
            add_headers(&mut res, headers);
            res
        }
        Ok(Decision::Refuse { error, headers }) => {
            let mut res = error.into_response();
            add_headers(&mut res, headers);
            res
        }
        Err(e) => e.into_response(),
    }
}

fn add_headers(res: &mut Response, headers: Option<super::Verdict>) {
    for (name, value) in headers.iter().flat_map(super::Verdict::headers) {
        res.headers_mut().insert(
            axum::http::HeaderName::from_static(name),
            crate::http::number_header(value),
        );
    }
}

/// The caller, without a database round trip when it is known: API keys from the key cache,
/// access tokens by their signature. A credential that does not verify makes the request
/// anonymous here (the route refuses it with 401).
async fn identify(
    state: &AppState,
    parts: &axum::http::request::Parts,
    ip: Option<std::net::IpAddr>,
) -> Who {
    let gateway_token = is_gateway_path(parts.uri.path())
        .then(|| crate::gateway::proxy::gateway_key(&parts.headers, parts.uri.query()))
        .flatten();
    if let Some(token) = gateway_token
        .as_deref()
        .or_else(|| presented_key_in(&parts.headers))
    {
        let origin = parts.headers.get("origin").and_then(|v| v.to_str().ok());
        return match state
            .api_keys
            .authenticate(&state.db, token, origin, ip)
            .await
        {
            Ok(k) => Who::Key(k),
            Err(_) => Who::Anonymous,
        };
    }
    if let Some(token) = crate::auth::extract::bearer(parts) {
        if !looks_like_key(token) && token.len() <= 4096 {
            if let Ok(claims) = state.keys.verify(token).await {
                return Who::User {
                    id: claims.sub,
                    tenant_org: claims.tid,
                    environment: claims.env,
                };
            }
        }
    }
    Who::Anonymous
}

/// The outcome, with the verdict whose `X-RateLimit-*` headers the response carries (none for
/// unauthenticated callers).
enum Decision {
    Pass {
        headers: Option<super::Verdict>,
    },
    Refuse {
        error: Error,
        headers: Option<super::Verdict>,
    },
}

async fn decide(
    state: &AppState,
    parts: &axum::http::request::Parts,
    ip: Option<std::net::IpAddr>,
    who: &Who,
) -> Result<Decision, Error> {
    let (path, method) = (parts.uri.path(), &parts.method);
    // The server's `[rate_limits]` with what an admin has set (`/v1/admin/configs`), in memory.
    let settings = state.platform.current();
    let cfg = &settings.rate_limits;
    let analytics = path.contains("/analytics");
    let gateway = is_gateway_path(path);
    let mutating = !matches!(*method, Method::GET | Method::HEAD);
    let mut specs = super::PerLimit::<LimitSpec>::new();
    // The organization the request counts against, if any.
    let mut org: Option<std::borrow::Cow<str>> = None;
    match who {
        Who::Key(key) => {
            let id = &key.id;
            let per_minute = key.rate_limit_of("requests_per_minute");
            let default = if gateway {
                cfg.gateway_key_per_minute
            } else {
                cfg.api_key_per_minute
            };
            specs.push(LimitSpec::per_minute(
                key.requests_limit.clone(),
                per_minute.unwrap_or(default),
            ));
            if let (true, Some(tpm)) = (gateway, key.rate_limit_of("tokens_per_minute")) {
                // Cost 0: refused only while the tokens already used are over the limit.
                specs.push(LimitSpec::per_minute(key.tokens_limit.clone(), tpm).with_cost(0));
            }
            if analytics {
                specs.push(LimitSpec::per_minute(
                    format!("analytics:key:{id}:min"),
                    cfg.analytics_per_minute,
                ));
            }
            org = Some((&*key.organization_id).into());
        }
        Who::User { id, tenant_org, .. } => {
            specs.push(LimitSpec::per_minute(
                format!("user:{id}:min"),
                cfg.user_per_minute,
            ));
            // The organization the request names: in the path, or on seed 001's tenant routes
            // in `X-Tenant-Slug` (else the scoped token's tenant, below).
            let named = org_param(path).or_else(|| seed_tenant(path, &parts.headers));
            if mutating && (named.is_some() || is_seed_tenant_path(path)) {
                specs.push(LimitSpec::per_minute(
                    format!("mgmt:user:{id}:min"),
                    cfg.management_per_minute,
                ));
            }
            if let Some(param) = named {
                org = state
                    .request_limits
                    .membership(state, id, param)
                    .await?
                    .map(Into::into);
            }
            if org.is_none() {
                org = tenant_org.as_deref().map(Into::into);
            }
            if analytics {
                specs.push(LimitSpec::per_minute(
                    format!("analytics:user:{id}:min"),
                    cfg.analytics_per_minute,
                ));
            }
        }
        Who::Anonymous => {
            let Some(ip) = ip else {
                return Ok(Decision::Pass { headers: None });
            };
            let spec = [LimitSpec::per_minute(
                format!("ip:{ip}:min"),
                cfg.unauthenticated_per_minute,
            )];
            let v = state.limiter.check(&spec).await?;
            if v.allowed {
                // Headers are promised to authenticated callers only.
                return Ok(Decision::Pass { headers: None });
            }
            state
                .metrics
                .rate_limit_refusals
                .get_or_create(&crate::metrics::RefusalLabels { reason: "ip" })
                .inc();
            return Ok(Decision::Refuse {
                error: too_many(v.retry_after_secs().unwrap_or(1)),
                headers: Some(v),
            });
        }
    }
    let org = org.as_deref();
    let plan = match org {
        Some(org_id) => {
            let limits = state.request_limits.plan_of(state, org_id).await?;
            state.plans.get(&limits.plan).map(|p| (p, limits))
        }
        None => None,
    };
    if let Some((p, limits)) = &plan {
        if let Some(per_hour) = p.limit("requests_per_hour") {
            specs.push(LimitSpec::per_hour(limits.hour_key.clone(), per_hour));
        }
    }
    let plan = plan.map(|(p, _)| p);
    let v = state.limiter.check(&specs).await?;
    let headers = Some(v);
    if !v.allowed {
        let reason = match v.limiting.and_then(|i| specs.get(i)) {
            Some(s) if s.key.starts_with("org:") => "organization",
            Some(s) if s.key.starts_with("mgmt:") || s.key.starts_with("analytics:") => "endpoint",
            Some(s) if s.key.starts_with("key:") || s.key.starts_with("tpm:") => "key",
            _ => "user",
        };
        state
            .metrics
            .rate_limit_refusals
            .get_or_create(&crate::metrics::RefusalLabels { reason })
            .inc();
        return Ok(Decision::Refuse {
            error: too_many(v.retry_after_secs().unwrap_or(1)),
            headers,
        });
    }
    // Monthly quotas: the organization's API requests, or its gateway requests and tokens.
    // Refused when used up, else metered (gateway tokens are metered when the answer ends).
    let (metric, quotas): (&str, &[(&str, &str)]) = if gateway {
        (
            GATEWAY_REQUESTS,
            &[
                (GATEWAY_REQUESTS, "gateway_requests_per_month"),
                (GATEWAY_TOKENS, "gateway_tokens_per_month"),
            ],
        )
    } else {
        (API_REQUESTS, &[(API_REQUESTS, "api_requests_per_month")])
    };
    if let Some(org_id) = org {
        // The organization's period: its billing cycle, or the calendar month (limits::usage).
        let period = state.usage.period(org_id).await?;
        for (quota_metric, limit_name) in quotas {
            // A limit with an overage price is billed beyond, not refused (SPEC §6).
            let Some(quota) = plan.as_ref().and_then(|p| p.hard_limit(limit_name)) else {
                continue;
            };
            let used = state
                .usage
                .used_in(org_id, quota_metric, &period.key)
                .await?;
            if used >= quota {
                state
                    .metrics
                    .rate_limit_refusals
                    .get_or_create(&crate::metrics::RefusalLabels { reason: "quota" })
                    .inc();
                notify_quota_exceeded(state, org_id, quota_metric, quota, used).await;
                return Ok(Decision::Refuse {
                    error: Error::new(
                        ErrorCode::QuotaExceeded,
                        format!(
                            "The organization has used its {quota} {} for this period",
                            quota_metric.replace('_', " ")
                        ),
                    )
                    .with_retry_after(period.secs_to_end(chrono::Utc::now())),
                    headers,
                });
            }
        }
        state.usage.record_at(org_id, metric, &period.key, 1);
    }
    Ok(Decision::Pass { headers })
}

/// Seconds until the next monthly period (UTC) begins: when a quota is available again.
pub fn secs_to_next_period(now: chrono::DateTime<chrono::Utc>) -> u64 {
    use chrono::{Datelike, TimeZone};
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    chrono::Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|next| (next - now).num_seconds().max(1) as u64)
        .unwrap_or(1)
}

fn too_many(retry_after: u64) -> Error {
    Error::new(
        ErrorCode::RateLimitExceeded,
        format!("Rate limit exceeded; retry in {retry_after} s"),
    )
    .with_retry_after(retry_after)
}

/// Emits `quota.exceeded` once per organization, metric and period, across nodes and restarts:
/// the event is emitted in the transaction whose insert into `quota_notices` succeeded.
pub async fn notify_quota_exceeded(
    state: &AppState,
    org_id: &str,
    metric: &str,
    limit: u64,
    used: u64,
) {
    // The organization's period: its billing cycle, or the calendar month.
    let period = match state.usage.period(org_id).await {
        Ok(p) => p.key,
        Err(_) => super::usage::period_of(chrono::Utc::now()),
    };
    let k = (org_id.to_string(), metric.to_string());
    if lock(&state.request_limits.notified).get(&k) == Some(&period) {
        return;
    }
    let result = async {
        let mut tx = crate::events::begin_write(&state.db).await?;
        if super::store::record_quota_notice(&mut tx, org_id, metric, &period).await? {
            crate::events::emit(
                &mut tx,
                &ActorContext::system(),
                NewEvent::new("quota.exceeded", "organization", Some(org_id.to_string()))
                    .organization(crate::ids::OrgId(org_id.to_string()))
                    .data(serde_json::json!({
                        "metric": metric,
                        "period": period,
                        "limit": limit,
                        "used": used,
                    })),
            )
            .await?;
        }
        tx.commit().await?;
        Ok::<_, Error>(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut notified = lock(&state.request_limits.notified);
            if notified.len() >= MAX_ENTRIES {
                notified.clear();
            }
            notified.insert(k, period);
        }
        Err(e) => tracing::error!(error = %e, org_id, metric, "could not record quota.exceeded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn organization_routes_and_exemptions_are_recognised() {
        assert_eq!(org_param("/v1/organizations/acme"), Some("acme"));
        assert_eq!(org_param("/v1/organizations/org_1/members"), Some("org_1"));
        assert_eq!(org_param("/v1/organizations"), None);
        assert_eq!(org_param("/v1/organizations/"), None);
        assert!(exempt("/health") && exempt("/health/ready") && exempt("/metrics"));
        assert!(exempt("/console/js/app.js") && !exempt("/login") && !exempt("/"));
        assert!(!exempt("/healthz") && !exempt("/v1/plans"));
    }

    #[test]
    fn a_quota_is_back_at_the_next_month() {
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 0)
            .unwrap();
        assert_eq!(secs_to_next_period(t), 60);
        let t = chrono::Utc.with_ymd_and_hms(2026, 2, 28, 0, 0, 0).unwrap();
        assert_eq!(secs_to_next_period(t), 86_400);
    }
}
