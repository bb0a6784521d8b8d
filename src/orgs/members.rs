//! Members and invitations. Adding a member by email invites them (`pending_invite` until they
//! accept); only an owner grants or removes owner; the last owner can be neither demoted nor
//! removed. Invitations expire after 30 days and carry a single-use token by email.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

use crate::{
    admin::like_pattern,
    app::AppState,
    auth::{extract::AuthUser, users},
    crypto,
    error::{Error, FieldError},
    events::{emit_org, ActorContext},
    http::{
        extract::{Json, Path, Query},
        pagination::{HasId, List, Page},
    },
    mail::{self, Mail},
    orgs::{
        access::OrgAccess,
        roles::{perm, Permission, Role},
    },
    storage::{self, Db, RowExt, Sql},
};

pub const INVITATION_TTL_DAYS: i64 = 30;

#[derive(Debug, Serialize)]
pub struct Member {
    /// The user's id; for a pending invitee, the invitation's id.
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    /// `active` or `pending_invite`.
    pub status: String,
    pub created_at: String,
    pub last_login: Option<String>,
    pub mfa_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invitation_sent_at: Option<String>,
}

impl HasId for Member {
    fn id(&self) -> &str {
        &self.id
    }
}

fn parse_role(field: &str, role: &str) -> Result<Role, Error> {
    Role::parse(role).ok_or_else(|| {
        Error::invalid_field(field, "must be one of owner, admin, editor, member, viewer")
    })
}

