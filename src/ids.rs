//! Opaque, prefixed, time-sortable identifiers (`org_01j…`): a ULID in lower-case Crockford
//! base32 behind a resource prefix, so that ids sort by creation time and say what they name.

use std::fmt;

/// Generates a new id with the given prefix, e.g. `new_id("org")`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// True when `s` looks like an id with this prefix (used to tell ids from slugs in paths).
pub fn has_prefix(s: &str, prefix: &str) -> bool {
    s.len() == prefix.len() + 27
        && s.starts_with(prefix)
        && s.as_bytes()[prefix.len()] == b'_'
        && s[prefix.len() + 1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

macro_rules! id_types {
    ($($name:ident => $prefix:literal),* $(,)?) => {$(
        #[doc = concat!("Identifier of the `", $prefix, "_…` kind.")]
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub fn generate() -> Self { Self(new_id($prefix)) }
            pub fn as_str(&self) -> &str { &self.0 }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self { Self(s) }
        }
    )*};
}

id_types! {
    UserId => "user",
    OrgId => "org",
    MembershipId => "mem",
    KeyId => "key",
    SessionId => "sess",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_time_sortable() {
        let a = OrgId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = OrgId::generate();
        assert!(a.as_str().starts_with("org_"));
        assert!(a < b);
        assert!(has_prefix(a.as_str(), "org"));
        assert!(!has_prefix("acme-corp", "org"));
        assert!(!has_prefix(a.as_str(), "user"));
    }
}
