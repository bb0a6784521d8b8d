//! The verified-key cache: authenticating a known key costs one SHA-256 and one hash-map
//! lookup — no database round trip. Entries are dropped by invalidation messages (revocation,
//! disabling, rotation, scope or organization changes; see `bus.rs`) and refreshed after
//! [`MAX_AGE`] as a safety net. Unknown keys are remembered briefly (negative entries, bounded)
//! so a flood of random keys cannot turn into a flood of queries.
//!
//! `last_used_at` is kept in an atomic on the entry and written in batches by
//! [`KeyCache::flush_last_used`], so it stays within a minute of the truth without a write per
//! request.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{
    error::{Error, ErrorCode},
    orgs::{access::ip_allowlist, roles::Role},
    storage::{self, Db, RowExt},
};

/// Entries older than this are re-read from the database on next use.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// A key used when its entry is older than this is re-read in the background, so that a key in
/// use never reaches [`MAX_AGE`] and no request waits for its re-read.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(45);
/// Unknown keys are remembered this long.
const NEGATIVE_AGE: Duration = Duration::from_secs(5);
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug)]
pub struct CachedKey {
    /// Shared strings: the gateway's usage records take them without a copy.
    pub id: Arc<str>,
    pub organization_id: Arc<str>,
    pub organization_active: bool,
    pub ip_allowlist: Vec<IpNet>,
    pub publishable: bool,
    pub environment: Arc<str>,
    /// Bit i set: scope `SCOPES[i]`.
    pub scopes: u32,
    pub allowed_origins: Vec<String>,
    pub status: super::KeyStatus,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// For a secret replaced by a rotation: until when it still works (unix seconds).
    pub grace_until: Option<i64>,
    pub created_by: Option<String>,
    /// The creator's current role in the organization (a key never exceeds it).
    pub creator_role: Option<Role>,
    pub rate_limit: Option<serde_json::Value>,
    pub project_id: Option<String>,
    /// The key's own limits in the rate limiter, named once per load: `key:<id>:min`
    /// (requests per minute) and `tpm:<id>:min` (tokens per minute, `limits::middleware::tokens_key`).
    pub requests_limit: Arc<str>,
    pub tokens_limit: Arc<str>,
    pub last_used: AtomicI64,
    /// SHA-256 of the secret it was loaded by (to re-read it).
    digest: [u8; 32],
    /// A background re-read has been started.
    refreshing: AtomicBool,
}

impl CachedKey {
    /// One of the key's own limits (`requests_per_minute`, `tokens_per_minute`), if set.
    pub fn rate_limit_of(&self, name: &str) -> Option<u64> {
        self.rate_limit.as_ref()?.get(name)?.as_u64()
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        super::scope_bit(scope).is_some_and(|b| self.scopes & b != 0)
    }

    /// Whether the key's scopes grant `scope` (`x:manage` includes `x:read`).
    pub fn allows(&self, scope: &str) -> bool {
        self.has_scope(scope)
            || scope
                .strip_suffix(":read")
                .is_some_and(|resource| self.has_scope(&format!("{resource}:manage")))
    }
}

/// A key the rate-limit middleware has already verified for this request (in the request
/// extensions), so that the gateway handler does not verify it a second time.
#[derive(Debug, Clone)]
pub struct VerifiedKey(pub Arc<CachedKey>);

enum Entry {
    /// A key, and when it was loaded.
    Known(Arc<CachedKey>, Instant),
    Unknown(Instant),
}

/// An organization's cached providers for one environment.
struct ProvidersOf {
    env: String,
    loaded: Instant,
    list: Arc<Vec<crate::gateway::providers::Upstream>>,
    /// A background re-read has been started.
    refreshing: AtomicBool,
}

