//! The one error type of the HTTP API, mapped in one place to the SPEC's envelope:
//! `{"error": {"code", "message", "status", "request_id", "details"}}`.
//!
//! A handler returns `Result<_, Error>`; database and internal errors convert with `?`, are
//! logged (inside the request's span, so with its request id) and never reach the client.
//! `IntoResponse` leaves an [`ErrorReport`] in the response extensions; the envelope middleware
//! (`http::envelope`) renders it with the request id, and also wraps every framework-made
//! failure (unknown route, wrong method, oversize body, timeout, panic) in the same envelope.

use std::borrow::Cow;

use axum::{
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    OrganizationSuspended,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimitExceeded,
    QuotaExceeded,
    PolicyViolation,
    UpstreamError,
    UpstreamTimeout,
    InternalError,
    ServiceUnavailable,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidRequest => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden | OrganizationSuspended | PolicyViolation => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Conflict => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RateLimitExceeded | QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            UpstreamError => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The code for a failure the framework produced with only a status.
    pub fn from_status(status: StatusCode) -> Self {
        use ErrorCode::*;
        match status.as_u16() {
            400 | 422 => InvalidRequest,
            401 => Unauthorized,
            403 => Forbidden,
            404 => NotFound,
            405 => MethodNotAllowed,
            409 => Conflict,
            413 => PayloadTooLarge,
            415 => UnsupportedMediaType,
            429 => RateLimitExceeded,
            502 => UpstreamError,
            504 => UpstreamTimeout,
            408 | 503 => ServiceUnavailable,
            s if s < 500 => InvalidRequest,
            _ => InternalError,
        }
    }
}

/// One bad field of a request: `{"field": "email", "message": "must be an email address"}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Api {
        code: ErrorCode,
        message: Cow<'static, str>,
        details: Option<Value>,
        retry_after: Option<u64>,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Error::Api {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn with_details(self, details: Value) -> Self {
        match self {
            Error::Api {
                code,
                message,
                retry_after,
                ..
            } => Error::Api {
                code,
                message,
                details: Some(details),
                retry_after,
            },
            other => other,
        }
    }

    pub fn with_retry_after(self, seconds: u64) -> Self {
        match self {
            Error::Api {
                code,
                message,
                details,
                ..
            } => Error::Api {
                code,
                message,
                details,
                retry_after: Some(seconds),
            },
            other => other,
        }
    }

    /// `invalid_request` naming each bad field.
    pub fn invalid(fields: Vec<FieldError>) -> Self {
        let message = match fields.as_slice() {
            [one] => format!("Invalid value for '{}': {}", one.field, one.message),
            _ => format!("{} fields are invalid", fields.len()),
        };
        Error::new(ErrorCode::InvalidRequest, message)
            .with_details(serde_json::to_value(fields).unwrap_or_default())
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::new(field, message)])
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::ServiceUnavailable, message)
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Api { code, .. } => *code,
            _ if self.database_unavailable() => ErrorCode::ServiceUnavailable,
            _ => ErrorCode::InternalError,
        }
    }

    /// True when the database could not be reached or used at all (an outage, not a bug): the
    /// answer is 503 `service_unavailable` with `Retry-After`.
    pub fn database_unavailable(&self) -> bool {
        match self {
            Error::Database(e) => database_unavailable(e),
            Error::Internal(e) => e
                .downcast_ref::<sqlx::Error>()
                .is_some_and(database_unavailable),
            Error::Api { .. } => false,
        }
    }
}

/// Seconds a client is asked to wait (`Retry-After`) when the database is unavailable.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 5;

/// Whether a database error means "the database is unavailable" rather than "this statement is
/// wrong": the pool timed out or is closed, the connection failed (I/O, TLS, refused, reset), the
/// server is shutting down, refuses connections or lost the database (PostgreSQL SQLSTATE class
/// 08, 57P01–57P03, 53300, 3D000), or the SQLite file is locked, busy or unreadable
/// (`SQLITE_BUSY`, `SQLITE_LOCKED`, `SQLITE_IOERR`, `SQLITE_CANTOPEN`).
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Extended result codes: the primary code is the low byte.
                code.parse::<i32>()
                    .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 14))
            } else {
                code.starts_with("08")
                    || matches!(
                        code.as_ref(),
                        "57P01" | "57P02" | "57P03" | "53300" | "3D000"
                    )
            }
        }
        _ => false,
    }
}

/// What the envelope middleware renders. Lives in the response extensions between the handler
/// and the middleware.
#[derive(Debug, Clone)]
pub struct ErrorReport {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    pub details: Option<Value>,
}

impl ErrorReport {
    pub fn envelope(&self, status: StatusCode, request_id: &str) -> Value {
        let mut error = serde_json::json!({
            "code": self.code,
            "message": self.message,
            "status": status.as_u16(),
            "request_id": request_id,
        });
        if let Some(details) = &self.details {
            error["details"] = details.clone();
        }
        serde_json::json!({ "error": error })
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        let (message, details, retry_after) = match self {
            Error::Api {
                message,
                details,
                retry_after,
                ..
            } => (message, details, retry_after),
            other if other.database_unavailable() => {
                tracing::error!(error = %other, "database unavailable");
                (
                    Cow::Borrowed("The database is unavailable; try again shortly"),
                    None,
                    Some(DATABASE_RETRY_AFTER_SECS),
                )
            }
            other => {
                // Logged inside the request span (which carries the request id); the client
                // sees only a generic message.
                tracing::error!(error = %other, error.debug = ?other, "internal error");
                (Cow::Borrowed("An internal error occurred"), None, None)
            }
        };
        let mut res = code.status().into_response();
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        res.extensions_mut().insert(ErrorReport {
            code,
            message,
            details,
        });
        res
    }
}

/// Turns database constraint violations into clean API errors without string-matching in
/// handlers: `insert(...).await.on_unique("organizations", "slug", || Error::conflict(...))`.
pub trait ResultExt<T> {
    fn on_unique(self, table: &str, column: &str, f: impl FnOnce() -> Error) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn on_unique(self, table: &str, column: &str, f: impl FnOnce() -> Error) -> Result<T> {
        self.map_err(|e| match e.into() {
            Error::Database(sqlx::Error::Database(db))
                if is_unique_violation(&*db, table, column) =>
            {
                f()
            }
            other => other,
        })
    }
}

/// PostgreSQL names the constraint (`<table>_<column>_key`, its default for `UNIQUE`);
/// SQLite names the column (`UNIQUE constraint failed: <table>.<column>`).
fn is_unique_violation(db: &dyn sqlx::error::DatabaseError, table: &str, column: &str) -> bool {
    if db.kind() != sqlx::error::ErrorKind::UniqueViolation {
        return false;
    }
    match db.constraint() {
        Some(name) => name == format!("{table}_{column}_key"),
        None => db.message().contains(&format!("{table}.{column}")),
    }
}
