//! Organizations in the database (`organizations`), and the lookups the `OrgAccess` extractor
//! makes. Reads take the pool; writes take the caller's transaction (see
//! [`crate::events::change`]). Knows nothing of HTTP, events or caches.

use serde_json::Value;
use sqlx::{AnyConnection, Row};

use crate::ids::{OrgId, UserId};
use crate::wire::Standing;
use crate::{
    error::{Error, ResultExt},
    events::change::found,
    http::pagination::{has_id, List, Page},
    storage::{self, Backend, Db, RowExt, Sql},
};

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Organization {
    pub id: OrgId,
    /// Always `organization` (seed 003's resource type, additive).
    pub object: &'static str,
    pub name: String,
    pub slug: String,
    pub description: String,
    pub website: String,
    pub timezone: String,
    pub status: Standing,
    pub plan: String,
    pub settings: Value,
    pub members_count: i64,
    pub projects_count: i64,
    pub created_at: String,
    pub updated_at: String,
    /// The caller's role, on lists of "my" organizations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

has_id!(Organization);

/// The columns of an organization (alias `o`) with its counts. `members_count` counts what the
/// members list does: the members and the live (pending, unexpired) invitations.
pub fn org_select(backend: Backend) -> String {
    format!(
        "SELECT o.id, o.name, o.slug, o.description, o.website, o.timezone, \
         o.status, o.plan, o.settings, o.created_at, o.updated_at, \
         (SELECT COUNT(*) FROM memberships mc WHERE mc.organization_id = o.id) + \
         (SELECT COUNT(*) FROM invitations ic WHERE ic.organization_id = o.id \
         AND ic.status = 'pending' AND ic.expires_at > {now}) AS members_count, \
         (SELECT COUNT(*) FROM projects pc WHERE pc.organization_id = o.id) AS projects_count",
        now = backend.now_text()
    )
}

impl Organization {
    pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Organization {
            id: r.try_get("id")?,
            object: "organization",
            name: r.try_get("name")?,
            slug: r.try_get("slug")?,
            description: r.try_get("description")?,
            website: r.try_get("website")?,
            timezone: r.try_get("timezone")?,
            status: r.get_parsed("status")?,
            plan: r.try_get("plan")?,
            settings: r.get_json("settings")?,
            members_count: r.try_get("members_count")?,
            projects_count: r.try_get("projects_count")?,
            created_at: r.get_time("created_at")?,
            updated_at: r.get_time("updated_at")?,
            role: r.try_get::<Option<String>, _>("role").ok().flatten(),
        })
    }
}

pub async fn get(db: &Db, id: &str) -> Result<Organization, Error> {
    let row = sqlx::query(&format!(
        "{} FROM organizations o WHERE o.id = $1",
        org_select(db.backend())
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("Organization not found"))?;
    Ok(Organization::from_row(&row)?)
}

pub async fn name(db: &Db, id: &str) -> Result<String, Error> {
    Ok(
        sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_one(db.pool())
            .await?,
    )
}

/// One page of the organizations the user belongs to, each with the user's role.
pub async fn list_of_member(
    db: &Db,
    user_id: &UserId,
    page: &Page,
) -> Result<List<Organization>, Error> {
    let mut filter = Sql::new(
        " FROM organizations o JOIN memberships m ON m.organization_id = o.id WHERE m.user_id = ",
    );
    filter.bind(user_id.to_string());
    let select = format!("{}, m.role AS role", org_select(db.backend()));
    page.fetch(
        db,
        "organizations",
        &select,
        &filter,
        "o.id",
        Organization::from_row,
    )
    .await
}

pub async fn slug_taken(db: &Db, slug: &str) -> Result<bool, Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations WHERE slug = $1")
        .bind(slug)
        .fetch_one(db.pool())
        .await?;
    Ok(n > 0)
}

