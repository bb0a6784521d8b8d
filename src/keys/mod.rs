//! API keys (SPEC §4): the routes (`routes.rs`: extract, validate, call the store, respond),
//! the store (`store.rs`: the queries), the verified-key cache that keeps the database off the
//! authentication path (`cache.rs`) and the invalidation bus that makes a revocation reach every
//! node (`bus.rs`, its messages typed in `invalidation.rs`).

pub mod bus;
pub mod cache;
pub mod cors;
pub mod invalidation;
pub mod routes;
pub mod store;

/// Every scope a key can carry (SPEC §4), in a fixed order: bit i of a key's scope set is
/// `SCOPES[i]`.
pub const SCOPES: [&str; 18] = [
    "organizations:create",
    "organizations:read",
    "organizations:update",
    "members:read",
    "members:manage",
    "api_keys:read",
    "api_keys:manage",
    "billing:read",
    "billing:manage",
    "usage:read",
    "webhooks:manage",
    "audit:read",
    "configs:read",
    "configs:manage",
    "policies:read",
    "policies:manage",
    "analytics:read",
    "gateway:proxy",
];

/// Scopes of seed 003's secret-key list that name a capability Gatehouse does not have, with
/// what is missing: a key asking for one is refused naming it, not as an unknown string. (The
/// seed's other scopes — `organizations:create|read|update`, `api_keys:read|manage` — are in
/// [`SCOPES`] and enforced.)
const UNSERVED_SCOPES: [(&str, &str); 10] = [
    ("sessions:list", NO_SESSIONS),
    ("sessions:read", NO_SESSIONS),
    ("fingerprints:list", NO_FINGERPRINTS),
    ("fingerprints:read", NO_FINGERPRINTS),
    ("gate:agent_tokens:verify", "there are no agent tokens"),
    ("gate:agent_tokens:revoke", "there are no agent tokens"),
    (
        "gate:login_sessions:consume",
        "there is no login-session hand-off",
    ),
    ("gate:services:read", "there are no gate services"),
    ("gate:services:manage", "there are no gate services"),
    (
        "organizations:manage",
        "it was replaced by organizations:read and organizations:update",
    ),
];

const NO_SESSIONS: &str = "there is no organization-wide sessions API (a user lists their own \
     sessions at GET /v1/me/sessions with an access token)";
const NO_FINGERPRINTS: &str = "there are no device fingerprints";

/// Why a scope is refused: not served (with the reason, naming the scope), or unknown.
pub fn scope_refusal(scope: &str) -> String {
    match UNSERVED_SCOPES.iter().find(|(name, _)| *name == scope) {
        Some((name, why)) => format!("{name} is not supported by this server: {why}"),
        None => "is not a known scope".to_string(),
    }
}

pub fn scope_bit(scope: &str) -> Option<u32> {
    SCOPES.iter().position(|s| *s == scope).map(|i| 1u32 << i)
}

/// The least role that may hold a scope (a key never exceeds its creator's role).
pub fn scope_min_role(scope: &str) -> Option<crate::orgs::roles::Role> {
    use crate::orgs::roles::{Permission, Role};
    if scope == "organizations:create" {
        return Some(Role::Admin);
    }
    Permission::ALL
        .iter()
        .filter(|p| p.scope() == Some(scope))
        .map(|p| p.min_role())
        .min()
}

pub use routes::routes;

crate::wire::string_enum! {
    /// A key's type (SPEC §4): `secret` (server side, any scope its creator holds) or
    /// `publishable` (in browsers: `gateway:proxy` only, from its allowed origins only).
    KeyType, "type" {
        Secret => "secret",
        Publishable => "publishable",
    }
}

impl KeyType {
    /// The token's first part: the operator's `secret_key_prefix` (default `sk`) or `pk`.
    pub fn prefix(self, secret_prefix: &str) -> &str {
        match self {
            KeyType::Secret => secret_prefix,
            KeyType::Publishable => PUBLISHABLE_PREFIX,
        }
    }
}

/// Publishable keys' first part, whatever the secret keys' is.
pub const PUBLISHABLE_PREFIX: &str = "pk";

/// A usable `secret_key_prefix`: 2 to 8 lowercase ASCII letters or digits, a letter first, and
/// not the publishable keys' `pk`.
pub fn valid_secret_prefix(p: &str) -> bool {
    (2..=8).contains(&p.len())
        && p.starts_with(|c: char| c.is_ascii_lowercase())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p != PUBLISHABLE_PREFIX
}

/// The shape of every key Gatehouse mints, whatever prefix it was minted under:
/// `<prefix>_<live|test>_…` with a prefix of 2 to 8 lowercase letters or digits. A bearer token
/// of this shape is taken for a key (and looked up as one), anything else for an access token.
pub fn looks_like_key(token: &str) -> bool {
    let Some((prefix, rest)) = token.split_once('_') else {
        return false;
    };
    (2..=8).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && (rest.starts_with("live_") || rest.starts_with("test_"))
}

crate::wire::string_enum! {
    /// A key's status as shown: `active`, `disabled` and `revoked` are stored; `expired` is an
    /// active key past its expiry (derived when read).
    KeyStatus, "status" {
        Active => "active",
        Disabled => "disabled",
        Revoked => "revoked",
        Expired => "expired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_recognised_by_shape_under_any_prefix() {
        for key in [
            "sk_live_abc",
            "sk_test_abc",
            "pk_live_x",
            "tv_live_x",
            "ab12_test_x",
        ] {
            assert!(looks_like_key(key), "{key}");
        }
        for not in [
            "eyJhbGciOiJIUzI1NiJ9.e30.x",
            "sk_prod_abc",
            "s_live_abc",
            "Sk_live_abc",
            "toolongpf_live_x",
            "1a_live_x",
            "sk-live-abc",
            "",
        ] {
            assert!(!looks_like_key(not), "{not}");
        }
    }

    #[test]
    fn secret_prefixes_are_short_lowercase_and_never_pk() {
        for ok in ["sk", "tv", "acme", "ab12cd34"] {
            assert!(valid_secret_prefix(ok), "{ok}");
            assert_eq!(KeyType::Secret.prefix(ok), ok);
        }
        for bad in ["pk", "s", "Tv", "1tv", "tv_", "abcdefghi", ""] {
            assert!(!valid_secret_prefix(bad), "{bad}");
        }
        assert_eq!(KeyType::Publishable.prefix("tv"), "pk");
    }
}
