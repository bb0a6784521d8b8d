//! [`Secret`]: a string that must not leak — the master key, a database, SMTP or Redis URL that
//! may carry a password, a provider's API key. Its `Debug` and `Display` print `[redacted]`, and
//! it has no `Serialize`: the value comes out only through [`Secret::expose`], so every place
//! that reads it says so, and `{:?}` of a configuration or a request body never shows it.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret string (see the module documentation). Compare and use it through [`expose`].
///
/// [`expose`]: Secret::expose
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value itself: for the one place that needs it (connecting, encrypting,
    /// sending it upstream) — never for a log line or a response.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

// A secret is read as a string (a provider's API key, a storage credential); never written back.
crate::wire::string_schema!(Secret, { "type": "string", "writeOnly": true });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact_and_expose_returns_the_value() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn deserializes_from_a_string() {
        #[derive(Debug, Deserialize)]
        struct Body {
            key: Option<Secret>,
        }
        let b: Body = serde_json::from_str(r#"{"key":"sk-123"}"#).unwrap();
        assert_eq!(b.key.as_ref().map(Secret::expose), Some("sk-123"));
        assert!(!format!("{b:?}").contains("sk-123"));
        assert!(serde_json::from_str::<Body>(r#"{"key":5}"#).is_err());
    }
}
