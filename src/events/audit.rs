//! The audit log, read side: a filtered list with offset/page and cursor paging, and a CSV or
//! NDJSON export streamed in keyset batches (constant memory, however many rows match). There
//! is no function that changes or deletes an audit event: the log is append-only.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sqlx::{any::AnyRow, Row};

use crate::{
    error::{Error, FieldError, Result},
    http::pagination::{has_id, List, Page},
    ids::OrgId,
    storage::{self, Db, RowExt, Sql},
};

/// Rows per export batch (one query, one chunk of output).
pub const EXPORT_BATCH_ROWS: i64 = 1000;

const COLUMNS: &str = "id, actor_type, actor_id, action, resource_type, resource_id, \
                       organization_id, ip_address, user_agent, request_id, metadata, created_at";

/// One audit event, in the seed-004 shape.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct AuditEvent {
    pub id: crate::ids::AuditId,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub organization_id: Option<OrgId>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// What the action recorded (free-form, per action).
    pub metadata: serde_json::Value,
    pub created_at: String,
}

has_id!(AuditEvent);

impl AuditEvent {
    fn from_row(row: &AnyRow) -> Result<AuditEvent, sqlx::Error> {
        Ok(AuditEvent {
            id: row.try_get("id")?,
            actor_type: row.try_get("actor_type")?,
            actor_id: row.try_get("actor_id")?,
            action: row.try_get("action")?,
            resource_type: row.try_get("resource_type")?,
            resource_id: row.try_get("resource_id")?,
            organization_id: row.try_get("organization_id")?,
            ip_address: row.try_get("ip_address")?,
            user_agent: row.try_get("user_agent")?,
            request_id: row.try_get("request_id")?,
            metadata: row.get_json("metadata")?,
            created_at: row.get_time("created_at")?,
        })
    }
}

/// Whose events: one organization's, or every organization's and the platform's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    Organization(OrgId),
    All,
}

/// The query string of the audit routes (paging is read by [`Page`]; `format` chooses an
/// export). Unknown parameters are refused by the handler's `Query` extractor.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub action: Option<String>,
    pub actor_id: Option<String>,
    pub resource_type: Option<String>,
    pub format: Option<ExportFormat>,
    // Read by `Page`; named here so that `deny_unknown_fields` accepts them.
    #[serde(default, rename = "limit")]
    _limit: Option<String>,
    #[serde(default, rename = "offset")]
    _offset: Option<String>,
    #[serde(default, rename = "page")]
    _page: Option<String>,
    #[serde(default, rename = "cursor")]
    _cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Csv,
    Ndjson,
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Ndjson => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Ndjson => "ndjson",
        }
    }
}

/// Validated filters. Times are bounds on `created_at`: `from` inclusive, `until` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub action: Option<String>,
    pub actor_id: Option<String>,
    pub resource_type: Option<String>,
}

impl AuditFilter {
    /// `start_date`/`end_date` are RFC 3339 timestamps or `YYYY-MM-DD` dates (UTC); both are
    /// inclusive (an `end_date` day includes the whole day).
    pub fn from_query(q: &AuditQuery) -> Result<AuditFilter> {
        let mut errors = Vec::new();
        let mut parse = |field: &str, value: &Option<String>, end: bool| {
            let value = value.as_deref().map(str::trim).filter(|v| !v.is_empty())?;
            let bound = parse_bound(value, end);
            if bound.is_none() {
                errors.push(FieldError::new(
                    field,
                    "must be an RFC 3339 timestamp or a YYYY-MM-DD date",
                ));
            }
            bound
        };
        let from = parse("start_date", &q.start_date, false);
        let until = parse("end_date", &q.end_date, true);
        if let (Some(f), Some(u)) = (from, until) {
            if f >= u {
                errors.push(FieldError::new("end_date", "must not be before start_date"));
            }
        }
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        let text = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        Ok(AuditFilter {
            from,
            until,
            action: text(&q.action),
            actor_id: text(&q.actor_id),
            resource_type: text(&q.resource_type),
        })
    }