/// Also holds each organization's decrypted provider list for the gateway, so that a gateway
/// request with a known key and a known organization touches no database; both are dropped by
/// the same `org:<id>` invalidation.
#[derive(Default)]
pub struct KeyCache {
    map: RwLock<HashMap<[u8; 32], Entry>>,
    providers: RwLock<HashMap<String, Vec<ProvidersOf>>>,
    flushed: AtomicI64,
    /// Bumped by every invalidation. What was read from the database before an invalidation
    /// is not cached after it (a key revoked while it was being loaded stays out).
    generation: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCache")
    }
}

fn unauthorized(why: &str) -> Error {
    Error::unauthorized(format!("The API key is {why}"))
}

pub use super::looks_like_key;

impl KeyCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached entry for a digest, if fresh.
    fn lookup(&self, digest: &[u8; 32], now: Instant) -> Option<Option<(Arc<CachedKey>, Instant)>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        match map.get(digest)? {
            Entry::Known(k, loaded) if now.duration_since(*loaded) < MAX_AGE => {
                Some(Some((k.clone(), *loaded)))
            }
            Entry::Unknown(at) if now.duration_since(*at) < NEGATIVE_AGE => Some(None),
            _ => None,
        }
    }

    /// Resolves a presented key to its entry, checking everything that does not depend on the
    /// route: existence, status, expiry, rotation grace, organization status, IP allowlist and,
    /// for publishable keys, the `Origin`.
    pub async fn authenticate(
        self: &Arc<Self>,
        db: &Db,
        token: &str,
        origin: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Arc<CachedKey>, Error> {
        if let Some((cached, due)) = self.verify(token, origin, ip, true) {
            if let Some(key) = due {
                self.refresh(db, key);
            }
            return cached;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.generation();
        let key = match load(db, digest).await? {
            Some(k) => {
                let k = Arc::new(k);
                self.insert_unless_invalidated(
                    generation,
                    digest,
                    Entry::Known(k.clone(), Instant::now()),
                );
                k
            }
            None => {
                self.insert_unless_invalidated(generation, digest, Entry::Unknown(Instant::now()));
                return Err(unauthorized("invalid"));
            }
        };
        check(&key, origin, ip)?;
        touch(&key);
        Ok(key)
    }

    /// The hot path: the answer for a key this node has seen recently, with no I/O at all
    /// (`None`: not cached, ask the database).
    pub fn verify_cached(
        &self,
        token: &str,
        origin: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) -> Option<Result<Arc<CachedKey>, Error>> {
        self.verify(token, origin, ip, false)
            .map(|(answer, _)| answer)
    }

    /// [`KeyCache::verify_cached`], and, if `refresh` is set, the entry if it is due for a
    /// background re-read (the first caller to find it so gets it; the others do not).
    #[allow(clippy::type_complexity)]
    fn verify(
        &self,
        token: &str,
        origin: Option<&str>,
        ip: Option<std::net::IpAddr>,
        refresh: bool,
    ) -> Option<(Result<Arc<CachedKey>, Error>, Option<Arc<CachedKey>>)> {
        if token.len() > 200 || !looks_like_key(token) {
            return Some((Err(unauthorized("invalid")), None));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        match self.lookup(&digest, now)? {
            None => Some((Err(unauthorized("invalid")), None)),
            Some((key, loaded)) => {
                let due = (refresh
                    && now.duration_since(loaded) >= REFRESH_AHEAD
                    && !key.refreshing.swap(true, Ordering::Relaxed))
                .then(|| key.clone());
                let answer = check(&key, origin, ip).map(|()| {
                    touch(&key);
                    key
                });
                Some((answer, due))
            }
        }
    }

    /// Re-reads a cached key in the background and replaces its entry. If the read fails, or
    /// an invalidation came meanwhile, the entry stays as it was (until [`MAX_AGE`]) and the
    /// next request re-reads it again.
    fn refresh(self: &Arc<Self>, db: &Db, old: Arc<CachedKey>) {
        let (cache, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            let generation = cache.generation();
            match load(&db, old.digest).await {
                Ok(Some(key)) => cache.insert_unless_invalidated(
                    generation,
                    old.digest,
                    Entry::Known(Arc::new(key), Instant::now()),
                ),
                Ok(None) => cache.insert_unless_invalidated(
                    generation,
                    old.digest,
                    Entry::Unknown(Instant::now()),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, key_id = %old.id, "re-reading a cached key failed")
                }
            }
            // Replaced, `old` is no longer cached; kept, the next request starts a re-read.
            old.refreshing.store(false, Ordering::Relaxed);
        });
    }

    /// Makes every cached entry look `by` older (tests of the re-reads, without waiting).
    #[doc(hidden)]
    pub fn age_entries(&self, by: Duration) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for e in map.values_mut() {
            match e {
                Entry::Known(_, at) | Entry::Unknown(at) => *at = at.checked_sub(by).unwrap_or(*at),
            }
        }
        drop(map);
        let mut providers = self.providers.write().unwrap_or_else(|e| e.into_inner());
        for envs in providers.values_mut() {
            for p in envs.iter_mut() {
                p.loaded = p.loaded.checked_sub(by).unwrap_or(p.loaded);
            }
        }
    }

    /// Whether a background re-read of a cached key or provider list is still running (tests
    /// wait for it to land instead of sleeping).
    #[doc(hidden)]
    pub fn rereads_in_flight(&self) -> bool {
        let keys = self.map.read().unwrap_or_else(|e| e.into_inner());
        let key_busy = keys.values().any(|e| match e {
            Entry::Known(k, _) => k.refreshing.load(Ordering::Relaxed),
            Entry::Unknown(_) => false,
        });
        drop(keys);
        let providers = self.providers.read().unwrap_or_else(|e| e.into_inner());
        key_busy
            || providers
                .values()
                .any(|envs| envs.iter().any(|p| p.refreshing.load(Ordering::Relaxed)))
    }

    /// Taken before a read from the database whose result is to be cached (see
    /// [`KeyCache::put_providers`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches what was read after `generation` was taken, unless an invalidation came since.
    /// A key's new entry keeps the `last_used` of the entry it replaces.
    fn insert_unless_invalidated(&self, generation: u64, digest: [u8; 32], entry: Entry) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        // Invalidations bump the generation while holding this lock: checked under it, no
        // invalidation can come between the check and the insert.
        if self.generation() != generation {
            return;
        }
        if let (Entry::Known(new, _), Some(Entry::Known(old, _))) = (&entry, map.get(&digest)) {
            new.last_used
                .fetch_max(old.last_used.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            map.retain(|_, e| match e {
                Entry::Known(_, loaded) => now.duration_since(*loaded) < MAX_AGE,
                Entry::Unknown(_) => false,
            });
        }
        map.insert(digest, entry);
    }

    /// Drops every entry of this key.
    pub fn invalidate_key(&self, key_id: &str) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.retain(|_, e| !matches!(e, Entry::Known(k, _) if *k.id == *key_id));
    }

    /// Drops every entry of this organization's keys and its providers.
    pub fn invalidate_org(&self, org_id: &str) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.retain(|_, e| !matches!(e, Entry::Known(k, _) if *k.organization_id == *org_id));
        drop(map);
        let mut providers = self.providers.write().unwrap_or_else(|e| e.into_inner());
        providers.remove(org_id);
    }

    pub fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
        drop(map);
        self.providers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// An organization's providers for one environment, if cached and fresh; and whether the
    /// caller is to re-read them in the background (older than [`REFRESH_AHEAD`]: the first
    /// caller to find them so is told, the others are not).
    pub fn providers(
        &self,
        org_id: &str,
        env: &str,
    ) -> Option<(Arc<Vec<crate::gateway::providers::Upstream>>, bool)> {
        let map = self.providers.read().unwrap_or_else(|e| e.into_inner());
        let p = map.get(org_id)?.iter().find(|p| p.env == env)?;
        let age = p.loaded.elapsed();
        if age >= MAX_AGE {
            return None;
        }
        let due = age >= REFRESH_AHEAD && !p.refreshing.swap(true, Ordering::Relaxed);
        Some((p.list.clone(), due))
    }

    /// Caches an organization's providers read after `generation` was taken, unless an
    /// invalidation came since.
    pub fn put_providers(
        &self,
        generation: u64,
        org_id: &str,
        env: &str,
        list: Arc<Vec<crate::gateway::providers::Upstream>>,
    ) {
        let mut map = self.providers.write().unwrap_or_else(|e| e.into_inner());
        // `invalidate_org` bumps the generation before it takes this lock to drop the entry.
        if self.generation() != generation {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let envs = map.entry(org_id.to_string()).or_default();
        envs.retain(|p| p.env != env);
        envs.push(ProvidersOf {
            env: env.to_string(),
            loaded: Instant::now(),
            list,
            refreshing: AtomicBool::new(false),
        });
    }

    /// A background re-read of these providers is over. Replaced, the entry's flag is already
    /// clear; kept (the read failed, or an invalidation came meanwhile), the next request
    /// starts another.
    pub fn providers_reread_done(&self, org_id: &str, env: &str) {
        let map = self.providers.read().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map
            .get(org_id)
            .and_then(|l| l.iter().find(|p| p.env == env))
        {
            p.refreshing.store(false, Ordering::Relaxed);
        }
    }

    /// Writes `last_used_at` for the keys used since the last flush (one UPDATE per key used).
    pub async fn flush_last_used(&self, db: &Db) -> Result<usize, sqlx::Error> {
        let since = self.flushed.load(Ordering::Relaxed);
        let used: Vec<(String, i64)> = {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            let mut seen = HashMap::new();
            for e in map.values() {
                if let Entry::Known(k, _) = e {
                    let t = k.last_used.load(Ordering::Relaxed);
                    if t > since {
                        seen.insert(k.id.to_string(), t);
                    }
                }
            }
            seen.into_iter().collect()
        };
        let high = used.iter().map(|(_, t)| *t).max().unwrap_or(since);
        for (id, t) in &used {
            let at = chrono::DateTime::from_timestamp(*t, 0).unwrap_or_default();
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                .bind(storage::format_time(at))
                .bind(id)
                .execute(db.pool())
                .await?;
        }
        self.flushed.store(high, Ordering::Relaxed);
        Ok(used.len())
    }
}

