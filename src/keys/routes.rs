//! `/v1/organizations/{org_id}/api-keys…`: create, list, get, patch, revoke, rotate.

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    scope_bit, scope_min_role, scope_refusal,
    store::{self, ApiKey, KeyPatch, NewKey, Secret, StatusFilter},
    KeyStatus, KeyType, SCOPES,
};
use crate::{
    app::AppState,
    crypto,
    environment::Environment,
    error::{Error, FieldError},
    events::{Change, Invalidation},
    http::{
        extract::{Json, Path, Query},
        pagination::{List, Page},
        routes::Routes,
    },
    ids::{KeyId, UserId},
    orgs::{access::OrgAccess, projects::is_origin, roles::perm},
    storage,
};

pub fn routes() -> Routes {
    const KEYS: &str = "/v1/organizations/{org_id}/api-keys";
    const KEY: &str = "/v1/organizations/{org_id}/api-keys/{key_id}";
    Routes::new()
        .post(KEYS, create)
        .get(KEYS, list)
        .get(KEY, get)
        .patch(KEY, update)
        .delete(KEY, revoke)
        .post(
            "/v1/organizations/{org_id}/api-keys/{key_id}/rotations",
            rotate,
        )
}

pub const DEFAULT_GRACE_SECONDS: i64 = 86_400;
pub const MAX_GRACE_SECONDS: i64 = 604_800;

/// A new key value: `<sk|pk>_<live|test>_` + 40 random base62 characters (≈ 238 bits), and
/// what is stored of it; `sk` is the operator's `secret_key_prefix`.
fn new_secret(secret_prefix: &str, key_type: KeyType, env: Environment) -> (String, Secret) {
    let prefix = format!("{}_{env}_", key_type.prefix(secret_prefix));
    let token = format!("{prefix}{}", crypto::random_base62(40));
    let preview = format!(
        "{prefix}{}…{}",
        &token[prefix.len()..prefix.len() + 3],
        &token[token.len() - 3..]
    );
    let hash = crypto::sha256_hex(token.as_bytes());
    (token, Secret { preview, hash })
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    requests_per_minute: i64,
    tokens_per_minute: Option<i64>,
}

fn check_rate_limit(r: &RateLimitInput, errors: &mut Vec<FieldError>) -> Value {
    if !(1..=1_000_000).contains(&r.requests_per_minute) {
        errors.push(FieldError::new(
            "rate_limit.requests_per_minute",
            "must be from 1 to 1000000",
        ));
    }
    if let Some(t) = r.tokens_per_minute {
        if !(1..=100_000_000).contains(&t) {
            errors.push(FieldError::new(
                "rate_limit.tokens_per_minute",
                "must be from 1 to 100000000",
            ));
        }
    }
    json!({ "requests_per_minute": r.requests_per_minute, "tokens_per_minute": r.tokens_per_minute })
}

/// Validates scopes against the catalogue and the caller's own authority: a caller hands out
/// only scopes it holds (a person by role, a key by role and its own scopes). `holder` ends a
/// refusal: whose role lacks the scope ("you do not have", or the member a key is made for).
fn check_scopes<P>(
    access: &OrgAccess<P>,
    scopes: &[String],
    holder: &str,
    errors: &mut Vec<FieldError>,
) {
    for (i, s) in scopes.iter().enumerate() {
        match scope_min_role(s) {
            None => errors.push(FieldError::new(format!("scopes[{i}]"), scope_refusal(s))),
            Some(min) if access.role < min => errors.push(FieldError::new(
                format!("scopes[{i}]"),
                format!("needs the {} role, which {holder}", min.as_str()),
            )),
            Some(_) if !access.holds_scope(s) => errors.push(FieldError::new(
                format!("scopes[{i}]"),
                "is not a scope of the calling key; a key grants only scopes it holds",
            )),
            _ => {}
        }
    }
}