    fn apply(&self, sql: &mut Sql) {
        if let Some(from) = self.from {
            sql.and("created_at >= ?", storage::format_time(from));
        }
        if let Some(until) = self.until {
            sql.and("created_at < ?", storage::format_time(until));
        }
        if let Some(action) = &self.action {
            sql.and("action = ?", action.as_str());
        }
        if let Some(actor) = &self.actor_id {
            sql.and("actor_id = ?", actor.as_str());
        }
        if let Some(resource_type) = &self.resource_type {
            sql.and("resource_type = ?", resource_type.as_str());
        }
    }
}

/// The exclusive upper bound for an end, the inclusive lower bound for a start.
fn parse_bound(value: &str, end: bool) -> Option<DateTime<Utc>> {
    if let Some(t) = storage::parse_time(value) {
        return Some(if end {
            t + chrono::Duration::microseconds(1)
        } else {
            t
        });
    }
    let day = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    let day = if end { day.succ_opt()? } else { day };
    Some(day.and_hms_opt(0, 0, 0)?.and_utc())
}

/// `SELECT <select> FROM audit_events WHERE <scope and filters>`.
fn filtered(select: &str, scope: &AuditScope, filter: &AuditFilter) -> Sql {
    let mut sql = Sql::new(&format!("SELECT {select} FROM audit_events WHERE 1 = 1"));
    if let AuditScope::Organization(org) = scope {
        sql.and("organization_id = ?", org.as_str());
    }
    filter.apply(&mut sql);
    sql
}

/// One page of matching events, newest first (`{"events": […], "total", …}`).
pub async fn list(
    db: &Db,
    scope: &AuditScope,
    filter: &AuditFilter,
    page: &Page,
) -> Result<List<AuditEvent>> {
    let total: i64 = filtered("COUNT(*)", scope, filter)
        .query_scalar()
        .fetch_one(db.pool())
        .await?;
    let mut sql = filtered(COLUMNS, scope, filter);
    page.apply_newest_first(&mut sql, "id");
    let rows = sql.query().fetch_all(db.pool()).await?;
    let events = rows
        .iter()
        .map(AuditEvent::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(List::from_rows("events", events, total, page))
}

/// Every matching event, oldest first, as a stream of chunks of CSV (with a header row) or
/// NDJSON: each chunk is one keyset batch of [`EXPORT_BATCH_ROWS`] rows, fetched when the
/// previous chunk has been taken — so memory stays constant and no transaction stays open.
/// Suitable for `axum::body::Body::from_stream`.
pub fn export(
    db: Db,
    scope: AuditScope,
    filter: AuditFilter,
    format: ExportFormat,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    export_in_batches(db, scope, filter, format, EXPORT_BATCH_ROWS)
}

/// [`export`] with a chosen batch size.
pub fn export_in_batches(
    db: Db,
    scope: AuditScope,
    filter: AuditFilter,
    format: ExportFormat,
    batch: i64,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    struct Cursor {
        after: Option<String>,
        first: bool,
        done: bool,
    }
    let start = Cursor {
        after: None,
        first: true,
        done: false,
    };
    let batch = batch.max(1);
    futures_util::stream::try_unfold(start, move |cursor| {
        let (db, scope, filter) = (db.clone(), scope.clone(), filter.clone());
        async move {
            if cursor.done {
                return Ok(None);
            }
            let mut sql = filtered(COLUMNS, &scope, &filter);
            if let Some(after) = &cursor.after {
                sql.and("id > ?", after.as_str());
            }
            sql.push(" ORDER BY id ASC LIMIT ").bind(batch);
            let rows = sql.query().fetch_all(db.pool()).await?;
            let mut out = BytesMut::new();
            if cursor.first && format == ExportFormat::Csv {
                out.put_slice(CSV_HEADER.as_bytes());
            }
            let mut last = None;
            for row in &rows {
                let event = AuditEvent::from_row(row)?;
                write_row(&mut out, format, &event)?;
                last = Some(event.id.0);
            }
            if out.is_empty() {
                return Ok(None);
            }
            let next = Cursor {
                done: (rows.len() as i64) < batch,
                after: last.or(cursor.after),
                first: false,
            };
            Ok(Some((out.freeze(), next)))
        }
    })
}

const CSV_HEADER: &str = "id,actor_type,actor_id,action,resource_type,resource_id,\
                          organization_id,ip_address,user_agent,request_id,metadata,created_at\r\n";

fn write_row(out: &mut BytesMut, format: ExportFormat, e: &AuditEvent) -> Result<()> {
    match format {
        ExportFormat::Ndjson => {
            serde_json::to_writer(out.writer(), e).map_err(anyhow::Error::from)?;
            out.put_u8(b'\n');
        }
        ExportFormat::Csv => {
            let metadata = e.metadata.to_string();
            let fields = [
                e.id.as_str(),
                &e.actor_type,
                e.actor_id.as_deref().unwrap_or(""),
                &e.action,
                &e.resource_type,
                e.resource_id.as_deref().unwrap_or(""),
                e.organization_id.as_deref().unwrap_or(""),
                e.ip_address.as_deref().unwrap_or(""),
                e.user_agent.as_deref().unwrap_or(""),
                e.request_id.as_deref().unwrap_or(""),
                &metadata,
                &e.created_at,
            ];
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                write_csv_field(out, field);
            }
            out.put_slice(b"\r\n");
        }
    }
    Ok(())
}

