//! Organizations (tenants): create, list mine, slug availability, get, update (settings
//! deep-merged and validated), delete.

use crate::http::pagination::List;
use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use store::{get, org_select, Organization};
use store::{NewOrganization, OrganizationChanges};

use crate::ids::UserId;
use crate::{
    app::AppState,
    auth::extract::{AuthUser, PlatformAdmin},
    error::{Error, FieldError},
    events::{ActorContext, Change, Invalidation},
    http::request_meta::RequestMeta,
    http::{
        extract::{Json, Path, Query},
        pagination::Page,
    },
    orgs::{
        access::{parse_cidr, Caller, MemberOrPlatformAdmin, OrgAccess, OrgCreator},
        members,
        roles::{perm, Role},
    },
    wire::Standing,
};

pub(crate) mod store;

pub const DEFAULT_PLAN: &str = "smb";
const RESERVED_SLUGS: &[&str] = &["check-availability", "new", "admin", "api", "me"];

// ---- validation -------------------------------------------------------------------------

pub fn validate_slug(slug: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&slug.len()) {
        return Err("must be 3 to 63 characters");
    }
    if !slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may contain only a-z, 0-9 and -");
    }
    if slug.starts_with('-') || slug.ends_with('-') {
        return Err("must not start or end with -");
    }
    if RESERVED_SLUGS.contains(&slug) || crate::ids::has_prefix(slug, crate::ids::OrgId::PREFIX) {
        return Err("is reserved");
    }
    Ok(())
}

pub fn is_timezone(tz: &str) -> bool {
    static ZONES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ZONES
        .get_or_init(|| {
            include_str!("../../data/timezones.txt")
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .collect()
        })
        .binary_search(&tz)
        .is_ok()
}

fn slug_from_name(name: &str) -> String {
    let mut slug = String::new();
    for c in name.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let mut slug: String = slug.trim_matches('-').chars().take(50).collect();
    slug = slug.trim_matches('-').to_string();
    if slug.len() < 3 {
        slug = format!("org-{slug}").trim_matches('-').to_string();
    }
    slug
}

fn check_url(field: &str, url: &str, errors: &mut Vec<FieldError>) {
    if url.is_empty() {
        return;
    }
    let ok = url.len() <= 2048
        && url::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !ok {
        errors.push(FieldError::new(field, "must be an http(s) URL"));
    }
}

/// Validates the settings object (known keys, their types, CIDRs).
pub fn validate_settings(settings: &Value, errors: &mut Vec<FieldError>) {
    let Some(map) = settings.as_object() else {
        errors.push(FieldError::new("settings", "must be an object"));
        return;
    };
    for (key, value) in map {
        let field = format!("settings.{key}");
        match key.as_str() {
            "sso_enabled" => {
                if !value.is_boolean() && !value.is_null() {
                    errors.push(FieldError::new(field, "must be true or false"));
                }
            }
            "sso_provider" | "data_residency" => {
                if !(value.is_null() || value.as_str().is_some_and(|s| s.len() <= 100)) {
                    errors.push(FieldError::new(
                        field,
                        "must be a string of at most 100 characters",
                    ));
                }
            }
            "ip_allowlist" => match value.as_array() {
                Some(list) if list.len() <= 200 => {
                    for (i, entry) in list.iter().enumerate() {
                        if entry.as_str().and_then(parse_cidr).is_none() {
                            errors.push(FieldError::new(
                                format!("{field}[{i}]"),
                                "must be a CIDR such as 203.0.113.0/24 or an IP address",
                            ));
                        }
                    }
                }
                None if value.is_null() => {}
                _ => errors.push(FieldError::new(
                    field,
                    "must be a list of at most 200 CIDRs",
                )),
            },
            _ => errors.push(FieldError::new(field, "unknown field")),
        }
    }
}

