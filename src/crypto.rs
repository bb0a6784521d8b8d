//! Cryptographic building blocks, all from maintained crates: the master key (AES-256-GCM for
//! secrets at rest), random tokens, digests, constant-time comparison and password hashing.

use std::{fmt, path::Path};

use aes_gcm::{
    aead::{Aead, KeyInit},
    Aes256Gcm, Nonce,
};
use argon2::{password_hash::SaltString, Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::{engine::general_purpose::STANDARD_NO_PAD as B64, Engine};
use rand::{rngs::OsRng, Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The 32-byte key that encrypts secrets at rest. Its `Debug` never prints the key.
#[derive(Clone)]
pub struct MasterKey(Aes256Gcm, [u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be 64 hexadecimal characters")]
    BadKey,
    #[error("ciphertext could not be decrypted (wrong master key or corrupted data)")]
    Decrypt,
}

impl MasterKey {
    pub fn from_hex(hex_key: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let raw: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self(
            Aes256Gcm::new_from_slice(&raw).map_err(|_| CryptoError::BadKey)?,
            raw,
        ))
    }

    /// A fresh random key as 64 hex characters.
    pub fn generate_hex() -> String {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh key. Returns the key and
    /// whether it was generated now.
    pub fn load_or_create(path: &Path) -> anyhow::Result<(Self, bool)> {
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read master key file {}: {e}", path.display())
            })?;
            let key = Self::from_hex(&text)
                .map_err(|e| anyhow::anyhow!("master key file {}: {e}", path.display()))?;
            return Ok((key, false));
        }
        let hex_key = Self::generate_hex();
        write_private_file(path, hex_key.as_bytes())?;
        Ok((Self::from_hex(&hex_key)?, true))
    }

    /// A 32-byte key for one purpose, derived from the master key (HMAC-SHA256 of the label),
    /// so that no two uses share key material.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        hmac_sha256(&self.1, label.as_bytes())
    }

    /// `base64(nonce || ciphertext)`; `aad` binds the ciphertext to its purpose (e.g. a row id).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    pub fn decrypt(&self, encoded: &str, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let raw = B64.decode(encoded).map_err(|_| CryptoError::Decrypt)?;
        if raw.len() < 12 + 16 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = raw.split_at(12);
        self.0
            .decrypt(
                Nonce::from_slice(nonce),
                aes_gcm::aead::Payload { msg: ct, aad },
            )
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Writes a file readable only by its owner.
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// `len` random characters from `[0-9A-Za-z]`, uniformly (rejection-free: `gen_range`).
pub fn random_base62(len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
        .collect()
}

/// A numeric code of `digits` digits, uniformly distributed.
pub fn random_digits(digits: u32) -> String {
    let n = OsRng.gen_range(0..10u64.pow(digits));
    format!("{n:0width$}", width = digits as usize)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        <hmac::Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Keyed digest of a short secret (a 6-digit code, a recovery code): without the key, a
/// leaked table cannot be brute-forced offline.
pub fn keyed_digest(key: &[u8; 32], secret: &str) -> String {
    hex::encode(hmac_sha256(key, secret.as_bytes()))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Argon2id with the default parameters of the `argon2` crate, which are OWASP's recommendation
/// (19 MiB, 2 iterations, 1 lane). CPU-heavy: call from `spawn_blocking`.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with default parameters cannot fail")
        .to_string()
}

/// Verifies a password against a PHC string; any malformed hash counts as a mismatch.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash computed once at start, verified against when an account does not exist, so that an
/// unknown email costs the same work as a wrong password.
pub fn dummy_password_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("gatehouse-dummy-password-for-timing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_round_trips_and_binds_aad() {
        let key = MasterKey::from_hex(&MasterKey::generate_hex()).unwrap();
        let ct = key.encrypt(b"provider-secret", b"prov_1");
        assert!(!ct.contains("provider-secret"));
        assert_eq!(key.decrypt(&ct, b"prov_1").unwrap(), b"provider-secret");
        assert!(key.decrypt(&ct, b"prov_2").is_err());
        let other = MasterKey::from_hex(&MasterKey::generate_hex()).unwrap();
        assert!(other.decrypt(&ct, b"prov_1").is_err());
    }

    #[test]
    fn bad_master_keys_are_refused() {
        assert!(MasterKey::from_hex("abcd").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not-a-hash"));
    }

    #[test]
    fn random_tokens_have_the_requested_shape() {
        let t = random_base62(40);
        assert_eq!(t.len(), 40);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(t, random_base62(40));
        let d = random_digits(6);
        assert_eq!(d.len(), 6);
        assert!(d.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (k1, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        let ct = k1.encrypt(b"x", b"");
        assert_eq!(k2.decrypt(&ct, b"").unwrap(), b"x");
    }
}