/// A new organization (validated, trimmed), active.
pub struct NewOrganization<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub slug: &'a str,
    pub description: &'a str,
    pub website: &'a str,
    pub timezone: &'a str,
    pub plan: &'a str,
    pub settings: &'a Value,
}

/// Stores a new organization; a conflict if its slug is taken.
pub async fn insert(tx: &mut AnyConnection, o: NewOrganization<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO organizations (id, name, slug, description, website, timezone, status, plan, settings, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $9)",
    )
    .bind(o.id)
    .bind(o.name)
    .bind(o.slug)
    .bind(o.description)
    .bind(o.website)
    .bind(o.timezone)
    .bind(o.plan)
    .bind(o.settings.to_string())
    .bind(storage::now())
    .execute(&mut *tx)
    .await
    .on_unique("organizations", "slug", || Error::conflict("This slug is taken"))?;
    Ok(())
}

/// The fields of an update (validated, trimmed); `None` keeps the stored value. `settings` is
/// the whole new settings object.
#[derive(Debug, Default)]
pub struct OrganizationChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub website: Option<String>,
    pub timezone: Option<String>,
    pub settings: Option<Value>,
    pub status: Option<Standing>,
}

/// Applies an update; not found if there is no such organization.
pub async fn update(tx: &mut AnyConnection, id: &str, c: OrganizationChanges) -> Result<(), Error> {
    let mut sql = Sql::new("UPDATE organizations SET updated_at = ");
    sql.bind(storage::now());
    if let Some(v) = c.name {
        sql.push(", name = ").bind(v);
    }
    if let Some(v) = c.description {
        sql.push(", description = ").bind(v);
    }
    if let Some(v) = c.website {
        sql.push(", website = ").bind(v);
    }
    if let Some(v) = c.timezone {
        sql.push(", timezone = ").bind(v);
    }
    if let Some(v) = c.settings {
        sql.push(", settings = ").bind(v.to_string());
    }
    if let Some(v) = c.status {
        sql.push(", status = ").bind(v.as_str().to_string());
    }
    sql.push(" WHERE id = ").bind(id.to_string());
    let done = sql.query().execute(&mut *tx).await?;
    found(done, "Organization not found")
}

/// Deletes an organization (its rows go with it).
pub async fn delete(tx: &mut AnyConnection, id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM organizations WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

// ---- lookups of the access extractor --------------------------------------------------------

/// An organization as access decisions need it.
#[derive(Debug, Clone)]
pub struct OrgRow {
    pub id: OrgId,
    pub slug: String,
    pub status: Standing,
    pub settings: Value,
    pub plan: String,
}

impl OrgRow {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(OrgRow {
            id: r.try_get("id")?,
            slug: r.try_get("slug")?,
            status: r.get_parsed("status")?,
            settings: r.get_json("settings")?,
            plan: r.try_get("plan")?,
        })
    }
}

/// The organization named by `id_or_slug`, if any.
pub async fn by_id_or_slug(db: &Db, id_or_slug: &str) -> Result<Option<OrgRow>, Error> {
    let row = sqlx::query(
        "SELECT id, slug, status, settings, plan FROM organizations WHERE id = $1 OR slug = $1",
    )
    .bind(id_or_slug)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.as_ref().map(OrgRow::from_row).transpose()?)
}

/// The organization named by `id_or_slug` and the user's role in it (as stored), if the user
/// is a member.
pub async fn with_membership(
    db: &Db,
    user_id: &UserId,
    id_or_slug: &str,
) -> Result<Option<(OrgRow, String)>, Error> {
    let row = sqlx::query(
        "SELECT o.id, o.slug, o.status, o.settings, o.plan, m.role FROM organizations o \
         JOIN memberships m ON m.organization_id = o.id AND m.user_id = $1 \
         WHERE o.id = $2 OR o.slug = $2",
    )
    .bind(user_id)
    .bind(id_or_slug)
    .fetch_optional(db.pool())
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some((OrgRow::from_row(&r)?, r.try_get("role")?)))
}
