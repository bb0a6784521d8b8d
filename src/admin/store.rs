//! The platform administrator's reads and writes across organizations and users: the user and
//! organization lists with their filters, a user's organizations, an organization's members,
//! deleting a user, setting an organization's status. Reads take the pool; writes take the
//! caller's transaction (see [`crate::events::change::Change`]). A user's own rows are read
//! through [`crate::auth::users`], an organization's through [`crate::orgs::organizations`].
//!
//! Billing's admin reads (invoices to pay or void, issue #23) belong in the billing stores, not
//! here: this store holds what only the platform admin reads across organizations.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::ids::UserId;
use crate::wire::Standing;
use crate::{
    auth::users::{User, USER_COLUMNS},
    error::Error,
    events::change::found,
    http::pagination::{List, Page},
    orgs::{
        organizations::{org_select, Organization},
        projects::{self, Project},
    },
    storage::{self, Db, RowExt, Sql},
};

/// `%term%` for LIKE (lower-cased), with the pattern characters of the term escaped.
pub fn like_pattern(term: &str) -> String {
    format!("%{}%", escape_like(&term.trim().to_lowercase()))
}

/// Escapes LIKE's pattern characters (use with `ESCAPE '\\'`).
pub fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Appends ` AND (<a> LIKE p OR <b> LIKE p)` for a non-blank search term.
fn search(sql: &mut Sql, term: Option<&str>, a: &str, b: &str) {
    if let Some(q) = term.filter(|q| !q.trim().is_empty()) {
        let pattern = like_pattern(q);
        sql.push(&format!(" AND ({a} LIKE "))
            .bind(pattern.clone())
            .push(&format!(" ESCAPE '\\' OR {b} LIKE "))
            .bind(pattern)
            .push(" ESCAPE '\\')");
    }
}

/// One page of users, newest first: matching `q` in the email or name, in `status`.
pub async fn users(
    db: &Db,
    q: Option<&str>,
    status: Option<String>,
    page: &Page,
) -> Result<List<User>, Error> {
    let mut filter = Sql::new(" FROM users WHERE 1 = 1");
    search(&mut filter, q, "email", "LOWER(name)");
    if let Some(status) = status {
        filter.and("status = ?", status);
    }
    let select = format!("SELECT {USER_COLUMNS}");
    page.fetch(db, "users", &select, &filter, "id DESC", User::from_row)
        .await
}

/// One organization a user belongs to, with the user's role there.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct UserOrganization {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub status: String,
    pub role: String,
    pub joined_at: String,
}

