//! Violations in the database: [`record`] (inside the usage writer's transaction, with a
//! `policy.violation` event each), [`list`] and [`get`] for the routes in `violations.rs`.

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::Found;
use crate::{
    error::Error,
    events::{ActorContext, NewEvent},
    http::pagination::{has_id, List, Page},
    storage::{self, Db, RowExt, Sql},
};

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Violation {
    pub id: crate::ids::ViolationId,
    pub policy_id: crate::ids::PolicyId,
    pub policy_name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    pub severity: String,
    /// `request` or `response`.
    pub stage: String,
    pub key_id: crate::ids::KeyId,
    pub environment: crate::environment::Environment,
    pub log_id: crate::ids::LogId,
    pub model: String,
    pub matches: Value,
    pub created_at: String,
}

has_id!(Violation);

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
            environment: r.get_parsed("environment")?,
            log_id: r.try_get("log_id")?,
            model: r.try_get("model")?,
            matches: r.get_json("matches")?,
            created_at: r.get_time("created_at")?,
        })
    }
}

/// What a violation belongs to: the log entry, the request's key, and who sent the request
/// (its address, user agent and id, for the audit row).
pub struct Context<'a> {
    pub organization_id: &'a str,
    pub environment: &'a str,
    pub key_id: &'a str,
    pub log_id: &'a str,
    pub model: &'a str,
    pub request: Option<&'a crate::events::RequestMeta>,
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
        ctx.request.cloned().unwrap_or_default(),
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

/// Which violations to list (the query string of `GET …/analytics/violations`): every field set
/// narrows the list. `start`/`end` (`[start, end)`) are read as given, then made stored
/// timestamps by [`crate::http::time_range`]; the environment is the caller's, never the query's.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct Filter {
    #[serde(skip)]
    pub environment: Option<String>,
    pub policy_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub action: Option<String>,
    pub severity: Option<String>,
    pub key_id: Option<String>,
    pub log_id: Option<String>,
    pub model: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
}

/// One page of an organization's violations, newest first.
pub async fn list(db: &Db, org_id: &str, f: Filter, page: &Page) -> Result<List<Violation>, Error> {
    let mut sql = Sql::new(" FROM violations WHERE organization_id = ");
    sql.bind(org_id.to_string());
    if let Some(env) = f.environment {
        sql.and("environment = ?", env);
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
    if let Some(v) = f.start {
        sql.and("created_at >= ?", v);
    }
    if let Some(v) = f.end {
        sql.and("created_at < ?", v);
    }
    page.fetch_newest_first(db, "violations", COLUMNS, &sql, Violation::from_row)
        .await
}

/// One violation of an organization (in `environment`, if given).
pub async fn get(
    db: &Db,
    org_id: &str,
    environment: Option<&str>,
    id: &str,
) -> Result<Option<Violation>, Error> {
    let mut sql = Sql::new(" FROM violations WHERE organization_id = ");
    sql.bind(org_id.to_string());
    sql.and("id = ?", id.to_string());
    if let Some(env) = environment {
        sql.and("environment = ?", env.to_string());
    }
    let row = Sql::prefixed(COLUMNS, &sql)
        .query()
        .fetch_optional(db.pool())
        .await?;
    Ok(row.as_ref().map(Violation::from_row).transpose()?)
}
