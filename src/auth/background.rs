//! Bounded background work: the per-account part of unauthenticated "mail me a secret" requests
//! (forgot-password, otp/request) runs after the answer, in at most a fixed number of tasks at
//! once. When all are busy, further work is dropped with a warning instead of piling up tasks
//! without bound: the caller already has the uniform answer and learns nothing, and the owner of
//! an address whose mail was dropped asks again (the per-address throttle allows 3 an hour).

use std::{future::Future, sync::Arc};

use tokio::sync::Semaphore;

use crate::error::Error;

/// Background account mails in flight at once, per process.
pub const MAX_IN_FLIGHT: usize = 64;

/// Spawns futures while fewer than its bound are running; drops them when it is reached.
#[derive(Debug, Clone)]
pub struct BoundedSpawner {
    permits: Arc<Semaphore>,
    bound: usize,
}

impl BoundedSpawner {
    pub fn new(bound: usize) -> Self {
        BoundedSpawner {
            permits: Arc::new(Semaphore::new(bound)),
            bound,
        }
    }

    /// Runs `work` in a task of its own if a place is free (true); otherwise drops it with a
    /// warning naming `what` (false). The place is held until the work ends; a failure is
    /// logged.
    pub fn spawn<F>(&self, what: &'static str, work: F) -> bool
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(
                what,
                bound = self.bound,
                "background account mails are at their bound; this one is dropped"
            );
            return false;
        };
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = work.await {
                tracing::error!(what, error = %e, "background account mail failed");
            }
        });
        true
    }

    /// Futures spawned and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.bound - self.permits.available_permits()
    }

    /// Waits until every spawned future has ended (tests wait on this instead of sleeping).
    pub async fn idle(&self) {
        let all = u32::try_from(self.bound).unwrap_or(u32::MAX);
        if let Ok(permits) = self.permits.acquire_many(all).await {
            drop(permits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn at_most_the_bound_runs_at_once_and_the_rest_is_dropped() {
        let spawner = BoundedSpawner::new(3);
        let (ran_tx, mut ran_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut releases = Vec::new();
        let mut spawned = 0;
        for i in 0..10 {
            let (release, wait) = oneshot::channel::<()>();
            let ran = ran_tx.clone();
            if spawner.spawn("test", async move {
                let _ = wait.await;
                let _ = ran.send(i);
                Ok(())
            }) {
                spawned += 1;
                releases.push(release);
            }
        }
        assert_eq!(spawned, 3);
        assert_eq!(spawner.in_flight(), 3);
        for release in releases {
            let _ = release.send(());
        }
        spawner.idle().await;
        assert_eq!(spawner.in_flight(), 0);
        drop(ran_tx);
        let mut ran = Vec::new();
        while let Some(i) = ran_rx.recv().await {
            ran.push(i);
        }
        // The first three ran; the seven dropped never did.
        assert_eq!(ran.len(), 3);
        assert!(ran.iter().all(|i| *i < 3), "{ran:?}");
        // With the places free again, new work runs.
        assert!(spawner.spawn("test", async { Ok(()) }));
        spawner.idle().await;
    }

    #[tokio::test]
    async fn failed_work_gives_its_place_back() {
        let spawner = BoundedSpawner::new(1);
        assert!(spawner.spawn("test", async {
            Err(Error::bad_request("the mail could not be sent"))
        }));
        spawner.idle().await;
        assert!(spawner.spawn("test", async { Ok(()) }));
        spawner.idle().await;
    }
}
