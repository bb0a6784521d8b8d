//! `OrgAccess<P>`: the extractor every organization-scoped route takes. It resolves `{org_id}`
//! (id or slug), authenticates the caller, and refuses — in this order — organizations the
//! caller does not belong to (`not_found`: a foreign id reveals nothing), suspended
//! organizations (`organization_suspended`), addresses outside `settings.ip_allowlist`
//! (`forbidden`) and callers whose role lacks `P` (`forbidden`).

use std::{marker::PhantomData, sync::Arc};

use axum::{
    extract::{FromRequestParts, RawPathParams},
    http::request::Parts,
};
use ipnet::IpNet;

use crate::{
    app::AppState,
    auth::extract::{AuthUser, PlatformAdmin},
    environment::Environment,
    error::{Error, ErrorCode},
    events::Actor,
    http::request_meta::{client_ip, RequestMeta},
    ids::{KeyId, OrgId, UserId},
    keys::cache::{looks_like_key, CachedKey},
    orgs::{
        members, organizations,
        roles::{Permission, RequiredPermission, Role},
    },
};

/// The organization a request acts on, as far as access decisions need it.
#[derive(Debug, Clone)]
pub struct OrgRef {
    pub id: OrgId,
    pub slug: String,
    pub settings: serde_json::Value,
}

impl OrgRef {
    /// The organization named by `id_or_slug`, whatever its status; not found if there is none.
    pub async fn find(db: &crate::storage::Db, id_or_slug: &str) -> Result<OrgRef, Error> {
        let row = organizations::store::by_id_or_slug(db, id_or_slug)
            .await?
            .ok_or_else(|| Error::not_found("Organization not found"))?;
        Ok(OrgRef {
            id: row.id,
            slug: row.slug,
            settings: row.settings,
        })
    }
}

/// Who is calling: a signed-in person, an API key of the organization, or a platform admin
/// acting on it from `/v1/admin/…` (SPEC §8) with an owner's authority, member or not.
#[derive(Debug, Clone)]
pub enum Caller {
    User(Box<AuthUser>),
    Key(Arc<CachedKey>),
    PlatformAdmin(Box<AuthUser>),
}

#[derive(Debug, Clone)]
pub struct OrgAccess<P> {
    pub org: OrgRef,
    pub caller: Caller,
    /// The caller's role; for a key, its creator's current role capped at admin (a key never
    /// exceeds its creator, and never performs owner-only actions).
    pub role: Role,
    pub meta: RequestMeta,
    _permission: PhantomData<P>,
}

impl<P> OrgAccess<P> {
    /// A platform admin acting on `org` from `/v1/admin/…`: an owner's authority whether a
    /// member or not, past suspension and the IP allowlist (an admin repairs both), audited as the
    /// admin in the organization.
    pub fn platform_admin(admin: PlatformAdmin, org: OrgRef, meta: RequestMeta) -> Self {
        OrgAccess {
            org,
            caller: Caller::PlatformAdmin(Box::new(admin.0)),
            role: Role::Owner,
            meta,
            _permission: PhantomData,
        }
    }

    pub fn org_id(&self) -> &OrgId {
        &self.org.id
    }

    /// The person calling (`None` for an API key).
    pub fn user_id(&self) -> Option<&str> {
        match &self.caller {
            Caller::User(u) | Caller::PlatformAdmin(u) => Some(&u.user.id),
            Caller::Key(_) => None,
        }
    }

    /// The person a new resource is attributed to: the caller, or the calling key's creator.
    pub fn creator_id(&self) -> Option<&str> {
        match &self.caller {
            Caller::User(u) | Caller::PlatformAdmin(u) => Some(&u.user.id),
            Caller::Key(k) => k.created_by.as_deref(),
        }
    }

