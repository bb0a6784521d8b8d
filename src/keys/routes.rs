//! `/v1/organizations/{org_id}/api-keys…`: create, list, get, patch, revoke, rotate.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

use super::{scope_bit, scope_min_role, SCOPES};
use crate::{
    app::AppState,
    crypto,
    error::{Error, FieldError},
    http::{
        extract::{Json, Path, Query},
        pagination::{HasId, Page},
        routes::Routes,
    },
    orgs::{access::OrgAccess, projects::is_origin, roles::perm},
    storage::{self, Db, RowExt, Sql},
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

#[derive(Debug, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: String,
    pub environment: String,
    pub key_preview: String,
    pub scopes: Value,
    pub allowed_origins: Value,
    pub rate_limit: Option<Value>,
    pub project_id: Option<String>,
    pub status: String,
    pub created_at: String,
    pub created_by: Option<String>,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub rotated_at: Option<String>,
    pub revoked_at: Option<String>,
    pub grace_expires_at: Option<String>,
}

impl HasId for ApiKey {
    fn id(&self) -> &str {
        &self.id
    }
}

const COLUMNS: &str =
    "id, organization_id, name, type, environment, key_preview, scopes, allowed_origins, \
     rate_limit, project_id, status, created_at, created_by, last_used_at, expires_at, rotated_at, \
     revoked_at, grace_expires_at";

impl ApiKey {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        let time = |c: &str| -> Result<Option<String>, sqlx::Error> {
            Ok(r.try_get::<Option<String>, _>(c)?
                .map(|t| storage::api_time(&t)))
        };
        let expires_at: Option<String> = r.try_get("expires_at")?;
        let mut status: String = r.try_get("status")?;
        if status == "active"
            && expires_at
                .as_deref()
                .is_some_and(|t| t <= storage::now().as_str())
        {
            status = "expired".into();
        }
        Ok(ApiKey {
            id: r.try_get("id")?,
            organization_id: r.try_get("organization_id")?,
            name: r.try_get("name")?,
            key_type: r.try_get("type")?,
            environment: r.try_get("environment")?,
            key_preview: r.try_get("key_preview")?,
            scopes: r.get_json("scopes")?,
            allowed_origins: r.get_json("allowed_origins")?,
            rate_limit: r
                .try_get::<Option<String>, _>("rate_limit")?
                .and_then(|s| serde_json::from_str(&s).ok()),
            project_id: r.try_get("project_id")?,
            status,
            created_at: storage::api_time(&r.try_get::<String, _>("created_at")?),
            created_by: r.try_get("created_by")?,
            last_used_at: time("last_used_at")?,
            expires_at: expires_at.map(|t| storage::api_time(&t)),
            rotated_at: time("rotated_at")?,
            revoked_at: time("revoked_at")?,
            grace_expires_at: time("grace_expires_at")?,
        })
    }
}

async fn load(db: &Db, org_id: &str, id: &str, env: Option<&str>) -> Result<ApiKey, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND organization_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| Error::not_found("API key not found"))?;
    let key = ApiKey::from_row(&row)?;
    // Test-environment callers see test keys only, and live callers live keys only.
    if env.is_some_and(|e| e != key.environment) {
        return Err(Error::not_found("API key not found"));
    }
    Ok(key)
}

/// A new key value: `<sk|pk>_<live|test>_` + 40 random base62 characters (≈ 238 bits).
fn new_secret(key_type: &str, env: &str) -> (String, String, String) {
    let prefix = format!(
        "{}_{env}_",
        if key_type == "publishable" {
            "pk"
        } else {
            "sk"
        }
    );
    let token = format!("{prefix}{}", crypto::random_base62(40));
    let preview = format!(
        "{prefix}{}…{}",
        &token[prefix.len()..prefix.len() + 3],
        &token[token.len() - 3..]
    );
    let hash = crypto::sha256_hex(token.as_bytes());
    (token, preview, hash)
}

