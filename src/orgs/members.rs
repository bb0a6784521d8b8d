//! Members and invitations. Adding a member by email invites them (`pending_invite` until they
//! accept); only an owner grants or removes owner; the last owner can be neither demoted nor
//! removed. Invitations expire after the platform's `invitation_ttl_days` (default 30; set by
//! the time they are sent or resent) and carry a single-use token by email.

use crate::http::pagination::List;
use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use store::{sole_owner_of, Invitation, InvitationStatus, Member, MemberStatus};
use store::{MemberFilter, NewInvitation, TokenInvitation};

use crate::ids::{InvitationId, UserId};
use crate::{
    app::AppState,
    auth::{extract::AuthUser, users},
    crypto,
    error::{Error, FieldError},
    events::{ActorContext, Change, Invalidation},
    http::{
        extract::{Json, Path, Query},
        pagination::Page,
    },
    mail::{self, Mail},
    orgs::{
        access::OrgAccess,
        organizations,
        roles::{perm, Permission, RequiredPermission, Role},
    },
    storage::{self, Db},
};

pub(crate) mod store;

fn parse_role(field: &str, role: &str) -> Result<Role, Error> {
    Role::parse(role).ok_or_else(|| {
        Error::invalid_field(field, "must be one of owner, admin, editor, member, viewer")
    })
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct MemberQuery {
    role: Option<String>,
    q: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersRead>,
    page: Page,
    Query(query): Query<MemberQuery>,
) -> Result<axum::Json<List<Member>>, Error> {
    let filter = MemberFilter {
        role: query
            .role
            .as_deref()
            .map(|r| parse_role("role", r))
            .transpose()?,
        q: query.q,
    };
    Ok(axum::Json(
        store::list(&state.db, access.org_id(), filter, &page).await?,
    ))
}

// ---- invitations --------------------------------------------------------------------------

/// Days an invitation sent now can be accepted (the platform's `invitation_ttl_days`).
fn ttl_days(state: &AppState) -> i64 {
    state.platform.current().invitation_ttl_days
}

fn expiry(days: i64) -> String {
    storage::format_time(chrono::Utc::now() + chrono::Duration::days(days))
}

fn new_token() -> (String, String) {
    let token = format!("invt_{}", crypto::random_base62(40));
    let hash = crypto::sha256_hex(token.as_bytes());
    (token, hash)
}

fn send_invitation(
    state: &AppState,
    org_name: &str,
    email: &str,
    role: Role,
    token: &str,
    days: i64,
) {
    let role = role.as_str();
    let plural = if days == 1 { "" } else { "s" };
    let link = state
        .config
        .link(&format!("/accept-invitation?token={token}"));
    let body = format!(
        "You have been invited to join {org_name} as {role}.\n\nAccept within {days} day{plural}: sign in and accept with this token,\nor register with it as invitation_token:\n\n{token}\n\n{link}\n"
    );
    let subject = format!("You are invited to join {org_name} on Gatehouse");
    mail::send_later(&state.mailer, Mail::new(email, subject, body));
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
    let org_id = access.org_id();
    if store::has_member_with_email(&state.db, org_id, &email).await? {
        return Err(Error::conflict("This person is already a member"));
    }
    if store::has_live_invitation(&state.db, org_id, &email).await? {
        return Err(Error::conflict(
            "A pending invitation for this email exists; resend it instead",
        ));
    }
    // Members and pending invitations both count against the plan's members.
    let seats = store::seats(&state.db, org_id).await?;
    crate::billing::check_count_quota(state, org_id, "members", "members", seats).await?;
    let id = crate::ids::InvitationId::generate();
    let (token, hash) = new_token();
    let days = ttl_days(state);
    let invitation = NewInvitation {
        id: &id,
        org_id,
        email: &email,
        name: name.trim(),
        role,
        token_hash: &hash,
        invited_by: access.creator_id(),
        expires_at: &expiry(days),
    };
    Change::new(
        "invitation.created",
        "invitation",
        &id,
        json!({"id": id, "email": email, "role": role.as_str()}),
    )
    .write(state, access, async |tx| {
        store::insert_invitation(tx, invitation).await
    })
    .await?;
    let org_name = organizations::store::name(&state.db, org_id).await?;
    send_invitation(state, &org_name, &email, role, &token, days);
    store::invitation(&state.db, org_id, &id).await
}

/// Who to invite: `POST …/members` and `POST …/invitations` take the same body.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    email: String,
    #[serde(default)]
    name: String,
    role: String,
}