    /// The environment the caller is confined to (test keys see test data only); `None` for an
    /// unscoped user token.
    pub fn environment(&self) -> Option<&str> {
        match &self.caller {
            Caller::User(u) => u.tenant.as_ref().map(|t| t.environment.as_str()),
            Caller::PlatformAdmin(_) => None,
            Caller::Key(k) => Some(&k.environment),
        }
    }

    /// [`Self::environment`], typed.
    pub fn env(&self) -> Option<Environment> {
        self.environment().and_then(Environment::parse)
    }

    /// Who is acting, for the audit log and webhooks (the events of a caller confined to an
    /// environment go to that environment's endpoints).
    pub fn actor_context(&self) -> crate::events::ActorContext {
        let actor = match &self.caller {
            Caller::User(u) | Caller::PlatformAdmin(u) => {
                crate::events::Actor::User(u.user.id.clone())
            }
            Caller::Key(k) => crate::events::Actor::ApiKey(crate::ids::KeyId(k.id.to_string())),
        };
        crate::events::ActorContext::new(actor, (&self.meta).into()).in_environment(self.env())
    }

    /// Emits an event of this organization, by this caller, inside `tx`.
    pub async fn emit(
        &self,
        tx: &mut sqlx::AnyConnection,
        action: &str,
        resource: (&str, &str),
        data: serde_json::Value,
    ) -> Result<(), Error> {
        crate::events::emit_org(
            tx,
            &self.actor_context(),
            &self.org.id,
            action,
            resource,
            data,
        )
        .await
    }

    /// Whether the caller holds `p`: a person by their role; a key by its creator's role
    /// (capped at admin: a key never performs owner-only actions) **and** its scopes.
    pub fn holds(&self, p: Permission) -> bool {
        self.role.can(p)
            && match &self.caller {
                Caller::User(_) | Caller::PlatformAdmin(_) => true,
                Caller::Key(k) => p.scope().is_some_and(|s| k.allows(s)),
            }
    }

    /// A second permission decided inside the handler (e.g. only an owner grants owner).
    pub fn require(&self, p: Permission) -> Result<(), Error> {
        let is_key = matches!(self.caller, Caller::Key(_));
        if is_key && p.min_role() > KEY_ROLE_CAP {
            return Err(key_lacks(p));
        }
        if !self.role.can(p) {
            return Err(forbidden_for(p));
        }
        if !self.holds(p) {
            return Err(key_lacks(p));
        }
        Ok(())
    }

    /// Whether the caller may give a person `role` (by invitation or role change): only if it
    /// holds every permission the role carries — so an owner only by a signed-in owner, an admin
    /// only by an admin or a key holding every scope, never more than the caller's own.
    pub fn may_grant(&self, role: Role) -> Result<(), Error> {
        if role == Role::Owner {
            return self.require(Permission::OrganizationsDelete);
        }
        let missing: Vec<&str> = Permission::ALL
            .iter()
            .filter(|p| role.can(**p) && !self.holds(**p))
            .map(|p| p.name())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::forbidden(format!(
            "Giving the {} role needs every permission it carries; you lack {}",
            role.as_str(),
            missing.join(", ")
        )))
    }

    /// Whether the caller may hand `scope` to a key it creates or changes: it must hold the
    /// scope itself (a person by role, a key by role and its own scopes).
    pub fn holds_scope(&self, scope: &str) -> bool {
        let Some(min) = crate::keys::scope_min_role(scope) else {
            return false;
        };
        self.role >= min
            && match &self.caller {
                Caller::User(_) | Caller::PlatformAdmin(_) => true,
                Caller::Key(k) => k.allows(scope),
            }
    }
}

