//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed by the bytes the secret's base64 part
//! (after `whsec_`) decodes to.

use std::fmt;

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{Hmac, Mac};
use rand::{rngs::OsRng, RngCore};
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Random bytes in a new secret (the spec asks for 24 to 64).
const SECRET_BYTES: usize = 24;

/// An endpoint's signing secret, `whsec_<base64>`. Its `Debug` never prints it; it is shown to
/// the user once, when it is created (serialized into that response) and stored encrypted.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl serde::Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl WebhookSecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        OsRng.fill_bytes(&mut bytes);
        WebhookSecret(format!("{PREFIX}{}", B64.encode(bytes)))
    }

    /// A secret in the `whsec_<base64>` form (as stored), or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let key = B64.decode(s.strip_prefix(PREFIX)?).ok()?;
        (!key.is_empty()).then(|| WebhookSecret(s.to_string()))
    }

    /// The secret itself, for the one response that shows it and for encryption at rest.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn key(&self) -> Vec<u8> {
        // `parse` and `generate` guarantee the form.
        self.0
            .strip_prefix(PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .unwrap_or_default()
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key()) {
            Ok(mac) => mac,
            // HMAC takes keys of any length.
            Err(_) => unreachable!("HMAC accepts every key length"),
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one `v1,…` per secret, space-separated (during a rotation
/// the message is signed with the new and the previous secret, so either verifies).
pub fn signature_header(
    secrets: &[WebhookSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

// Written once, in the answer that creates or rotates it.
crate::wire::string_schema!(WebhookSecret, { "type": "string", "pattern": "^whsec_" });

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries.
    #[test]
    fn signs_like_the_reference_implementation() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_have_the_standard_form_and_never_print() {
        let s = WebhookSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(s.key().len(), SECRET_BYTES);
        assert_eq!(WebhookSecret::parse(s.expose()), Some(s.clone()));
        assert!(!format!("{s:?}").contains(s.expose()));
        assert!(WebhookSecret::parse("sk_nope").is_none());
        assert!(WebhookSecret::parse("whsec_!!").is_none());
        let header = signature_header(&[s.clone(), WebhookSecret::generate()], "evt_1", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.starts_with(&s.sign("evt_1", 1, b"{}")));
    }
}
