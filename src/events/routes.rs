//! HTTP routes of the audit log and webhooks (SPEC §7). The organization routes
//! (`/v1/organizations/{org_id}/…`, admins) and the platform routes (`/v1/admin/…`, platform
//! admins) share one set of handlers, generic over who is calling ([`WebhookCaller`]).

use crate::events::deliveries::Delivery;
use crate::events::webhooks::CreatedEndpoint;
use crate::events::webhooks::Endpoint;
use crate::events::webhooks::RotatedSecret;
use crate::http::pagination::List;
use std::collections::HashMap;

use axum::{
    body::Body,
    extract::{FromRequestParts, State},
    http::{header, request::Parts, StatusCode},
    response::{IntoResponse, Response},
};

use super::{
    audit::{self, AuditFilter, AuditQuery, AuditScope},
    deliveries, webhooks, Actor, ActorContext, RequestMeta, Scope,
};
use crate::ids::WebhookId;
use crate::{
    app::AppState,
    auth::extract::PlatformAdmin,
    error::Error,
    http::{
        extract::{Json, Path, Query},
        pagination::Page,
        request_meta,
        routes::Routes,
    },
    orgs::{
        access::OrgAccess,
        roles::{perm, RequiredPermission},
    },
};

impl From<&request_meta::RequestMeta> for RequestMeta {
    fn from(m: &request_meta::RequestMeta) -> Self {
        RequestMeta {
            ip_address: m.ip.map(|ip| ip.to_string()),
            user_agent: Some(m.user_agent.clone()).filter(|s| !s.is_empty()),
            request_id: Some(m.request_id.clone()).filter(|s| !s.is_empty()),
        }
    }
}

/// Who manages webhooks or reads the audit log, and over which scope.
pub trait WebhookCaller: FromRequestParts<AppState, Rejection = Error> + Send {
    fn scope(&self) -> Scope;
    fn audit_scope(&self) -> AuditScope;
    fn context(&self) -> ActorContext;
}

/// An organization admin (`webhooks:manage`).
pub type OrgCaller = OrgAccess<perm::WebhooksManage>;

/// An organization member allowed to read its audit log (`audit:read`).
pub type OrgAuditor = OrgAccess<perm::AuditRead>;

impl<P: RequiredPermission> WebhookCaller for OrgAccess<P> {
    fn scope(&self) -> Scope {
        Scope::Organization(self.org_id().clone(), self.env())
    }
    fn audit_scope(&self) -> AuditScope {
        AuditScope::Organization(self.org_id().clone())
    }
    fn context(&self) -> ActorContext {
        self.actor_context()
    }
}

/// A platform admin: platform endpoints, every organization's audit events.
pub struct AdminCaller(PlatformAdmin, RequestMeta);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let admin = PlatformAdmin::from_request_parts(parts, state).await?;
        let meta = request_meta::RequestMeta::from_request_parts(parts, state).await?;
        Ok(AdminCaller(admin, RequestMeta::from(&meta)))
    }
}

impl WebhookCaller for AdminCaller {
    fn scope(&self) -> Scope {
        Scope::Platform
    }
    fn audit_scope(&self) -> AuditScope {
        AuditScope::All
    }
    fn context(&self) -> ActorContext {
        ActorContext::new(Actor::User(self.0 .0.user.id.clone()), self.1.clone())
    }
}

pub fn routes() -> Routes {
    let routes = webhook_routes::<OrgCaller>(Routes::new(), "/v1/organizations/{org_id}/webhooks");
    webhook_routes::<AdminCaller>(routes, "/v1/admin/webhooks")
        .get("/v1/organizations/{org_id}/audit", audit_log::<OrgAuditor>)
        .get("/v1/admin/audit", audit_log::<AdminCaller>)
}

fn webhook_routes<C: WebhookCaller + crate::http::openapi::Input + 'static>(
    routes: Routes,
    base: &str,
) -> Routes {
    let one = format!("{base}/{{id}}");
    routes
        .post(base, create::<C>)
        .get(base, list::<C>)
        .get(&one, get::<C>)
        .patch(&one, update::<C>)
        .delete(&one, delete::<C>)
        .post(&format!("{one}/test"), test::<C>)
        .post(&format!("{one}/rotate-secret"), rotate::<C>)
        .get(&format!("{one}/deliveries"), list_deliveries::<C>)
        .post(
            &format!("{one}/deliveries/{{delivery_id}}/retry"),
            retry::<C>,
        )
}

fn param(params: &HashMap<String, String>, name: &str) -> String {
    params.get(name).cloned().unwrap_or_default()
}

/// The endpoint named by the path's `{id}`.
fn endpoint_id(params: &HashMap<String, String>) -> WebhookId {
    WebhookId::from(param(params, "id"))
}