#[derive(Debug, Deserialize)]
pub struct MemberFilter {
    role: Option<String>,
    q: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersRead>,
    page: Page,
    Query(filter): Query<MemberFilter>,
) -> Result<impl IntoResponse, Error> {
    let mut sql = Sql::new(
        " FROM (SELECT u.id AS id, u.email AS email, u.name AS name, m.role AS role, 'active' AS status, \
         m.created_at AS created_at, u.last_login AS last_login, u.mfa_enabled AS mfa_enabled, NULL AS sent_at \
         FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.organization_id = ",
    );
    sql.bind(access.org_id().to_string())
        .push(
            " UNION ALL SELECT i.id, i.email, i.name, i.role, 'pending_invite', i.created_at, NULL, FALSE, i.sent_at \
             FROM invitations i WHERE i.organization_id = $1 AND i.status = 'pending' AND i.expires_at > ",
        )
        .bind(storage::now())
        .push(") t WHERE 1 = 1");
    if let Some(role) = &filter.role {
        parse_role("role", role)?;
        sql.and("t.role = ?", role.clone());
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
        .fetch_one(state.db.pool())
        .await?;
    let mut q = Sql::prefixed("SELECT t.*", &sql);
    page.apply_offset(&mut q, "t.created_at, t.id");
    let rows = q.query().fetch_all(state.db.pool()).await?;
    let members = rows
        .iter()
        .map(|r| {
            Ok(Member {
                id: r.try_get("id")?,
                email: r.try_get("email")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                status: r.try_get("status")?,
                created_at: storage::api_time(&r.try_get::<String, _>("created_at")?),
                last_login: r
                    .try_get::<Option<String>, _>("last_login")?
                    .map(|t| storage::api_time(&t)),
                mfa_enabled: r.get_bool("mfa_enabled")?,
                invitation_sent_at: r
                    .try_get::<Option<String>, _>("sent_at")?
                    .map(|t| storage::api_time(&t)),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(axum::Json(List::from_rows(
        "members", members, total, &page,
    )))
}

// ---- invitations --------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct Invitation {
    pub id: String,
    pub organization_id: String,
    pub email: String,
    pub role: String,
    pub status: String,
    pub invited_by: Option<String>,
    pub created_at: String,
    pub invitation_sent_at: String,
    pub expires_at: String,
    pub accepted_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl HasId for Invitation {
    fn id(&self) -> &str {
        &self.id
    }
}

const INVITATION_COLUMNS: &str =
    "id, organization_id, email, role, status, invited_by, created_at, \
     sent_at, expires_at, accepted_at, revoked_at";

impl Invitation {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        let expires_at: String = r.try_get("expires_at")?;
        let mut status: String = r.try_get("status")?;
        if status == "pending" && expires_at <= storage::now() {
            status = "expired".into();
        }
        let opt = |c: &str| -> Result<Option<String>, sqlx::Error> {
            Ok(r.try_get::<Option<String>, _>(c)?
                .map(|t| storage::api_time(&t)))
        };
        Ok(Invitation {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            email: r.try_get("email")?,
            role: r.try_get("role")?,
            status,
            invited_by: r.try_get("invited_by")?,
            created_at: storage::api_time(&r.try_get::<String, _>("created_at")?),
            invitation_sent_at: storage::api_time(&r.try_get::<String, _>("sent_at")?),
            expires_at: storage::api_time(&expires_at),
            accepted_at: opt("accepted_at")?,
            revoked_at: opt("revoked_at")?,
        })
    }
}

fn expiry() -> String {
    storage::format_time(chrono::Utc::now() + chrono::Duration::days(INVITATION_TTL_DAYS))
}

fn new_token() -> (String, String) {
    let token = format!("invt_{}", crypto::random_base62(40));
    let hash = crypto::sha256_hex(token.as_bytes());
    (token, hash)
}

async fn org_name(db: &Db, org_id: &str) -> Result<String, Error> {
    Ok(
        sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
            .bind(org_id)
            .fetch_one(db.pool())
            .await?,
    )
}

fn send_invitation(state: &AppState, org_name: &str, email: &str, role: &str, token: &str) {
    let link = format!(
        "{}/accept-invitation?token={token}",
        state.config.public_url.trim_end_matches('/')
    );
    mail::send_later(
        &state.mailer,
        Mail {
            to: email.to_string(),
            subject: format!("You are invited to join {org_name} on Gatehouse"),
            body: format!(
                "You have been invited to join {org_name} as {role}.\n\nAccept within {INVITATION_TTL_DAYS} days: sign in and accept with this token,\nor register with it as invitation_token:\n\n{token}\n\n{link}\n"
            ),
        },
    );
}

/// Creates a pending invitation (refusing members and duplicates) and emails its token.
pub async fn invite<P>(
    state: &AppState,
    access: &OrgAccess<P>,
    email: &str,
    name: &str,
    role: &str,
) -> Result<Invitation, Error> {
    let email = users::normalize_email(email)?;
    let role = parse_role("role", role)?;
    access.may_grant(role)?;
    if name.chars().count() > 200 {
        return Err(Error::invalid_field(
            "name",
            "must be at most 200 characters",
        ));
    }
    let already: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.organization_id = $1 AND u.email = $2",
    )
    .bind(access.org_id())
    .bind(&email)
    .fetch_one(state.db.pool())
    .await?;
    if already > 0 {
        return Err(Error::conflict("This person is already a member"));
    }
    let now = storage::now();
    let pending: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM invitations WHERE organization_id = $1 AND email = $2 AND status = 'pending' AND expires_at > $3",
    )
    .bind(access.org_id())
    .bind(&email)
    .bind(&now)
    .fetch_one(state.db.pool())
    .await?;
    if pending > 0 {
        return Err(Error::conflict(
            "A pending invitation for this email exists; resend it instead",
        ));
    }
    // Members and pending invitations both count against the plan's members.
    let seats: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM memberships WHERE organization_id = $1) + \
         (SELECT COUNT(*) FROM invitations WHERE organization_id = $1 AND status = 'pending' AND expires_at > $2)",
    )
    .bind(access.org_id())
    .bind(&now)
    .fetch_one(state.db.pool())
    .await?;
    crate::billing::check_count_quota(state, access.org_id(), "members", "members", seats).await?;
    let id = crate::ids::new_id("inv");
    let (token, hash) = new_token();
    let mut tx = crate::events::begin_write(&state.db).await?;
    sqlx::query(
        "INSERT INTO invitations (id, organization_id, email, name, role, token_hash, status, invited_by, created_at, sent_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $8, $9)",
    )
    .bind(&id)
    .bind(access.org_id())
    .bind(&email)
    .bind(name.trim())
    .bind(role.as_str())
    .bind(&hash)
    .bind(access.creator_id())
    .bind(&now)
    .bind(expiry())
    .execute(&mut *tx)
    .await?;
    emit_org(
        &mut tx,
        &access.actor_context(),
        access.org_id(),
        "invitation.created",
        ("invitation", &id),
        json!({"id": id, "email": email, "role": role.as_str()}),
    )
    .await?;
    tx.commit().await?;
    send_invitation(
        state,
        &org_name(&state.db, access.org_id()).await?,
        &email,
        role.as_str(),
        &token,
    );
    get_invitation(&state.db, access.org_id(), &id).await
}