pub async fn user_organizations(db: &Db, user_id: &UserId) -> Result<Vec<UserOrganization>, Error> {
    let rows = sqlx::query(
        "SELECT o.id, o.name, o.slug, o.status, m.role, m.created_at FROM memberships m \
         JOIN organizations o ON o.id = m.organization_id WHERE m.user_id = $1 ORDER BY o.id",
    )
    .bind(user_id)
    .fetch_all(db.pool())
    .await?;
    let organizations = rows
        .iter()
        .map(|r| {
            Ok(UserOrganization {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                slug: r.try_get("slug")?,
                status: r.try_get("status")?,
                role: r.try_get("role")?,
                joined_at: r.get_time("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(organizations)
}

/// Deletes a user (their memberships and sessions go with them); not found if there is none.
pub async fn delete_user(tx: &mut AnyConnection, id: &str) -> Result<(), Error> {
    let done = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    found(done, "User not found")
}

/// One page of organizations, newest first: matching `q` in the name or slug, in `status`.
pub async fn organizations(
    db: &Db,
    q: Option<&str>,
    status: Option<Standing>,
    page: &Page,
) -> Result<List<Organization>, Error> {
    let mut filter = Sql::new(" FROM organizations o WHERE 1 = 1");
    search(&mut filter, q, "LOWER(o.name)", "o.slug");
    if let Some(status) = status {
        filter.and("o.status = ?", status.as_str());
    }
    page.fetch(
        db,
        "organizations",
        &org_select(db.backend()),
        &filter,
        "o.id DESC",
        Organization::from_row,
    )
    .await
}

/// One member of an organization, as the platform admin sees them.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct OrganizationMember {
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub joined_at: String,
}

/// Every member of the organization, first joined first.
pub async fn organization_members(db: &Db, org_id: &str) -> Result<Vec<OrganizationMember>, Error> {
    let rows = sqlx::query(
        "SELECT u.id, u.email, u.name, m.role, m.created_at FROM memberships m \
         JOIN users u ON u.id = m.user_id WHERE m.organization_id = $1 ORDER BY m.created_at",
    )
    .bind(org_id)
    .fetch_all(db.pool())
    .await?;
    let members = rows
        .iter()
        .map(|r| {
            Ok(OrganizationMember {
                id: r.try_get("id")?,
                email: r.try_get("email")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                joined_at: r.get_time("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(members)
}

/// Sets an organization's status (`active` or `suspended`); not found if there is none.
pub async fn set_organization_status(
    tx: &mut AnyConnection,
    id: &str,
    status: Standing,
) -> Result<(), Error> {
    let done = sqlx::query("UPDATE organizations SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(status.as_str())
        .bind(storage::now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    found(done, "Organization not found")
}

/// One page of projects across organizations, or of one organization's.
pub async fn projects(
    db: &Db,
    organization_id: Option<String>,
    page: &Page,
) -> Result<List<Project>, Error> {
    let mut filter = Sql::new(" FROM projects WHERE 1 = 1");
    if let Some(org) = organization_id {
        filter.and("organization_id = ?", org);
    }
    projects::list_projects(db, &filter, page).await
}

/// The platform at a glance (`GET /v1/admin/stats`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PlatformStats {
    pub organizations: OrganizationCounts,
    pub users: UserCounts,
    pub api_keys: KeyCounts,
    pub gateway: GatewayTotals,
}

#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
pub struct OrganizationCounts {
    pub total: i64,
    pub active: i64,
    pub suspended: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct UserCounts {
    pub total: i64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct KeyCounts {
    /// Keys that authenticate now: `active` and not past their expiry.
    pub active: i64,
}

/// Every organization's gateway traffic since `since` (both environments), summed from the
/// hourly rollups.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct GatewayTotals {
    /// The start of the oldest hour counted: the current hour and the 23 before it.
    pub since: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: f64,
}

/// The counts of organizations (by status), users and live API keys, and the gateway totals of
/// the last 24 hours from the usage rollups (`usage_hourly`, by its `hour` index): never a scan
/// of the usage log.
pub async fn platform_stats(db: &Db) -> Result<PlatformStats, Error> {
    let pool = db.pool();
    let mut organizations = OrganizationCounts::default();
    for row in sqlx::query("SELECT status, COUNT(*) AS n FROM organizations GROUP BY status")
        .fetch_all(pool)
        .await?
    {
        let n: i64 = row.try_get("n")?;
        organizations.total += n;
        match row.try_get::<String, _>("status")?.as_str() {
            "active" => organizations.active += n,
            "suspended" => organizations.suspended += n,
            _ => {}
        }
    }
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(pool)
        .await?;
    let now = chrono::Utc::now();
    let keys: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_keys WHERE status = 'active' \
         AND (expires_at IS NULL OR expires_at > $1)",
    )
    .bind(storage::format_time(now))
    .fetch_one(pool)
    .await?;
    let since =
        crate::gateway::rollup::hour_of(&storage::format_time(now - chrono::Duration::hours(23)));
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) AS requests, \
         CAST(COALESCE(SUM(errors), 0) AS BIGINT) AS errors, \
         CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt, \
         CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion, \
         COALESCE(SUM(cost_usd), 0.0) AS cost FROM usage_hourly WHERE hour >= $1",
    )
    .bind(&since)
    .fetch_one(pool)
    .await?;
    let (prompt, completion): (i64, i64) = (row.try_get("prompt")?, row.try_get("completion")?);
    let cost: f64 = row.try_get("cost")?;
    Ok(PlatformStats {
        organizations,
        users: UserCounts { total: users },
        api_keys: KeyCounts { active: keys },
        gateway: GatewayTotals {
            since: storage::api_time(&since),
            requests: row.try_get("requests")?,
            errors: row.try_get("errors")?,
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cost_usd: (cost * 1e9).round() / 1e9,
        },
    })
}
