//! Access tokens: JWTs signed with an Ed25519 key (`alg: EdDSA`, `kid` in the header), public
//! keys published at `/.well-known/jwks.json`. Private keys are stored encrypted with the master
//! key. Rotation makes a new key active; a retired key stays published (and verifying) until
//! every token it signed has expired.
//!
//! Every node keeps the key ring in memory; a token with an unknown `kid` (another node rotated)
//! reloads it from the database, at most once per second.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64URL, Engine};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::ids::UserId;
use crate::{
    crypto::MasterKey,
    error::Error,
    storage::{self, Db, RowExt},
};

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// Tenant-scoped tokens: organization, role and environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

struct ActiveKey {
    kid: String,
    encoding: EncodingKey,
}

#[derive(Default)]
struct Ring {
    active: Option<ActiveKey>,
    verifiers: HashMap<String, DecodingKey>,
    jwks: Vec<serde_json::Value>,
}

pub struct KeyRing {
    db: Db,
    master: MasterKey,
    issuer: String,
    ring: RwLock<Ring>,
    last_reload: std::sync::Mutex<Instant>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRing")
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SigningKeyInfo {
    pub id: crate::ids::SigningKeyId,
    pub algorithm: String,
    pub status: String,
    pub public_jwk: serde_json::Value,
    pub created_at: String,
    pub retired_at: Option<String>,
    pub published_until: Option<String>,
}

impl KeyRing {
    /// Loads the keys, creating the first one if there is none.
    pub async fn load(db: Db, master: MasterKey, issuer: String) -> anyhow::Result<KeyRing> {
        let ring = KeyRing {
            db,
            master,
            issuer,
            ring: RwLock::new(Ring::default()),
            last_reload: std::sync::Mutex::new(Instant::now()),
        };
        ring.reload().await?;
        if ring.ring.read().map(|r| r.active.is_none()).unwrap_or(true) {
            let mut conn = ring.db.pool().acquire().await?;
            let kid = crate::ids::SigningKeyId::generate();
            ring.insert_new_key(&mut conn, &kid).await?;
            drop(conn);
            ring.reload().await?;
        }
        Ok(ring)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    async fn insert_new_key(
        &self,
        conn: &mut sqlx::AnyConnection,
        kid: &crate::ids::SigningKeyId,
    ) -> anyhow::Result<()> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("Ed25519 key generation failed"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("generated Ed25519 key is invalid"))?;
        let jwk = serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": B64URL.encode(pair.public_key().as_ref()),
            "kid": kid,
            "alg": "EdDSA",
            "use": "sig",
        });
        let sealed = self.master.encrypt(pkcs8.as_ref(), kid.as_bytes());
        sqlx::query(
            "INSERT INTO signing_keys (id, algorithm, private_key, public_jwk, status, created_at) \
             VALUES ($1, 'EdDSA', $2, $3, 'active', $4)",
        )
        .bind(kid)
        .bind(&sealed)
        .bind(jwk.to_string())
        .bind(storage::now())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Reads every published key from the database into memory.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let now = storage::now();
        let rows = sqlx::query(
            "SELECT id, private_key, public_jwk, status FROM signing_keys \
             WHERE status = 'active' OR publish_until > $1 ORDER BY id",
        )
        .bind(&now)
        .fetch_all(self.db.pool())
        .await?;
        let mut fresh = Ring::default();
        for row in rows {
            let kid: String = row.try_get("id")?;
            let jwk: serde_json::Value =
                serde_json::from_str(&row.try_get::<String, _>("public_jwk")?)?;
            let x = jwk["x"].as_str().unwrap_or_default();
            fresh
                .verifiers
                .insert(kid.clone(), DecodingKey::from_ed_components(x)?);
            fresh.jwks.push(jwk);
            if row.try_get::<String, _>("status")? == "active" {
                // The newest active key signs (ids sort by creation time).
                let pkcs8 = self
                    .master
                    .decrypt(&row.try_get::<String, _>("private_key")?, kid.as_bytes())?;
                fresh.active = Some(ActiveKey {
                    kid,
                    encoding: EncodingKey::from_ed_der(&pkcs8),
                });
            }
        }
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    /// Makes a new key `kid` active, inside the write transaction `tx` (the rotation's change, audited
    /// with it: `admin::rotate_signing_key`); the previous ones stay published until their tokens
    /// expire. Once `tx` is committed, [`reload`](Self::reload) makes this node sign with the new
    /// key (other nodes read it when they first meet its `kid`).
    pub async fn rotate(
        &self,
        tx: &mut sqlx::AnyConnection,
        kid: &crate::ids::SigningKeyId,
    ) -> Result<(), Error> {
        let now = chrono::Utc::now();
        let until = now
            + chrono::Duration::from_std(ACCESS_TTL).unwrap_or_default()
            + chrono::Duration::minutes(5);
        sqlx::query(
            "UPDATE signing_keys SET status = 'retired', retired_at = $1, publish_until = $2 \
             WHERE status = 'active'",
        )
        .bind(storage::format_time(now))
        .bind(storage::format_time(until))
        .execute(&mut *tx)
        .await?;
        Ok(self.insert_new_key(tx, kid).await?)
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let active = ring
            .active
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no active signing key"))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(active.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &active.encoding)
            .map_err(|e| anyhow::anyhow!("signing failed: {e}"))?)
    }

    /// Verifies signature, issuer and expiry. Any failure is `unauthorized`.
    pub async fn verify(&self, token: &str) -> Result<Claims, Error> {
        let invalid = || Error::unauthorized("The access token is invalid or expired");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid());
        }
        let kid = header.kid.ok_or_else(invalid)?;
        if !self.knows(&kid) && self.may_reload() {
            self.reload().await?;
        }
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let key = ring.verifiers.get(&kid).ok_or_else(invalid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|_| invalid())
    }

    fn knows(&self, kid: &str) -> bool {
        self.ring
            .read()
            .map(|r| r.verifiers.contains_key(kid))
            .unwrap_or(false)
    }

    fn may_reload(&self) -> bool {
        let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            true
        } else {
            false
        }
    }

    /// The published public keys (the `keys` of `/.well-known/jwks.json`).
    pub fn jwks(&self) -> Vec<serde_json::Value> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        ring.jwks.clone()
    }

    /// Every key ever made, newest first (public parts only).
    pub async fn list(&self) -> Result<Vec<SigningKeyInfo>, Error> {
        let rows = sqlx::query(
            "SELECT id, algorithm, status, public_jwk, created_at, retired_at, publish_until \
             FROM signing_keys ORDER BY id DESC",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SigningKeyInfo {
                    id: r.try_get("id")?,
                    algorithm: r.try_get("algorithm")?,
                    status: r.try_get("status")?,
                    public_jwk: serde_json::from_str(&r.try_get::<String, _>("public_jwk")?)
                        .unwrap_or_default(),
                    created_at: r.get_time("created_at")?,
                    retired_at: r.get_time_opt("retired_at")?,
                    published_until: r.get_time_opt("publish_until")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Claims for a new access token.
    pub fn claims(&self, user_id: &UserId, session_id: &str) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: self.issuer.clone(),
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            iat: now,
            exp: now + ACCESS_TTL.as_secs() as i64,
            jti: crate::crypto::random_base62(16),
            tid: None,
            role: None,
            env: None,
        }
    }
}