async fn get_invitation(db: &Db, org_id: &str, id: &str) -> Result<Invitation, Error> {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    email: String,
    #[serde(default)]
    name: String,
    role: String,
}

/// `POST …/members`: an invitation, shown as a pending member.
pub async fn add(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Json(body): Json<AddMember>,
) -> Result<impl IntoResponse, Error> {
    let inv = invite(&state, &access, &body.email, &body.name, &body.role).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": inv.id,
            "invitation_id": inv.id,
            "email": inv.email,
            "name": body.name.trim(),
            "role": inv.role,
            "status": "pending_invite",
            "invitation_sent_at": inv.invitation_sent_at,
            "expires_at": inv.expires_at,
        })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    email: String,
    role: String,
}

pub async fn create_invitation(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Json(body): Json<CreateInvitation>,
) -> Result<impl IntoResponse, Error> {
    let inv = invite(&state, &access, &body.email, "", &body.role).await?;
    Ok((StatusCode::CREATED, axum::Json(inv)))
}

#[derive(Debug, Deserialize)]
pub struct InvitationFilter {
    status: Option<String>,
}

pub async fn list_invitations(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    page: Page,
    Query(filter): Query<InvitationFilter>,
) -> Result<impl IntoResponse, Error> {
    let mut sql = Sql::new(" FROM invitations WHERE organization_id = ");
    sql.bind(access.org_id().to_string());
    let now = storage::now();
    match filter.status.as_deref() {
        None => {}
        Some("pending") => {
            sql.and("status = ?", "pending").and("expires_at > ?", now);
        }
        Some("expired") => {
            sql.and("status = ?", "pending").and("expires_at <= ?", now);
        }
        Some(s @ ("accepted" | "revoked")) => {
            sql.and("status = ?", s);
        }
        Some(_) => {
            return Err(Error::invalid_field(
                "status",
                "must be pending, accepted, revoked or expired",
            ))
        }
    }
    let select = format!("SELECT {INVITATION_COLUMNS}");
    let list = page
        .fetch(
            &state.db,
            "invitations",
            &select,
            &sql,
            "id DESC",
            Invitation::from_row,
        )
        .await?;
    Ok(axum::Json(list))
}

