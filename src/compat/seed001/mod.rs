//! Seed 001 (TruePortAI): the platform backend at `/platform/api/…` and the gateway at
//! `/trueportai-services/…`, as thin adapters over the `/v1` handlers. Each route takes the
//! seed's path and body, calls the `/v1` route's own handler (so the permission in its type is
//! the `/v1` route's: a seed path never grants more) and reshapes the answer: lists as
//! `{items, total, limit, offset, has_more}`, `global_access_token` / `scoped_access_token`
//! beside `access_token`, `{"key": …}` beside `token`, `enabled` beside a key's `status`.
//!
//! A service route acts in one tenant (= organization): the one `X-Tenant-Slug` names, else the
//! tenant of a scoped token (`select-tenant`), else an API key's own organization
//! ([`TenantAccess`]). `docs/compatibility.md` lists every endpoint.

mod admin;
mod auth;
mod gateway;
mod service;

use std::marker::PhantomData;

use axum::{
    body::Body,
    extract::FromRequestParts,
    http::request::Parts,
    response::{IntoResponse, Response},
};
use serde_json::Value;

use crate::{
    app::AppState,
    error::Error,
    http::{extract::Path, routes::Routes},
    orgs::{access::OrgAccess, roles::RequiredPermission},
};

pub fn routes() -> Routes {
    Routes::new()
        .merge(auth::routes())
        .merge(service::routes())
        .merge(admin::routes())
        .merge(gateway::routes())
}

/// The seed's gateway proxies (`/trueportai-services/openai/v1/…` …): the data plane's own
/// routes, served by the same proxy code as `/openai/v1/…`, without the control plane's layers.
pub fn proxy_routes() -> Routes {
    gateway::proxy_routes()
}

/// The longest `X-Tenant-Slug` looked up (an organization id or slug is far shorter).
const MAX_TENANT: usize = 100;

/// The caller's access, with permission `P`, to the tenant the request acts in: the
/// organization `X-Tenant-Slug` names (id or slug), else the scoped token's tenant, else the
/// API key's organization — with every check of [`OrgAccess`] (membership, a scoped token
/// only in its own tenant, suspension, IP allowlist, role, a key's scopes).
pub struct TenantAccess<P>(pub OrgAccess<P>);

impl<P> TenantAccess<P> {
    /// The `(org_id, id)` path a `/v1` handler of the tenant's resources reads.
    fn path<I>(&self, id: I) -> Path<(String, I)> {
        Path((self.0.org_id().to_string(), id))
    }
}

impl<P: RequiredPermission + Send + Sync> FromRequestParts<AppState> for TenantAccess<P> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let named = match parts.headers.get("x-tenant-slug") {
            None => None,
            Some(v) => {
                let slug = v
                    .to_str()
                    .ok()
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TENANT)
                    .ok_or_else(|| {
                        Error::invalid_field(
                            "X-Tenant-Slug",
                            "must be an organization's slug or id (at most 100 characters)",
                        )
                    })?;
                Some(slug.to_string())
            }
        };
        let access = OrgAccess::<P>::resolve(parts, state, named.as_deref()).await?;
        Ok(TenantAccess(access))
    }
}

/// A seed route that runs the `/v1` handler `$target` in the request's tenant: `$name` takes
/// `TenantAccess<perm::$perm>` (the `/v1` route's permission and checks) and the extractors
/// listed, and calls `$target` with the tenant's `OrgAccess`. After the handler, `items
/// "plural"` answers its list under `items`; `path Id` hands the seed path's id over as the `/v1`
/// route's `(org_id, id)` path.
macro_rules! in_tenant {
    ($name:ident, $perm:ident, $target:path, ($($arg:ident: $ty:ty),*)) => {
        async fn $name(
            state: State<AppState>,
            access: TenantAccess<perm::$perm>,
            $($arg: $ty),*
        ) -> super::Reshaped<impl crate::http::openapi::Output> {
            super::Reshaped::unchanged($target(state, access.0, $($arg),*).await)
        }
    };
    ($name:ident, $perm:ident, $target:path, items $plural:literal, ($($arg:ident: $ty:ty),*)) => {
        async fn $name(
            state: State<AppState>,
            access: TenantAccess<perm::$perm>,
            $($arg: $ty),*
        ) -> super::Reshaped<impl crate::http::openapi::Output> {
            super::reshape($target(state, access.0, $($arg),*).await, super::items($plural)).await
        }
    };
    ($name:ident, $perm:ident, $target:path, path $id:ty, ($($arg:ident: $ty:ty),*)) => {
        async fn $name(
            state: State<AppState>,
            access: TenantAccess<perm::$perm>,
            Path(id): Path<$id>,
            $($arg: $ty),*
        ) -> super::Reshaped<impl crate::http::openapi::Output> {
            let path = access.path(id);
            super::Reshaped::unchanged($target(state, access.0, path, $($arg),*).await)
        }
    };
}
pub(crate) use in_tenant;