/// A caller may change, rotate or revoke a key only if every scope the key carries is within its
/// own authority: otherwise rotating it would hand the caller a token worth more than its
/// credential. The key's stored scopes count, not what its creator's role allows today — a
/// creator promoted again would give them back.
fn check_within_authority<P>(access: &OrgAccess<P>, key: &ApiKey) -> Result<(), Error> {
    let beyond: Vec<&str> = key
        .scope_names()
        .filter(|s| !access.holds_scope(s))
        .collect();
    if beyond.is_empty() {
        return Ok(());
    }
    Err(Error::forbidden(format!(
        "This key holds authority you do not have ({}); only a caller holding all of it may change, rotate or revoke the key",
        beyond.join(", ")
    ))
    .with_details(json!({ "scopes_beyond_caller": beyond })))
}

fn check_origins(origins: &[String], errors: &mut Vec<FieldError>) {
    if origins.len() > 100 {
        errors.push(FieldError::new("allowed_origins", "at most 100 origins"));
    }
    for (i, o) in origins.iter().enumerate() {
        if !is_origin(o) {
            errors.push(FieldError::new(
                format!("allowed_origins[{i}]"),
                "must be an origin such as https://app.example.com",
            ));
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    #[serde(rename = "type")]
    key_type: Option<String>,
    environment: Option<String>,
    scopes: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    expires_in_days: Option<i64>,
    rate_limit: Option<RateLimitInput>,
    project_id: Option<String>,
}

impl CreateKey {
    /// The key of the project `id` (`/v1/admin/projects/{id}/api-keys`): a `project_id` in the
    /// body may only repeat it.
    pub fn in_project(mut self, id: &str) -> Result<CreateKey, Error> {
        if self.project_id.as_deref().is_some_and(|p| p != id) {
            return Err(Error::invalid_field(
                "project_id",
                "is the project of the path; leave it out or give the same id",
            ));
        }
        self.project_id = Some(id.to_string());
        Ok(self)
    }
}

/// The member a key made by a platform admin answers to (`POST
/// /v1/admin/projects/{id}/api-keys`): the key's `created_by`, so its authority is exactly that
/// member's. The [`OrgAccess`] given with it carries the member's role, against which the
/// requested scopes are checked.
pub struct OnBehalfOf {
    pub member: UserId,
    /// What is wrong with the member named (a role that may not manage API keys), reported with
    /// the body's other refusals.
    pub refusals: Vec<FieldError>,
}

pub(crate) async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysManage>,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, axum::Json<CreatedKey>), Error> {
    create_key(&state, &access, body, None).await
}

/// Creates a key of the organization of `access`, with the authority of `access.role` (and, for
/// a calling key, its scopes): the caller's own key, or — `on_behalf_of` — one that answers to
/// that member, audited with the caller as the actor and the member in the entry's metadata.
/// `201` with the token, shown this once.
pub async fn create_key<P>(
    state: &AppState,
    access: &OrgAccess<P>,
    body: CreateKey,
    on_behalf_of: Option<OnBehalfOf>,
) -> Result<(StatusCode, axum::Json<CreatedKey>), Error> {
    let (member, mut errors) = match on_behalf_of {
        Some(o) => (Some(o.member), o.refusals),
        None => (None, Vec::new()),
    };
    let holder = if member.is_some() {
        "the member named by on_behalf_of does not have"
    } else {
        "you do not have"
    };
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        errors.push(FieldError::new("name", "must be 1 to 200 characters"));
    }
    let key_type = match body.key_type.as_deref() {
        None => KeyType::Secret,
        Some(t) => KeyType::parse(t).unwrap_or_else(|| {
            errors.push(FieldError::new("type", "must be secret or publishable"));
            KeyType::Secret
        }),
    };
    let env = match body.environment.as_deref().or(access.environment()) {
        None => Environment::Live,
        Some(e) => match Environment::parse(e) {
            None => {
                errors.push(FieldError::new("environment", "must be live or test"));
                Environment::Live
            }
            Some(env) => {
                if access.environment().is_some_and(|e| e != env.as_str()) {
                    errors.push(FieldError::new(
                        "environment",
                        "a caller in one environment cannot create keys for the other",
                    ));
                }
                env
            }
        },
    };
    let publishable = key_type == KeyType::Publishable;
    let scopes: Vec<String> = match (&body.scopes, publishable) {
        (None, true) => vec!["gateway:proxy".into()],
        (Some(s), true) if s.iter().all(|x| x == "gateway:proxy") => vec!["gateway:proxy".into()],
        (Some(_), true) => {
            errors.push(FieldError::new(
                "scopes",
                "publishable keys carry only gateway:proxy",
            ));
            vec![]
        }
        // Omitted on a secret key: every scope the caller holds.
        (None, false) => SCOPES
            .iter()
            .filter(|s| access.holds_scope(s))
            .map(|s| s.to_string())
            .collect(),
        (Some(s), false) => {
            check_scopes(access, s, holder, &mut errors);
            let mut s = s.clone();
            s.sort();
            s.dedup();
            s
        }
    };
    if publishable && !access.holds_scope("gateway:proxy") {
        errors.push(FieldError::new(
            "type",
            format!("a publishable key carries gateway:proxy, which {holder}"),
        ));
    }
    let origins = body.allowed_origins.unwrap_or_default();
    if publishable && origins.is_empty() {
        errors.push(FieldError::new(
            "allowed_origins",
            "publishable keys need at least one origin",
        ));
    }
    if !publishable && !origins.is_empty() {
        errors.push(FieldError::new(
            "allowed_origins",
            "only publishable keys have allowed origins",
        ));
    }
    check_origins(&origins, &mut errors);
    let expires_at = match body.expires_in_days {
        Some(d) if !(1..=3650).contains(&d) => {
            errors.push(FieldError::new("expires_in_days", "must be from 1 to 3650"));
            None
        }
        Some(d) => Some(storage::format_time(
            chrono::Utc::now() + chrono::Duration::days(d),
        )),
        None => None,
    };
    let rate_limit = body
        .rate_limit
        .as_ref()
        .map(|r| check_rate_limit(r, &mut errors));
    if let Some(p) = &body.project_id {
        if !store::project_exists(&state.db, access.org_id(), p).await? {
            errors.push(FieldError::new(
                "project_id",
                "is not a project of this organization",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let id = KeyId::generate();
    let (token, secret) = new_secret(&state.config.secret_key_prefix, key_type, env);
    let new = NewKey {
        id: &id,
        organization_id: access.org_id(),
        name: &name,
        key_type,
        environment: env,
        scopes: &scopes,
        allowed_origins: &origins,
        rate_limit: rate_limit.as_ref(),
        project_id: body.project_id.as_deref(),
        created_by: match &member {
            Some(m) => Some(m.as_str()),
            None => access.creator_id(),
        },
        expires_at: expires_at.as_deref(),
        secret: &secret,
    };
    let mut event =
        json!({"id": id, "name": name, "type": key_type, "environment": env, "scopes": scopes});
    if let Some(m) = &member {
        event["on_behalf_of"] = m.as_str().into();
    }
    let change = Change::new("api_key.created", "api_key", id.as_str(), event);
    let change = match &member {
        Some(m) => change.metadata(json!({ "on_behalf_of": m })),
        None => change,
    };
    change
        .write(state, access, async |tx| store::insert(tx, &new).await)
        .await?;
    created_with_token(state, access.org_id(), &id, token).await
}

/// A key as it is created or rotated: the key, and its token — the only time it is shown — as
/// `token` and again as `revealed_key` (seed 003's name).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    pub token: String,
    pub revealed_key: String,
}

/// `201` with the key as read back and its token.
async fn created_with_token(
    state: &AppState,
    org_id: &str,
    id: &KeyId,
    token: String,
) -> Result<(StatusCode, axum::Json<CreatedKey>), Error> {
    let key = store::load(&state.db, org_id, id.as_str(), None).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            key,
            revealed_key: token.clone(),
            token,
        }),
    ))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct KeyFilter {
    status: Option<String>,
    #[serde(rename = "type")]
    key_type: Option<String>,
    environment: Option<String>,
    project_id: Option<String>,
}

