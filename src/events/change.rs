//! The one write path of a change to an organization's resources:
//!
//! 1. a write transaction is opened ([`super::begin_write`]);
//! 2. the change runs on it — a store function given the transaction;
//! 3. the change's event is emitted on the same transaction: the audit entry and, for a webhook
//!    event type, the webhook outbox rows ([`super::emit`]), so a rolled-back change emits
//!    nothing;
//! 4. the transaction commits;
//! 5. what the change made stale is invalidated on every node ([`Invalidation`] on the bus).
//!
//! A change that fails at 2 or 3 rolls back (the transaction is dropped) and invalidates nothing.
//!
//! It serves an organization member's change of its resources (the author is an [`OrgAccess`],
//! the event is its organization's) and a platform-level one alike (the author is an
//! [`ActorContext`]: an admin, or the system's own jobs; the event names an organization only if
//! the change does, with [`Change::organization`]).
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
use crate::{app::AppState, error::Error, ids::OrgId, orgs::access::OrgAccess};

use super::{ActorContext, NewEvent};

/// Who makes a change, and in which organization (`None`: a platform-level change — the plan
/// catalogue, users, an organization's status by an admin, the system's own jobs).
pub trait Author {
    fn organization(&self) -> Option<&str>;
    fn actor_context(&self) -> ActorContext;
}

impl<P> Author for OrgAccess<P> {
    fn organization(&self) -> Option<&str> {
        Some(OrgAccess::org_id(self))
    }

    fn actor_context(&self) -> ActorContext {
        OrgAccess::actor_context(self)
    }
}

/// A platform actor (an admin, the system): the event is the organization's only if the change
/// says so ([`Change::organization`]).
impl Author for ActorContext {
    fn organization(&self) -> Option<&str> {
        None
    }

    fn actor_context(&self) -> ActorContext {
        self.clone()
    }
}

/// A change to be written: its event (`<resource>.<verb>` on one resource, with its data; more
/// than one where one change is several things at once, [`Change::and`]) and what it makes stale.
#[must_use = "a change does nothing until it is written"]
pub struct Change {
    events: Vec<NewEvent>,
    organization: Option<OrgId>,
    invalidates: Option<Invalidation>,
}

impl Change {
    pub fn new(action: &str, resource: &str, id: &str, data: Value) -> Self {
        Change {
            events: vec![NewEvent::new(action, resource, Some(id.to_string())).data(data)],
            organization: None,
            invalidates: None,
        }
    }

    /// A further event of the same change, written in the same transaction after the ones
    /// before it (an organization created with its first member, an invitation accepted).
    pub fn and(mut self, action: &str, resource: &str, id: &str, data: Value) -> Self {
        self.events
            .push(NewEvent::new(action, resource, Some(id.to_string())).data(data));
        self
    }

    /// The events' organization, for a platform author's change of one organization (an
    /// organization member's change is always its organization's).
    pub fn organization(mut self, org_id: &str) -> Self {
        self.organization = Some(OrgId(org_id.to_string()));
        self
    }

    /// The first event's audit metadata (what changed, why); `{}` when not set.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.events[0].metadata = metadata;
        self
    }

    /// What every node drops once the change is committed.
    pub fn invalidates(mut self, message: Invalidation) -> Self {
        self.invalidates = Some(message);
        self
    }

    /// Runs `change` in a write transaction, emits the events in it, commits, then invalidates.
    /// Returns what `change` returned.
    pub async fn write<T>(
        self,
        state: &AppState,
        by: &impl Author,
        change: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tx = super::begin_write(&state.db).await?;
        let out = change(&mut *tx).await?;
        self.finish(state, by, tx).await?;
        Ok(out)
    }

    /// Like [`write`](Self::write), for a change whose event data is known only inside the
    /// transaction (a member's previous role, read under the membership lock): `change` returns
    /// its result and the first event's data.
    pub async fn write_described<T>(
        mut self,
        state: &AppState,
        by: &impl Author,
        change: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<(T, Value), Error>,
    ) -> Result<T, Error> {
        let mut tx = super::begin_write(&state.db).await?;
        let (out, data) = change(&mut *tx).await?;
        self.events[0].data = data;
        self.finish(state, by, tx).await?;
        Ok(out)
    }

    /// Like [`write`](Self::write), for a change that may find nothing to do (another node got
    /// there first): when `change` returns `None` the transaction rolls back, and nothing is
    /// emitted or invalidated.
    pub async fn write_if<T>(
        self,
        state: &AppState,
        by: &impl Author,
        change: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<Option<T>, Error>,
    ) -> Result<Option<T>, Error> {
        let mut tx = super::begin_write(&state.db).await?;
        let Some(out) = change(&mut *tx).await? else {
            return Ok(None);
        };
        self.finish(state, by, tx).await?;
        Ok(Some(out))
    }

    /// [`write_described`](Self::write_described) and [`write_if`](Self::write_if) at once: a
    /// change that may find nothing to do (`None`: rolled back, nothing emitted) and whose first
    /// event's data is known only inside the transaction (a payment given up, with its attempts
    /// as counted there).
    pub async fn write_described_if<T>(
        mut self,
        state: &AppState,
        by: &impl Author,
        change: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<Option<(T, Value)>, Error>,
    ) -> Result<Option<T>, Error> {
        let mut tx = super::begin_write(&state.db).await?;
        let Some((out, data)) = change(&mut *tx).await? else {
            return Ok(None);
        };
        self.events[0].data = data;
        self.finish(state, by, tx).await?;
        Ok(Some(out))
    }

    /// Emits the events in the change's transaction, commits, then invalidates.
    async fn finish(
        self,
        state: &AppState,
        by: &impl Author,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<(), Error> {
        let organization = by
            .organization()
            .map(|id| OrgId(id.to_string()))
            .or(self.organization);
        let ctx = by.actor_context();
        for mut event in self.events {
            if let Some(org) = &organization {
                event = event.organization(org.clone());
            }
            super::emit(&mut tx, &ctx, event).await?;
        }
        tx.commit().await?;
        if let Some(message) = self.invalidates {
            state.bus.publish(message).await;
        }
        Ok(())
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