/// JSON merge: objects merge key by key (recursively), `null` removes a key, anything else
/// replaces.
pub fn deep_merge(base: &mut Value, patch: &Value) {
    match (base.as_object_mut(), patch.as_object()) {
        (Some(b), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(existing) = b.get_mut(k) {
                    deep_merge(existing, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *base = patch.clone(),
    }
}

fn default_settings() -> Value {
    json!({ "sso_enabled": false, "sso_provider": null, "ip_allowlist": [], "data_residency": null })
}

// ---- handlers -----------------------------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    name: String,
    slug: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    website: String,
    timezone: Option<String>,
    settings: Option<Value>,
}

pub async fn create(
    State(state): State<AppState>,
    creator: OrgCreator,
    meta: RequestMeta,
    Json(body): Json<CreateOrganization>,
) -> Result<(StatusCode, axum::Json<Organization>), Error> {
    let ctx = ActorContext::new(creator.actor, (&meta).into());
    let mut org = create_owned(&state, &ctx, &creator.owner, body).await?;
    org.role = Some(Role::Owner.as_str().into());
    Ok((StatusCode::CREATED, axum::Json(org)))
}

/// Validates and creates an organization whose first member and owner is `owner_id`, audited as
/// `ctx` (the owner, or a platform admin creating it for them). Without an explicit slug, one is
/// made from the name (a short random suffix if taken).
pub async fn create_owned(
    state: &AppState,
    ctx: &ActorContext,
    owner_id: &UserId,
    body: CreateOrganization,
) -> Result<Organization, Error> {
    let mut errors = Vec::new();
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        errors.push(FieldError::new("name", "must be 1 to 200 characters"));
    }
    if let Some(slug) = &body.slug {
        if let Err(why) = validate_slug(slug) {
            errors.push(FieldError::new("slug", why));
        }
    }
    if body.description.chars().count() > 2000 {
        errors.push(FieldError::new(
            "description",
            "must be at most 2000 characters",
        ));
    }
    check_url("website", &body.website, &mut errors);
    let timezone = body.timezone.unwrap_or_else(|| "UTC".into());
    if !is_timezone(&timezone) {
        errors.push(FieldError::new(
            "timezone",
            "must be an IANA time zone such as Europe/Paris",
        ));
    }
    let mut settings = default_settings();
    if let Some(s) = &body.settings {
        validate_settings(s, &mut errors);
        deep_merge(&mut settings, s);
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let explicit = body.slug.is_some();
    let base = body.slug.unwrap_or_else(|| slug_from_name(&name));
    let id = crate::ids::OrgId::generate();
    for attempt in 0..5 {
        let slug = if attempt == 0 {
            base.clone()
        } else {
            format!(
                "{}-{}",
                base.chars().take(55).collect::<String>(),
                crate::crypto::random_base62(4).to_lowercase()
            )
        };
        let user_id = owner_id;
        // Its subscription from its creation: the default plan (SPEC §6).
        let sub_id = crate::ids::SubscriptionId::generate();
        let default_plan = state.plans.get(DEFAULT_PLAN);
        let change = Change::new(
            "organization.created",
            "organization",
            &id,
            json!({"id": id, "name": name, "slug": slug}),
        )
        .and(
            "member.added",
            "member",
            user_id,
            json!({"organization_id": id, "user_id": user_id, "role": Role::Owner}),
        )
        .and(
            "subscription.created",
            "subscription",
            &sub_id,
            json!({"id": sub_id, "organization_id": id, "plan": DEFAULT_PLAN,
                   "amount": default_plan.as_ref().map(|p| p.fields.amount),
                   "currency": default_plan.as_ref().map(|p| &p.fields.currency)}),
        )
        .organization(&id);
        let organization = NewOrganization {
            id: &id,
            name: &name,
            slug: &slug,
            description: body.description.trim(),
            website: body.website.trim(),
            timezone: &timezone,
            plan: DEFAULT_PLAN,
            settings: &settings,
        };
        let created = change
            .write(state, ctx, async |tx| {
                store::insert(tx, organization).await?;
                members::store::insert_membership(tx, &id, user_id, Role::Owner).await?;
                crate::billing::subscriptions::start_implicit(
                    tx,
                    &state.plans,
                    &sub_id,
                    &id,
                    chrono::Utc::now(),
                )
                .await
            })
            .await;
        match created {
            Err(e) if !explicit && e.code() == crate::error::ErrorCode::Conflict => continue,
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        return get(&state.db, &id).await;
    }
    Err(Error::conflict("Could not find a free slug; choose one"))
}

pub async fn list_mine(
    State(state): State<AppState>,
    auth: AuthUser,
    page: Page,
) -> Result<axum::Json<List<Organization>>, Error> {
    let list = store::list_of_member(&state.db, &auth.user.id, &page).await?;
    Ok(axum::Json(list))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SlugQuery {
    slug: Option<String>,
}

/// Whether a slug may be used for a new organization, and if not, why.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SlugAvailability {
    slug: String,
    available: bool,
    /// Why the slug is not valid (absent when it is valid, taken or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

pub async fn check_availability(
    State(state): State<AppState>,
    Query(q): Query<SlugQuery>,
) -> Result<axum::Json<SlugAvailability>, Error> {
    let slug = q
        .slug
        .ok_or_else(|| Error::invalid_field("slug", "is required"))?
        .trim()
        .to_string();
    if let Err(why) = validate_slug(&slug) {
        return Ok(axum::Json(SlugAvailability {
            slug,
            available: false,
            reason: Some(why.to_string()),
        }));
    }
    let taken = store::slug_taken(&state.db, &slug).await?;
    Ok(axum::Json(SlugAvailability {
        slug,
        available: !taken,
        reason: None,
    }))
}

pub async fn get_one(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsRead>,
) -> Result<axum::Json<Organization>, Error> {
    let mut org = get(&state.db, access.org_id()).await?;
    org.role = Some(access.role.as_str().into());
    Ok(axum::Json(org))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrganization {
    name: Option<String>,
    description: Option<String>,
    website: Option<String>,
    timezone: Option<String>,
    settings: Option<Value>,
    /// `active` or `suspended` (seed 003): signed-in owners and platform admins only.
    status: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct UpdateOptions {
    /// Apply an IP allowlist that excludes the caller's own address (locking the caller out).
    #[serde(default)]
    force: bool,
}

/// `PATCH /v1/organizations/{org_id}`: a member with `organizations:update` (a key with the
/// scope); a platform admin also when not a member, or when the organization is suspended (to
/// set it `active` again).
pub async fn update(
    State(state): State<AppState>,
    caller: MemberOrPlatformAdmin<perm::OrganizationsUpdate>,
    meta: RequestMeta,
    Path(org_id): Path<String>,
    Query(options): Query<UpdateOptions>,
    Json(body): Json<UpdateOrganization>,
) -> Result<axum::Json<Organization>, Error> {
    let access = match caller {
        MemberOrPlatformAdmin::Member(access) => *access,
        MemberOrPlatformAdmin::PlatformAdmin(admin) => {
            let org = update_as_platform_admin(&state, &admin, &meta, &org_id, body).await?;
            return Ok(axum::Json(org));
        }
    };
    if body.status.is_some() && !may_change_status(&access) {
        return Err(Error::forbidden(
            "Changing an organization's status needs a signed-in owner or a platform admin",
        ));
    }
    let guard = if options.force {
        Lockout::Allow
    } else {
        Lockout::Refuse(access.meta.ip)
    };
    let mut org = apply_update(
        &state,
        access.org_id(),
        &access.org.settings,
        body,
        &access.actor_context(),
        guard,
    )
    .await?;
    org.role = Some(access.role.as_str().into());
    Ok(axum::Json(org))
}

/// A platform admin's update of any organization (by id or slug), audited as the admin; an IP
/// allowlist is applied as given (the admin repairs from outside).
pub async fn update_as_platform_admin(
    state: &AppState,
    admin: &PlatformAdmin,
    meta: &RequestMeta,
    id_or_slug: &str,
    body: UpdateOrganization,
) -> Result<Organization, Error> {
    let org = store::by_id_or_slug(&state.db, id_or_slug)
        .await?
        .ok_or_else(|| Error::not_found("Organization not found"))?;
    apply_update(
        state,
        &org.id,
        &org.settings,
        body,
        &admin.context(meta),
        Lockout::Allow,
    )
    .await
}

/// A status change is for a signed-in owner or a platform admin: never for an API key (capped
/// at admin), an admin or a lesser role.
fn may_change_status(access: &OrgAccess<perm::OrganizationsUpdate>) -> bool {
    match &access.caller {
        Caller::User(u) => access.role == Role::Owner || u.user.is_platform_admin,
        Caller::PlatformAdmin(_) => true,
        Caller::Key(_) => false,
    }
}

/// Whether an update may set an IP allowlist that excludes the address it comes from.
#[derive(Debug, Clone, Copy)]
pub enum Lockout {
    /// Refuse it: the caller at this address would lose access (no address known: refuse any
    /// non-empty list).
    Refuse(Option<std::net::IpAddr>),
    /// Allow it: `?force=true`, or a platform admin repairing settings from outside.
    Allow,
}

/// Validates and applies a change to an organization's profile and settings (settings
/// deep-merged into `current_settings`), audited as `ctx`; the organization's cached keys are
/// dropped on every node (they carry the IP allowlist).
pub async fn apply_update(
    state: &AppState,
    org_id: &str,
    current_settings: &Value,
    body: UpdateOrganization,
    ctx: &ActorContext,
    lockout: Lockout,
) -> Result<Organization, Error> {
    let mut errors = Vec::new();
    if let Some(name) = &body.name {
        if name.trim().is_empty() || name.chars().count() > 200 {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
    }
    if let Some(d) = &body.description {
        if d.chars().count() > 2000 {
            errors.push(FieldError::new(
                "description",
                "must be at most 2000 characters",
            ));
        }
    }
    if let Some(w) = &body.website {
        check_url("website", w, &mut errors);
    }
    if let Some(tz) = &body.timezone {
        if !is_timezone(tz) {
            errors.push(FieldError::new(
                "timezone",
                "must be an IANA time zone such as Europe/Paris",
            ));
        }
    }
    let mut settings = current_settings.clone();
    if let Some(patch) = &body.settings {
        validate_settings(patch, &mut errors);
        deep_merge(&mut settings, patch);
        if errors.is_empty() && patch.get("ip_allowlist").is_some() {
            check_lockout(&settings, lockout, &mut errors);
        }
    }
    let status = body
        .status
        .as_deref()
        .and_then(|v| Standing::input(v).map_err(|e| errors.push(e)).ok());
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let changed: Vec<&str> = [
        ("name", body.name.is_some()),
        ("description", body.description.is_some()),
        ("website", body.website.is_some()),
        ("timezone", body.timezone.is_some()),
        ("settings", body.settings.is_some()),
        ("status", status.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    let changes = OrganizationChanges {
        name: body.name.map(|v| v.trim().to_string()),
        description: body.description.map(|v| v.trim().to_string()),
        website: body.website.map(|v| v.trim().to_string()),
        timezone: body.timezone,
        settings: body.settings.is_some().then_some(settings),
        status,
    };
    let action = if status == Some(Standing::Suspended) {
        "organization.suspended"
    } else {
        "organization.updated"
    };
    let mut data = json!({"id": org_id});
    if let Some(status) = status {
        data["status"] = status.as_str().into();
    }
    // Cached keys carry the IP allowlist and the status.
    Change::new(action, "organization", org_id, data)
        .organization(org_id)
        .metadata(json!({"changed": changed}))
        .invalidates(Invalidation::organization(org_id))
        .write(state, ctx, async |tx| {
            store::update(tx, org_id, changes).await
        })
        .await?;
    get(&state.db, org_id).await
}

/// Refuses an IP allowlist that would shut out the caller making the change.
fn check_lockout(settings: &Value, lockout: Lockout, errors: &mut Vec<FieldError>) {
    let Lockout::Refuse(ip) = lockout else {
        return;
    };
    let list = crate::orgs::access::ip_allowlist(settings);
    if list.is_empty() || ip.is_some_and(|ip| list.iter().any(|n| n.contains(&ip))) {
        return;
    }
    let you = ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    errors.push(FieldError::new(
        "settings.ip_allowlist",
        format!(
            "excludes your own address ({you}), which would lock you out of this organization; \
             add it, or send the change with ?force=true"
        ),
    ));
}

pub async fn delete(
    State(state): State<AppState>,
    access: OrgAccess<perm::OrganizationsDelete>,
) -> Result<StatusCode, Error> {
    // The event is platform-level (its author the caller, not the organization): the
    // organization's own rows (and webhook endpoints) go with it.
    let org_id = access.org_id();
    Change::new(
        "organization.deleted",
        "organization",
        org_id,
        json!({"id": org_id, "slug": access.org.slug}),
    )
    .invalidates(Invalidation::organization(org_id))
    .write(&state, &access.actor_context(), async |tx| {
        store::delete(tx, org_id).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_rules() {
        assert!(validate_slug("acme-corp").is_ok());
        assert!(validate_slug("ab").is_err());
        assert!(validate_slug("Acme").is_err());
        assert!(validate_slug("-acme").is_err());
        assert!(validate_slug(&"a".repeat(64)).is_err());
        assert!(validate_slug("check-availability").is_err());
        assert_eq!(slug_from_name("Acme Corp, Inc."), "acme-corp-inc");
        assert_eq!(slug_from_name("X"), "org-x");
    }

    #[test]
    fn timezones_are_iana_names() {
        assert!(is_timezone("America/New_York"));
        assert!(is_timezone("UTC"));
        assert!(!is_timezone("Mars/Olympus"));
        assert!(!is_timezone("america/new_york"));
    }

    #[test]
    fn settings_merge_deeply_and_null_removes() {
        let mut base = json!({"sso_enabled": true, "ip_allowlist": ["10.0.0.0/8"], "nested": {"a": 1, "b": 2}});
        deep_merge(
            &mut base,
            &json!({"ip_allowlist": ["1.2.3.0/24"], "nested": {"b": null, "c": 3}, "sso_enabled": null}),
        );
        assert_eq!(
            base,
            json!({"ip_allowlist": ["1.2.3.0/24"], "nested": {"a": 1, "c": 3}})
        );
    }

    #[test]
    fn settings_are_validated_by_field() {
        let mut errors = Vec::new();
        validate_settings(
            &json!({"ip_allowlist": ["10.0.0.0/8", "nope"], "sso_enabled": "yes", "colour": 1}),
            &mut errors,
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"settings.ip_allowlist[1]"));
        assert!(fields.contains(&"settings.sso_enabled"));
        assert!(fields.contains(&"settings.colour"));
    }
}
