//! Authentication as extractors: a handler states in its signature which caller it needs
//! (`AuthUser`, `PlatformAdmin`) and cannot forget to check.
//!
//! A user access token is accepted only while its session is live and its user active, so
//! logout, a password reset or a suspension take effect on the next request. An API key on a
//! route that takes only access tokens is told so (401), not that it is an invalid token.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};

use crate::ids::UserId;
use crate::wire::Standing;
use crate::{
    app::AppState,
    auth::{sessions, tokens::Claims, users::User},
    error::{Error, ErrorCode},
    storage,
};

/// The tenant a scoped token acts in.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub organization_id: String,
    pub role: String,
    pub environment: String,
}

/// A signed-in user (any valid access token, tenant-scoped or not).
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: User,
    pub session_id: String,
    pub claims: Claims,
    pub tenant: Option<Tenant>,
}

/// A platform administrator.
#[derive(Debug, Clone)]
pub struct PlatformAdmin(pub AuthUser);

/// The bearer credential of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        if let Some(cached) = parts.extensions.get::<AuthUser>() {
            return Ok(cached.clone());
        }
        let Some(token) = bearer(parts).filter(|t| !crate::keys::cache::looks_like_key(t)) else {
            return Err(if crate::orgs::access::presented_key(parts).is_some() {
                Error::unauthorized(
                    "This route takes a user access token (Authorization: Bearer <access \
                         token>, from POST /v1/auth/login), not an API key",
                )
            } else {
                Error::unauthorized(
                    "Authentication required: send Authorization: Bearer <access token>",
                )
            });
        };
        if token.len() > 4096 {
            return Err(Error::unauthorized(
                "The access token is invalid or expired",
            ));
        }
        let claims = state.keys.verify(token).await?;
        let ip = crate::http::request_meta::client_ip(parts, &state.config.trusted_proxies);
        let auth = authenticate(state, claims, ip).await?;
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}

async fn authenticate(
    state: &AppState,
    claims: Claims,
    ip: Option<std::net::IpAddr>,
) -> Result<AuthUser, Error> {
    let session = sessions::with_user(&state.db, &claims.sid, &UserId(claims.sub.clone()))
        .await?
        .ok_or_else(|| Error::unauthorized("The session has ended"))?;
    let now = storage::now();
    if session.revoked || session.expires_at <= now {
        return Err(Error::unauthorized("The session has ended"));
    }
    let user = session.user;
    if user.status != Standing::Active {
        return Err(Error::forbidden("This account is suspended"));
    }
    let tenant = match &claims.tid {
        Some(org_id) => Some(tenant_of(state, &user.id, org_id, claims.env.as_deref(), ip).await?),
        None => None,
    };
    // Keep "last seen" within a minute of the truth without a write per request.
    let stale = storage::parse_time(&session.last_seen_at)
        .is_none_or(|t| chrono::Utc::now() - t > chrono::Duration::seconds(60));
    if stale {
        let db = state.db.clone();
        let sid = claims.sid.clone();
        tokio::spawn(async move {
            let _ = sessions::touch(&db, &sid).await;
        });
    }
    Ok(AuthUser {
        user,
        session_id: claims.sid.clone(),
        claims,
        tenant,
    })
}

/// The caller's current membership in an organization (by id or slug), refusing suspended
/// organizations and addresses outside the organization's IP allowlist. The role is read now,
/// not from the token, so a demotion takes effect at once.
pub async fn tenant_of(
    state: &AppState,
    user_id: &UserId,
    org: &str,
    environment: Option<&str>,
    ip: Option<std::net::IpAddr>,
) -> Result<Tenant, Error> {
    let (org, role) = crate::orgs::organizations::store::with_membership(&state.db, user_id, org)
        .await?
        .ok_or_else(|| Error::not_found("Organization not found"))?;
    if org.status != Standing::Active {
        return Err(Error::new(
            ErrorCode::OrganizationSuspended,
            "This organization is suspended",
        ));
    }
    crate::orgs::access::check_ip_allowlist(&org.settings, ip)?;
    Ok(Tenant {
        organization_id: org.id.0,
        role,
        environment: environment.unwrap_or("live").to_string(),
    })
}

impl FromRequestParts<AppState> for PlatformAdmin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.user.is_platform_admin {
            return Err(Error::forbidden("Platform administrators only"));
        }
        Ok(PlatformAdmin(user))
    }
}

impl crate::http::openapi::Input for AuthUser {
    fn describe(_d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        op.accepts(&["accessToken"]);
        op.error(401, "Unauthorized: no valid access token");
    }
}

impl crate::http::openapi::Input for PlatformAdmin {
    fn describe(_d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        op.accepts(&["adminToken"]);
        op.note("Platform administrators only.");
        op.error(401, "Unauthorized: no valid access token");
        op.error(403, "Forbidden: not a platform administrator");
    }
}
