//! Policy rules of an organization: `GET/POST /v1/organizations/{org_id}/policies`,
//! `GET/PUT/DELETE …/policies/{id}` (reading: member / `policies:read`; writing: editor /
//! `policies:manage`). Every write validates the rule with the engine's own
//! [`validate`](super::rules::validate) — so a stored rule always compiles — emits
//! `policy.created|updated|deleted` in its transaction, and drops the organization's compiled
//! matcher on every node (bus message `org:<id>`).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

use super::{
    engine::Matcher,
    rules::{self, Action, AppliesTo, Kind, Rule, Severity},
};
use crate::{
    app::AppState,
    error::{Error, FieldError},
    http::{
        extract::{Json, Path},
        pagination::{HasId, Page},
    },
    orgs::{access::OrgAccess, roles::perm},
    storage::{self, Db, RowExt, Sql},
};

/// At most this many rules per organization (each compiles into the one matcher).
pub const MAX_RULES: i64 = 200;

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub config: Value,
    pub action: Action,
    pub applies_to: AppliesTo,
    pub severity: Severity,
    pub created_at: String,
    pub updated_at: String,
}

impl HasId for Policy {
    fn id(&self) -> &str {
        &self.id
    }
}

const COLUMNS: &str = "id, organization_id, name, description, enabled, type, config, action, \
                       applies_to, severity, created_at, updated_at";

fn stored<T: std::str::FromStr>(r: &sqlx::any::AnyRow, column: &str) -> Result<T, sqlx::Error> {
    let s: String = r.try_get(column)?;
    s.parse()
        .map_err(|_| sqlx::Error::Decode(format!("unknown {column} {s:?} in policies").into()))
}

impl Policy {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Policy {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            name: r.try_get("name")?,
            description: r.try_get("description")?,
            enabled: r.get_bool("enabled")?,
            kind: stored(r, "type")?,
            config: r.get_json("config")?,
            action: stored(r, "action")?,
            applies_to: stored(r, "applies_to")?,
            severity: stored(r, "severity")?,
            created_at: storage::api_time(&r.try_get::<String, _>("created_at")?),
            updated_at: storage::api_time(&r.try_get::<String, _>("updated_at")?),
        })
    }

    fn rule(self) -> Rule {
        Rule {
            id: self.id,
            name: self.name,
            kind: self.kind,
            config: self.config,
            action: self.action,
            applies_to: self.applies_to,
            severity: self.severity,
            enabled: self.enabled,
        }
    }
}

/// The body of `POST` and `PUT` (a `PUT` replaces the whole rule, so both require the same).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    name: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    #[serde(rename = "type")]
    kind: Option<String>,
    config: Option<Value>,
    action: Option<String>,
    applies_to: Option<String>,
    severity: Option<String>,
}

/// A validated rule, ready to store.
struct Valid {
    name: String,
    description: String,
    enabled: bool,
    kind: Kind,
    config: Value,
    action: Action,
    applies_to: AppliesTo,
    severity: Severity,
}

fn parse_field<T: std::str::FromStr>(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<&str>,
    default: Option<T>,
    choices: &str,
) -> Option<T> {
    match value {
        Some(v) => match v.parse() {
            Ok(t) => Some(t),
            Err(_) => {
                errors.push(FieldError::new(field, format!("must be one of {choices}")));
                None
            }
        },
        None if default.is_some() => default,
        None => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
    }
}

impl PolicyInput {
    fn validate(self) -> Result<Valid, Error> {
        let mut errors = Vec::new();
        let name = self.name.as_deref().map(str::trim).unwrap_or_default();
        if name.is_empty() || name.chars().count() > 200 {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
        let description = self.description.unwrap_or_default();
        if description.chars().count() > 2000 {
            errors.push(FieldError::new("description", "at most 2000 characters"));
        }
        let kind: Option<Kind> = parse_field(
            &mut errors,
            "type",
            self.kind.as_deref(),
            None,
            "pii, secrets, keyword, regex, model_allowlist, model_denylist, max_tokens, prompt_injection",
        );
        let action: Option<Action> = parse_field(
            &mut errors,
            "action",
            self.action.as_deref(),
            None,
            "block, redact, flag",
        );
        let applies_to = parse_field(
            &mut errors,
            "applies_to",
            self.applies_to.as_deref(),
            Some(AppliesTo::Request),
            "request, response, both",
        );
        let severity = parse_field(
            &mut errors,
            "severity",
            self.severity.as_deref(),
            Some(Severity::Medium),
            "low, medium, high, critical",
        );
        let mut config = self.config.unwrap_or_else(|| json!({}));
        if let (Some(kind), Some(action)) = (kind, action) {
            match rules::validate(kind, action, &config) {
                Ok(normalized) => config = normalized,
                Err(e) => errors.push(FieldError::new(&e.field, e.message)),
            }
        }
        match (kind, action, applies_to, severity) {
            (Some(kind), Some(action), Some(applies_to), Some(severity)) if errors.is_empty() => {
                Ok(Valid {
                    name: name.to_string(),
                    description,
                    enabled: self.enabled.unwrap_or(true),
                    kind,
                    config,
                    action,
                    applies_to,
                    severity,
                })
            }
            _ => Err(Error::invalid(errors)),
        }
    }
}

async fn load(db: &Db, org_id: &str, id: &str) -> Result<Policy, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM policies WHERE id = $1 AND organization_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("Policy not found"))?;
    Ok(Policy::from_row(&row)?)
}

