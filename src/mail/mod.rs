//! Outgoing mail behind one trait: SMTP (lettre) when `smtp_url` is configured; otherwise the
//! log plus a development mailbox that platform admins read at `GET /v1/admin/mailbox`.
//! Mail is sent off the request path, so a slow SMTP server neither delays a request nor tells
//! an observer whether an account exists.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use lettre::{message::Mailbox, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;
use sqlx::Row;

use crate::{
    error::Error,
    http::pagination::{has_id, List, Page},
    storage::{self, Db, RowExt, Sql},
};

#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

impl Mail {
    pub fn new(to: impl Into<String>, subject: impl Into<String>, body: impl Into<String>) -> Mail {
        Mail {
            to: to.into(),
            subject: subject.into(),
            body: body.into(),
        }
    }
}

pub trait Mailer: Send + Sync + std::fmt::Debug {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// SMTP delivery (`smtp://user:pass@host:port`, `smtps://…` for implicit TLS,
/// `?tls=required` for STARTTLS — lettre's URL format).
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmtpMailer")
    }
}

impl SmtpMailer {
    pub fn new(url: &str, from: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("invalid smtp_url: {e}"))?
            .timeout(Some(std::time::Duration::from_secs(15)))
            .build();
        let from = from
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid mail_from: {e}"))?;
        Ok(SmtpMailer { transport, from })
    }
}

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let message = Message::builder()
                .from(self.from.clone())
                .to(mail.to.parse()?)
                .subject(&mail.subject)
                .body(mail.body.clone())?;
            self.transport.send(message).await?;
            Ok(())
        })
    }
}

/// Development delivery: the log and the `mailbox` table.
#[derive(Debug)]
pub struct DevMailbox {
    db: Db,
}

impl DevMailbox {
    pub fn new(db: Db) -> Self {
        DevMailbox { db }
    }
}

impl Mailer for DevMailbox {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            tracing::info!(to = %mail.to, subject = %mail.subject, body = %mail.body, "mail (development mailbox; set smtp_url to send it)");
            sqlx::query(
                "INSERT INTO mailbox (id, to_address, subject, body, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(crate::ids::MailId::generate())
            .bind(&mail.to)
            .bind(&mail.subject)
            .bind(&mail.body)
            .bind(storage::now())
            .execute(self.db.pool())
            .await?;
            Ok(())
        })
    }
}

/// Sends in the background; failures are logged (never with the body, which carries codes).
pub fn send_later(mailer: &Arc<dyn Mailer>, mail: Mail) {
    let mailer = mailer.clone();
    tokio::spawn(async move {
        if let Err(e) = mailer.send(&mail).await {
            tracing::error!(to = %mail.to, subject = %mail.subject, error = %e, "mail delivery failed");
        }
    });
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StoredMail {
    pub id: crate::ids::MailId,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub created_at: String,
}

has_id!(StoredMail);

/// The development mailbox, newest first, optionally for one recipient.
pub async fn list_mailbox(
    db: &Db,
    to: Option<&str>,
    page: &Page,
) -> Result<List<StoredMail>, Error> {
    let mut filter = Sql::new(" WHERE 1 = 1");
    if let Some(to) = to {
        filter.and("to_address = ?", to.trim().to_lowercase());
    }
    let total: i64 = Sql::prefixed("SELECT COUNT(*) FROM mailbox", &filter)
        .query_scalar()
        .fetch_one(db.pool())
        .await?;
    let mut q = Sql::prefixed(
        "SELECT id, to_address, subject, body, created_at FROM mailbox",
        &filter,
    );
    page.apply_newest_first(&mut q, "id");
    let rows = q.query().fetch_all(db.pool()).await?;
    let mails = rows
        .iter()
        .map(|r| {
            Ok(StoredMail {
                id: r.try_get("id")?,
                to: r.try_get("to_address")?,
                subject: r.try_get("subject")?,
                body: r.try_get("body")?,
                created_at: r.get_time("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(List::from_rows("messages", mails, total, page))
}