impl<P: RequiredPermission> OrgAccess<P> {
    /// The caller's authority read again inside a write transaction that holds the
    /// organization's membership lock (`orgs::members`): the role the extractor read may have
    /// changed before the lock was taken (two owners demoting each other at once). A person's own
    /// membership role; for a key, its creator's role capped at [`KEY_ROLE_CAP`], as the extractor
    /// does. The route's permission `P` is checked again against the fresh role; a caller who
    /// left the organization meanwhile is refused as the extractor would refuse them. A platform
    /// admin's authority is not a membership: it stays an owner's.
    pub async fn reread_under_lock(&self, tx: &mut sqlx::AnyConnection) -> Result<Self, Error> {
        let role = match &self.caller {
            Caller::User(u) => members::store::role_of(tx, &self.org.id, &u.user.id)
                .await?
                .ok_or_else(|| Error::not_found("Organization not found"))?,
            Caller::Key(k) => {
                let role = match k.created_by.clone().map(crate::ids::UserId) {
                    Some(user_id) => members::store::role_of(tx, &self.org.id, &user_id).await?,
                    None => None,
                };
                role.ok_or_else(|| {
                    Error::forbidden("The key's creator is no longer a member of this organization")
                })?
                .min(KEY_ROLE_CAP)
            }
            Caller::PlatformAdmin(_) => self.role,
        };
        let fresh = OrgAccess {
            org: self.org.clone(),
            caller: self.caller.clone(),
            role,
            meta: self.meta.clone(),
            _permission: PhantomData,
        };
        fresh.require(P::PERMISSION)?;
        Ok(fresh)
    }
}

/// The refusal of a key whose scopes do not grant `p`.
pub fn key_lacks(p: Permission) -> Error {
    if p.min_role() > KEY_ROLE_CAP {
        return Error::forbidden(format!(
            "API keys cannot perform owner-only actions ({}); sign in as an owner",
            p.name()
        ));
    }
    Error::forbidden(format!(
        "This API key lacks the scope this route needs ({})",
        p.name()
    ))
}

/// The most a key can do: an admin's authority. Owner-only actions (owner grant and removal,
/// organization deletion, billing cancellation) need a signed-in owner.
pub const KEY_ROLE_CAP: Role = Role::Admin;

pub fn forbidden_for(p: Permission) -> Error {
    Error::forbidden(format!(
        "This requires the {} role or higher ({})",
        p.min_role().as_str(),
        p.name()
    ))
}

/// The IP allowlist of an organization's settings (empty: everyone).
pub fn ip_allowlist(settings: &serde_json::Value) -> Vec<IpNet> {
    settings["ip_allowlist"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .filter_map(parse_cidr)
                .collect()
        })
        .unwrap_or_default()
}

/// A CIDR, or a bare address as a /32 or /128.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

pub fn check_ip_allowlist(
    settings: &serde_json::Value,
    ip: Option<std::net::IpAddr>,
) -> Result<(), Error> {
    let list = ip_allowlist(settings);
    if list.is_empty() {
        return Ok(());
    }
    match ip {
        Some(ip) if list.iter().any(|n| n.contains(&ip)) => Ok(()),
        _ => Err(Error::forbidden(
            "Requests from this address are not allowed for this organization",
        )),
    }
}

/// The API key a request presents, in `X-API-Key` or as a bearer token of key form.
pub fn presented_key(parts: &Parts) -> Option<&str> {
    presented_key_in(&parts.headers)
}

pub fn presented_key_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && looks_like_key(token.trim())).then(|| token.trim())
}

/// The organization id or slug in the path parameter `name` (`org_id` on the organization's
/// routes, `id` on the admin's); not found without one.
pub async fn org_path_param(
    parts: &mut Parts,
    state: &AppState,
    name: &str,
) -> Result<String, Error> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| Error::not_found("Organization not found"))?;
    params
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .ok_or_else(|| Error::not_found("Organization not found"))
}

/// The API key a request presents, verified (a refusal is recorded as a security event).
async fn authenticated_key(
    parts: &Parts,
    state: &AppState,
    meta: &RequestMeta,
    token: &str,
) -> Result<Arc<CachedKey>, Error> {
    let origin = parts.headers.get("origin").and_then(|v| v.to_str().ok());
    state
        .api_keys
        .authenticate(&state.db, token, origin, meta.ip)
        .await
        .inspect_err(|e| crate::keys::routes::record_refusal(state, meta, token, e))
}