/// `POST …/members`: an invitation, shown as a pending member.
pub async fn add(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Json(body): Json<Invite>,
) -> Result<(StatusCode, axum::Json<PendingMember>), Error> {
    let inv = invite(&state, &access, &body.email, &body.name, &body.role).await?;
    Ok((StatusCode::CREATED, axum::Json(pending_member(inv))))
}

/// An invitation shown as the pending member it makes (its id is the member's id).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PendingMember {
    /// The invitation's id (`inv_…`), the pending member's id until they accept.
    id: InvitationId,
    invitation_id: InvitationId,
    organization_id: crate::ids::OrgId,
    email: String,
    name: String,
    role: Role,
    /// Always `pending_invite`.
    status: MemberStatus,
    invitation_sent_at: String,
    expires_at: String,
}

fn pending_member(inv: Invitation) -> PendingMember {
    PendingMember {
        id: inv.id.clone(),
        invitation_id: inv.id,
        organization_id: inv.organization_id,
        email: inv.email,
        name: inv.name,
        role: inv.role,
        status: MemberStatus::PendingInvite,
        invitation_sent_at: inv.invitation_sent_at,
        expires_at: inv.expires_at,
    }
}

pub async fn create_invitation(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Json(body): Json<Invite>,
) -> Result<(StatusCode, axum::Json<Invitation>), Error> {
    let inv = invite(&state, &access, &body.email, &body.name, &body.role).await?;
    Ok((StatusCode::CREATED, axum::Json(inv)))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct InvitationFilter {
    status: Option<String>,
}

pub async fn list_invitations(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    page: Page,
    Query(filter): Query<InvitationFilter>,
) -> Result<axum::Json<List<Invitation>>, Error> {
    let status = match filter.status.as_deref() {
        None => None,
        Some(s) => Some(InvitationStatus::parse(s).ok_or_else(|| {
            Error::invalid_field("status", "must be pending, accepted, revoked or expired")
        })?),
    };
    Ok(axum::Json(
        store::list_invitations(&state.db, access.org_id(), status, &page).await?,
    ))
}

/// Refuses an invitation that was accepted or revoked (a conflict); a pending one, expired or
/// not, can still be resent or changed.
fn still_open(inv: &Invitation) -> Result<(), Error> {
    match inv.status {
        InvitationStatus::Accepted | InvitationStatus::Revoked => Err(Error::conflict(format!(
            "This invitation is {}",
            inv.status
        ))),
        InvitationStatus::Pending | InvitationStatus::Expired => Ok(()),
    }
}

pub async fn resend_invitation(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Path((_, id)): Path<(String, InvitationId)>,
) -> Result<axum::Json<Invitation>, Error> {
    let inv = store::invitation(&state.db, access.org_id(), &id).await?;
    still_open(&inv)?;
    let (token, hash) = new_token();
    let days = ttl_days(&state);
    store::renew_invitation(&state.db, &id, &hash, &expiry(days)).await?;
    let org_name = organizations::store::name(&state.db, access.org_id()).await?;
    send_invitation(&state, &org_name, &inv.email, inv.role, &token, days);
    Ok(axum::Json(
        store::invitation(&state.db, access.org_id(), &id).await?,
    ))
}

pub async fn revoke_invitation(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Path((_, id)): Path<(String, InvitationId)>,
) -> Result<StatusCode, Error> {
    revoke(&state, &access, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes an invitation of the caller's organization (`DELETE …/invitations/{id}`, and
/// `DELETE …/members/{id}` for a pending member); one already accepted is a conflict.
async fn revoke<P>(
    state: &AppState,
    access: &OrgAccess<P>,
    id: &InvitationId,
) -> Result<(), Error> {
    let inv = store::invitation(&state.db, access.org_id(), id).await?;
    if inv.status == InvitationStatus::Accepted {
        return Err(Error::conflict("This invitation was already accepted"));
    }
    Change::new(
        "invitation.revoked",
        "invitation",
        id,
        json!({"id": id, "email": inv.email}),
    )
    .write(state, access, async |tx| {
        store::revoke_invitation(tx, id).await
    })
    .await
}

/// `PATCH …/members/{inv_…}`: gives a pending member's invitation another role (the caller
/// must be able to grant it, as when inviting). Accepted and revoked invitations are conflicts.
async fn change_invitation_role<P>(
    state: &AppState,
    access: &OrgAccess<P>,
    id: &InvitationId,
    role: Role,
) -> Result<PendingMember, Error> {
    let org_id = access.org_id();
    let inv = store::invitation(&state.db, org_id, id).await?;
    still_open(&inv)?;
    Change::new(
        "invitation.updated",
        "invitation",
        id,
        json!({"id": id, "email": inv.email, "role": role, "previous_role": inv.role}),
    )
    .metadata(json!({"role": role, "previous_role": inv.role}))
    .write(state, access, async |tx| {
        if store::set_invitation_role(tx, org_id, id, role).await? {
            Ok(())
        } else {
            Err(Error::conflict(
                "This invitation was used or revoked meanwhile",
            ))
        }
    })
    .await?;
    Ok(pending_member(
        store::invitation(&state.db, org_id, id).await?,
    ))
}

/// The live invitation a token names: not found for an unknown token, a conflict for one
/// accepted or revoked, invalid for one expired.
async fn live_invitation(db: &Db, token: &str) -> Result<TokenInvitation, Error> {
    let hash = crypto::sha256_hex(token.trim().as_bytes());
    let inv = store::by_token_hash(db, &hash)
        .await?
        .ok_or_else(|| Error::not_found("Invitation not found"))?;
    if inv.status != InvitationStatus::Pending {
        return Err(Error::conflict(format!(
            "This invitation was {}",
            inv.status
        )));
    }
    if inv.expires_at <= storage::now() {
        return Err(Error::invalid_field("token", "the invitation has expired"));
    }
    Ok(inv)
}

/// A live invitation found by its token: `(id, organization_id, email, role)`.
pub async fn find_invitation(
    db: &Db,
    token: &str,
) -> Result<(String, String, String, String), Error> {
    let inv = live_invitation(db, token).await?;
    Ok((
        inv.id.into(),
        inv.organization_id.0,
        inv.email,
        inv.role.as_str().to_string(),
    ))
}

/// Accepts an invitation for a user whose email matches it. The token came by email, so it
/// proves the address ([`users::email_proven`], in the same transaction): if the address was
/// unverified, the password set before is dropped and every session but `session_id` (the one
/// accepting) ends.
pub async fn accept(
    state: &AppState,
    ctx: &ActorContext,
    token: &str,
    user_id: &UserId,
    user_email: &str,
    session_id: Option<&str>,
) -> Result<Membership, Error> {
    let TokenInvitation {
        id,
        organization_id: org_id,
        email,
        role,
        ..
    } = live_invitation(&state.db, token).await?;
    if users::fold_email(&email) != users::fold_email(user_email) {
        return Err(Error::forbidden(
            "This invitation was sent to another email address",
        ));
    }
    let change = Change::new(
        "invitation.accepted",
        "invitation",
        &id,
        json!({"id": id, "email": email, "user_id": user_id}),
    )
    .and(
        "member.added",
        "member",
        user_id,
        json!({"organization_id": org_id, "user_id": user_id, "role": role}),
    )
    .organization(&org_id);
    let taken_back = change
        .write(state, ctx, async |tx| {
            if !store::claim_invitation(tx, &id).await? {
                return Err(Error::conflict("This invitation was already used"));
            }
            if store::is_member(tx, &org_id, user_id).await? {
                return Err(Error::conflict(
                    "You are already a member of this organization",
                ));
            }
            store::insert_membership(tx, &org_id, user_id, role).await?;
            users::email_proven(tx, user_id, session_id).await
        })
        .await?;
    // Its members count changed: checked against the usage thresholds.
    state.usage.touch(&org_id);
    if taken_back {
        crate::events::record_security_event(
            &state.db,
            ctx,
            crate::events::NewEvent::new("user.email_proven", "user", Some(user_id.to_string()))
                .metadata(json!({"proof": "invitation", "password_dropped": true, "sessions_ended": true})),
        )
        .await;
    }
    Ok(Membership {
        organization_id: org_id,
        user_id: user_id.clone(),
        role,
        status: MemberStatus::Active,
        invitation_id: id,
    })
}

/// The membership an accepted invitation made.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Membership {
    organization_id: crate::ids::OrgId,
    user_id: UserId,
    role: Role,
    /// Always `active`.
    status: MemberStatus,
    invitation_id: InvitationId,
}

/// A member's new role (`PATCH …/members/{user_id}`); a pending member's (`inv_…`) answers the
/// pending member.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RoleChanged {
    Member(MemberRole),
    Pending(PendingMember),
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct MemberRole {
    id: UserId,
    organization_id: crate::ids::OrgId,
    role: Role,
    /// Always `active`.
    status: MemberStatus,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    token: crate::secret::Secret,
}

pub async fn accept_invitation(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: crate::http::request_meta::RequestMeta,
    Json(body): Json<AcceptInvitation>,
) -> Result<axum::Json<Membership>, Error> {
    let ctx = ActorContext::new(
        crate::events::Actor::User(auth.user.id.clone()),
        (&meta).into(),
    );
    let membership = accept(
        &state,
        &ctx,
        body.token.expose(),
        &auth.user.id,
        &auth.user.email,
        Some(&auth.session_id),
    )
    .await?;
    Ok(axum::Json(membership))
}

// ---- role changes and removal --------------------------------------------------------------
//
// The event's data (the previous role) is known only once the membership lock is held, and the
// lock is the first thing the transaction takes: `Change::write_described`.

/// Takes the organization's membership lock, first in a change's transaction, so that "is this
/// the last owner?" and the change it guards cannot interleave with another such change (two
/// owners demoting each other at once); then re-reads the caller's own role under it. On
/// PostgreSQL the lock is the organization's row (`FOR UPDATE`); on SQLite, `BEGIN IMMEDIATE`
/// already holds the database's write lock for the whole transaction.
async fn lock_memberships<P: RequiredPermission>(
    tx: &mut sqlx::AnyConnection,
    db: &Db,
    access: &OrgAccess<P>,
) -> Result<OrgAccess<P>, Error> {
    store::lock_memberships(tx, db.backend(), access.org_id()).await?;
    access.reread_under_lock(tx).await
}

/// A membership change: written under the membership lock; keys the member created are capped
/// by their role, so every node drops the organization's cached keys.
fn membership_change(action: &str, access_org: &str, user_id: &str) -> Change {
    Change::new(action, "member", user_id, Value::Null)
        .invalidates(Invalidation::organization(access_org))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    role: String,
}

pub async fn change_role(
    State(state): State<AppState>,
    access: OrgAccess<perm::MembersManage>,
    Path((_, user_id)): Path<(String, String)>,
    Json(body): Json<ChangeRole>,
) -> Result<axum::Json<RoleChanged>, Error> {
    let new_role = parse_role("role", &body.role)?;
    access.may_grant(new_role)?;
    // A pending member's id is their invitation's (`inv_…`), as the members list shows it.
    if let Some(id) = InvitationId::parse(&user_id) {
        let member = change_invitation_role(&state, &access, &id, new_role).await?;
        return Ok(axum::Json(RoleChanged::Pending(member)));
    }
    let user_id = UserId::from(user_id);
    let org_id = access.org_id();
    pause::before_lock(org_id).await;
    membership_change("member.updated", org_id, &user_id)
        .write_described(&state, &access, async |tx| {
            let access = lock_memberships(tx, &state.db, &access).await?;
            access.may_grant(new_role)?;
            let member = store::membership(tx, org_id, &user_id).await?;
            if member.role == Role::Owner {
                access.require(Permission::OrganizationsDelete)?;
            }
            if member.last_owner && new_role != Role::Owner {
                return Err(Error::invalid(vec![FieldError::new(
                    "role",
                    "the last owner cannot be demoted; make someone else owner first",
                )]));
            }
            store::set_role(tx, org_id, &user_id, new_role).await?;
            Ok((
                (),
                json!({"organization_id": org_id, "user_id": user_id, "role": new_role, "previous_role": member.role}),
            ))
        })
        .await?;
    Ok(axum::Json(RoleChanged::Member(MemberRole {
        id: user_id,
        organization_id: org_id.clone(),
        role: new_role,
        status: MemberStatus::Active,
    })))
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
    // A pending member's id is their invitation's (`inv_…`), as the members list shows it.
    if let Some(id) = InvitationId::parse(&user_id) {
        revoke(&state, &access, &id).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let user_id = UserId::from(user_id);
    let org_id = access.org_id();
    pause::before_lock(org_id).await;
    membership_change("member.removed", org_id, &user_id)
        .write_described(&state, &access, async |tx| {
            let access = lock_memberships(tx, &state.db, &access).await?;
            if !leaving_self {
                access.require(Permission::MembersManage)?;
            }
            let member = store::membership(tx, org_id, &user_id).await?;
            if member.role == Role::Owner {
                if !leaving_self {
                    access.require(Permission::OrganizationsDelete)?;
                }
                if member.last_owner {
                    return Err(Error::bad_request(
                        "The last owner cannot be removed; make someone else owner first",
                    ));
                }
            }
            store::delete_membership(tx, org_id, &user_id).await?;
            Ok((
                (),
                json!({"organization_id": org_id, "user_id": user_id, "role": member.role}),
            ))
        })
        .await?;
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
