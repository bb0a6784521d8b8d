//! Extractors whose every failure is the SPEC's envelope: JSON bodies (415 for a wrong content
//! type, 413 over the limit, 400 naming the bad or unknown field), query strings and paths.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, FromRequest, FromRequestParts, Request},
    http::{header::CONTENT_TYPE, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorCode, FieldError};

/// A JSON request body. Input types use `#[serde(deny_unknown_fields)]`, so an unknown field is
/// refused by name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers().get(CONTENT_TYPE)) {
            return Err(Error::new(
                ErrorCode::UnsupportedMediaType,
                "Expected a request body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(Json)
    }
}

pub fn is_json_content_type(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(mime) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = mime.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

pub fn body_rejection(rejection: BytesRejection) -> Error {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        Error::new(
            ErrorCode::PayloadTooLarge,
            "The request body is larger than this route accepts",
        )
    } else {
        Error::bad_request("The request body could not be read")
    }
}

/// Parses JSON, naming the field at fault (`settings.timezone`, `scopes[2]`) in `details`.
/// A NUL character (`\u0000`) in any string or key is refused, naming where it is: no store
/// keeps it in text (PostgreSQL refuses it outright).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let value = parse_json_value(bytes)?;
    // A NUL can only be written `\u0000` in JSON text; the field is looked for only then (the
    // six bytes may also be an escaped backslash followed by `u0000`).
    if memchr::memmem::find(bytes, br"\u0000").is_some() {
        if let Some(field) = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| nul_field(&v, String::new()))
        {
            return Err(Error::invalid_field(
                field,
                "must not contain a NUL character (\\u0000)",
            ));
        }
    }
    Ok(value)
}

/// The path (`settings.name`, `scopes[2]`, `body` for the document itself) of the first string or
/// key holding a NUL character.
fn nul_field(v: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    let here = || {
        if path.is_empty() {
            "body".to_string()
        } else {
            path.clone()
        }
    };
    match v {
        Value::String(s) => s.contains('\0').then(here),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_field(item, format!("{}[{i}]", path))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            let field = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                return Some(field.replace('\0', "\\u0000"));
            }
            nul_field(item, field)
        }),
        _ => None,
    }
}

fn parse_json_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request(
            "The request body is empty; expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return Error::bad_request(format!("Malformed JSON: {inner}"));
        }
        let message = inner.to_string();
        // serde_path_to_error's path already ends with the unknown field's name.
        if let Some(name) = unknown_field_name(&message) {
            let field = if path == "." { name.to_string() } else { path };
            return Error::invalid(vec![FieldError::new(field, "unknown field")]);
        }
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_string();
        Error::invalid(vec![FieldError::new(field, message)])
    })
}

fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// A query string; an unparsable value answers `invalid_request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|err| {
                let field = err.path().to_string();
                let message = err.into_inner().to_string();
                Error::invalid(vec![FieldError::new(
                    if field == "." {
                        "query".to_string()
                    } else {
                        field
                    },
                    message,
                )])
            })
    }
}

/// Path parameters; a mismatch answers `not_found` (the resource named cannot exist).
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|_| Error::not_found("Resource not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Input {
        name: String,
        nested: Option<Nested>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        size: u32,
    }

    fn details(err: Error) -> (ErrorCode, serde_json::Value) {
        match err {
            Error::Api { code, details, .. } => (code, details.unwrap_or_default()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let (code, d) = details(parse_json::<Input>(br#"{"name":"a","nmae":"b"}"#).unwrap_err());
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert_eq!(d[0]["field"], "nmae");
        let (_, d) =
            details(parse_json::<Input>(br#"{"name":"a","nested":{"size":1,"x":2}}"#).unwrap_err());
        assert_eq!(d[0]["field"], "nested.x");
    }

    #[test]
    fn wrong_types_and_missing_fields_name_the_field() {
        let (_, d) =
            details(parse_json::<Input>(br#"{"name":"a","nested":{"size":"big"}}"#).unwrap_err());
        assert_eq!(d[0]["field"], "nested.size");
        let (_, d) = details(parse_json::<Input>(br#"{}"#).unwrap_err());
        assert!(d[0]["message"].as_str().unwrap().contains("name"));
    }

    #[test]
    fn malformed_and_empty_bodies_are_invalid_requests() {
        let (code, _) = details(parse_json::<Input>(b"{\"name\":").unwrap_err());
        assert_eq!(code, ErrorCode::InvalidRequest);
        let (code, _) = details(parse_json::<Input>(b"  ").unwrap_err());
        assert_eq!(code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        let (code, d) = details(parse_json::<Input>(br#"{"name":"a\u0000b"}"#).unwrap_err());
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert_eq!(d[0]["field"], "name");
        let (_, d) =
            details(parse_json::<serde_json::Value>(br#"{"a":{"b":["x","\u0000"]}}"#).unwrap_err());
        assert_eq!(d[0]["field"], "a.b[1]");
        // An escaped backslash followed by `u0000` is no NUL.
        let ok: Input = parse_json(br#"{"name":"a\\u0000"}"#).unwrap();
        assert_eq!(ok.name, "a\\u0000");
    }

    #[test]
    fn json_content_types_are_recognised() {
        use axum::http::HeaderValue;
        assert!(is_json_content_type(Some(&HeaderValue::from_static(
            "application/json; charset=utf-8"
        ))));
        assert!(is_json_content_type(Some(&HeaderValue::from_static(
            "application/merge-patch+json"
        ))));
        assert!(!is_json_content_type(Some(&HeaderValue::from_static(
            "text/plain"
        ))));
        assert!(!is_json_content_type(None));
    }
}