#[derive(Debug, Deserialize)]
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
/// only scopes it holds (a person by role, a key by role and its own scopes).
fn check_scopes<P>(access: &OrgAccess<P>, scopes: &[String], errors: &mut Vec<FieldError>) {
    for (i, s) in scopes.iter().enumerate() {
        match scope_min_role(s) {
            None => errors.push(FieldError::new(
                format!("scopes[{i}]"),
                "is not a known scope",
            )),
            Some(min) if access.role < min => errors.push(FieldError::new(
                format!("scopes[{i}]"),
                format!("needs the {} role, which you do not have", min.as_str()),
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
        .scopes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
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

#[derive(Debug, Deserialize)]
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

async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysManage>,
    Json(body): Json<CreateKey>,
) -> Result<impl IntoResponse, Error> {
    let mut errors = Vec::new();
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        errors.push(FieldError::new("name", "must be 1 to 200 characters"));
    }
    let key_type = body.key_type.unwrap_or_else(|| "secret".into());
    if key_type != "secret" && key_type != "publishable" {
        errors.push(FieldError::new("type", "must be secret or publishable"));
    }
    let env = body
        .environment
        .or_else(|| access.environment().map(str::to_string))
        .unwrap_or_else(|| "live".into());
    if env != "live" && env != "test" {
        errors.push(FieldError::new("environment", "must be live or test"));
    } else if access.environment().is_some_and(|e| e != env) {
        errors.push(FieldError::new(
            "environment",
            "a caller in one environment cannot create keys for the other",
        ));
    }
    let publishable = key_type == "publishable";
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
            check_scopes(&access, s, &mut errors);
            let mut s = s.clone();
            s.sort();
            s.dedup();
            s
        }
    };
    if publishable && !access.holds_scope("gateway:proxy") {
        errors.push(FieldError::new(
            "type",
            "a publishable key carries gateway:proxy, which you do not hold",
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
        let found: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM projects WHERE id = $1 AND organization_id = $2",
        )
        .bind(p)
        .bind(access.org_id())
        .fetch_one(state.db.pool())
        .await?;
        if found == 0 {
            errors.push(FieldError::new(
                "project_id",
                "is not a project of this organization",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let id = crate::ids::new_id("key");
    let (token, preview, hash) = new_secret(&key_type, &env);
    let now = storage::now();
    let mut tx = crate::events::begin_write(&state.db).await?;
    sqlx::query(
        "INSERT INTO api_keys (id, organization_id, name, type, environment, key_preview, scopes, allowed_origins, \
         rate_limit, project_id, status, created_by, created_at, updated_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11, $12, $12, $13)",
    )
    .bind(&id)
    .bind(access.org_id())
    .bind(&name)
    .bind(&key_type)
    .bind(&env)
    .bind(&preview)
    .bind(json!(scopes).to_string())
    .bind(json!(origins).to_string())
    .bind(rate_limit.map(|r| r.to_string()))
    .bind(body.project_id.as_deref())
    .bind(access.creator_id())
    .bind(&now)
    .bind(expires_at.as_deref())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO api_key_secrets (secret_hash, key_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(&hash)
    .bind(&id)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    access
        .emit(
            &mut tx,
            "api_key.created",
            ("api_key", &id),
            json!({"id": id, "name": name, "type": key_type, "environment": env, "scopes": scopes}),
        )
        .await?;
    tx.commit().await?;
    let key = load(&state.db, access.org_id(), &id, None).await?;
    let mut body = serde_json::to_value(key).map_err(anyhow::Error::from)?;
    body["token"] = token.into();
    Ok((StatusCode::CREATED, axum::Json(body)))
}

#[derive(Debug, Deserialize)]
pub struct KeyFilter {
    status: Option<String>,
    #[serde(rename = "type")]
    key_type: Option<String>,
    environment: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysRead>,
    page: Page,
    Query(filter): Query<KeyFilter>,
) -> Result<impl IntoResponse, Error> {
    let mut sql = Sql::new(" FROM api_keys WHERE organization_id = ");
    sql.bind(access.org_id().to_string());
    if let Some(env) = access.environment() {
        sql.and("environment = ?", env.to_string());
    } else if let Some(env) = filter.environment {
        sql.and("environment = ?", env);
    }
    if let Some(t) = filter.key_type {
        sql.and("type = ?", t);
    }
    match filter.status.as_deref() {
        None => {}
        Some("expired") => {
            sql.and("status = ?", "active")
                .and("expires_at <= ?", storage::now());
        }
        Some("active") => {
            sql.and("status = ?", "active")
                .push(" AND (expires_at IS NULL OR expires_at > ")
                .bind(storage::now())
                .push(")");
        }
        Some(s @ ("disabled" | "revoked")) => {
            sql.and("status = ?", s);
        }
        Some(_) => {
            return Err(Error::invalid_field(
                "status",
                "must be active, disabled, revoked or expired",
            ))
        }
    }
    let select = format!("SELECT {COLUMNS}");
    let list = page
        .fetch(
            &state.db,
            "api_keys",
            &select,
            &sql,
            "id DESC",
            ApiKey::from_row,
        )
        .await?;
    Ok(axum::Json(list))
}

async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysRead>,
    Path((_, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, Error> {
    Ok(axum::Json(
        load(&state.db, access.org_id(), &id, access.environment()).await?,
    ))
}

#[derive(Debug, Deserialize)]
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
    key_preview: Option<Value>,
    id: Option<Value>,
}

async fn update(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysManage>,
    Path((_, id)): Path<(String, String)>,
    Json(body): Json<UpdateKey>,
) -> Result<impl IntoResponse, Error> {
    let key = load(&state.db, access.org_id(), &id, access.environment()).await?;
    let mut errors = Vec::new();
    for (field, given) in [
        ("type", body.key_type.is_some()),
        ("environment", body.environment.is_some()),
        ("token", body.token.is_some()),
        ("key_preview", body.key_preview.is_some()),
        ("id", body.id.is_some()),
    ] {
        if given {
            errors.push(FieldError::new(
                field,
                "is immutable; create a new key instead",
            ));
        }
    }
    if key.status == "revoked" {
        return Err(Error::conflict("A revoked key cannot be changed"));
    }
    check_within_authority(&access, &key)?;
    if let Some(n) = &body.name {
        if n.trim().is_empty() || n.chars().count() > 200 {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
    }
    let publishable = key.key_type == "publishable";
    if let Some(s) = &body.scopes {
        if publishable {
            errors.push(FieldError::new(
                "scopes",
                "publishable keys carry only gateway:proxy",
            ));
        } else {
            check_scopes(&access, s, &mut errors);
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
    if let Some(s) = &body.status {
        if s != "active" && s != "disabled" {
            errors.push(FieldError::new(
                "status",
                "must be active or disabled (revoke with DELETE)",
            ));
        }
    }
    let rate_limit = body
        .rate_limit
        .as_ref()
        .map(|r| check_rate_limit(r, &mut errors));
    if !errors.is_empty() {
        return Err(Error::invalid(errors));
    }
    let mut sql = Sql::new("UPDATE api_keys SET updated_at = ");
    sql.bind(storage::now());
    if let Some(n) = &body.name {
        sql.push(", name = ").bind(n.trim().to_string());
    }
    if let Some(s) = &body.scopes {
        let mut s = s.clone();
        s.sort();
        s.dedup();
        sql.push(", scopes = ").bind(json!(s).to_string());
    }
    if let Some(o) = &body.allowed_origins {
        sql.push(", allowed_origins = ").bind(json!(o).to_string());
    }
    if let Some(s) = &body.status {
        sql.push(", status = ").bind(s.clone());
    }
    if let Some(r) = rate_limit {
        sql.push(", rate_limit = ").bind(r.to_string());
    }
    sql.push(" WHERE id = ").bind(id.clone());
    let mut tx = crate::events::begin_write(&state.db).await?;
    sql.query().execute(&mut *tx).await?;
    access
        .emit(
            &mut tx,
            "api_key.updated",
            ("api_key", &id),
            json!({"id": id}),
        )
        .await?;
    tx.commit().await?;
    state.bus.publish(&format!("key:{id}")).await;
    Ok(axum::Json(
        load(&state.db, access.org_id(), &id, None).await?,
    ))
}

async fn revoke(
    State(state): State<AppState>,
    access: OrgAccess<perm::ApiKeysManage>,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    let key = load(&state.db, access.org_id(), &id, access.environment()).await?;
    check_within_authority(&access, &key)?;
    if key.status != "revoked" {
        let mut tx = crate::events::begin_write(&state.db).await?;
        sqlx::query("UPDATE api_keys SET status = 'revoked', revoked_at = $1, updated_at = $1 WHERE id = $2")
            .bind(storage::now())
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        access
            .emit(
                &mut tx,
                "api_key.revoked",
                ("api_key", &id),
                json!({"id": id, "name": key.name}),
            )
            .await?;
        tx.commit().await?;
    }
    state.bus.publish(&format!("key:{id}")).await;
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
) -> Result<impl IntoResponse, Error> {
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
    let key = load(&state.db, access.org_id(), &id, access.environment()).await?;
    if key.status == "revoked" {
        return Err(Error::conflict("A revoked key cannot be rotated"));
    }
    check_within_authority(&access, &key)?;
    let (token, preview, hash) = new_secret(&key.key_type, &key.environment);
    let now = chrono::Utc::now();
    let now_s = storage::format_time(now);
    let grace_until = storage::format_time(now + chrono::Duration::seconds(grace));
    let mut tx = crate::events::begin_write(&state.db).await?;
    sqlx::query("UPDATE api_key_secrets SET grace_expires_at = $1 WHERE key_id = $2 AND grace_expires_at IS NULL")
        .bind(&grace_until)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO api_key_secrets (secret_hash, key_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(&hash)
    .bind(&id)
    .bind(&now_s)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE api_keys SET key_preview = $1, rotated_at = $2, grace_expires_at = $3, updated_at = $2 WHERE id = $4")
        .bind(&preview)
        .bind(&now_s)
        .bind(&grace_until)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    access
        .emit(
            &mut tx,
            "api_key.rotated",
            ("api_key", &id),
            json!({"id": id, "grace_expires_at": storage::api_time(&grace_until)}),
        )
        .await?;
    tx.commit().await?;
    state.bus.publish(&format!("key:{id}")).await;
    let key = load(&state.db, access.org_id(), &id, None).await?;
    let mut out = serde_json::to_value(key).map_err(anyhow::Error::from)?;
    out["token"] = token.into();
    Ok((StatusCode::CREATED, axum::Json(out)))
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
        let key_id: Option<String> =
            sqlx::query_scalar("SELECT key_id FROM api_key_secrets WHERE secret_hash = $1")
                .bind(&digest)
                .fetch_optional(state.db.pool())
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
