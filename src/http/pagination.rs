//! The list conventions of SPEC §1, once: `limit` (default 20, max 100), `offset`, `page`
//! (alias: `offset = (page-1)*limit`) and, for append-only streams, an opaque `cursor`.
//! Responses are `{"<plural>": […], "total", "limit", "offset", "has_more", "next_cursor"?}`.
//! The SQL a page becomes (`Page::apply_*`, `Page::fetch*`) is in `storage/paging.rs`.

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64URL, Engine};
use serde::{ser::SerializeMap, Serialize, Serializer};

use crate::error::{Error, FieldError};

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// Paging of one list request. Extracted from the query string beside any filters (which the
/// handler reads with its own `Query<F>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
    /// The id after which a cursor page starts (decoded from `cursor`).
    pub after_id: Option<String>,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            limit: DEFAULT_LIMIT,
            offset: 0,
            after_id: None,
        }
    }
}

impl Page {
    pub fn parse(query: &str) -> Result<Page, Error> {
        let mut limit = None;
        let mut offset = None;
        let mut page = None;
        let mut cursor = None;
        let mut errors = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let number = || value.trim().parse::<i64>().ok();
            match key.as_ref() {
                "limit" => match number() {
                    Some(n) if (1..=MAX_LIMIT).contains(&n) => limit = Some(n),
                    _ => errors.push(FieldError::new(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    )),
                },
                "offset" => match number() {
                    Some(n) if n >= 0 => offset = Some(n),
                    _ => errors.push(FieldError::new("offset", "must be a non-negative integer")),
                },
                "page" => match number() {
                    Some(n) if (1..=1_000_000).contains(&n) => page = Some(n),
                    _ => errors.push(FieldError::new("page", "must be a positive integer")),
                },
                "cursor" => match decode_cursor(&value) {
                    Some(id) => cursor = Some(id),
                    None => {
                        errors.push(FieldError::new("cursor", "is not a cursor this API issued"))
                    }
                },
                _ => {}
            }
        }
        if cursor.is_some() && (offset.is_some() || page.is_some()) {
            errors.push(FieldError::new(
                "cursor",
                "cannot be combined with offset or page",
            ));
        }
        if page.is_some() && offset.is_some() {
            errors.push(FieldError::new("page", "cannot be combined with offset"));
        }
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        let offset = match (offset, page) {
            (Some(o), _) => o,
            (None, Some(p)) => (p - 1) * limit,
            (None, None) => 0,
        };
        Ok(Page {
            limit,
            offset,
            after_id: cursor,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Page::parse(parts.uri.query().unwrap_or_default())
    }
}

pub fn encode_cursor(id: &str) -> String {
    B64URL.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = B64URL.decode(cursor.trim()).ok()?;
    let id = String::from_utf8(bytes).ok()?;
    (id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(id)
}

/// One page of a list, serialized under its plural resource name.
#[derive(Debug)]
pub struct List<T> {
    pub key: &'static str,
    pub items: Vec<T>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// Anything listed with a cursor names its id.
pub trait HasId {
    fn id(&self) -> &str;
}

/// `has_id!(Member);`: the cursor of a list of `Member`s is its `id` field (any id that derefs
/// to `str`).
macro_rules! has_id {
    ($t:ty) => {
        impl $crate::http::pagination::HasId for $t {
            fn id(&self) -> &str {
                &self.id
            }
        }
    };
}
pub(crate) use has_id;

impl<T> List<T> {
    /// Builds the page from rows fetched with `limit + 1` (see `Page::apply_*`).
    pub fn from_rows(key: &'static str, mut rows: Vec<T>, total: i64, page: &Page) -> Self
    where
        T: HasId,
    {
        let has_more = rows.len() as i64 > page.limit;
        rows.truncate(page.limit as usize);
        let next_cursor = if has_more {
            rows.last().map(|r| encode_cursor(r.id()))
        } else {
            None
        };
        List {
            key,
            items: rows,
            total,
            limit: page.limit,
            offset: if page.after_id.is_some() {
                0
            } else {
                page.offset
            },
            has_more,
            next_cursor,
        }
    }

    /// One page of a list held in memory (a handful of rows: sessions, configs, signing keys),
    /// honouring `limit` and `offset` as the SQL-backed lists do.
    pub fn slice(key: &'static str, all: Vec<T>, page: &Page) -> Self {
        let total = all.len() as i64;
        let items: Vec<T> = all
            .into_iter()
            .skip(page.offset as usize)
            .take(page.limit as usize)
            .collect();
        List {
            key,
            has_more: page.offset + (items.len() as i64) < total,
            items,
            total,
            limit: page.limit,
            offset: page.offset,
            next_cursor: None,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> List<U> {
        List {
            key: self.key,
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            limit: self.limit,
            offset: self.offset,
            has_more: self.has_more,
            next_cursor: self.next_cursor,
        }
    }
}

/// A page's schema: its one array property is named after the resource (`api_keys`, `members`),
/// beside `total`, `limit`, `offset`, `has_more` and, on cursor pages, `next_cursor`.
impl<T: schemars::JsonSchema> schemars::JsonSchema for List<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("ListOf{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let items = g.subschema_for::<T>();
        schemars::json_schema!({
            "type": "object",
            "description": "One page of a list: the items under the resource's plural name",
            "required": ["total", "limit", "offset", "has_more"],
            "properties": {
                "total": { "type": "integer", "minimum": 0 },
                "limit": { "type": "integer", "minimum": 1 },
                "offset": { "type": "integer", "minimum": 0 },
                "has_more": { "type": "boolean" },
                "next_cursor": { "type": "string" },
            },
            "additionalProperties": { "type": "array", "items": items },
            "minProperties": 5,
            "maxProperties": 6,
        })
    }
}

impl<T: Serialize> Serialize for List<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(self.key, &self.items)?;
        map.serialize_entry("total", &self.total)?;
        map.serialize_entry("limit", &self.limit)?;
        map.serialize_entry("offset", &self.offset)?;
        map.serialize_entry("has_more", &self.has_more)?;
        if let Some(c) = &self.next_cursor {
            map.serialize_entry("next_cursor", c)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row(String);
    impl HasId for Row {
        fn id(&self) -> &str {
            &self.0
        }
    }
    impl Serialize for Row {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.0)
        }
    }

    #[test]
    fn defaults_and_page_alias() {
        assert_eq!(Page::parse("").unwrap(), Page::default());
        let p = Page::parse("page=3&limit=10").unwrap();
        assert_eq!((p.limit, p.offset), (10, 20));
        let p = Page::parse("offset=40&q=abc").unwrap();
        assert_eq!((p.limit, p.offset), (20, 40));
    }

    #[test]
    fn bad_paging_is_refused_naming_the_field() {
        for q in [
            "limit=0",
            "limit=101",
            "limit=x",
            "offset=-1",
            "page=0",
            "cursor=!!",
            "page=2&offset=3",
        ] {
            let err = Page::parse(q).unwrap_err();
            let Error::Api { details, .. } = err else {
                panic!()
            };
            assert!(details.is_some(), "{q}");
        }
    }

    #[test]
    fn cursor_pages_round_trip() {
        let rows: Vec<Row> = (0..3).map(|i| Row(format!("log_{i}"))).collect();
        let page = Page {
            limit: 2,
            ..Page::default()
        };
        let list = List::from_rows("logs", rows, 3, &page);
        assert!(list.has_more);
        let cursor = list.next_cursor.clone().unwrap();
        let next = Page::parse(&format!("cursor={cursor}&limit=2")).unwrap();
        assert_eq!(next.after_id.as_deref(), Some("log_1"));
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["logs"], serde_json::json!(["log_0", "log_1"]));
        assert_eq!(json["total"], 3);
        assert_eq!(json["has_more"], true);
    }
}
