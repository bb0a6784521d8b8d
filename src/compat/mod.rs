//! Seed adapters (issue 22): the paths and answer shapes of the systems in the seeds, served as
//! thin adapters over the `/v1` domain code (no second implementation). One file (or folder) per seed;
//! `docs/compatibility.md` lists, seed by seed, what is served where.

use serde_json::{Map, Value};

use crate::http::routes::Routes;

pub mod seed001;
pub mod seed002;

pub fn routes() -> Routes {
    Routes::new()
        .merge(seed001::routes())
        .merge(seed002::routes())
}

/// `access_token` → `accessToken`.
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A `/v1` answer with its field names camelCased, objects within included; the values under
/// `metadata` are the caller's own data and keep their keys.
pub(crate) fn camel_cased(value: Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| {
                    let value = if key == "metadata" {
                        value
                    } else {
                        camel_cased(value)
                    };
                    (camel(&key), value)
                })
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_cased).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn camel_cases_every_field_name_but_the_callers_metadata() {
        let answer = json!({
            "access_token": "a", "expires_in": 3600,
            "user": {"email_verified": true, "metadata": {"my_key": 1}},
            "items": [{"created_at": "t"}]
        });
        assert_eq!(
            camel_cased(answer),
            json!({
                "accessToken": "a", "expiresIn": 3600,
                "user": {"emailVerified": true, "metadata": {"my_key": 1}},
                "items": [{"createdAt": "t"}]
            })
        );
    }
}