/// Stores a validated rule (a new one, or over `id`), emits `action` and drops the matcher.
async fn save(
    state: &AppState,
    access: &OrgAccess<perm::PoliciesManage>,
    id: &str,
    v: Valid,
    event: &str,
) -> Result<Policy, Error> {
    let now = storage::now();
    let mut tx = crate::events::begin_write(&state.db).await?;
    let sql = if event == "policy.created" {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM policies WHERE organization_id = $1")
                .bind(access.org_id())
                .fetch_one(&mut *tx)
                .await?;
        if count >= MAX_RULES {
            return Err(Error::invalid_field(
                "type",
                format!("an organization has at most {MAX_RULES} policies"),
            ));
        }
        "INSERT INTO policies (name, description, enabled, type, config, action, applies_to, \
         severity, updated_at, id, organization_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $9)"
    } else {
        "UPDATE policies SET name = $1, description = $2, enabled = $3, type = $4, config = $5, \
         action = $6, applies_to = $7, severity = $8, updated_at = $9 \
         WHERE id = $10 AND organization_id = $11"
    };
    let done = sqlx::query(sql)
        .bind(&v.name)
        .bind(&v.description)
        .bind(v.enabled)
        .bind(v.kind.as_str())
        .bind(v.config.to_string())
        .bind(v.action.as_str())
        .bind(v.applies_to.as_str())
        .bind(v.severity.as_str())
        .bind(&now)
        .bind(id)
        .bind(access.org_id())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("Policy not found"));
    }
    access
        .emit(
            &mut tx,
            event,
            ("policy", id),
            json!({"id": id, "name": v.name, "type": v.kind.as_str(), "action": v.action.as_str()}),
        )
        .await?;
    tx.commit().await?;
    state.bus.publish(&format!("org:{}", access.org_id())).await;
    load(&state.db, access.org_id(), id).await
}

pub async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesManage>,
    Json(body): Json<PolicyInput>,
) -> Result<impl IntoResponse, Error> {
    let valid = body.validate()?;
    let id = crate::ids::new_id("pol");
    let policy = save(&state, &access, &id, valid, "policy.created").await?;
    Ok((StatusCode::CREATED, axum::Json(policy)))
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesRead>,
    page: Page,
) -> Result<impl IntoResponse, Error> {
    let mut sql = Sql::new(" FROM policies WHERE organization_id = ");
    sql.bind(access.org_id().to_string());
    let select = format!("SELECT {COLUMNS}");
    let list = page
        .fetch(&state.db, "policies", &select, &sql, "id", Policy::from_row)
        .await?;
    Ok(axum::Json(list))
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesRead>,
    Path((_, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, Error> {
    Ok(axum::Json(load(&state.db, access.org_id(), &id).await?))
}

pub async fn replace(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesManage>,
    Path((_, id)): Path<(String, String)>,
    Json(body): Json<PolicyInput>,
) -> Result<impl IntoResponse, Error> {
    let valid = body.validate()?;
    Ok(axum::Json(
        save(&state, &access, &id, valid, "policy.updated").await?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesManage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let mut tx = crate::events::begin_write(&state.db).await?;
    let done = sqlx::query("DELETE FROM policies WHERE id = $1 AND organization_id = $2")
        .bind(&id)
        .bind(access.org_id())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found("Policy not found"));
    }
    access
        .emit(
            &mut tx,
            "policy.deleted",
            ("policy", &id),
            json!({"id": id}),
        )
        .await?;
    tx.commit().await?;
    state.bus.publish(&format!("org:{}", access.org_id())).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A compiled matcher is trusted this long even without an invalidation (a safety net for a
/// missed bus message), like the key cache.
const MAX_AGE: Duration = crate::keys::cache::MAX_AGE;
const MAX_ORGS: usize = 10_000;

/// Each organization's rules compiled into one [`Matcher`], built on first use and dropped by
/// the bus (`org:<id>`, `all`) when a rule changes on any node.
#[derive(Default)]
pub struct MatcherCache {
    map: RwLock<HashMap<String, (Instant, Arc<Matcher>)>>,
}

impl std::fmt::Debug for MatcherCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MatcherCache")
    }
}

impl MatcherCache {
    pub fn invalidate_org(&self, org_id: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(org_id);
    }

    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The organization's matcher: cached, or compiled from its enabled rules.
    pub async fn get(&self, db: &Db, org_id: &str) -> Result<Arc<Matcher>, Error> {
        if let Some((at, m)) = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(org_id)
        {
            if at.elapsed() < MAX_AGE {
                return Ok(m.clone());
            }
        }
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM policies WHERE organization_id = $1 AND enabled = TRUE ORDER BY id"
        ))
        .bind(org_id)
        .fetch_all(db.pool())
        .await?;
        let rules = rows
            .iter()
            .map(|r| Policy::from_row(r).map(Policy::rule))
            .collect::<Result<Vec<_>, _>>()?;
        let matcher = Arc::new(Matcher::compile(&rules));
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ORGS {
            map.clear();
        }
        map.insert(org_id.to_string(), (Instant::now(), matcher.clone()));
        Ok(matcher)
    }
}
