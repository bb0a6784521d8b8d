//! The two environments every organization has (SPEC §4): `live` and `test`. Keys, providers,
//! webhook endpoints, usage logs and violations each belong to one; a caller confined to an
//! environment (a key, a tenant-scoped token) sees and changes that environment's data only.

crate::wire::string_enum! {
    /// An environment: `live` or `test`.
    Environment, "environment" {
        Live => "live",
        Test => "test",
    }
}