pub async fn resend_invitation(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, Error> {
    let inv = get_invitation(&state.db, access.org_id(), &id).await?;
    if inv.status == "accepted" || inv.status == "revoked" {
        return Err(Error::conflict(format!(
            "This invitation is {}",
            inv.status
        )));
    }
    let (token, hash) = new_token();
    let now = storage::now();
    sqlx::query("UPDATE invitations SET token_hash = $1, sent_at = $2, expires_at = $3, status = 'pending' WHERE id = $4")
        .bind(&hash)
        .bind(&now)
        .bind(expiry())
        .bind(&id)
        .execute(state.db.pool())
        .await?;
    send_invitation(
        &state,
        &org_name(&state.db, access.org_id()).await?,
        &inv.email,
        &inv.role,
        &token,
    );
    Ok(axum::Json(
        get_invitation(&state.db, access.org_id(), &id).await?,
    ))
}

pub async fn revoke_invitation(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let inv = get_invitation(&state.db, access.org_id(), &id).await?;
    if inv.status == "accepted" {
        return Err(Error::conflict("This invitation was already accepted"));
    }
    let mut tx = crate::events::begin_write(&state.db).await?;
    sqlx::query("UPDATE invitations SET status = 'revoked', revoked_at = $1 WHERE id = $2 AND status = 'pending'")
        .bind(storage::now())
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    emit_org(
        &mut tx,
        &access.actor_context(),
        access.org_id(),
        "invitation.revoked",
        ("invitation", &id),
        json!({"id": id, "email": inv.email}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A live invitation found by its token: `(id, organization_id, email, role)`.
pub async fn find_invitation(
    db: &Db,
    token: &str,
) -> Result<(String, String, String, String), Error> {
    let row = sqlx::query(
        "SELECT id, organization_id, email, role, status, expires_at FROM invitations WHERE token_hash = $1",
    )
    .bind(crypto::sha256_hex(token.trim().as_bytes()))
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("Invitation not found"))?;
    let status: String = row.try_get("status")?;
    if status != "pending" {
        return Err(Error::conflict(format!("This invitation was {status}")));
    }
    if row.try_get::<String, _>("expires_at")? <= storage::now() {
        return Err(Error::invalid_field("token", "the invitation has expired"));
    }
    Ok((
        row.try_get("id")?,
        row.try_get("organization_id")?,
        row.try_get("email")?,
        row.try_get("role")?,
    ))
}

/// Accepts an invitation for a user whose email matches it. The token came by email, so it
/// proves the address ([`users::email_proven`], in the same transaction): if the address was
/// unverified, the password set before is dropped and every session but `session_id` (the one
/// accepting) ends.
pub async fn accept(
    db: &Db,
    ctx: &ActorContext,
    token: &str,
    user_id: &str,
    user_email: &str,
    session_id: Option<&str>,
) -> Result<serde_json::Value, Error> {
    let (id, org_id, email, role) = find_invitation(db, token).await?;
    if users::fold_email(&email) != users::fold_email(user_email) {
        return Err(Error::forbidden(
            "This invitation was sent to another email address",
        ));
    }
    let now = storage::now();
    let mut tx = crate::events::begin_write(db).await?;
    let claimed = sqlx::query("UPDATE invitations SET status = 'accepted', accepted_at = $1 WHERE id = $2 AND status = 'pending'")
        .bind(&now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if claimed.rows_affected() != 1 {
        return Err(Error::conflict("This invitation was already used"));
    }
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(&org_id)
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    if exists > 0 {
        return Err(Error::conflict(
            "You are already a member of this organization",
        ));
    }
    sqlx::query("INSERT INTO memberships (id, organization_id, user_id, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
        .bind(crate::ids::new_id("mem"))
        .bind(&org_id)
        .bind(user_id)
        .bind(&role)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    let taken_back = users::email_proven(&mut tx, user_id, session_id).await?;
    emit_org(
        &mut tx,
        ctx,
        &org_id,
        "invitation.accepted",
        ("invitation", &id),
        json!({"id": id, "email": email, "user_id": user_id}),
    )
    .await?;
    emit_org(
        &mut tx,
        ctx,
        &org_id,
        "member.added",
        ("member", user_id),
        json!({"organization_id": org_id, "user_id": user_id, "role": role}),
    )
    .await?;
    tx.commit().await?;
    if taken_back {
        crate::events::record_security_event(
            db,
            ctx,
            crate::events::NewEvent::new("user.email_proven", "user", Some(user_id.to_string()))
                .metadata(json!({"proof": "invitation", "password_dropped": true, "sessions_ended": true})),
        )
        .await;
    }
    Ok(
        json!({ "organization_id": org_id, "user_id": user_id, "role": role, "status": "active", "invitation_id": id }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    token: String,
}

pub async fn accept_invitation(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: crate::http::request_meta::RequestMeta,
    Json(body): Json<AcceptInvitation>,
) -> Result<impl IntoResponse, Error> {
    let ctx = ActorContext::new(
        crate::events::Actor::User(auth.user.id.clone()),
        (&meta).into(),
    );
    let membership = accept(
        &state.db,
        &ctx,
        &body.token,
        &auth.user.id.0,
        &auth.user.email,
        Some(&auth.session_id),
    )
    .await?;
    Ok(axum::Json(membership))
}

// ---- role changes and removal --------------------------------------------------------------

/// Opens the write transaction of a change to an organization's memberships and takes the
/// organization's membership lock, so that "is this the last owner?" and the change it guards
/// cannot interleave with another such change (two owners demoting each other at once). On
/// PostgreSQL the lock is the organization's row (`FOR UPDATE`); on SQLite, `BEGIN IMMEDIATE`
/// already holds the database's write lock for the whole transaction.
async fn begin_membership_change(
    db: &Db,
    org_id: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, Error> {
    pause::before_lock(org_id).await;
    let mut tx = crate::events::begin_write(db).await?;
    lock_memberships(&mut tx, db.backend(), org_id).await?;
    Ok(tx)
}

/// Takes an organization's membership lock inside a write transaction (see
/// [`begin_membership_change`]).
async fn lock_memberships(
    tx: &mut sqlx::AnyConnection,
    backend: crate::storage::Backend,
    org_id: &str,
) -> Result<(), Error> {
    crate::storage::lock_for_change(tx, backend, "organizations", org_id).await?;
    Ok(())
}

/// The organizations whose only owner is `user_id`, read under their membership locks (taken in
/// id order), inside a write transaction that is about to remove the user.
pub async fn sole_owner_of(
    tx: &mut sqlx::AnyConnection,
    backend: crate::storage::Backend,
    user_id: &str,
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
        let owners: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND role = 'owner'",
        )
        .bind(&org)
        .fetch_one(&mut *tx)
        .await?;
        if owners <= 1 {
            sole.push(org);
        }
    }
    Ok(sole)
}

/// A member's role and whether they are the organization's only owner, read under the lock of
/// [`begin_membership_change`].
async fn member_role(
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
    user_id: &str,
) -> Result<(Role, bool), Error> {
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(org_id)
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    let role = role
        .as_deref()
        .and_then(Role::parse)
        .ok_or_else(|| Error::not_found("Member not found"))?;
    let owners: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE organization_id = $1 AND role = 'owner'",
    )
    .bind(org_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok((role, role == Role::Owner && owners <= 1))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    role: String,
}

pub async fn change_role(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Path((_, user_id)): Path<(String, String)>,
    Json(body): Json<ChangeRole>,
) -> Result<impl IntoResponse, Error> {
    let new_role = parse_role("role", &body.role)?;
    access.may_grant(new_role)?;
    let mut tx = begin_membership_change(&state.db, access.org_id()).await?;
    // The caller's own role, as it is now that no other change can interleave.
    let access = access.reread_under_lock(&mut tx).await?;
    access.may_grant(new_role)?;
    let (current, last_owner) = member_role(&mut tx, access.org_id(), &user_id).await?;
    if current == Role::Owner {
        access.require(Permission::OrganizationsDelete)?;
    }
    if last_owner && new_role != Role::Owner {
        return Err(Error::invalid(vec![FieldError::new(
            "role",
            "the last owner cannot be demoted; make someone else owner first",
        )]));
    }
    sqlx::query("UPDATE memberships SET role = $1, updated_at = $2 WHERE organization_id = $3 AND user_id = $4")
        .bind(new_role.as_str())
        .bind(storage::now())
        .bind(access.org_id())
        .bind(&user_id)
        .execute(&mut *tx)
        .await?;
    emit_org(
        &mut tx,
        &access.actor_context(),
        access.org_id(),
        "member.updated",
        ("member", &user_id),
        json!({"organization_id": access.org_id(), "user_id": user_id, "role": new_role.as_str(), "previous_role": current.as_str()}),
    )
    .await?;
    tx.commit().await?;
    // Keys this member created are capped by their role.
    state
        .bus
        .publish(crate::events::Invalidation::organization(access.org_id()))
        .await;
    Ok(axum::Json(
        json!({ "id": user_id, "organization_id": access.org_id(), "role": new_role.as_str(), "status": "active" }),
    ))
}

pub async fn remove(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersRead>,
    Path((_, user_id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let leaving_self = access.user_id() == Some(user_id.as_str());
    if !leaving_self {
        access.require(Permission::MembersManage)?;
    }
    let mut tx = begin_membership_change(&state.db, access.org_id()).await?;
    // The caller's own role, as it is now that no other change can interleave.
    let access = access.reread_under_lock(&mut tx).await?;
    if !leaving_self {
        access.require(Permission::MembersManage)?;
    }
    let (current, last_owner) = member_role(&mut tx, access.org_id(), &user_id).await?;
    if current == Role::Owner {
        if !leaving_self {
            access.require(Permission::OrganizationsDelete)?;
        }
        if last_owner {
            return Err(Error::bad_request(
                "The last owner cannot be removed; make someone else owner first",
            ));
        }
    }
    sqlx::query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
        .bind(access.org_id())
        .bind(&user_id)
        .execute(&mut *tx)
        .await?;
    emit_org(
        &mut tx,
        &access.actor_context(),
        access.org_id(),
        "member.removed",
        ("member", &user_id),
        json!({"organization_id": access.org_id(), "user_id": user_id, "role": current.as_str()}),
    )
    .await?;
    tx.commit().await?;
    // Keys this member created are capped by their role.
    state
        .bus
        .publish(crate::events::Invalidation::organization(access.org_id()))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A test hook: holds the next membership change of one organization just before it takes the
/// membership lock, so a test can change the caller's own role between the extractor's read and
/// the lock (the window [`OrgAccess::reread_under_lock`] closes). Costs one atomic load when no
/// pause is armed.
#[doc(hidden)]
pub mod pause {
    use std::{
        collections::HashMap,
        sync::{
            atomic::{AtomicUsize, Ordering},
            LazyLock, Mutex,
        },
    };

    use tokio::sync::oneshot;

    struct Armed {
        arrived: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    }

    static ARMED_COUNT: AtomicUsize = AtomicUsize::new(0);
    static ARMED: LazyLock<Mutex<HashMap<String, Armed>>> = LazyLock::new(Default::default);

    /// The test's side of an armed pause.
    pub struct Pause {
        arrived: oneshot::Receiver<()>,
        release: oneshot::Sender<()>,
    }

    impl Pause {
        /// Waits until a membership change of the organization is held.
        pub async fn arrived(&mut self) {
            let _ = (&mut self.arrived).await;
        }

        /// Lets the held change go on.
        pub fn release(self) {
            let _ = self.release.send(());
        }
    }

    /// Holds the next membership change of `org_id` before its lock (once).
    pub fn arm(org_id: &str) -> Pause {
        let (arrived_tx, arrived_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        let armed = Armed {
            arrived: arrived_tx,
            release: release_rx,
        };
        let mut map = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        if map.insert(org_id.to_string(), armed).is_none() {
            ARMED_COUNT.fetch_add(1, Ordering::SeqCst);
        }
        Pause {
            arrived: arrived_rx,
            release: release_tx,
        }
    }

    pub(super) async fn before_lock(org_id: &str) {
        if ARMED_COUNT.load(Ordering::SeqCst) == 0 {
            return;
        }
        let armed = {
            let mut map = ARMED.lock().unwrap_or_else(|e| e.into_inner());
            let armed = map.remove(org_id);
            if armed.is_some() {
                ARMED_COUNT.fetch_sub(1, Ordering::SeqCst);
            }
            armed
        };
        if let Some(armed) = armed {
            let _ = armed.arrived.send(());
            let _ = armed.release.await;
        }
    }
}