/// Records use for the batched `last_used_at` (one relaxed store).
fn touch(key: &CachedKey) {
    // Written once a second at most: a write on every request would make the serving threads
    // take the key's cache line from each other.
    let now = unix_now();
    if key.last_used.load(Ordering::Relaxed) != now {
        key.last_used.store(now, Ordering::Relaxed);
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn check(key: &CachedKey, origin: Option<&str>, ip: Option<std::net::IpAddr>) -> Result<(), Error> {
    let now = unix_now();
    match key.status {
        super::KeyStatus::Active => {}
        super::KeyStatus::Revoked => return Err(unauthorized("revoked")),
        super::KeyStatus::Disabled => return Err(unauthorized("disabled")),
        super::KeyStatus::Expired => return Err(unauthorized("expired")),
    }
    if key.expires_at.is_some_and(|t| t <= now) {
        return Err(unauthorized("expired"));
    }
    if key.grace_until.is_some_and(|t| t <= now) {
        return Err(unauthorized("rotated (its grace period is over)"));
    }
    if !key.organization_active {
        return Err(Error::new(
            ErrorCode::OrganizationSuspended,
            "This organization is suspended",
        ));
    }
    if !key.ip_allowlist.is_empty()
        && !ip.is_some_and(|ip| key.ip_allowlist.iter().any(|n| n.contains(&ip)))
    {
        return Err(Error::forbidden(
            "Requests from this address are not allowed for this organization",
        ));
    }
    if key.publishable && !origin.is_some_and(|o| key.allowed_origins.iter().any(|a| a == o)) {
        return Err(Error::forbidden(
            "This publishable key is not allowed from this origin",
        ));
    }
    Ok(())
}

fn unix(stored: Option<String>) -> Option<i64> {
    stored
        .and_then(|s| storage::parse_time(&s))
        .map(|t| t.timestamp())
}

async fn load(db: &Db, digest: [u8; 32]) -> Result<Option<CachedKey>, Error> {
    let hash = hex::encode(digest);
    let row = sqlx::query(
        "SELECT k.id, k.organization_id, k.type, k.environment, k.scopes, k.allowed_origins, k.status, \
         k.expires_at, k.created_by, k.rate_limit, k.project_id, s.grace_expires_at AS secret_grace, \
         o.status AS org_status, o.settings AS org_settings, m.role AS creator_role \
         FROM api_key_secrets s JOIN api_keys k ON k.id = s.key_id \
         JOIN organizations o ON o.id = k.organization_id \
         LEFT JOIN memberships m ON m.organization_id = k.organization_id AND m.user_id = k.created_by \
         WHERE s.secret_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(db.pool())
    .await?;
    let Some(r) = row else { return Ok(None) };
    let scopes: Vec<String> = serde_json::from_value(r.get_json("scopes")?).unwrap_or_default();
    let origins: Vec<String> =
        serde_json::from_value(r.get_json("allowed_origins")?).unwrap_or_default();
    let rate_limit: Option<String> = r.try_get("rate_limit")?;
    let id: String = r.try_get("id")?;
    Ok(Some(CachedKey {
        requests_limit: format!("key:{id}:min").into(),
        tokens_limit: crate::limits::middleware::tokens_key(&id).into(),
        id: id.into(),
        organization_id: r.try_get::<String, _>("organization_id")?.into(),
        organization_active: r.get_parsed::<crate::wire::Standing>("org_status")?
            == crate::wire::Standing::Active,
        ip_allowlist: ip_allowlist(&r.get_json("org_settings")?),
        publishable: r.try_get::<String, _>("type")? == "publishable",
        environment: r.try_get::<String, _>("environment")?.into(),
        scopes: scopes
            .iter()
            .filter_map(|s| super::scope_bit(s))
            .fold(0, |a, b| a | b),
        allowed_origins: origins,
        status: r.get_parsed("status")?,
        expires_at: unix(r.try_get("expires_at")?),
        grace_until: unix(r.try_get("secret_grace")?),
        created_by: r.try_get("created_by")?,
        creator_role: r
            .try_get::<Option<String>, _>("creator_role")?
            .as_deref()
            .and_then(Role::parse),
        rate_limit: rate_limit.and_then(|s| serde_json::from_str(&s).ok()),
        project_id: r.try_get("project_id")?,
        last_used: AtomicI64::new(0),
        digest,
        refreshing: AtomicBool::new(false),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_read_before_an_invalidation_is_not_cached_after_it() {
        let cache = KeyCache::new();
        let digest = [7u8; 32];
        let now = Instant::now();
        // A read began, then the key's organization changed: its result is not cached.
        let before = cache.generation();
        cache.invalidate_org("org_a");
        cache.insert_unless_invalidated(before, digest, Entry::Unknown(now));
        assert!(cache.lookup(&digest, now).is_none());
        let before = cache.generation();
        cache.invalidate_key("key_a");
        cache.put_providers(before, "org_a", "live", Arc::new(Vec::new()));
        assert!(cache.providers("org_a", "live").is_none());
        let before = cache.generation();
        cache.clear();
        cache.insert_unless_invalidated(before, digest, Entry::Unknown(now));
        assert!(cache.lookup(&digest, now).is_none());
        // Without an invalidation in between, both are cached.
        let current = cache.generation();
        cache.insert_unless_invalidated(current, digest, Entry::Unknown(now));
        assert!(matches!(cache.lookup(&digest, now), Some(None)));
        cache.put_providers(current, "org_a", "live", Arc::new(Vec::new()));
        assert!(cache.providers("org_a", "live").is_some());
    }
}
