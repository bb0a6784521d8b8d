//! Emitting: the audit row and the outbox rows (one webhook event, one pending delivery per
//! subscribed endpoint) written on the caller's connection — inside the caller's transaction —
//! so that they commit or roll back with the change that caused them.

use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use super::{is_event_type, ActorContext, ALL_EVENTS};
use crate::{environment::Environment, error::Result, ids::OrgId, storage};

/// One event: an audit record and, for webhook event types, a webhook message.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `<resource>.<verb>`, e.g. `member.added`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    /// `None`: a platform-level event (only platform endpoints receive it).
    pub organization_id: Option<OrgId>,
    /// The webhook payload's `data` (usually the resource as the API shows it).
    pub data: Value,
    /// The audit record's `metadata` (what changed, why); `{}` when not set.
    pub metadata: Value,
    /// The environment whose webhook endpoints receive it; `None`: the actor's (live when the
    /// actor is not confined to one).
    pub environment: Option<Environment>,
}

impl NewEvent {
    pub fn new(
        action: impl Into<String>,
        resource_type: impl Into<String>,
        resource_id: Option<String>,
    ) -> Self {
        NewEvent {
            action: action.into(),
            resource_type: resource_type.into(),
            resource_id,
            organization_id: None,
            data: json!({}),
            metadata: json!({}),
            environment: None,
        }
    }

    pub fn organization(mut self, organization_id: OrgId) -> Self {
        self.organization_id = Some(organization_id);
        self
    }

    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }
}

/// What [`emit`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// The audit record (`aud_…`).
    pub audit_id: String,
    /// The webhook event (`evt_…`, the `webhook-id` every endpoint receives), when at least one
    /// enabled endpoint is subscribed to it.
    pub event_id: Option<String>,
    /// How many deliveries were queued.
    pub deliveries: usize,
}

/// Records `event` in the audit log and queues it for every enabled webhook endpoint subscribed
/// to its type (the organization's endpoints and the platform's), on `conn` — pass the
/// transaction of the change (`&mut *tx`), so that a rolled-back change emits nothing.
pub async fn emit(
    conn: &mut AnyConnection,
    ctx: &ActorContext,
    event: NewEvent,
) -> Result<Emitted> {
    let audit_id = record_audit(conn, ctx, &event).await?;
    let (event_id, deliveries) = if is_event_type(&event.action) {
        let org = event.organization_id.as_ref().map(|o| o.as_str());
        let env = event
            .environment
            .or(ctx.environment)
            .unwrap_or(Environment::Live);
        match enqueue(
            conn,
            &event.action,
            org,
            &event.data,
            Target::Subscribers(env),
        )
        .await?
        {
            Some((id, n)) => (Some(id), n),
            None => (None, 0),
        }
    } else {
        (None, 0)
    };
    Ok(Emitted {
        audit_id,
        event_id,
        deliveries,
    })
}

