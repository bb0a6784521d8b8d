//! Webhook endpoints: an organization's (receiving that organization's events) or the
//! platform's (organization NULL, receiving every organization's events). The signing secret is
//! generated here, shown once, and stored encrypted with the master key (bound to the endpoint
//! id). Every change is recorded in the audit log in the same transaction.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{any::AnyRow, Row};

use super::{
    outbox::{self, Target},
    signing::WebhookSecret,
    ssrf::{self, TargetError},
    ActorContext, NewEvent, Scope, ALL_EVENTS, EVENT_TYPES,
};
use crate::ids::WebhookId;
use crate::{
    app::AppState,
    crypto::MasterKey,
    environment::Environment,
    error::{Error, FieldError, Result},
    http::pagination::{has_id, List, Page},
    storage::{self, Db, RowExt, Sql},
};

pub const MAX_DESCRIPTION_LEN: usize = 500;
/// How long the previous secret keeps signing after a rotation (receivers may verify either).
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);

const COLUMNS: &str =
    "id, organization_id, environment, url, description, events, enabled, disabled_reason, \
     created_at, updated_at";

/// An endpoint as the API shows it (never with its secret).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Endpoint {
    pub id: WebhookId,
    pub organization_id: Option<String>,
    /// The environment whose events it receives (platform endpoints: every environment's).
    pub environment: Environment,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub enabled: bool,
    /// Why Gatehouse disabled it (e.g. failing for five days); `None` when enabled or disabled
    /// by a user.
    pub disabled_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

has_id!(Endpoint);

impl Endpoint {
    fn from_row(row: &AnyRow) -> Result<Endpoint, sqlx::Error> {
        let events: String = row.try_get("events")?;
        Ok(Endpoint {
            id: row.try_get("id")?,
            organization_id: row.try_get("organization_id")?,
            environment: Environment::parse(&row.try_get::<String, _>("environment")?)
                .unwrap_or(Environment::Live),
            url: row.try_get("url")?,
            description: row.try_get("description")?,
            events: serde_json::from_str(&events).unwrap_or_default(),
            enabled: row.get_bool("enabled")?,
            disabled_reason: row.try_get("disabled_reason")?,
            created_at: row.get_time("created_at")?,
            updated_at: row.get_time("updated_at")?,
        })
    }
}

fn default_enabled() -> bool {
    true
}

/// `POST …/webhooks`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// `live` or `test` (default: the caller's environment, else live).
    pub environment: Option<Environment>,
}

/// `PATCH …/webhooks/{id}`: the fields given are changed.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// The creation response: the endpoint and, this once, its secret.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub secret: WebhookSecret,
}

/// The rotation response: the new secret, shown once. The previous one keeps signing (as a
/// second signature) until `previous_secret_expires_at`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RotatedSecret {
    pub secret: WebhookSecret,
    pub previous_secret_expires_at: String,
}

/// Checks a URL's form and, unless the configuration allows private targets, where it resolves.
/// A non-public target's refusal names the operator's switch.
async fn check_url(url: &str, allow_private: bool) -> Result<String, FieldError> {
    let parsed = ssrf::parse_url(url).map_err(|e| FieldError::new("url", e.to_string()))?;
    ssrf::vet_url(&parsed, allow_private)
        .await
        .map_err(|e| match e {
            TargetError::NonPublic(_) => FieldError::new(
                "url",
                format!(
                    "{e}; an operator can allow private webhook targets with \
                     allow_private_webhook_targets = true (GATEHOUSE_ALLOW_PRIVATE_WEBHOOK_TARGETS)"
                ),
            ),
            e => FieldError::new("url", e.to_string()),
        })?;
    Ok(parsed.to_string())
}