impl KeyFilter {
    /// The filter confined to the project `id` (`/v1/admin/projects/{id}/api-keys`).
    pub fn in_project(self, id: &str) -> KeyFilter {
        KeyFilter {
            project_id: Some(id.to_string()),
            ..self
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysRead>,
    page: Page,
    Query(filter): Query<KeyFilter>,
) -> Result<axum::Json<List<ApiKey>>, Error> {
    let status = match filter.status.as_deref() {
        None => None,
        Some(s) => Some(StatusFilter::parse(s).ok_or_else(|| {
            Error::invalid_field("status", "must be active, disabled, revoked or expired")
        })?),
    };
    let filter = store::KeyFilter {
        // A caller confined to an environment lists that environment's keys only.
        environment: access
            .environment()
            .map(str::to_string)
            .or(filter.environment),
        key_type: filter.key_type,
        status,
        project_id: filter.project_id.map(bounded_project_id).transpose()?,
    };
    Ok(axum::Json(
        store::list(&state.db, access.org_id(), filter, &page).await?,
    ))
}

/// A `?project_id=` as given (an unknown project lists no keys), within an id's length.
fn bounded_project_id(id: String) -> Result<String, Error> {
    if id.is_empty() || id.len() > 64 {
        return Err(Error::invalid_field(
            "project_id",
            "must be a project id (proj_…), 1 to 64 characters",
        ));
    }
    Ok(id)
}

async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysRead>,
    Path((_, id)): Path<(String, String)>,
) -> Result<axum::Json<ApiKey>, Error> {
    Ok(axum::Json(
        store::load(&state.db, access.org_id(), &id, access.environment()).await?,
    ))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    name: Option<String>,
    scopes: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    status: Option<String>,
    rate_limit: Option<RateLimitInput>,
    // Immutable: named so that they are refused as such, not as unknown.
    #[serde(rename = "type")]
    key_type: Option<Value>,
    environment: Option<Value>,
    token: Option<Value>,
    revealed_key: Option<Value>,
    key_preview: Option<Value>,
    display_key: Option<Value>,
    id: Option<Value>,
}

pub(crate) async fn update(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysManage>,
    Path((_, id)): Path<(String, String)>,
    Json(body): Json<UpdateKey>,
) -> Result<axum::Json<ApiKey>, Error> {
    let key = store::load(&state.db, access.org_id(), &id, access.environment()).await?;
    let mut errors = Vec::new();
    for (field, given) in [
        ("type", body.key_type.is_some()),
        ("environment", body.environment.is_some()),
        ("token", body.token.is_some()),
        ("revealed_key", body.revealed_key.is_some()),
        ("key_preview", body.key_preview.is_some()),
        ("display_key", body.display_key.is_some()),
        ("id", body.id.is_some()),
    ] {
        if given {
            errors.push(FieldError::new(
                field,
                "is immutable; create a new key instead",
            ));
        }
    }
    if key.status == KeyStatus::Revoked {
        return Err(Error::conflict("A revoked key cannot be changed"));
    }
    check_within_authority(&access, &key)?;
    if let Some(n) = &body.name {
        if n.trim().is_empty() || n.chars().count() > 200 {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
    }
    let publishable = key.key_type == KeyType::Publishable;
    if let Some(s) = &body.scopes {
        if publishable {
            errors.push(FieldError::new(
                "scopes",
                "publishable keys carry only gateway:proxy",
            ));
        } else {
            check_scopes(&access, s, "you do not have", &mut errors);
        }
    }
    if let Some(o) = &body.allowed_origins {
        if !publishable {
            errors.push(FieldError::new(
                "allowed_origins",
                "only publishable keys have allowed origins",
            ));
        } else if o.is_empty() {
            errors.push(FieldError::new(
                "allowed_origins",
                "publishable keys need at least one origin",
            ));
        }
        check_origins(o, &mut errors);
    }
    let status = match body.status.as_deref().map(KeyStatus::parse) {
        None => None,
        Some(Some(s @ (KeyStatus::Active | KeyStatus::Disabled))) => Some(s),
        Some(_) => {
            errors.push(FieldError::new(
                "status",
                "must be active or disabled (revoke with DELETE)",
            ));
            None
        }
    };
    let rate_limit = body
        .rate_limit
        .as_ref()
        .map(|r| check_rate_limit(r, &mut errors));
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let patch = KeyPatch {
        name: body.name.map(|n| n.trim().to_string()),
        scopes: body.scopes.map(|mut s| {
            s.sort();
            s.dedup();
            s
        }),
        allowed_origins: body.allowed_origins,
        status,
        rate_limit,
    };
    Change::new("api_key.updated", "api_key", &id, json!({"id": id}))
        .invalidates(Invalidation::key(&id))
        .write(&state, &access, async |tx| {
            store::update(tx, &id, &patch).await
        })
        .await?;
    Ok(axum::Json(
        store::load(&state.db, access.org_id(), &id, None).await?,
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysManage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let key = store::load(&state.db, access.org_id(), &id, access.environment()).await?;
    check_within_authority(&access, &key)?;
    if key.status == KeyStatus::Revoked {
        // Nothing to write; the invalidation is sent again all the same.
        state.bus.publish(Invalidation::key(&id)).await;
    } else {
        let event = json!({"id": id, "name": key.name});
        Change::new("api_key.revoked", "api_key", &id, event)
            .invalidates(Invalidation::key(&id))
            .write(&state, &access, async |tx| store::revoke(tx, &id).await)
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    grace_period_seconds: Option<i64>,
}

async fn rotate(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysManage>,
    Path((_, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<CreatedKey>), Error> {
    // The body is optional: an empty one means the default grace period.
    let body: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        crate::http::extract::parse_json(&body)?
    };
    let grace = body.grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(Error::invalid_field(
            "grace_period_seconds",
            "must be from 0 to 604800",
        ));
    }
    let key = store::load(&state.db, access.org_id(), &id, access.environment()).await?;
    if key.status == KeyStatus::Revoked {
        return Err(Error::conflict("A revoked key cannot be rotated"));
    }
    check_within_authority(&access, &key)?;
    let (token, secret) = new_secret(
        &state.config.secret_key_prefix,
        key.key_type,
        key.environment,
    );
    let now = chrono::Utc::now();
    let now_s = storage::format_time(now);
    let grace_until = storage::format_time(now + chrono::Duration::seconds(grace));
    let event = json!({"id": id, "grace_expires_at": storage::api_time(&grace_until)});
    Change::new("api_key.rotated", "api_key", &id, event)
        .invalidates(Invalidation::key(&id))
        .write(&state, &access, async |tx| {
            store::rotate(tx, &id, &secret, &now_s, &grace_until).await
        })
        .await?;
    created_with_token(&state, access.org_id(), &KeyId(id), token).await
}

/// For tests and tooling: whether a scope string is known.
pub fn is_scope(s: &str) -> bool {
    scope_bit(s).is_some()
}

/// Records a refused key as a security event — at most one per key value and reason every ten
/// seconds, so a flood of bad keys cannot flood the audit log. Off the request path.
pub fn record_refusal(
    state: &AppState,
    meta: &crate::http::request_meta::RequestMeta,
    token: &str,
    error: &Error,
) {
    let digest = crypto::sha256_hex(token.as_bytes());
    let reason = error.to_string();
    let state = state.clone();
    let ctx = crate::events::ActorContext::new(crate::events::Actor::System, meta.into());
    // The prefix and 3 characters are enough to recognise a key; never the whole value.
    let preview: String = token.chars().take(11).collect();
    tokio::spawn(async move {
        let once = crate::limits::LimitSpec::new(
            format!("key-refused:{}:{reason}", &digest[..16]),
            1,
            std::time::Duration::from_secs(10),
        );
        if !state.limiter.check(&[once]).await.is_ok_and(|v| v.allowed) {
            return;
        }
        let key_id = store::key_of_secret(&state.db, &digest)
            .await
            .ok()
            .flatten();
        crate::events::record_security_event(
            &state.db,
            &ctx,
            crate::events::NewEvent::new("api_key.refused", "api_key", key_id)
                .metadata(json!({"reason": reason, "key_prefix": format!("{preview}…")})),
        )
        .await;
    });
}
