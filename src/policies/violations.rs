//! Recorded violations: `GET /v1/organizations/{org_id}/analytics/violations[/{id}]` (member /
//! `analytics:read`), newest first with filters and cursor pagination. Violations are written
//! by the gateway's usage writer together with the log entry they belong to (see
//! [`record`]), each with a `policy.violation` event; excerpts are masked before they get here.

use axum::{extract::State, response::IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

use super::engine::Hit;
use crate::{
    app::AppState,
    error::Error,
    events::{ActorContext, NewEvent},
    http::{
        extract::{Path, Query},
        pagination::{HasId, Page},
    },
    orgs::{access::OrgAccess, roles::perm},
    storage::{self, Db, RowExt, Sql},
};

#[derive(Debug, Serialize)]
pub struct Violation {
    pub id: String,
    pub policy_id: String,
    pub policy_name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    pub severity: String,
    /// `request` or `response`.
    pub stage: String,
    pub key_id: String,
    pub environment: String,
    pub log_id: String,
    pub model: String,
    pub matches: Value,
    pub created_at: String,
}

impl HasId for Violation {
    fn id(&self) -> &str {
        &self.id
    }
}

const COLUMNS: &str = "SELECT id, policy_id, policy_name, type, action, severity, stage, key_id, \
                       environment, log_id, model, matches, created_at";

impl Violation {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Violation {
            id: r.try_get("id")?,
            policy_id: r.try_get("policy_id")?,
            policy_name: r.try_get("policy_name")?,
            kind: r.try_get("type")?,
            action: r.try_get("action")?,
            severity: r.try_get("severity")?,
            stage: r.try_get("stage")?,
            key_id: r.try_get("key_id")?,
            environment: r.try_get("environment")?,
            log_id: r.try_get("log_id")?,
            model: r.try_get("model")?,
            matches: r.get_json("matches")?,
            created_at: storage::api_time(&r.try_get::<String, _>("created_at")?),
        })
    }
}

/// A violation found on the request path, waiting for the usage writer.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub stage: &'static str,
    pub hit: Hit,
}

impl Found {
    pub fn new(stage: &'static str, hit: Hit) -> Found {
        Found {
            id: crate::ids::new_id("vio"),
            stage,
            hit,
        }
    }
}

/// What a violation belongs to: the log entry and the request's key.
pub struct Context<'a> {
    pub organization_id: &'a str,
    pub environment: &'a str,
    pub key_id: &'a str,
    pub log_id: &'a str,
    pub model: &'a str,
}

/// Stores the violations of one log entry and emits `policy.violation` for each, inside the
/// usage writer's transaction.
pub async fn record(
    conn: &mut sqlx::AnyConnection,
    ctx: &Context<'_>,
    found: &[Found],
) -> Result<(), Error> {
    let actor = ActorContext::new(
        crate::events::Actor::ApiKey(crate::ids::KeyId(ctx.key_id.to_string())),
        Default::default(),
    )
    .in_environment(crate::environment::Environment::parse(ctx.environment));
    for f in found {
        let h = &f.hit;
        let matches = serde_json::to_value(&h.matches).unwrap_or_else(|_| json!([]));
        let now = storage::now();
        sqlx::query(
            "INSERT INTO violations (id, organization_id, environment, policy_id, policy_name, type, \
             action, severity, stage, key_id, log_id, model, matches, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&f.id)
        .bind(ctx.organization_id)
        .bind(ctx.environment)
        .bind(&h.policy_id)
        .bind(&h.policy_name)
        .bind(h.kind.as_str())
        .bind(h.action.as_str())
        .bind(h.severity.as_str())
        .bind(f.stage)
        .bind(ctx.key_id)
        .bind(ctx.log_id)
        .bind(ctx.model)
        .bind(matches.to_string())
        .bind(&now)
        .execute(&mut *conn)
        .await?;
        let data = json!({
            "id": f.id,
            "policy_id": h.policy_id,
            "policy_name": h.policy_name,
            "type": h.kind.as_str(),
            "action": h.action.as_str(),
            "severity": h.severity.as_str(),
            "stage": f.stage,
            "key_id": ctx.key_id,
            "log_id": ctx.log_id,
            "model": ctx.model,
            "matches": matches,
            "created_at": storage::api_time(&now),
        });
        crate::events::emit(
            conn,
            &actor,
            NewEvent::new("policy.violation", "violation", Some(f.id.clone()))
                .organization(crate::ids::OrgId(ctx.organization_id.to_string()))
                .data(data),
        )
        .await?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct Filter {
    policy_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    action: Option<String>,
    severity: Option<String>,
    key_id: Option<String>,
    log_id: Option<String>,
    model: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::AnalyticsRead>,
    page: Page,
    Query(f): Query<Filter>,
) -> Result<impl IntoResponse, Error> {
    let mut sql = Sql::new(" FROM violations WHERE organization_id = ");
    sql.bind(access.org_id().to_string());
    if let Some(env) = access.environment() {
        sql.and("environment = ?", env.to_string());
    }
    for (column, value) in [
        ("policy_id", f.policy_id),
        ("type", f.kind),
        ("action", f.action),
        ("severity", f.severity),
        ("key_id", f.key_id),
        ("log_id", f.log_id),
        ("model", f.model),
    ] {
        if let Some(v) = value {
            sql.and(&format!("{column} = ?"), v);
        }
    }
    if let Some(v) = &f.start {
        sql.and("created_at >= ?", crate::http::time_bound("start", v)?);
    }
    if let Some(v) = &f.end {
        sql.and("created_at < ?", crate::http::time_bound("end", v)?);
    }
    let list = page
        .fetch_newest_first(&state.db, "violations", COLUMNS, &sql, Violation::from_row)
        .await?;
    Ok(axum::Json(list))
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::AnalyticsRead>,
    Path((_, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, Error> {
    Ok(axum::Json(load(&state.db, &access, &id).await?))
}

async fn load(
    db: &Db,
    access: &OrgAccess<perm::AnalyticsRead>,
    id: &str,
) -> Result<Violation, Error> {
    let mut sql = Sql::new(" FROM violations WHERE organization_id = ");
    sql.bind(access.org_id().to_string());
    sql.and("id = ?", id.to_string());
    if let Some(env) = access.environment() {
        sql.and("environment = ?", env.to_string());
    }
    let row = Sql::prefixed(COLUMNS, &sql)
        .query()
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| Error::not_found("Violation not found"))?;
    Ok(Violation::from_row(&row)?)
}