/// Who creates an organization (`POST /v1/organizations`): a signed-in user, who becomes its
/// owner; or a secret key holding `organizations:create` (seed 003), whose creator becomes the
/// owner — if that creator is still an active admin or owner of the key's organization.
#[derive(Debug, Clone)]
pub struct OrgCreator {
    /// The new organization's owner.
    pub owner: UserId,
    /// Who acts, for the audit log: the user, or the key.
    pub actor: Actor,
}

const CREATE_SCOPE: &str = "organizations:create";

impl FromRequestParts<AppState> for OrgCreator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let meta = RequestMeta::from_request_parts(parts, state).await?;
        let Some(token) = presented_key(parts) else {
            let user = AuthUser::from_request_parts(parts, state).await?;
            return Ok(OrgCreator {
                owner: user.user.id.clone(),
                actor: Actor::User(user.user.id),
            });
        };
        let key = authenticated_key(parts, state, &meta, token).await?;
        if !key.allows(CREATE_SCOPE) {
            return Err(Error::forbidden(format!(
                "This API key lacks the scope this route needs ({CREATE_SCOPE})"
            )));
        }
        let no_longer = || {
            Error::forbidden(
                "The key's creator is no longer an admin or owner of the key's organization; \
                 an organization needs an owner",
            )
        };
        let least = crate::keys::scope_min_role(CREATE_SCOPE).unwrap_or(KEY_ROLE_CAP);
        let (Some(owner), Some(role)) = (key.created_by.as_deref(), key.creator_role) else {
            return Err(no_longer());
        };
        if role < least {
            return Err(no_longer());
        }
        let owner = UserId(owner.to_string());
        let active = crate::auth::users::get(&state.db, &owner)
            .await?
            .is_some_and(|u| u.status == crate::wire::Standing::Active);
        if !active {
            return Err(Error::forbidden("The key's creator is suspended"));
        }
        Ok(OrgCreator {
            owner,
            actor: Actor::ApiKey(KeyId(key.id.to_string())),
        })
    }
}

/// A member holding `P` ([`OrgAccess`]), or else a platform admin — a member or not, the
/// organization suspended or not. Anyone else gets the member check's refusal, before the body
/// is read.
#[derive(Debug, Clone)]
pub enum MemberOrPlatformAdmin<P> {
    Member(Box<OrgAccess<P>>),
    PlatformAdmin(Box<PlatformAdmin>),
}

impl<P: RequiredPermission + Send + Sync> FromRequestParts<AppState> for MemberOrPlatformAdmin<P> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        match OrgAccess::<P>::from_request_parts(parts, state).await {
            Ok(access) => Ok(MemberOrPlatformAdmin::Member(Box::new(access))),
            Err(refused) => PlatformAdmin::from_request_parts(parts, state)
                .await
                .map(|admin| MemberOrPlatformAdmin::PlatformAdmin(Box::new(admin)))
                .map_err(|_| refused),
        }
    }
}

impl<P: RequiredPermission> FromRequestParts<AppState> for OrgAccess<P> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let org_param = org_path_param(parts, state, "org_id").await?;
        Self::resolve(parts, state, Some(&org_param)).await
    }
}

