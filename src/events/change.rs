//! The one write path of a change to an organization's resources:
//!
//! 1. a write transaction is opened ([`super::begin_write`]);
//! 2. the change runs on it — a store function given the transaction;
//! 3. the change's event is emitted on the same transaction: the audit entry and, for a webhook
//!    event type, the webhook outbox rows ([`super::emit_org`]), so a rolled-back change emits
//!    nothing;
//! 4. the transaction commits;
//! 5. what the change made stale is invalidated on every node ([`Invalidation`] on the bus).
//!
//! A change that fails at 2 or 3 rolls back (the transaction is dropped) and invalidates nothing.
//!
//! It lives in `events` because the event is what every change has in common (the audit log
//! and the outbox are this module's), and every domain already depends on `events` to emit; the
//! stores stay free of HTTP, events and caches, and the handlers free of transactions:
//!
//! ```ignore
//! let change = Change::new("provider.deleted", "provider", &id, json!({"id": id}))
//!     .invalidates(Invalidation::organization(access.org_id()));
//! change.write(&state, &access, async |tx| store::delete(tx, org, &id, env).await).await?;
//! ```

use serde_json::Value;

pub use crate::keys::invalidation::Invalidation;
use crate::{app::AppState, error::Error, orgs::access::OrgAccess};

use super::ActorContext;

/// Who makes a change, and in which organization.
pub trait Author {
    fn org_id(&self) -> &str;
    fn actor_context(&self) -> ActorContext;
}

impl<P> Author for OrgAccess<P> {
    fn org_id(&self) -> &str {
        OrgAccess::org_id(self)
    }

    fn actor_context(&self) -> ActorContext {
        OrgAccess::actor_context(self)
    }
}

/// A change to be written: its event (`<resource>.<verb>` on one resource, with its data) and
/// what it makes stale.
#[must_use = "a change does nothing until it is written"]
pub struct Change {
    action: &'static str,
    resource: &'static str,
    id: String,
    data: Value,
    invalidates: Option<Invalidation>,
}

impl Change {
    pub fn new(action: &'static str, resource: &'static str, id: &str, data: Value) -> Self {
        Change {
            action,
            resource,
            id: id.to_string(),
            data,
            invalidates: None,
        }
    }

    /// What every node drops once the change is committed.
    pub fn invalidates(mut self, message: Invalidation) -> Self {
        self.invalidates = Some(message);
        self
    }

    /// Runs `change` in a write transaction, emits the event in it, commits, then invalidates.
    /// Returns what `change` returned.
    pub async fn write<T>(
        self,
        state: &AppState,
        by: &impl Author,
        change: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tx = super::begin_write(&state.db).await?;
        let out = change(&mut *tx).await?;
        super::emit_org(
            &mut tx,
            &by.actor_context(),
            by.org_id(),
            self.action,
            (self.resource, &self.id),
            self.data,
        )
        .await?;
        tx.commit().await?;
        if let Some(message) = self.invalidates {
            state.bus.publish(message).await;
        }
        Ok(out)
    }
}

/// For a change that must touch a row (an update or delete by id): `Ok` if the statement did,
/// else not found with `message` (and the change rolls back).
pub fn found(done: sqlx::any::AnyQueryResult, message: &'static str) -> Result<(), Error> {
    if done.rows_affected() == 0 {
        Err(Error::not_found(message))
    } else {
        Ok(())
    }
}
