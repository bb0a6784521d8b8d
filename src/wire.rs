//! Closed sets of values as they travel: on the wire (JSON), in the database (text columns) and
//! in query strings. [`string_enum!`] declares one: the enum, its spellings (one per variant,
//! used by serde, `as_str`, `parse` and `FromStr` alike), and the error naming what was expected.

use std::fmt;

/// The error returned when parsing an enum from an unknown string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    /// What was being parsed (`"type"`, `"action"`, …).
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted spellings.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} `{}` (expected one of: {})",
            self.what,
            self.value,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownValue {}

/// `string_schema!(Secret, { "type": "string", "writeOnly": true })`: the JSON Schema of a type
/// that travels as a string (an id, a closed set, a secret), named after the type and inlined
/// where it is used, so the OpenAPI document shows its constraints at every field.
macro_rules! string_schema {
    ($name:ident, $schema:tt) => {
        impl ::schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!($schema)
            }
        }
    };
}

pub(crate) use string_schema;

/// Declares a closed set of values with one spelling per variant:
///
/// ```ignore
/// string_enum! {
///     /// An organization's standing.
///     OrgStatus, "status" { Active => "active", Suspended => "suspended" }
/// }
/// ```
///
/// gives the enum (Serialize/Deserialize with those spellings), `ALL`, `NAMES`, `as_str`,
/// `parse` (an `Option`), `FromStr` (an [`UnknownValue`] naming the spellings) and `Display`.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $s:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $s)] $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s),+
                }
            }

            /// Parses the wire spelling (`None`: not one of [`Self::NAMES`]).
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($s => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        $crate::wire::string_schema!($name, { "type": "string", "enum": $name::NAMES });

        impl ::std::str::FromStr for $name {
            type Err = $crate::wire::UnknownValue;
            fn from_str(s: &str) -> Result<Self, $crate::wire::UnknownValue> {
                Self::parse(s).ok_or_else(|| $crate::wire::UnknownValue {
                    what: $what,
                    value: s.to_string(),
                    expected: Self::NAMES,
                })
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use string_enum;

string_enum! {
    /// Whether a user or an organization may act: `active`, or `suspended` by a platform admin
    /// (its tokens, sessions and keys are refused at once).
    Standing, "status" {
        Active => "active",
        Suspended => "suspended",
    }
}

impl Standing {
    /// A `status` input: parsed, or the field error every admin route gives.
    pub fn input(s: &str) -> Result<Standing, crate::error::FieldError> {
        Standing::parse(s)
            .ok_or_else(|| crate::error::FieldError::new("status", "must be active or suspended"))
    }
}