/// Records `event` in the audit log only (for audit-only actions such as a failed login; the
/// webhook part of [`emit`] is skipped even for webhook event types).
pub async fn record_audit(
    conn: &mut AnyConnection,
    ctx: &ActorContext,
    event: &NewEvent,
) -> Result<String> {
    check_action(&event.action)?;
    let id = crate::ids::AuditId::generate();
    sqlx::query(
        "INSERT INTO audit_events (id, actor_type, actor_id, action, resource_type, resource_id, \
         organization_id, ip_address, user_agent, request_id, metadata, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&id)
    .bind(ctx.actor.kind())
    .bind(ctx.actor.id())
    .bind(&event.action)
    .bind(&event.resource_type)
    .bind(event.resource_id.as_deref())
    .bind(event.organization_id.as_ref().map(|o| o.as_str()))
    .bind(ctx.request.ip_address.as_deref())
    .bind(ctx.request.user_agent.as_deref())
    .bind(ctx.request.request_id.as_deref())
    .bind(event.metadata.to_string())
    .bind(storage::now())
    .execute(&mut *conn)
    .await?;
    Ok(id.into())
}

/// `<resource>.<verb>`: lower-case words joined by one dot. A programming error otherwise.
fn check_action(action: &str) -> Result<()> {
    let valid_word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match action.split_once('.') {
        Some((resource, verb)) if valid_word(resource) && valid_word(verb) => Ok(()),
        _ => Err(anyhow::anyhow!("audit action {action:?} is not <resource>.<verb>").into()),
    }
}

/// Who a webhook message goes to.
pub(crate) enum Target<'a> {
    /// Every enabled endpoint subscribed to the type: the organization's endpoints of the
    /// event's environment, and the platform's.
    Subscribers(Environment),
    /// One endpoint, whatever it subscribes to (`webhook.test`).
    Endpoint(&'a str),
}

/// Writes the webhook event and a pending first attempt per target endpoint. Returns the event
/// id and the number of deliveries, or `None` when no endpoint is to receive it.
pub(crate) async fn enqueue(
    conn: &mut AnyConnection,
    event_type: &str,
    organization_id: Option<&str>,
    data: &Value,
    target: Target<'_>,
) -> Result<Option<(String, usize)>> {
    let endpoints = match target {
        Target::Endpoint(id) => vec![id.to_string()],
        Target::Subscribers(env) => subscribers(conn, event_type, organization_id, env).await?,
    };
    if endpoints.is_empty() {
        return Ok(None);
    }
    let now = storage::now();
    let event_id = crate::ids::EventId::generate();
    // The exact bytes every attempt sends, so that retries are identical.
    let payload = json!({
        "type": event_type,
        "timestamp": storage::api_time(&now),
        "data": data,
    })
    .to_string();
    sqlx::query(
        "INSERT INTO webhook_events (id, event_type, organization_id, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&event_id)
    .bind(event_type)
    .bind(organization_id)
    .bind(&payload)
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    for endpoint_id in &endpoints {
        insert_attempt(conn, endpoint_id, &event_id, event_type, 1, false, &now).await?;
    }
    Ok(Some((event_id.into(), endpoints.len())))
}

/// A pending attempt due at `due`.
pub(crate) async fn insert_attempt(
    conn: &mut AnyConnection,
    endpoint_id: &str,
    event_id: &str,
    event_type: &str,
    attempt: i64,
    manual: bool,
    due: &str,
) -> Result<String> {
    let id = crate::ids::DeliveryId::generate();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status, attempt, \
         manual, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(endpoint_id)
    .bind(event_id)
    .bind(event_type)
    .bind(attempt)
    .bind(manual)
    .bind(due)
    .bind(storage::now())
    .execute(&mut *conn)
    .await?;
    Ok(id.into())
}

/// The enabled endpoints that receive `event_type` from `organization_id` in `environment`.
async fn subscribers(
    conn: &mut AnyConnection,
    event_type: &str,
    organization_id: Option<&str>,
    environment: Environment,
) -> Result<Vec<String>> {
    let rows = match organization_id {
        Some(org) => {
            sqlx::query(
                "SELECT id, events FROM webhook_endpoints WHERE enabled = $1 \
                 AND (organization_id IS NULL OR (organization_id = $2 AND environment = $3)) \
                 ORDER BY id",
            )
            .bind(true)
            .bind(org)
            .bind(environment.as_str())
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT id, events FROM webhook_endpoints WHERE enabled = $1 \
                 AND organization_id IS NULL ORDER BY id",
            )
            .bind(true)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let mut ids = Vec::new();
    for row in rows {
        let events: String = row.try_get("events")?;
        let events: Vec<String> = serde_json::from_str(&events).unwrap_or_default();
        if events.iter().any(|e| e == event_type || e == ALL_EVENTS) {
            ids.push(row.try_get("id")?);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_resource_dot_verb() {
        assert!(check_action("member.added").is_ok());
        assert!(check_action("api_key.created").is_ok());
        for bad in [
            "member",
            "Member.added",
            "member.",
            ".added",
            "a.b.c",
            "x y.z",
        ] {
            assert!(check_action(bad).is_err(), "{bad}");
        }
    }
}
