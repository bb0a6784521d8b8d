//! The messages of the invalidation bus (`bus.rs`), typed: what a change makes stale on every
//! node. [`Invalidation::topic`] and [`Invalidation::parse`] are the one encoding of the wire
//! form (`key:<id>`, `org:<id>`, `plans`, `platform_configs`, `all`), which nodes of different versions exchange, so
//! it does not change.

use std::fmt;

use crate::ids::{KeyId, OrgId};

#[derive(Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One API key changed (updated, revoked, rotated): its cached verification goes.
    Key(KeyId),
    /// Something of one organization that the request path caches changed (its keys' access,
    /// limits, providers, policy rules): everything cached for it goes.
    Organization(OrgId),
    /// The plan catalogue changed: it is read again.
    Plans,
    /// The platform configuration changed (`PUT /v1/admin/configs/{key}`): it is read again.
    PlatformConfigs,
    /// Everything cached goes (a listener that may have missed messages).
    All,
}

impl Invalidation {
    pub fn key(id: &str) -> Self {
        Invalidation::Key(KeyId(id.to_string()))
    }

    pub fn organization(id: &str) -> Self {
        Invalidation::Organization(OrgId(id.to_string()))
    }

    /// The wire form.
    pub fn topic(&self) -> String {
        match self {
            Invalidation::Key(id) => format!("key:{id}"),
            Invalidation::Organization(id) => format!("org:{id}"),
            Invalidation::Plans => "plans".to_string(),
            Invalidation::PlatformConfigs => "platform_configs".to_string(),
            Invalidation::All => "all".to_string(),
        }
    }

    /// Reads the wire form. A message this node does not know (from a newer node, or garbled)
    /// reads as [`Invalidation::All`]: dropping every cache is always safe.
    pub fn parse(message: &str) -> Self {
        match message.split_once(':') {
            Some(("key", id)) => Invalidation::key(id),
            Some(("org", id)) => Invalidation::organization(id),
            _ if message == "plans" => Invalidation::Plans,
            _ if message == "platform_configs" => Invalidation::PlatformConfigs,
            _ => Invalidation::All,
        }
    }
}

impl fmt::Debug for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.topic())
    }
}

impl fmt::Display for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.topic())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_itself() {
        for m in [
            Invalidation::key("key_01"),
            Invalidation::organization("org_01"),
            Invalidation::Plans,
            Invalidation::PlatformConfigs,
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::parse(&m.topic()), m);
        }
        assert_eq!(Invalidation::organization("org_01").topic(), "org:org_01");
        assert_eq!(Invalidation::key("key_01").topic(), "key:key_01");
    }

    #[test]
    fn an_unknown_message_drops_everything() {
        assert_eq!(Invalidation::parse("budget:b_1"), Invalidation::All);
        assert_eq!(Invalidation::parse(""), Invalidation::All);
    }
}