/// Non-empty; each a known event type, or `"*"` alone. Duplicates are dropped.
fn check_events(events: &[String]) -> Result<Vec<String>, FieldError> {
    if events.is_empty() {
        return Err(FieldError::new(
            "events",
            "must name at least one event type, or \"*\"",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let e = e.trim();
        if e != ALL_EVENTS && !EVENT_TYPES.contains(&e) {
            return Err(FieldError::new(
                "events",
                format!(
                    "unknown event type {e:?}; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        if !out.iter().any(|o| o == e) {
            out.push(e.to_string());
        }
    }
    if out.len() > 1 && out.iter().any(|e| e == ALL_EVENTS) {
        return Err(FieldError::new(
            "events",
            "\"*\" already includes every event type; give it alone",
        ));
    }
    Ok(out)
}

fn check_description(d: &str) -> Result<String, FieldError> {
    if d.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    Ok(d.trim().to_string())
}

fn invalid<const N: usize>(errors: [Option<FieldError>; N]) -> Error {
    Error::invalid(errors.into_iter().flatten().collect())
}

fn secret_aad(endpoint_id: &str) -> Vec<u8> {
    format!("webhook_secret:{endpoint_id}").into_bytes()
}

pub(crate) fn encrypt_secret(key: &MasterKey, endpoint_id: &str, secret: &WebhookSecret) -> String {
    key.encrypt(secret.expose().as_bytes(), &secret_aad(endpoint_id))
}

pub(crate) fn decrypt_secret(
    key: &MasterKey,
    endpoint_id: &str,
    ciphertext: &str,
) -> anyhow::Result<WebhookSecret> {
    let plain = key
        .decrypt(ciphertext, &secret_aad(endpoint_id))
        .map_err(|e| anyhow::anyhow!("webhook secret of {endpoint_id}: {e}"))?;
    String::from_utf8(plain)
        .ok()
        .and_then(|s| WebhookSecret::parse(&s))
        .ok_or_else(|| anyhow::anyhow!("webhook secret of {endpoint_id} is malformed"))
}

fn audit_event(scope: &Scope, action: &str, endpoint_id: &str) -> NewEvent {
    let event = NewEvent::new(action, "webhook", Some(endpoint_id.to_string()));
    match scope {
        Scope::Organization(org, _) => event.organization(org.clone()),
        Scope::Platform => event,
    }
}

/// Creates an endpoint; the response carries its secret, shown only this once.
pub async fn create(
    state: &AppState,
    scope: &Scope,
    ctx: &ActorContext,
    input: NewEndpoint,
) -> Result<CreatedEndpoint> {
    let url = check_url(&input.url, state.config.allow_private_webhook_targets).await;
    let (url, events, description, environment) = match (
        url,
        check_events(&input.events),
        check_description(&input.description),
        check_environment(scope, input.environment),
    ) {
        (Ok(u), Ok(e), Ok(d), Ok(env)) => (u, e, d, env),
        (u, e, d, env) => return Err(invalid([u.err(), e.err(), d.err(), env.err()])),
    };

    let id = crate::ids::WebhookId::generate();
    let secret = WebhookSecret::generate();
    let now = storage::now();
    let mut tx = super::begin_write(&state.db).await?;
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, organization_id, url, description, events, enabled, \
         secret_ciphertext, created_at, updated_at, environment) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
    )
    .bind(&id)
    .bind(scope.organization_id())
    .bind(&url)
    .bind(&description)
    .bind(json!(events).to_string())
    .bind(input.enabled)
    .bind(encrypt_secret(&state.master_key, &id, &secret))
    .bind(&now)
    .bind(environment.as_str())
    .execute(&mut *tx)
    .await?;
    let audit = audit_event(scope, "webhook.created", &id)
        .metadata(json!({ "url": url, "events": events, "enabled": input.enabled }));
    outbox::record_audit(&mut tx, ctx, &audit).await?;
    let endpoint = fetch(&mut tx, scope, &id).await?;
    tx.commit().await?;
    Ok(CreatedEndpoint { endpoint, secret })
}

/// The environment of a new endpoint: the one asked for, within the caller's own (a caller
/// confined to one environment creates endpoints there only); platform endpoints receive every
/// environment's events and name none.
fn check_environment(
    scope: &Scope,
    asked: Option<Environment>,
) -> std::result::Result<Environment, FieldError> {
    match (scope, asked) {
        (Scope::Organization(_, Some(own)), Some(e)) if e != *own => Err(FieldError::new(
            "environment",
            format!("a caller in the {own} environment cannot create endpoints for {e}"),
        )),
        (Scope::Organization(_, own), asked) => Ok(asked.or(*own).unwrap_or(Environment::Live)),
        (Scope::Platform, None) => Ok(Environment::Live),
        (Scope::Platform, Some(_)) => Err(FieldError::new(
            "environment",
            "platform endpoints receive every environment's events; omit it",
        )),
    }
}

async fn fetch(conn: &mut sqlx::AnyConnection, scope: &Scope, id: &WebhookId) -> Result<Endpoint> {
    let mut sql = Sql::new(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = "
    ));
    sql.bind(id);
    scope.restrict(&mut sql, "organization_id");
    let row = sql
        .query()
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::not_found("Webhook endpoint not found"))?;
    Ok(Endpoint::from_row(&row)?)
}

/// One endpoint of the scope (404 outside it).
pub async fn get(db: &Db, scope: &Scope, id: &WebhookId) -> Result<Endpoint> {
    let mut conn = db.pool().acquire().await?;
    fetch(&mut conn, scope, id).await
}

/// The scope's endpoints, newest first (`{"webhooks": […], …}`).
pub async fn list(db: &Db, scope: &Scope, page: &Page) -> Result<List<Endpoint>> {
    let mut count = Sql::new("SELECT COUNT(*) FROM webhook_endpoints WHERE 1 = 1");
    scope.restrict(&mut count, "organization_id");
    let total: i64 = count.query_scalar().fetch_one(db.pool()).await?;
    let mut sql = Sql::new(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE 1 = 1"
    ));
    scope.restrict(&mut sql, "organization_id");
    page.apply_newest_first(&mut sql, "id");
    let rows = sql.query().fetch_all(db.pool()).await?;
    let items = rows
        .iter()
        .map(Endpoint::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(List::from_rows("webhooks", items, total, page))
}

/// Changes the given fields. Enabling an endpoint clears its failure record.
pub async fn update(
    state: &AppState,
    scope: &Scope,
    ctx: &ActorContext,
    id: &WebhookId,
    patch: EndpointPatch,
) -> Result<Endpoint> {
    let url = match &patch.url {
        Some(u) => Some(check_url(u, state.config.allow_private_webhook_targets).await),
        None => None,
    };
    let (url, events, description) = match (
        url.transpose(),
        patch.events.as_deref().map(check_events).transpose(),
        patch
            .description
            .as_deref()
            .map(check_description)
            .transpose(),
    ) {
        (Ok(u), Ok(e), Ok(d)) => (u, e, d),
        (u, e, d) => return Err(invalid([u.err(), e.err(), d.err()])),
    };

    let mut tx = super::begin_write(&state.db).await?;
    let before = fetch(&mut tx, scope, id).await?;
    let mut sql = Sql::new("UPDATE webhook_endpoints SET updated_at = ");
    sql.bind(storage::now());
    if let Some(url) = &url {
        sql.push(", url = ").bind(url.as_str());
    }
    if let Some(events) = &events {
        sql.push(", events = ").bind(json!(events).to_string());
    }
    if let Some(description) = &description {
        sql.push(", description = ").bind(description.as_str());
    }
    if let Some(enabled) = patch.enabled {
        sql.push(", enabled = ").bind(enabled);
        if enabled {
            sql.push(", disabled_reason = NULL, failing_since = NULL");
        }
    }
    sql.push(" WHERE id = ").bind(id);
    sql.query().execute(&mut *tx).await?;
    let mut changes = serde_json::Map::new();
    if let Some(url) = url.filter(|u| *u != before.url) {
        changes.insert("url".into(), json!({ "from": before.url, "to": url }));
    }
    if let Some(events) = events.filter(|e| *e != before.events) {
        changes.insert(
            "events".into(),
            json!({ "from": before.events, "to": events }),
        );
    }
    if let Some(d) = description.filter(|d| *d != before.description) {
        changes.insert(
            "description".into(),
            json!({ "from": before.description, "to": d }),
        );
    }
    if let Some(enabled) = patch.enabled.filter(|e| *e != before.enabled) {
        changes.insert(
            "enabled".into(),
            json!({ "from": before.enabled, "to": enabled }),
        );
    }
    let audit = audit_event(scope, "webhook.updated", id).metadata(json!({ "changes": changes }));
    outbox::record_audit(&mut tx, ctx, &audit).await?;
    let endpoint = fetch(&mut tx, scope, id).await?;
    tx.commit().await?;
    Ok(endpoint)
}

/// Deletes the endpoint with its delivery log and pending deliveries.
pub async fn delete(db: &Db, scope: &Scope, ctx: &ActorContext, id: &WebhookId) -> Result<()> {
    let mut tx = super::begin_write(db).await?;
    let before = fetch(&mut tx, scope, id).await?;
    sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let audit = audit_event(scope, "webhook.deleted", id)
        .metadata(json!({ "url": before.url, "events": before.events }));
    outbox::record_audit(&mut tx, ctx, &audit).await?;
    tx.commit().await?;
    Ok(())
}

/// A new secret, shown once; the previous one keeps signing for [`ROTATION_OVERLAP`].
pub async fn rotate_secret(
    state: &AppState,
    scope: &Scope,
    ctx: &ActorContext,
    id: &WebhookId,
) -> Result<RotatedSecret> {
    let mut tx = super::begin_write(&state.db).await?;
    fetch(&mut tx, scope, id).await?;
    let secret = WebhookSecret::generate();
    let expires = storage::format_time(chrono::Utc::now() + ROTATION_OVERLAP);
    sqlx::query(
        "UPDATE webhook_endpoints SET previous_secret_ciphertext = secret_ciphertext, \
         previous_secret_expires_at = $1, secret_ciphertext = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(&expires)
    .bind(encrypt_secret(&state.master_key, id, &secret))
    .bind(storage::now())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let audit = audit_event(scope, "webhook.secret_rotated", id)
        .metadata(json!({ "previous_secret_expires_at": storage::api_time(&expires) }));
    outbox::record_audit(&mut tx, ctx, &audit).await?;
    tx.commit().await?;
    Ok(RotatedSecret {
        secret,
        previous_secret_expires_at: storage::api_time(&expires),
    })
}

/// Sends a `webhook.test` event to this endpoint (whatever it subscribes to). Returns the event
/// id (the `webhook-id` the receiver gets).
pub async fn send_test(
    db: &Db,
    scope: &Scope,
    ctx: &ActorContext,
    id: &WebhookId,
) -> Result<String> {
    let mut tx = super::begin_write(db).await?;
    let endpoint = fetch(&mut tx, scope, id).await?;
    if !endpoint.enabled {
        return Err(Error::conflict(
            "The webhook endpoint is disabled; enable it to send a test event",
        ));
    }
    let data = json!({
        "webhook_id": endpoint.id,
        "message": "This is a test event from Gatehouse.",
    });
    let org = endpoint.organization_id.as_deref();
    let (event_id, _) = outbox::enqueue(&mut tx, "webhook.test", org, &data, Target::Endpoint(id))
        .await?
        .ok_or_else(|| anyhow::anyhow!("a targeted event always has its endpoint"))?;
    let audit = audit_event(scope, "webhook.tested", id).metadata(json!({ "event_id": event_id }));
    outbox::record_audit(&mut tx, ctx, &audit).await?;
    tx.commit().await?;
    Ok(event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lists_are_checked() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(check_events(&s(&["*"])).unwrap(), s(&["*"]));
        assert_eq!(
            check_events(&s(&["member.added", "member.added", "invoice.paid"])).unwrap(),
            s(&["member.added", "invoice.paid"])
        );
        assert!(check_events(&[]).is_err());
        assert!(check_events(&s(&["member.exploded"])).is_err());
        assert!(check_events(&s(&["*", "member.added"])).is_err());
    }

    #[test]
    fn secrets_round_trip_only_for_their_endpoint() {
        let key = MasterKey::from_hex(&MasterKey::generate_hex()).unwrap();
        let secret = WebhookSecret::generate();
        let ct = encrypt_secret(&key, "wh_1", &secret);
        assert!(!ct.contains(secret.expose()));
        assert_eq!(decrypt_secret(&key, "wh_1", &ct).unwrap(), secret);
        assert!(decrypt_secret(&key, "wh_2", &ct).is_err());
    }
}