/// RFC 4180 quoting, and a leading `'` on values a spreadsheet would run as a formula.
fn write_csv_field(out: &mut BytesMut, value: &str) {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || value.contains([',', '"', '\n', '\r']);
    if quote {
        out.put_u8(b'"');
    }
    if formula {
        out.put_u8(b'\'');
    }
    for part in value.split_inclusive('"') {
        out.put_slice(part.as_bytes());
        if part.ends_with('"') {
            out.put_u8(b'"');
        }
    }
    if quote {
        out.put_u8(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(value: &str) -> String {
        let mut out = BytesMut::new();
        write_csv_field(&mut out, value);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv("plain"), "plain");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv(r#"{"k":"v"}"#), r#""{""k"":""v""}""#);
        assert_eq!(csv("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(csv("=HYPERLINK(1)"), "\"'=HYPERLINK(1)\"");
    }

    #[test]
    fn date_bounds_include_the_whole_end_day() {
        let q = AuditQuery {
            start_date: Some("2026-01-15".into()),
            end_date: Some("2026-01-16".into()),
            ..AuditQuery::default()
        };
        let f = AuditFilter::from_query(&q).unwrap();
        assert_eq!(
            storage::format_time(f.from.unwrap()),
            "2026-01-15T00:00:00.000000Z"
        );
        assert_eq!(
            storage::format_time(f.until.unwrap()),
            "2026-01-17T00:00:00.000000Z"
        );
        let q = AuditQuery {
            end_date: Some("2026-01-15T10:00:00Z".into()),
            ..AuditQuery::default()
        };
        let f = AuditFilter::from_query(&q).unwrap();
        assert_eq!(
            storage::format_time(f.until.unwrap()),
            "2026-01-15T10:00:00.000001Z"
        );
    }

    #[test]
    fn bad_dates_are_refused_naming_the_field() {
        let q = AuditQuery {
            start_date: Some("yesterday".into()),
            ..AuditQuery::default()
        };
        assert!(AuditFilter::from_query(&q).is_err());
        let q = AuditQuery {
            start_date: Some("2026-02-01".into()),
            end_date: Some("2026-01-01".into()),
            ..AuditQuery::default()
        };
        assert!(AuditFilter::from_query(&q).is_err());
    }

    #[test]
    fn the_query_string_accepts_paging_and_refuses_typos() {
        let q: AuditQuery =
            serde_urlencoded::from_str("action=member.added&limit=5&cursor=abc&format=csv")
                .unwrap();
        assert_eq!(q.action.as_deref(), Some("member.added"));
        assert_eq!(q.format, Some(ExportFormat::Csv));
        assert!(serde_urlencoded::from_str::<AuditQuery>("actoin=x").is_err());
        assert!(serde_urlencoded::from_str::<AuditQuery>("format=xml").is_err());
    }
}