impl<P: RequiredPermission> OrgAccess<P> {
    /// The caller's access to the organization `org` names (id or slug), with every check of
    /// the extractor; with `None`, to the organization of the caller's credential — an API
    /// key's own, or a tenant-scoped token's tenant (seed 001's service routes, `src/compat/`).
    pub async fn resolve(
        parts: &mut Parts,
        state: &AppState,
        org: Option<&str>,
    ) -> Result<Self, Error> {
        let meta = RequestMeta::from_request_parts(parts, state).await?;
        if let Some(token) = presented_key(parts) {
            let key = authenticated_key(parts, state, &meta, token).await?;
            let org_param = org.unwrap_or(&key.organization_id);
            let row = organizations::store::by_id_or_slug(&state.db, org_param)
                .await?
                .filter(|r| *r.id == *key.organization_id)
                .ok_or_else(|| Error::not_found("Organization not found"))?;
            let org = OrgRef {
                id: row.id,
                slug: row.slug,
                settings: row.settings,
            };
            let role = key
                .creator_role
                .ok_or_else(|| {
                    Error::forbidden("The key's creator is no longer a member of this organization")
                })?
                .min(KEY_ROLE_CAP);
            let scoped = P::PERMISSION.scope().is_some_and(|s| key.allows(s));
            if !scoped {
                return Err(key_lacks(P::PERMISSION));
            }
            if !role.can(P::PERMISSION) {
                return Err(forbidden_for(P::PERMISSION));
            }
            return Ok(OrgAccess {
                org,
                caller: Caller::Key(key),
                role,
                meta,
                _permission: PhantomData,
            });
        }
        let user = AuthUser::from_request_parts(parts, state).await?;
        let org_param = match (org, &user.tenant) {
            (Some(org), _) => org.to_string(),
            (None, Some(tenant)) => tenant.organization_id.clone(),
            (None, None) => {
                return Err(Error::bad_request(
                    "This route acts in one tenant: send a tenant-scoped access token (from \
                     select-tenant) or name the tenant in X-Tenant-Slug",
                ))
            }
        };
        let (row, role) =
            organizations::store::with_membership(&state.db, &user.user.id, &org_param)
                .await?
                .ok_or_else(|| Error::not_found("Organization not found"))?;
        let status = row.status;
        let org = OrgRef {
            id: row.id,
            slug: row.slug,
            settings: row.settings,
        };
        if let Some(tenant) = &user.tenant {
            if *tenant.organization_id != *org.id {
                return Err(Error::forbidden(
                    "This token is scoped to another organization",
                ));
            }
        }
        if status != crate::wire::Standing::Active {
            return Err(Error::new(
                ErrorCode::OrganizationSuspended,
                "This organization is suspended",
            ));
        }
        check_ip_allowlist(
            &org.settings,
            client_ip(parts, &state.config.trusted_proxies),
        )?;
        let role =
            Role::parse(&role).ok_or_else(|| anyhow::anyhow!("membership with an unknown role"))?;
        if !role.can(P::PERMISSION) {
            return Err(forbidden_for(P::PERMISSION));
        }
        Ok(OrgAccess {
            org,
            caller: Caller::User(Box::new(user)),
            role,
            meta,
            _permission: PhantomData,
        })
    }
}

impl<P: RequiredPermission> crate::http::openapi::Input for OrgAccess<P> {
    fn describe(_d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        op.accepts(&["accessToken", "apiKey"]);
        op.requires(P::PERMISSION.name());
        op.note(format!(
            "A member whose role is at least `{}`, or an API key of the organization with this scope.",
            P::PERMISSION.min_role().as_str()
        ));
        op.error(401, "Unauthorized: no valid access token or API key");
        op.error(403, "Forbidden: the role or the key's scopes do not allow it, or the organization is suspended");
        op.error(404, "Not found: no such organization for this caller");
    }
}

impl<P: RequiredPermission + Send + Sync> crate::http::openapi::Input for MemberOrPlatformAdmin<P> {
    fn describe(d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        <OrgAccess<P> as crate::http::openapi::Input>::describe(d, op);
        op.accepts(&["adminToken"]);
        op.note("A platform administrator may also call it, member or not.");
    }
}

impl crate::http::openapi::Input for OrgCreator {
    fn describe(_d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        op.accepts(&["accessToken", "apiKey"]);
        op.note("A signed-in user, who becomes the owner; or a secret key holding `organizations:create`, whose creator becomes the owner.");
        op.error(401, "Unauthorized: no valid access token or API key");
        op.error(403, "Forbidden: the key lacks organizations:create");
    }
}
