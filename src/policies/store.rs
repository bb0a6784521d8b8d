//! Policy rules in the database (`policies`), and each organization's rules compiled into one
//! [`Matcher`], cached and dropped by the bus (`org:<id>`, `all`) when a rule changes on any
//! node. Reads take the pool; writes take the caller's transaction (see
//! [`crate::events::change`]).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;
use sqlx::{AnyConnection, Row};

use super::{
    engine::Matcher,
    rules::{Action, AppliesTo, Kind, Rule, Severity},
};
use crate::ids::PolicyId;
use crate::{
    error::Error,
    events::change::found,
    http::pagination::{HasId, List, Page},
    storage::{self, Db, RowExt, Sql},
};

/// At most this many rules per organization (each compiles into the one matcher).
pub const MAX_RULES: i64 = 200;

/// A stored policy as the API shows it: its rule (what the engine consumes) and what only
/// people read.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Policy {
    #[serde(flatten)]
    pub rule: Rule,
    pub organization_id: crate::ids::OrgId,
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
}

impl HasId for Policy {
    fn id(&self) -> &str {
        &self.rule.id
    }
}

const COLUMNS: &str = "id, organization_id, name, description, enabled, type, config, action, \
                       applies_to, severity, created_at, updated_at";

impl Policy {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Policy {
            rule: Rule {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                enabled: r.get_bool("enabled")?,
                kind: r.get_parsed("type")?,
                config: r.get_json("config")?,
                action: r.get_parsed("action")?,
                applies_to: r.get_parsed("applies_to")?,
                severity: r.get_parsed("severity")?,
            },
            organization_id: r.try_get("organization_id")?,
            description: r.try_get("description")?,
            created_at: r.get_time("created_at")?,
            updated_at: r.get_time("updated_at")?,
        })
    }

    fn rule(self) -> Rule {
        self.rule
    }
}

/// A validated rule, ready to store.
#[derive(Debug)]
pub struct PolicyFields {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub kind: Kind,
    pub config: Value,
    pub action: Action,
    pub applies_to: AppliesTo,
    pub severity: Severity,
}

pub async fn load(db: &Db, org_id: &str, id: &PolicyId) -> Result<Policy, Error> {
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

/// One page of the organization's rules.
pub async fn list(db: &Db, org_id: &str, page: &Page) -> Result<List<Policy>, Error> {
    let mut sql = Sql::new(" FROM policies WHERE organization_id = ");
    sql.bind(org_id.to_string());
    let select = format!("SELECT {COLUMNS}");
    page.fetch(db, "policies", &select, &sql, "id", Policy::from_row)
        .await
}

/// Every rule of the organization (at most [`MAX_RULES`]), enabled or not, in id order: what
/// the engine compiles.
pub async fn rules(db: &Db, org_id: &str) -> Result<Vec<Rule>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM policies WHERE organization_id = $1 ORDER BY id"
    ))
    .bind(org_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| Policy::from_row(r).map(Policy::rule))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Inserts a new rule, unless the organization already has [`MAX_RULES`] (refused naming
/// `type`).
pub async fn insert(
    tx: &mut AnyConnection,
    org_id: &str,
    id: &PolicyId,
    v: &PolicyFields,
) -> Result<(), Error> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM policies WHERE organization_id = $1")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    if count >= MAX_RULES {
        return Err(Error::invalid_field(
            "type",
            format!("an organization has at most {MAX_RULES} policies"),
        ));
    }
    write(
        tx,
        "INSERT INTO policies (name, description, enabled, type, config, action, applies_to, \
         severity, updated_at, id, organization_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $9)",
        org_id,
        id,
        v,
    )
    .await
}

/// Replaces a rule; not found if there is none.
pub async fn replace(
    tx: &mut AnyConnection,
    org_id: &str,
    id: &PolicyId,
    v: &PolicyFields,
) -> Result<(), Error> {
    write(
        tx,
        "UPDATE policies SET name = $1, description = $2, enabled = $3, type = $4, config = $5, \
         action = $6, applies_to = $7, severity = $8, updated_at = $9 \
         WHERE id = $10 AND organization_id = $11",
        org_id,
        id,
        v,
    )
    .await
}

/// Runs the insert or the update, which take the same values in the same order.
async fn write(
    tx: &mut AnyConnection,
    sql: &str,
    org_id: &str,
    id: &str,
    v: &PolicyFields,
) -> Result<(), Error> {
    let done = sqlx::query(sql)
        .bind(&v.name)
        .bind(&v.description)
        .bind(v.enabled)
        .bind(v.kind.as_str())
        .bind(v.config.to_string())
        .bind(v.action.as_str())
        .bind(v.applies_to.as_str())
        .bind(v.severity.as_str())
        .bind(storage::now())
        .bind(id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    found(done, "Policy not found")
}

pub async fn delete(tx: &mut AnyConnection, org_id: &str, id: &PolicyId) -> Result<(), Error> {
    let done = sqlx::query("DELETE FROM policies WHERE id = $1 AND organization_id = $2")
        .bind(id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    found(done, "Policy not found")
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
        let mut rules = self::rules(db, org_id).await?;
        rules.retain(|r| r.enabled);
        let matcher = Arc::new(Matcher::compile(&rules));
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ORGS {
            map.clear();
        }
        map.insert(org_id.to_string(), (Instant::now(), matcher.clone()));
        Ok(matcher)
    }
}
