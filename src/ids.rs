//! Opaque, prefixed, time-sortable identifiers (`org_01j…`): a ULID in lower-case Crockford
//! base32 behind a resource prefix, so that ids sort by creation time and say what they name.

use std::fmt;

/// Generates a new id with the given prefix (through the typed ids below: `OrgId::generate()`,
/// so that every prefix is named once, here). Ids are ULIDs, monotonic
/// within this process: two ids made in the same millisecond still sort in the order they were
/// made, so "newest first" lists and their cursors follow creation order.
fn new_id(prefix: &str) -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let ulid = {
        let mut g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        g.generate()
            // Only if 2^80 ids were made within one millisecond.
            .unwrap_or_else(|_| ulid::Ulid::new())
    };
    let mut buf = [0u8; ulid::ULID_LEN];
    let encoded = ulid.array_to_str(&mut buf);
    encoded.make_ascii_lowercase();
    let mut id = String::with_capacity(prefix.len() + 1 + ulid::ULID_LEN);
    id.push_str(prefix);
    id.push('_');
    id.push_str(encoded);
    id
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
            /// `s` as this kind of id, if it has this kind's prefix and shape.
            pub fn parse(s: &str) -> Option<Self> {
                has_prefix(s, $prefix).then(|| Self(s.to_string()))
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        $crate::wire::string_schema!($name, {
            "type": "string",
            "description": concat!("An id of the `", $prefix, "_…` kind"),
        });
        impl From<String> for $name {
            fn from(s: String) -> Self { Self(s) }
        }
        impl From<$name> for String {
            fn from(id: $name) -> Self { id.0 }
        }
        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo { <String as sqlx::Type<sqlx::Any>>::type_info() }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }
        impl<'q> sqlx::Encode<'q, sqlx::Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <String as sqlx::Encode<'q, sqlx::Any>>::encode_by_ref(&self.0, buf)
            }
        }
        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(
                value: <sqlx::Any as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(Self(<String as sqlx::Decode<'r, sqlx::Any>>::decode(value)?))
            }
        }
        impl From<$name> for crate::storage::Arg {
            fn from(id: $name) -> Self { crate::storage::Arg::Text(id.0) }
        }
        impl From<&$name> for crate::storage::Arg {
            fn from(id: &$name) -> Self { crate::storage::Arg::Text(id.0.clone()) }
        }
        /// Compares with an id as the client sent it (a path segment, a query value).
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool { self.0 == other }
        }
        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool { self.0 == *other }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool { self.0 == *other }
        }
        /// Reads as the `&str` it is, for the places that take one (SQL binds, messages).
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str { &self.0 }
        }
    )*};
}

id_types! {
    UserId => "user",
    OrgId => "org",
    MembershipId => "mem",
    KeyId => "key",
    SessionId => "sess",
    InvitationId => "inv",
    ProjectId => "proj",
    ProviderId => "prov",
    PolicyId => "pol",
    SubscriptionId => "sub",
    InvoiceId => "in",
    InvoiceLineId => "il",
    SubscriptionChangeId => "sch",
    WebhookId => "wh",
    AuditId => "aud",
    EventId => "evt",
    DeliveryId => "del",
    LogId => "log",
    ViolationId => "vio",
    RequestId => "req",
    MailId => "mail",
    CodeId => "otc",
    SigningKeyId => "sk",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_in_a_row_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id("log")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids.iter().all(|id| has_prefix(id, "log")));
    }

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
