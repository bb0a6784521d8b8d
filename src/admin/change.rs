//! The write path of a platform-level change, the sibling of [`crate::events::change::Change`]
//! for what is not one organization member's change of its resources: the plan catalogue and
//! users (no organization), an organization's status (its event carries the admin's reason),
//! and the system's own jobs (the subscription cycle). The same steps in the same order: a write
//! transaction, the change on it, its event (audit entry + webhook outbox) on it, commit, then
//! the invalidation on every node; a change that fails rolls back and invalidates nothing.

use sqlx::AnyConnection;

use crate::{
    app::AppState,
    error::Error,
    events::{ActorContext, Invalidation, NewEvent},
};

#[must_use = "a change does nothing until it is written"]
pub struct PlatformChange {
    event: NewEvent,
    invalidates: Option<Invalidation>,
}

impl PlatformChange {
    pub fn new(event: NewEvent) -> Self {
        PlatformChange {
            event,
            invalidates: None,
        }
    }

    /// What every node drops once the change is committed.
    pub fn invalidates(mut self, message: Invalidation) -> Self {
        self.invalidates = Some(message);
        self
    }

    /// Runs `change` in a write transaction, emits the event in it as `by`, commits, then
    /// invalidates. Returns what `change` returned.
    pub async fn write<T>(
        self,
        state: &AppState,
        by: &ActorContext,
        change: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tx = crate::events::begin_write(&state.db).await?;
        let out = change(&mut *tx).await?;
        self.finish(state, by, tx).await?;
        Ok(out)
    }

    /// Like [`write`](Self::write), for a change that may find nothing to do (another node got
    /// there first): when `change` returns `None` the transaction rolls back, and nothing is
    /// emitted or invalidated.
    pub async fn write_if<T>(
        self,
        state: &AppState,
        by: &ActorContext,
        change: impl AsyncFnOnce(&mut AnyConnection) -> Result<Option<T>, Error>,
    ) -> Result<Option<T>, Error> {
        let mut tx = crate::events::begin_write(&state.db).await?;
        let Some(out) = change(&mut *tx).await? else {
            return Ok(None);
        };
        self.finish(state, by, tx).await?;
        Ok(Some(out))
    }

    /// Emits the event in the change's transaction, commits, then invalidates.
    async fn finish(
        self,
        state: &AppState,
        by: &ActorContext,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<(), Error> {
        crate::events::emit(&mut tx, by, self.event).await?;
        tx.commit().await?;
        if let Some(message) = self.invalidates {
            state.bus.publish(message).await;
        }
        Ok(())
    }
}
