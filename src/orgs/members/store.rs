//! Members and invitations in the database (`memberships`, `invitations`), and the membership
//! lock that serialises changes to an organization's memberships. Reads take the pool; writes
//! take the caller's transaction (see [`crate::events::change`]). Knows nothing of HTTP, events
//! or caches.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::ids::InvitationId;
use crate::ids::UserId;
use crate::{
    admin::like_pattern,
    error::Error,
    http::pagination::{has_id, List, Page},
    orgs::roles::Role,
    storage::{self, Backend, Db, RowExt, Sql},
};

crate::wire::string_enum! {
    /// Whether a member of the list has joined or is still invited.
    MemberStatus, "status" {
        Active => "active",
        PendingInvite => "pending_invite",
    }
}

crate::wire::string_enum! {
    /// An invitation's state. `expired` is never stored: it is a `pending` invitation past its
    /// `expires_at`.
    InvitationStatus, "status" {
        Pending => "pending",
        Accepted => "accepted",
        Revoked => "revoked",
        Expired => "expired",
    }
}

// ---- members ------------------------------------------------------------------------------

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Member {
    /// The user's id; for a pending invitee, the invitation's id.
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub status: MemberStatus,
    pub created_at: String,
    pub last_login: Option<String>,
    pub mfa_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invitation_sent_at: Option<String>,
}

has_id!(Member);

impl Member {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Member {
            id: r.try_get("id")?,
            email: r.try_get("email")?,
            name: r.try_get("name")?,
            role: r.get_parsed("role")?,
            status: r.get_parsed("status")?,
            created_at: r.get_time("created_at")?,
            last_login: r.get_time_opt("last_login")?,
            mfa_enabled: r.get_bool("mfa_enabled")?,
            invitation_sent_at: r.get_time_opt("sent_at")?,
        })
    }
}

/// Which members a list shows.
#[derive(Debug, Default)]
pub struct MemberFilter {
    pub role: Option<Role>,
    /// Matches the email or (case-insensitively) the name.
    pub q: Option<String>,
}

/// One page of the organization's members and live invitees (as `pending_invite`), oldest
/// first.
pub async fn list(
    db: &Db,
    org_id: &str,
    filter: MemberFilter,
    page: &Page,
) -> Result<List<Member>, Error> {
    let mut sql = Sql::new(
        " FROM (SELECT u.id AS id, u.email AS email, u.name AS name, m.role AS role, 'active' AS status, \
         m.created_at AS created_at, u.last_login AS last_login, u.mfa_enabled AS mfa_enabled, NULL AS sent_at \
         FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.organization_id = ",
    );
    sql.bind(org_id.to_string())
        .push(
            " UNION ALL SELECT i.id, i.email, i.name, i.role, 'pending_invite', i.created_at, NULL, FALSE, i.sent_at \
             FROM invitations i WHERE i.organization_id = $1 AND i.status = 'pending' AND i.expires_at > ",
        )
        .bind(storage::now())
        .push(") t WHERE 1 = 1");
    if let Some(role) = filter.role {
        sql.and("t.role = ?", role.as_str());
    }
    if let Some(q) = filter.q.as_deref().filter(|q| !q.trim().is_empty()) {
        let p = like_pattern(q);
        sql.push(" AND (t.email LIKE ")
            .bind(p.clone())
            .push(" ESCAPE '\\' OR LOWER(t.name) LIKE ")
            .bind(p)
            .push(" ESCAPE '\\')");
    }
    let total: i64 = Sql::prefixed("SELECT COUNT(*)", &sql)
        .query_scalar()
        .fetch_one(db.pool())
        .await?;
    let mut q = Sql::prefixed("SELECT t.*", &sql);
    page.apply_offset(&mut q, "t.created_at, t.id");
    let rows = q.query().fetch_all(db.pool()).await?;
    let members = rows
        .iter()
        .map(Member::from_row)
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(List::from_rows("members", members, total, page))
}