async fn create<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    Json(body): Json<webhooks::NewEndpoint>,
) -> Result<(StatusCode, axum::Json<CreatedEndpoint>), Error> {
    let created = webhooks::create(&state, &caller.scope(), &caller.context(), body).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

async fn list<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    page: Page,
) -> Result<axum::Json<List<Endpoint>>, Error> {
    Ok(axum::Json(
        webhooks::list(&state.db, &caller.scope(), &page).await?,
    ))
}

async fn get<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    Path(p): Path<HashMap<String, String>>,
) -> Result<axum::Json<Endpoint>, Error> {
    Ok(axum::Json(
        webhooks::get(&state.db, &caller.scope(), &endpoint_id(&p)).await?,
    ))
}

async fn update<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    Path(p): Path<HashMap<String, String>>,
    Json(patch): Json<webhooks::EndpointPatch>,
) -> Result<axum::Json<Endpoint>, Error> {
    let id = endpoint_id(&p);
    Ok(axum::Json(
        webhooks::update(&state, &caller.scope(), &caller.context(), &id, patch).await?,
    ))
}

async fn delete<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    Path(p): Path<HashMap<String, String>>,
) -> Result<StatusCode, Error> {
    webhooks::delete(
        &state.db,
        &caller.scope(),
        &caller.context(),
        &endpoint_id(&p),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn test<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    Path(p): Path<HashMap<String, String>>,
) -> Result<(StatusCode, axum::Json<TestSent>), Error> {
    let event_id = webhooks::send_test(
        &state.db,
        &caller.scope(),
        &caller.context(),
        &endpoint_id(&p),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(TestSent {
            event_id,
            event_type: "webhook.test",
        }),
    ))
}

/// `POST …/webhooks/{id}/test`: the test event queued for delivery to the endpoint.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct TestSent {
    event_id: String,
    /// Always `webhook.test`.
    event_type: &'static str,
}

async fn rotate<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    Path(p): Path<HashMap<String, String>>,
) -> Result<axum::Json<RotatedSecret>, Error> {
    Ok(axum::Json(
        webhooks::rotate_secret(&state, &caller.scope(), &caller.context(), &endpoint_id(&p))
            .await?,
    ))
}

async fn list_deliveries<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    Path(p): Path<HashMap<String, String>>,
    page: Page,
) -> Result<axum::Json<List<Delivery>>, Error> {
    Ok(axum::Json(
        deliveries::list(&state.db, &caller.scope(), &endpoint_id(&p), &page).await?,
    ))
}

async fn retry<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    Path(p): Path<HashMap<String, String>>,
) -> Result<(StatusCode, axum::Json<Delivery>), Error> {
    let delivery = deliveries::retry(
        &state.db,
        &caller.scope(),
        &caller.context(),
        &endpoint_id(&p),
        &param(&p, "delivery_id"),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(delivery)))
}

/// `GET …/audit`: a page (offset/page or cursor), or with `?format=csv|ndjson` the whole
/// filtered log streamed as a download.
async fn audit_log<C: WebhookCaller>(
    State(state): State<AppState>,
    caller: C,
    page: Page,
    Query(query): Query<AuditQuery>,
) -> Result<AuditLog, Error> {
    let filter = AuditFilter::from_query(&query)?;
    let scope = caller.audit_scope();
    if let Some(format) = query.format {
        let stream = audit::export(state.db.clone(), scope, filter, format);
        return Ok(AuditLog(
            (
                [
                    (header::CONTENT_TYPE, format.content_type().to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"audit.{}\"", format.extension()),
                    ),
                ],
                Body::from_stream(stream),
            )
                .into_response(),
        ));
    }
    Ok(AuditLog(
        axum::Json(audit::list(&state.db, &scope, &filter, &page).await?).into_response(),
    ))
}

/// The audit log's answer: a page of events (JSON), or with `format` the whole filtered log as
/// a CSV or NDJSON download.
pub struct AuditLog(Response);

impl IntoResponse for AuditLog {
    fn into_response(self) -> Response {
        self.0
    }
}

impl crate::http::openapi::Output for AuditLog {
    fn describe(d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        let page = d.output::<List<audit::AuditEvent>>();
        op.success_in(
            "200",
            "A page of events; with `format=csv` or `format=ndjson`, every event matching the filters, as a download (`Content-Disposition: attachment`)",
            &[
                ("application/json", page),
                (
                    "text/csv",
                    serde_json::json!({"type": "string", "description": "A header line, then one line per event"}),
                ),
                (
                    "application/x-ndjson",
                    serde_json::json!({"type": "string", "description": "One JSON event per line"}),
                ),
            ],
        );
    }
}

impl crate::http::openapi::Input for AdminCaller {
    fn describe(d: &mut crate::http::openapi::Describer, op: &mut crate::http::openapi::Op) {
        <PlatformAdmin as crate::http::openapi::Input>::describe(d, op);
    }
}
