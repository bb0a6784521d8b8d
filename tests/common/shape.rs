//! Checks of an answer's shape against a seed's documented one (the seed replays,
//! `tests/compat_seed*.rs`): each field by name, with the JSON kind the seed's example shows.

use serde_json::Value;

use super::Response;

/// The kind of JSON value a seed example shows for a field.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str,
    Num,
    Bool,
    Arr,
    Obj,
    /// A string or null (a time not reached yet, an unset setting).
    OptStr,
    /// A string from a closed set (a role, a status).
    OneOf(&'static [&'static str]),
}

/// The five roles (seed 000's table, SPEC §3).
pub const ROLE: Kind = Kind::OneOf(&["owner", "admin", "editor", "member", "viewer"]);
/// A member: joined, or invited and not joined yet.
pub const MEMBER_STATUS: Kind = Kind::OneOf(&["active", "pending_invite"]);
/// An invitation's status (SPEC §3's `?status=` values).
pub const INVITATION_STATUS: Kind = Kind::OneOf(&["pending", "accepted", "revoked", "expired"]);
/// An organization's or a user's standing.
pub const STANDING: Kind = Kind::OneOf(&["active", "suspended"]);

/// Asserts that `value` has each of `fields` with the kind the seed shows.
#[track_caller]
pub fn has_shape(value: &Value, fields: &[(&str, Kind)]) {
    for (name, kind) in fields {
        let v = value
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` in {value}"));
        let ok = match kind {
            Kind::Str => v.is_string(),
            Kind::Num => v.is_number(),
            Kind::Bool => v.is_boolean(),
            Kind::Arr => v.is_array(),
            Kind::Obj => v.is_object(),
            Kind::OptStr => v.is_string() || v.is_null(),
            Kind::OneOf(set) => v.as_str().is_some_and(|s| set.contains(&s)),
        };
        assert!(ok, "`{name}` is not {kind:?} in {value}");
    }
}

/// Asserts an RFC 3339 timestamp.
#[track_caller]
pub fn is_time(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"));
}

/// Asserts a seed 000 list: `{<plural>: […], total}` plus SPEC's paging fields; returns its rows.
#[track_caller]
pub fn a_list(res: &Response, plural: &str) -> Vec<Value> {
    assert_eq!(res.status, 200, "{}", res.text);
    has_shape(
        &res.json,
        &[
            (plural, Kind::Arr),
            ("total", Kind::Num),
            ("limit", Kind::Num),
            ("offset", Kind::Num),
            ("has_more", Kind::Bool),
        ],
    );
    res.json[plural].as_array().unwrap().clone()
}

/// `res` is a 400 `invalid_request` whose details name `field`.
#[track_caller]
pub fn names_field(res: &Response, field: &str) {
    let body = res.assert_error(400, "invalid_request");
    assert!(body["details"].to_string().contains(field), "{}", res.text);
}