/// Whether a user with this (normalized) email is a member of the organization.
pub async fn has_member_with_email(db: &Db, org_id: &str, email: &str) -> Result<bool, Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.organization_id = $1 AND u.email = $2",
    )
    .bind(org_id)
    .bind(email)
    .fetch_one(db.pool())
    .await?;
    Ok(n > 0)
}

/// The seats the organization uses: its members and its live invitations.
pub async fn seats(db: &Db, org_id: &str) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM memberships WHERE organization_id = $1) + \
         (SELECT COUNT(*) FROM invitations WHERE organization_id = $1 AND status = 'pending' AND expires_at > $2)",
    )
    .bind(org_id)
    .bind(storage::now())
    .fetch_one(db.pool())
    .await?)
}

/// Whether the user is a member of the organization (inside a write transaction).
pub async fn is_member(
    tx: &mut AnyConnection,
    org_id: &str,
    user_id: &UserId,
) -> Result<bool, Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(org_id)
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(n > 0)
}

/// Makes the user a member of the organization with `role`.
pub async fn insert_membership(
    tx: &mut AnyConnection,
    org_id: &str,
    user_id: &UserId,
    role: Role,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO memberships (id, organization_id, user_id, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
        .bind(crate::ids::MembershipId::generate())
        .bind(org_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(storage::now())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The user's role in the organization, if they are a member (a stored role this build does
/// not know counts as none).
pub async fn role_of(
    conn: &mut AnyConnection,
    org_id: &str,
    user_id: &UserId,
) -> Result<Option<Role>, Error> {
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(org_id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(role.as_deref().and_then(Role::parse))
}

/// The user's role in the organization, if they are a member (read from the pool).
pub async fn member_role(db: &Db, org_id: &str, user_id: &UserId) -> Result<Option<Role>, Error> {
    let mut conn = db.pool().acquire().await?;
    role_of(&mut conn, org_id, user_id).await
}

/// The organization's longest-standing owner (the earliest owner membership), if it has one.
pub async fn longest_standing_owner(db: &Db, org_id: &str) -> Result<Option<UserId>, Error> {
    let id: Option<String> = sqlx::query_scalar(
        "SELECT user_id FROM memberships WHERE organization_id = $1 AND role = 'owner' \
         ORDER BY created_at, id LIMIT 1",
    )
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(id.map(UserId))
}

async fn owners(conn: &mut AnyConnection, org_id: &str) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND role = 'owner'",
    )
    .bind(org_id)
    .fetch_one(&mut *conn)
    .await?)
}

/// A member as a role change or removal sees them, under the membership lock.
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    pub role: Role,
    /// The member is the organization's only owner.
    pub last_owner: bool,
}

/// A member's role and whether they are the organization's only owner, read under the lock of
/// [`lock_memberships`]; not found if the user is no member.
pub async fn membership(
    tx: &mut AnyConnection,
    org_id: &str,
    user_id: &UserId,
) -> Result<Membership, Error> {
    let role = role_of(tx, org_id, user_id)
        .await?
        .ok_or_else(|| Error::not_found("Member not found"))?;
    let owners = owners(tx, org_id).await?;
    Ok(Membership {
        role,
        last_owner: role == Role::Owner && owners <= 1,
    })
}

