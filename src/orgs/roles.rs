//! Roles and permissions: **the one table** every organization route consults (through the
//! `OrgAccess<P>` extractor). Each role includes the ones below it.

use serde::Serialize;

use crate::http::pagination::{List, Page};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Editor,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Editor,
        Role::Member,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn description(self) -> &'static str {
        match self {
            Role::Owner => "Billing, deletion and ownership; everything an admin can do",
            Role::Admin => "Members, invitations, API keys, settings, webhooks and plan changes",
            Role::Editor => "Policies and alerts",
            Role::Member => "Reads keys, logs and policies; manages own settings",
            Role::Viewer => "Read-only dashboards",
        }
    }

    pub fn can(self, p: Permission) -> bool {
        self >= p.min_role()
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?}"))
    }
}

macro_rules! permissions {
    ($($name:ident),* $(,)?) => {
        /// What a caller may do in an organization. Most map to an API-key scope of the same name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Permission {
            $($name,)*
        }

        impl Permission {
            pub const ALL: &'static [Permission] = &[$(Permission::$name,)*];
        }

        /// Compile-time markers for `OrgAccess<P>`, one per [`Permission`]: a handler's signature
        /// says what it needs.
        pub mod perm {
            $(
                #[derive(Debug, Clone, Copy)]
                pub struct $name;
                impl super::RequiredPermission for $name {
                    const PERMISSION: super::Permission = super::Permission::$name;
                }
            )*
        }
    };
}

permissions!(
    OrganizationsRead,
    OrganizationsUpdate,
    OrganizationsDelete,
    MembersRead,
    MembersManage,
    ApiKeysRead,
    ApiKeysManage,
    BillingRead,
    BillingManage,
    BillingCancel,
    UsageRead,
    WebhooksManage,
    AuditRead,
    ConfigsRead,
    ConfigsManage,
    StorageManage,
    PoliciesRead,
    PoliciesManage,
    AnalyticsRead,
    ProvidersManage,
    GatewayProxy,
);

impl Permission {
    /// The least role that holds the permission (SPEC §3, §4, §6, §7, §10).
    pub fn min_role(self) -> Role {
        use Permission::*;
        match self {
            OrganizationsRead | MembersRead | UsageRead | ConfigsRead => Role::Viewer,
            ApiKeysRead | PoliciesRead | AnalyticsRead | GatewayProxy => Role::Member,
            PoliciesManage => Role::Editor,
            OrganizationsUpdate | MembersManage | ApiKeysManage | BillingRead | BillingManage
            | WebhooksManage | AuditRead | ConfigsManage | StorageManage | ProvidersManage => {
                Role::Admin
            }
            OrganizationsDelete | BillingCancel => Role::Owner,
        }
    }

    /// The API-key scope that grants it (`None`: a person's role only).
    pub fn scope(self) -> Option<&'static str> {
        use Permission::*;
        Some(match self {
            OrganizationsRead => "organizations:read",
            OrganizationsUpdate => "organizations:update",
            MembersRead => "members:read",
            MembersManage => "members:manage",
            ApiKeysRead => "api_keys:read",
            ApiKeysManage => "api_keys:manage",
            BillingRead => "billing:read",
            BillingManage => "billing:manage",
            UsageRead => "usage:read",
            WebhooksManage => "webhooks:manage",
            AuditRead => "audit:read",
            ConfigsRead => "configs:read",
            ConfigsManage | StorageManage | ProvidersManage => "configs:manage",
            PoliciesRead => "policies:read",
            PoliciesManage => "policies:manage",
            AnalyticsRead => "analytics:read",
            GatewayProxy => "gateway:proxy",
            OrganizationsDelete | BillingCancel => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Permission::*;
        match self {
            OrganizationsDelete => "organizations:delete",
            BillingCancel => "billing:cancel",
            other => other.scope().unwrap_or_default(),
        }
    }
}

/// Compile-time permission markers for `OrgAccess<P>`: a handler's signature says what it needs.
pub trait RequiredPermission: Send + Sync + 'static {
    const PERMISSION: Permission;
}

/// The scope names a role holds, each once (several permissions share a scope name, as
/// `configs:manage` covers configs, storage settings and providers).
fn permission_names(role: Role) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for p in Permission::ALL.iter().filter(|p| role.can(**p)) {
        if !names.contains(&p.name()) {
            names.push(p.name());
        }
    }
    names
}

/// A role as `GET /v1/roles` shows it.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct RoleDocument {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    /// The permissions (scope names) the role holds, each once.
    permissions: Vec<&'static str>,
}

/// `GET /v1/roles`
pub fn roles_document(page: &Page) -> List<RoleDocument> {
    let roles: Vec<RoleDocument> = Role::ALL
        .iter()
        .map(|r| RoleDocument {
            id: r.as_str(),
            name: r.as_str(),
            description: r.description(),
            permissions: permission_names(*r),
        })
        .collect();
    List::slice("roles", roles, page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roles_document_names_each_permission_once() {
        let doc = serde_json::to_value(roles_document(&Page::default())).unwrap();
        for role in doc["roles"].as_array().unwrap() {
            let names: Vec<&str> = role["permissions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(names.len(), unique.len(), "{}: {names:?}", role["id"]);
        }
        let owner = &doc["roles"][0]["permissions"];
        assert!(owner
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "configs:manage"));
    }

    #[test]
    fn roles_include_the_ones_below() {
        for &p in Permission::ALL {
            let holders: Vec<Role> = Role::ALL.into_iter().filter(|r| r.can(p)).collect();
            // Whoever holds it, every higher role holds it too.
            for r in &holders {
                assert!(Role::ALL.iter().filter(|h| *h > r).all(|h| h.can(p)));
            }
            assert!(Role::Owner.can(p));
        }
        assert!(!Role::Admin.can(Permission::OrganizationsDelete));
        assert!(Role::Editor.can(Permission::PoliciesManage));
        assert!(!Role::Member.can(Permission::PoliciesManage));
        assert!(Role::Viewer.can(Permission::OrganizationsRead));
        assert!(!Role::Viewer.can(Permission::ApiKeysRead));
    }
}
