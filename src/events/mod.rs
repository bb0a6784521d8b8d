//! Events (SPEC §7): every change is recorded in the append-only audit log and, when it is a
//! webhook event type, handed to the webhook endpoints subscribed to it — both **in the same
//! database transaction** as the change itself (a transactional outbox), so that a rolled-back
//! change emits nothing and a crash after commit loses nothing.
//!
//! - [`emit`] (`outbox.rs`): the one place events are emitted, on the caller's transaction.
//! - [`change`]: the one write path of a change (transaction → change → event → commit →
//!   invalidation on every node).
//! - [`audit`]: filtered, paginated listing and a streamed CSV/NDJSON export.
//! - [`webhooks`]: the endpoint store (organization and platform scope), secrets, test events.
//! - [`deliveries`]: the delivery log and manual retry.
//! - [`delivery`]: the background worker that claims due attempts and sends them.
//! - [`signing`]: Standard Webhooks signatures; [`ssrf`]: the outbound client that refuses
//!   private addresses.

pub mod audit;
pub mod change;
pub mod deliveries;
pub mod delivery;
mod outbox;
pub mod routes;
pub mod signing;
pub mod ssrf;
pub mod webhooks;

pub use change::{Change, Invalidation};
pub use outbox::{emit, record_audit, Emitted, NewEvent};

use crate::{
    environment::Environment,
    ids::{KeyId, OrgId, UserId},
};

/// Every webhook event type (SPEC §7), `<resource>.<verb>`. `webhook.disabled` is Gatehouse's
/// own: sent when an endpoint is disabled after failing for five days.
pub const EVENT_TYPES: &[&str] = &[
    "user.created",
    "user.updated",
    "user.deleted",
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "organization.suspended",
    "member.added",
    "member.updated",
    "member.removed",
    "invitation.created",
    "invitation.accepted",
    "invitation.revoked",
    "api_key.created",
    "api_key.rotated",
    "api_key.revoked",
    "subscription.created",
    "subscription.updated",
    "subscription.canceled",
    "invoice.created",
    "invoice.paid",
    "invoice.voided",
    "invoice.payment_failed",
    "quota.exceeded",
    "usage.threshold_reached",
    "policy.violation",
    "webhook.test",
    "webhook.disabled",
];

/// Subscribing to this receives every event type.
pub const ALL_EVENTS: &str = "*";

/// True for the event types webhooks can subscribe to (audit-only actions are not).
pub fn is_event_type(action: &str) -> bool {
    EVENT_TYPES.contains(&action)
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(UserId),
    ApiKey(KeyId),
    /// Gatehouse itself (background jobs, the delivery worker).
    System,
}

impl Actor {
    /// The audit log's `actor_type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::User(_) => "user",
            Actor::ApiKey(_) => "api_key",
            Actor::System => "system",
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Actor::User(id) => Some(id.as_str()),
            Actor::ApiKey(id) => Some(id.as_str()),
            Actor::System => None,
        }
    }
}

/// What the request that caused a change tells about it (filled by the handler).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// The actor and request every emitted event is attributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorContext {
    pub actor: Actor,
    pub request: RequestMeta,
    /// The environment the actor is confined to (a key, a tenant-scoped token): the webhook
    /// events it causes go to that environment's endpoints. `None`: live.
    pub environment: Option<Environment>,
}

impl ActorContext {
    pub fn new(actor: Actor, request: RequestMeta) -> Self {
        ActorContext {
            actor,
            request,
            environment: None,
        }
    }

    pub fn in_environment(mut self, environment: Option<Environment>) -> Self {
        self.environment = environment;
        self
    }

    /// Gatehouse acting on its own, outside any request.
    pub fn system() -> Self {
        ActorContext::new(Actor::System, RequestMeta::default())
    }
}

/// Emits one event of this organization inside `tx`.
pub async fn emit_org(
    tx: &mut sqlx::AnyConnection,
    ctx: &ActorContext,
    org_id: &str,
    action: &str,
    resource: (&str, &str),
    data: serde_json::Value,
) -> crate::error::Result<()> {
    emit(
        tx,
        ctx,
        NewEvent::new(action, resource.0, Some(resource.1.to_string()))
            .organization(crate::ids::OrgId(org_id.to_string()))
            .data(data),
    )
    .await?;
    Ok(())
}

/// Records an audit-only security event (a login, a refused key) in a transaction of its own:
/// nothing else changes with it. A failure is logged, never turned into the caller's error.
pub async fn record_security_event(db: &crate::storage::Db, ctx: &ActorContext, event: NewEvent) {
    let result = async {
        let mut tx = begin_write(db).await?;
        record_audit(&mut tx, ctx, &event).await?;
        tx.commit().await?;
        Ok::<_, crate::error::Error>(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!(action = %event.action, error = %e, "could not record a security event");
    }
}

/// Begins a transaction that will write (use it for the transaction you [`emit`] into); it lives
/// in `storage` (the dialect layer), re-exported here for the callers that name it so.
pub use crate::storage::begin_write;

/// Which webhook endpoints an operation is confined to: one organization's — all of them, or
/// one environment's for a caller confined to it — or the platform's own (`organization_id`
/// NULL), which receive every organization's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Organization(OrgId, Option<Environment>),
    Platform,
}

impl Scope {
    pub fn organization_id(&self) -> Option<&str> {
        match self {
            Scope::Organization(id, _) => Some(id.as_str()),
            Scope::Platform => None,
        }
    }

    /// Appends ` AND <column> = $n` (and ` AND environment = $m` for a confined caller) or
    /// ` AND <column> IS NULL`.
    pub(crate) fn restrict(&self, sql: &mut crate::storage::Sql, column: &str) {
        match self {
            Scope::Organization(id, env) => {
                sql.and(&format!("{column} = ?"), id.as_str());
                if let Some(env) = env {
                    sql.and("environment = ?", env.as_str());
                }
            }
            Scope::Platform => {
                sql.push(&format!(" AND {column} IS NULL"));
            }
        }
    }
}