/// The `/v1` handler `$target`'s list answered under `items` instead of `$plural`, with the
/// same extractors (a platform admin's or a signed-in user's lists).
macro_rules! listed {
    ($name:ident, $target:path, items $plural:literal, ($($arg:ident: $ty:ty),*)) => {
        async fn $name($($arg: $ty),*) -> super::Reshaped<impl crate::http::openapi::Output> {
            super::reshape($target($($arg),*).await, super::items($plural)).await
        }
    };
}
pub(crate) use listed;

/// The answer of the `/v1` handler whose answer type is `A`, as seed 001 shapes it (a list's
/// array under `items`, an alias beside a field, or unchanged). The OpenAPI document describes
/// it with `A`'s own description, which the reshaped body still matches: a list's schema
/// (`ListOf…`) takes its array under any name, and the `/v1` schemas allow added fields.
pub struct Reshaped<A>(Response, PhantomData<fn() -> A>);

impl<A: IntoResponse> Reshaped<A> {
    /// The `/v1` answer as it is (the seed's path, the `/v1` body).
    pub(crate) fn unchanged(answer: A) -> Self {
        Reshaped(answer.into_response(), PhantomData)
    }
}

impl<A> IntoResponse for Reshaped<A> {
    fn into_response(self) -> Response {
        self.0
    }
}

impl<A: crate::http::openapi::Output> crate::http::openapi::Output for Reshaped<A> {
    fn describe(d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        A::describe(d, op);
    }
}

/// A `/v1` handler's answer with its JSON body changed by `f`; refusals and empty answers pass
/// unchanged.
pub(crate) async fn reshape<A: IntoResponse>(answer: A, f: impl FnOnce(&mut Value)) -> Reshaped<A> {
    let res = answer.into_response();
    let reshaped = |res| Reshaped(res, PhantomData);
    if !res.status().is_success() || res.status() == axum::http::StatusCode::NO_CONTENT {
        return reshaped(res);
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return reshaped(
            Error::from(anyhow::anyhow!("an answer could not be read")).into_response(),
        );
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return reshaped(Response::from_parts(parts, Body::from(bytes)));
    };
    f(&mut value);
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    reshaped(Response::from_parts(parts, Body::from(bytes)))
}

/// A `/v1` list (`{"<plural>": […], total, limit, offset, has_more}`) as the seed's
/// `{"items": […], total, limit, offset, has_more}`.
pub(crate) fn items(plural: &'static str) -> impl FnOnce(&mut Value) {
    move |value| {
        if let Some(fields) = value.as_object_mut() {
            let list = fields.remove(plural).unwrap_or(Value::Array(Vec::new()));
            fields.insert("items".into(), list);
        }
    }
}

/// Adds `alias` with the value of `field` (e.g. `global_access_token` beside `access_token`).
pub(crate) fn alias(field: &'static str, alias: &'static str) -> impl FnOnce(&mut Value) {
    move |value| {
        if let Some(v) = value.get(field).cloned() {
            value[alias] = v;
        }
    }
}

impl<P: RequiredPermission + Send + Sync> crate::http::openapi::Input for TenantAccess<P> {
    fn describe(d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        <OrgAccess<P> as crate::http::openapi::Input>::describe(d, op);
        op.param_described(
            "X-Tenant-Slug",
            "header",
            false,
            serde_json::json!({"type": "string", "maxLength": MAX_TENANT}),
            Some("The tenant (organization id or slug); else the scoped token's tenant, else the API key's organization"),
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_answer_items_and_keep_their_paging() {
        let mut list = json!({"members": [{"id": "u"}], "total": 1, "limit": 20, "offset": 0});
        items("members")(&mut list);
        assert_eq!(
            list,
            json!({"items": [{"id": "u"}], "total": 1, "limit": 20, "offset": 0})
        );
    }

    #[test]
    fn an_alias_repeats_the_field() {
        let mut answer = json!({"access_token": "t"});
        alias("access_token", "global_access_token")(&mut answer);
        assert_eq!(
            answer,
            json!({"access_token": "t", "global_access_token": "t"})
        );
    }
}