pub async fn set_role(
    tx: &mut AnyConnection,
    org_id: &str,
    user_id: &UserId,
    role: Role,
) -> Result<(), Error> {
    sqlx::query("UPDATE memberships SET role = $1, updated_at = $2 WHERE organization_id = $3 AND user_id = $4")
        .bind(role.as_str())
        .bind(storage::now())
        .bind(org_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub async fn delete_membership(
    tx: &mut AnyConnection,
    org_id: &str,
    user_id: &UserId,
) -> Result<(), Error> {
    sqlx::query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Takes an organization's membership lock inside a write transaction: on PostgreSQL the
/// organization's row (`FOR NO KEY UPDATE`); on SQLite, the write transaction already holds the
/// database's write lock.
pub async fn lock_memberships(
    tx: &mut AnyConnection,
    backend: Backend,
    org_id: &str,
) -> Result<(), Error> {
    storage::lock_for_change(tx, backend, "organizations", org_id).await?;
    Ok(())
}

/// The organizations whose only owner is `user_id`, read under their membership locks (taken in
/// id order), inside a write transaction that is about to remove the user.
pub async fn sole_owner_of(
    tx: &mut AnyConnection,
    backend: Backend,
    user_id: &UserId,
) -> Result<Vec<String>, Error> {
    let owned: Vec<String> = sqlx::query_scalar(
        "SELECT organization_id FROM memberships WHERE user_id = $1 AND role = 'owner' \
         ORDER BY organization_id",
    )
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut sole = Vec::new();
    for org in owned {
        lock_memberships(tx, backend, &org).await?;
        if owners(tx, &org).await? <= 1 {
            sole.push(org);
        }
    }
    Ok(sole)
}

// ---- invitations --------------------------------------------------------------------------

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Invitation {
    pub id: InvitationId,
    pub organization_id: crate::ids::OrgId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub status: InvitationStatus,
    pub invited_by: Option<String>,
    pub created_at: String,
    /// When it was last sent (seed 000's invitations list names it `sent_at`)…
    pub sent_at: String,
    /// … and the same time under the name the pending member carries (SPEC §3).
    pub invitation_sent_at: String,
    pub expires_at: String,
    pub accepted_at: Option<String>,
    pub revoked_at: Option<String>,
}

has_id!(Invitation);

const INVITATION_COLUMNS: &str =
    "id, organization_id, email, name, role, status, invited_by, created_at, \
     sent_at, expires_at, accepted_at, revoked_at";

/// The stored status, `expired` for a pending invitation past `expires_at`.
fn status_at(r: &sqlx::any::AnyRow, expires_at: &str) -> Result<InvitationStatus, sqlx::Error> {
    let status: InvitationStatus = r.get_parsed("status")?;
    Ok(
        if status == InvitationStatus::Pending && *expires_at <= *storage::now() {
            InvitationStatus::Expired
        } else {
            status
        },
    )
}

impl Invitation {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        let expires_at: String = r.try_get("expires_at")?;
        Ok(Invitation {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            email: r.try_get("email")?,
            name: r.try_get("name")?,
            role: r.get_parsed("role")?,
            status: status_at(r, &expires_at)?,
            invited_by: r.try_get("invited_by")?,
            created_at: r.get_time("created_at")?,
            sent_at: r.get_time("sent_at")?,
            invitation_sent_at: r.get_time("sent_at")?,
            expires_at: storage::api_time(&expires_at),
            accepted_at: r.get_time_opt("accepted_at")?,
            revoked_at: r.get_time_opt("revoked_at")?,
        })
    }
}

pub async fn invitation(db: &Db, org_id: &str, id: &InvitationId) -> Result<Invitation, Error> {
    let row = sqlx::query(&format!(
        "SELECT {INVITATION_COLUMNS} FROM invitations WHERE id = $1 AND organization_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("Invitation not found"))?;
    Ok(Invitation::from_row(&row)?)
}

/// One page of the organization's invitations (of one status, if given), newest first.
pub async fn list_invitations(
    db: &Db,
    org_id: &str,
    status: Option<InvitationStatus>,
    page: &Page,
) -> Result<List<Invitation>, Error> {
    let mut sql = Sql::new(" FROM invitations WHERE organization_id = ");
    sql.bind(org_id.to_string());
    let now = storage::now();
    match status {
        None => {}
        Some(InvitationStatus::Pending) => {
            sql.and("status = ?", InvitationStatus::Pending.as_str())
                .and("expires_at > ?", now);
        }
        Some(InvitationStatus::Expired) => {
            sql.and("status = ?", InvitationStatus::Pending.as_str())
                .and("expires_at <= ?", now);
        }
        Some(s @ (InvitationStatus::Accepted | InvitationStatus::Revoked)) => {
            sql.and("status = ?", s.as_str());
        }
    }
    let select = format!("SELECT {INVITATION_COLUMNS}");
    page.fetch(
        db,
        "invitations",
        &select,
        &sql,
        "id DESC",
        Invitation::from_row,
    )
    .await
}

/// Whether a live (pending, unexpired) invitation exists for this email.
pub async fn has_live_invitation(db: &Db, org_id: &str, email: &str) -> Result<bool, Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM invitations WHERE organization_id = $1 AND email = $2 AND status = 'pending' AND expires_at > $3",
    )
    .bind(org_id)
    .bind(email)
    .bind(storage::now())
    .fetch_one(db.pool())
    .await?;
    Ok(n > 0)
}

/// An invitation to store (validated; its token only as a hash).
pub struct NewInvitation<'a> {
    pub id: &'a InvitationId,
    pub org_id: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub role: Role,
    pub token_hash: &'a str,
    pub invited_by: Option<&'a str>,
    pub expires_at: &'a str,
}

/// Stores a pending invitation, sent now.
pub async fn insert_invitation(tx: &mut AnyConnection, i: NewInvitation<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO invitations (id, organization_id, email, name, role, token_hash, status, invited_by, created_at, sent_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $8, $9)",
    )
    .bind(i.id)
    .bind(i.org_id)
    .bind(i.email)
    .bind(i.name)
    .bind(i.role.as_str())
    .bind(i.token_hash)
    .bind(i.invited_by)
    .bind(storage::now())
    .bind(i.expires_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Gives an invitation a new token and expiry, sent now, and makes it pending again.
pub async fn renew_invitation(
    db: &Db,
    id: &InvitationId,
    token_hash: &str,
    expires_at: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE invitations SET token_hash = $1, sent_at = $2, expires_at = $3, status = 'pending' WHERE id = $4")
        .bind(token_hash)
        .bind(storage::now())
        .bind(expires_at)
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Gives a pending invitation of the organization another role; whether it was pending.
pub async fn set_invitation_role(
    tx: &mut AnyConnection,
    org_id: &str,
    id: &InvitationId,
    role: Role,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE invitations SET role = $1 WHERE id = $2 AND organization_id = $3 AND status = 'pending'",
    )
    .bind(role.as_str())
    .bind(id)
    .bind(org_id)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes an invitation if it is still pending.
pub async fn revoke_invitation(tx: &mut AnyConnection, id: &InvitationId) -> Result<(), Error> {
    sqlx::query("UPDATE invitations SET status = 'revoked', revoked_at = $1 WHERE id = $2 AND status = 'pending'")
        .bind(storage::now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Marks a pending invitation accepted; whether this call did (`false`: it was used meanwhile).
pub async fn claim_invitation(tx: &mut AnyConnection, id: &InvitationId) -> Result<bool, Error> {
    let done = sqlx::query("UPDATE invitations SET status = 'accepted', accepted_at = $1 WHERE id = $2 AND status = 'pending'")
        .bind(storage::now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// An invitation as found by its token.
#[derive(Debug)]
pub struct TokenInvitation {
    pub id: InvitationId,
    pub organization_id: crate::ids::OrgId,
    pub email: String,
    pub role: Role,
    /// As stored (`pending`, `accepted` or `revoked`; never `expired`).
    pub status: InvitationStatus,
    /// As stored (compare with [`storage::now`]).
    pub expires_at: String,
}

/// The invitation whose token has this SHA-256, if any.
pub async fn by_token_hash(db: &Db, token_hash: &str) -> Result<Option<TokenInvitation>, Error> {
    let row = sqlx::query(
        "SELECT id, organization_id, email, role, status, expires_at FROM invitations WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db.pool())
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(TokenInvitation {
        id: r.try_get("id")?,
        organization_id: r.try_get("organization_id")?,
        email: r.try_get("email")?,
        role: r.get_parsed("role")?,
        status: r.get_parsed("status")?,
        expires_at: r.try_get("expires_at")?,
    }))
}
