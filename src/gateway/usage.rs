//! Usage: token counts read from each response as it streams through ([`Tap`]), the cost from a
//! price table, and a batching writer that stores usage-log entries **off the request path**
//! (bounded queue; a full queue is counted, never waited on; drained on shutdown).

use std::{
    borrow::Cow,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use crate::storage::{self, Arg, Db, Sql};

pub const QUEUE_CAPACITY: usize = 10_000;
const BATCH: usize = 1000;
/// How long the writer gathers entries before writing a batch that is not full.
const GATHER: Duration = Duration::from_millis(50);
/// Bodies larger than this are streamed through without being inspected for usage.
const INSPECT_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct UsageRecord {
    /// The log entry's id, chosen on the request path so violations can name it.
    pub id: String,
    /// Shared with the key cache (no copy per request).
    pub organization_id: Arc<str>,
    pub key_id: Arc<str>,
    pub environment: Arc<str>,
    /// One of the provider kinds ([`super::providers::ProviderKind::as_str`]).
    pub provider: &'static str,
    pub model: String,
    pub path: String,
    pub status: u16,
    pub latency_ms: i64,
    pub ttfb_ms: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub streamed: bool,
    /// The key's tokens-per-minute limit, charged with this request's tokens when it ends.
    pub tokens_per_minute: Option<u64>,
    /// When the request ended (set when the record is handed to the writer).
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Policy violations of this request, stored with the entry.
    pub violations: Vec<crate::policies::violations::Found>,
    /// The request's address, user agent and id, for the audit rows of its violations (kept
    /// only when the organization has policies).
    pub request: Option<Arc<crate::events::RequestMeta>>,
}

/// Prices per million tokens, from `data/prices.json`.
#[derive(Debug, Clone)]
pub struct Prices(Value);

impl Prices {
    pub fn builtin() -> Prices {
        Prices(serde_json::from_str(include_str!("../../data/prices.json")).unwrap_or_default())
    }

    /// USD for a request; unknown models cost 0. A model matches its own entry or the longest
    /// entry it starts with (`gpt-4o-2024-08-06` → `gpt-4o`).
    pub fn cost(&self, model: &str, prompt: i64, completion: i64) -> f64 {
        let Some(table) = self.0["models"].as_object() else {
            return 0.0;
        };
        let entry = table.get(model).or_else(|| {
            table
                .iter()
                .filter(|(k, _)| model.starts_with(k.as_str()))
                .max_by_key(|(k, _)| k.len())
                .map(|(_, v)| v)
        });
        let Some(e) = entry else { return 0.0 };
        let per = |k: &str| e[k].as_f64().unwrap_or(0.0) / 1_000_000.0;
        prompt as f64 * per("input") + completion as f64 * per("output")
    }
}

pub struct UsageWriter {
    tx: mpsc::Sender<UsageRecord>,
    meter: crate::limits::usage::UsageMeter,
    limiter: Arc<dyn crate::limits::RateLimiter>,
    metrics: crate::metrics::GatewayMetrics,
    pub dropped: AtomicU64,
    stop: Arc<Notify>,
    prices: Prices,
}

impl std::fmt::Debug for UsageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsageWriter")
    }
}

impl UsageWriter {
    /// Starts the writer task; it stops (after draining) when [`UsageWriter::shutdown`] is called.
    pub fn spawn(
        db: Db,
        metrics: crate::metrics::GatewayMetrics,
        meter: crate::limits::usage::UsageMeter,
        limiter: Arc<dyn crate::limits::RateLimiter>,
    ) -> (Arc<UsageWriter>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stop = Arc::new(Notify::new());
        let prices = Prices::builtin();
        let writer = Arc::new(UsageWriter {
            tx,
            meter,
            limiter,
            metrics: metrics.clone(),
            dropped: AtomicU64::new(0),
            stop: stop.clone(),
            prices: prices.clone(),
        });
        let handle = tokio::spawn(run(db, rx, stop, prices, writer.meter.clone(), metrics));
        (writer, handle)
    }

    /// Queues a record; never waits. A full queue drops it and counts it.
    pub fn record(&self, mut r: UsageRecord) {
        r.at.get_or_insert_with(chrono::Utc::now);
        let m = &self.metrics;
        m.answered(
            r.provider,
            r.status,
            r.latency_ms as f64 / 1000.0,
            (
                r.prompt_tokens.max(0) as u64,
                r.completion_tokens.max(0) as u64,
            ),
        );
        // Monthly token quota and the key's tokens-per-minute limit.
        let tokens = (r.prompt_tokens + r.completion_tokens).max(0) as u64;
        if tokens > 0 {
            self.meter.record(
                &r.organization_id,
                crate::limits::middleware::GATEWAY_TOKENS,
                tokens,
            );
            if let Some(tpm) = r.tokens_per_minute {
                let limiter = self.limiter.clone();
                let spec = crate::limits::LimitSpec::per_minute(
                    crate::limits::middleware::tokens_key(&r.key_id),
                    tpm,
                )
                .with_cost(tokens);
                tokio::spawn(async move {
                    if let Err(e) = limiter.charge(&spec).await {
                        tracing::warn!(error = %e, "charging tokens per minute failed");
                    }
                });
            }
        }
        if self.tx.try_send(r).is_err() {
            m.usage_dropped.inc();
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "usage log queue full; records dropped");
            }
        }
    }

    pub fn queue_depth(&self) -> usize {
        QUEUE_CAPACITY - self.tx.capacity()
    }

    pub fn prices(&self) -> &Prices {
        &self.prices
    }

    pub fn shutdown(&self) {
        self.stop.notify_one();
    }
}

async fn run(
    db: Db,
    mut rx: mpsc::Receiver<UsageRecord>,
    stop: Arc<Notify>,
    prices: Prices,
    meter: crate::limits::usage::UsageMeter,
    metrics: crate::metrics::GatewayMetrics,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // The writer keeps one connection: the pool hands out its least recently used one, whose
    // page cache would be cold after every other batch. (Closing the pool waits for it: stop
    // the writer first, as the server does.)
    let mut conn = None;
    let mut stopping = false;
    while !stopping {
        // Wait for the first entry of a batch.
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
            _ = stop.notified() => stopping = true,
        }
        take_waiting(&mut rx, &mut batch);
        // Not a full batch: gather what arrives over a short window, one transaction for many
        // entries. The writer sleeps through the window rather than waking for each entry
        // (that would cost a wake-up of this task, often of another thread, per request).
        if batch.len() < BATCH && !stopping {
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = stop.notified() => stopping = true,
            }
            take_waiting(&mut rx, &mut batch);
        }
        if stopping {
            // Drained on shutdown: everything queued is written, in full batches.
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
                if batch.len() == BATCH {
                    write(&db, &mut conn, (&prices, &meter), &mut batch).await;
                }
            }
        }
        // Entries not yet written (set by the writer, not by each request: one shared counter
        // updated per request costs every serving thread a cache miss).
        metrics
            .usage_queue_depth
            .set((rx.len() + batch.len()) as i64);
        write(&db, &mut conn, (&prices, &meter), &mut batch).await;
        metrics.usage_queue_depth.set(rx.len() as i64);
    }
}

/// Moves the entries already queued into `batch`, up to a full batch, without waiting.
fn take_waiting(rx: &mut mpsc::Receiver<UsageRecord>, batch: &mut Vec<UsageRecord>) {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
}

/// Rows per multi-row `INSERT`: a batch is written in statements of these sizes (largest
/// first), so that the few statements there are stay prepared on each connection rather than
/// being parsed again for every batch (17 values per row, under every backend's limit).
const INSERT_SIZES: [usize; 4] = [100, 25, 5, 1];

/// One entry as it is stored: the record, its timestamp and cost.
pub struct Stored {
    pub record: UsageRecord,
    pub created_at: String,
    pub cost_usd: f64,
}

/// The `INSERT` of `rows` usage-log entries, made once per backend and size.
fn insert_text(backend: storage::Backend, rows: usize) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<(storage::Backend, usize, String)>> =
        std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        storage::Backend::ALL
            .into_iter()
            .flat_map(|b| INSERT_SIZES.map(|n| (b, n, multi_row_insert(b, n))))
            .collect()
    });
    texts
        .iter()
        .find(|(b, n, _)| *b == backend && *n == rows)
        .map(|(_, _, text)| text.as_str())
        .expect("a statement for each backend and size")
}

fn multi_row_insert(backend: storage::Backend, rows: usize) -> String {
    const COLUMNS: usize = 17;
    // A failing row rolls the whole batch's transaction back (as the writer does anyway).
    let verb = backend.insert_or_rollback();
    let mut sql = Sql::for_backend(
        backend,
        &format!("{verb} INTO usage_logs (id, organization_id, key_id, environment, provider, model, path, \
         status, latency_ms, ttfb_ms, prompt_tokens, completion_tokens, total_tokens, cost_usd, \
         streamed, violation_ids, created_at) VALUES "),
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(", ");
        }
        sql.tuple(std::iter::repeat_n(Arg::Null, COLUMNS));
    }
    sql.text().to_string()
}

async fn write(
    db: &Db,
    conn: &mut Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    (prices, meter): (&Prices, &crate::limits::usage::UsageMeter),
    batch: &mut Vec<UsageRecord>,
) {
    if batch.is_empty() {
        return;
    }
    let records = batch.len();
    let backend = db.backend();
    let result: Result<(), crate::error::Error> = async {
        let stored: Vec<Stored> = batch
            .drain(..)
            .map(|mut r| {
                if r.id.is_empty() {
                    r.id = crate::ids::LogId::generate().into();
                }
                // Text from the client or the provider (a model's name) may hold NUL, which no
                // store keeps in text (PostgreSQL refuses the whole batch): U+FFFD instead.
                for text in [&mut r.model, &mut r.path] {
                    if text.contains('\0') {
                        *text = text.replace('\0', "\u{FFFD}");
                    }
                }
                let cost_usd = prices.cost(&r.model, r.prompt_tokens, r.completion_tokens);
                // The organization's gateway cost this period, in millionths of a USD (the
                // price table's currency; `GET …/usage` shows it in minor units): counted here,
                // off the request path, where the record is priced anyway.
                let micros = (cost_usd * 1_000_000.0).round();
                if micros >= 1.0 {
                    meter.record(
                        &r.organization_id,
                        crate::limits::middleware::GATEWAY_COST_MICROS,
                        micros as u64,
                    );
                }
                Stored {
                    created_at: storage::format_time(r.at.unwrap_or_else(chrono::Utc::now)),
                    cost_usd,
                    record: r,
                }
            })
            .collect();
        let violation_ids: Vec<Cow<'static, str>> = stored
            .iter()
            .map(|s| {
                if s.record.violations.is_empty() {
                    return Cow::Borrowed("[]");
                }
                let ids: Vec<&str> = s.record.violations.iter().map(|v| v.id.as_str()).collect();
                Cow::Owned(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
            })
            .collect();
        let pinned = match conn {
            Some(c) => c,
            None => conn.insert(db.pool().acquire().await?),
        };
        let mut tx = sqlx::Connection::begin_with(&mut **pinned, backend.begin_write()).await?;
        let mut rest = &stored[..];
        let mut ids = &violation_ids[..];
        while !rest.is_empty() {
            let n = INSERT_SIZES
                .into_iter()
                .find(|n| *n <= rest.len())
                .unwrap_or(1);
            let mut q = sqlx::query(insert_text(backend, n));
            for (s, violation_ids) in rest[..n].iter().zip(&ids[..n]) {
                let r = &s.record;
                q = q
                    .bind(r.id.as_str())
                    .bind(&*r.organization_id)
                    .bind(&*r.key_id)
                    .bind(&*r.environment)
                    .bind(r.provider)
                    .bind(r.model.as_str())
                    .bind(r.path.as_str())
                    .bind(i64::from(r.status))
                    .bind(r.latency_ms)
                    .bind(r.ttfb_ms)
                    .bind(r.prompt_tokens)
                    .bind(r.completion_tokens)
                    .bind(r.prompt_tokens + r.completion_tokens)
                    .bind(s.cost_usd)
                    .bind(r.streamed)
                    .bind(violation_ids.as_ref())
                    .bind(s.created_at.as_str());
            }
            q.execute(&mut *tx).await?;
            rest = &rest[n..];
            ids = &ids[n..];
        }
        for r in stored
            .iter()
            .map(|s| &s.record)
            .filter(|r| !r.violations.is_empty())
        {
            let ctx = crate::policies::violations::Context {
                organization_id: &r.organization_id,
                environment: &r.environment,
                key_id: &r.key_id,
                log_id: &r.id,
                model: &r.model,
                request: r.request.as_deref(),
            };
            crate::policies::violations::record(&mut tx, &ctx, &r.violations).await?;
        }
        super::rollup::add_batch(&mut tx, backend, &stored).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, records, "writing usage logs failed");
        // A fresh connection for the next batch, in case this one is broken.
        *conn = None;
    }
    batch.clear();
}

/// The wire format of a request or response (shared with the policy engine).
pub use crate::policies::extract::Format;

/// Updates `(prompt, completion, model)` from one JSON document of a response (the whole body,
/// or one server-sent event). Later documents win, as each format's final event carries totals.
fn read_usage(format: Format, v: &Value, found: &mut (i64, i64, Option<String>)) {
    let mut model = |m: &Value| {
        if found.2.is_none() {
            found.2 = m.as_str().map(str::to_string);
        }
    };
    match format {
        Format::OpenAi => {
            // Chat completions and embeddings (`prompt_tokens`/`completion_tokens`), or the
            // Responses API and audio (`input_tokens`/`output_tokens`; a stream's
            // `response.completed` event carries the response under `response`).
            let v = if v["response"].is_object() {
                &v["response"]
            } else {
                v
            };
            model(&v["model"]);
            let u = &v["usage"];
            if u.is_object() {
                let tokens = |a: &str, b: &str| u[a].as_i64().or(u[b].as_i64()).unwrap_or(0);
                found.0 = tokens("prompt_tokens", "input_tokens");
                found.1 = tokens("completion_tokens", "output_tokens");
            }
        }
        Format::Anthropic => {
            // A whole message, or the message_start / message_delta events of a stream.
            let message = if v["type"] == "message_start" {
                &v["message"]
            } else {
                v
            };
            model(&message["model"]);
            let u = &message["usage"];
            if let Some(i) = u["input_tokens"].as_i64() {
                found.0 = i;
            }
            if let Some(o) = u["output_tokens"].as_i64() {
                found.1 = o;
            }
        }
        Format::Google => {
            model(&v["modelVersion"]);
            let u = &v["usageMetadata"];
            if u.is_object() {
                found.0 = u["promptTokenCount"].as_i64().unwrap_or(0);
                found.1 = u["candidatesTokenCount"].as_i64().unwrap_or(0);
            }
        }
    }
}

/// The fields of a response document (a whole answer or one event) that carry usage, read
/// without building the document: every other field is skipped.
#[derive(serde::Deserialize)]
struct UsageDoc<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
    /// Anthropic: `message_start` carries the message (model and input tokens).
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Box<UsageDoc<'a>>>,
    /// OpenAI's Responses API: stream events carry the response under `response`.
    #[serde(default, borrow)]
    response: Option<Box<UsageDoc<'a>>>,
    /// Gemini.
    #[serde(default, rename = "modelVersion", borrow)]
    model_version: Option<Cow<'a, str>>,
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Option<GeminiUsage>,
}

#[derive(serde::Deserialize)]
struct TokenUsage {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
}

#[derive(serde::Deserialize)]
struct GeminiUsage {
    #[serde(rename = "promptTokenCount")]
    prompt: Option<i64>,
    #[serde(rename = "candidatesTokenCount")]
    candidates: Option<i64>,
}

/// [`read_usage`] over the typed fields only; `false` when the document is not an object of the
/// expected field types (the caller then reads it as a JSON value).
fn read_usage_fast(format: Format, data: &[u8], found: &mut (i64, i64, Option<String>)) -> bool {
    let Ok(doc) = serde_json::from_slice::<UsageDoc>(data) else {
        return false;
    };
    let mut model = |m: &Option<Cow<str>>| {
        if found.2.is_none() {
            found.2 = m.as_deref().map(str::to_string);
        }
    };
    match format {
        Format::OpenAi => {
            let doc = doc.response.as_deref().unwrap_or(&doc);
            model(&doc.model);
            if let Some(u) = &doc.usage {
                found.0 = u.prompt_tokens.or(u.input_tokens).unwrap_or(0);
                found.1 = u.completion_tokens.or(u.output_tokens).unwrap_or(0);
            }
        }
        Format::Anthropic => {
            let message = match (doc.kind.as_deref(), &doc.message) {
                (Some("message_start"), Some(m)) => m,
                (Some("message_start"), None) => return true,
                _ => &doc,
            };
            model(&message.model);
            if let Some(u) = &message.usage {
                if let Some(i) = u.input_tokens {
                    found.0 = i;
                }
                if let Some(o) = u.output_tokens {
                    found.1 = o;
                }
            }
        }
        Format::Google => {
            model(&doc.model_version);
            if let Some(u) = &doc.usage_metadata {
                found.0 = u.prompt.unwrap_or(0);
                found.1 = u.candidates.unwrap_or(0);
            }
        }
    }
    true
}

/// The token counts of a whole JSON answer whose **last member** is its `usage` object (OpenAI's
/// and Anthropic's answers are), read without parsing the rest of the answer; `None` when the
/// answer is not shaped so (the caller then reads the whole document). The `"usage"` found last
/// is a key, not text: text would have its quotes escaped. It belongs to the top-level object
/// when only that object's closing brace follows its value.
fn top_level_usage(format: Format, body: &[u8]) -> Option<(i64, i64)> {
    if format == Format::Google {
        return None;
    }
    let body = body.trim_ascii();
    if !body.starts_with(b"{") {
        return None;
    }
    let at = memchr::memmem::rfind(body, b"\"usage\"")?;
    let backslashes = body[..at].iter().rev().take_while(|b| **b == b'\\').count();
    if backslashes % 2 == 1 {
        return None;
    }
    let rest = body[at + 7..].trim_ascii_start().strip_prefix(b":")?;
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<TokenUsage>();
    let usage = values.next()?.ok()?;
    if rest[values.byte_offset()..].trim_ascii() != b"}" {
        return None;
    }
    Some(match format {
        Format::OpenAi => (
            usage.prompt_tokens.or(usage.input_tokens).unwrap_or(0),
            usage.completion_tokens.or(usage.output_tokens).unwrap_or(0),
        ),
        _ => (
            usage.input_tokens.unwrap_or(0),
            usage.output_tokens.unwrap_or(0),
        ),
    })
}

/// One JSON document of a response: the typed fields when they parse, else the JSON value.
fn read_usage_doc(format: Format, data: &[u8], found: &mut (i64, i64, Option<String>)) {
    if read_usage_fast(format, data, found) {
        return;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        match v.as_array() {
            Some(items) => items.iter().for_each(|i| read_usage(format, i, found)),
            None => read_usage(format, &v, found),
        }
    }
}

/// Reads the token usage from a body in `format`: one JSON document, a JSON array (Gemini's
/// non-SSE stream), or server-sent events. Returns `(prompt, completion, model)`.
pub fn parse_usage(format: Format, body: &[u8]) -> (i64, i64, Option<String>) {
    let mut found = (0, 0, None);
    let trimmed = body.trim_ascii();
    if trimmed.starts_with(b"{") || trimmed.starts_with(b"[") {
        read_usage_doc(format, trimmed, &mut found);
        return found;
    }
    for line in body.split(|b| *b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        read_usage_doc(format, data.trim_ascii(), &mut found);
    }
    found
}

/// Passes a response body through chunk by chunk, timing the first byte and reading the usage
/// (and, for response policies, the text) as it goes; when the body ends — or the client goes
/// away — it hands the record to the writer. Server-sent events are read event by event,
/// keeping only an incomplete last line, so a long stream costs no memory; any other body (one
/// JSON answer, Gemini's JSON-array stream) is kept as a bounded copy and read at the end.
pub struct Tap<S> {
    inner: S,
    started: Instant,
    first_byte: Option<Duration>,
    record: Option<UsageRecord>,
    format: Format,
    writer: Arc<UsageWriter>,
    /// Response rules to run over a streamed answer's text when it ends (flag only: the
    /// chunks have left already).
    stream_policies: Option<Arc<crate::policies::engine::Matcher>>,
    read: Reader,
}

enum Reader {
    /// The whole body's chunks, shared with what was sent on (not copied), up to
    /// `INSPECT_LIMIT` bytes in all (`None` once it overflowed).
    Whole(Option<Chunks>),
    /// Server-sent events.
    Events {
        line: Vec<u8>,
        usage: (i64, i64, Option<String>),
        text: String,
    },
}

/// A body's chunks as they arrived.
#[derive(Default)]
struct Chunks {
    parts: Vec<Bytes>,
    size: usize,
}

impl Chunks {
    /// The body in one piece (no copy when it came in one chunk).
    fn whole(self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.into_iter().next().unwrap_or_default(),
            _ => {
                let mut all = Vec::with_capacity(self.size);
                self.parts.iter().for_each(|p| all.extend_from_slice(p));
                Bytes::from(all)
            }
        }
    }
}

impl Reader {
    fn push(&mut self, chunk: &Bytes, format: Format, want_text: bool) {
        match self {
            Reader::Whole(kept) => {
                if let Some(c) = kept {
                    if c.size + chunk.len() <= INSPECT_LIMIT {
                        c.size += chunk.len();
                        c.parts.push(chunk.clone());
                    } else {
                        *kept = None;
                    }
                }
            }
            Reader::Events { line, usage, text } => {
                let mut rest: &[u8] = chunk;
                while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                    let complete: &[u8] = if line.is_empty() {
                        &rest[..end]
                    } else {
                        line.extend_from_slice(&rest[..end]);
                        line
                    };
                    read_event_line(complete, format, usage, want_text.then_some(&mut *text));
                    line.clear();
                    rest = &rest[end + 1..];
                }
                if line.len() + rest.len() <= INSPECT_LIMIT {
                    line.extend_from_slice(rest);
                }
            }
        }
    }
}

/// One line of a server-sent event stream: a `data:` line adds to the usage (events that can
/// carry it are parsed; text deltas are not unless the text is wanted) and to the text.
fn read_event_line(
    line: &[u8],
    format: Format,
    usage: &mut (i64, i64, Option<String>),
    text: Option<&mut String>,
) {
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    let data = data.trim_ascii();
    let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    if usage.2.is_none() || has(b"usage") || has(b"Usage") {
        read_usage_doc(format, data, usage);
    }
    if let Some(text) = text {
        if text.len() < INSPECT_LIMIT {
            if let Some(t) = crate::policies::stream_delta_text(format, data) {
                text.push_str(&t);
            }
        }
    }
}

impl<S> Tap<S> {
    /// `events`: the body is a `text/event-stream`.
    pub fn new(
        inner: S,
        record: UsageRecord,
        format: Format,
        events: bool,
        started: Instant,
        writer: Arc<UsageWriter>,
    ) -> Self {
        Tap {
            inner,
            started,
            first_byte: None,
            record: Some(record),
            format,
            writer,
            stream_policies: None,
            read: if events {
                Reader::Events {
                    line: Vec::new(),
                    usage: (0, 0, None),
                    text: String::new(),
                }
            } else {
                Reader::Whole(Some(Chunks::default()))
            },
        }
    }

    /// Checks the streamed answer's text against the response rules of `matcher` at the end.
    pub fn with_stream_policies(mut self, matcher: Arc<crate::policies::engine::Matcher>) -> Self {
        self.stream_policies = Some(matcher);
        self
    }

    fn finish(&mut self) {
        let Some(mut r) = self.record.take() else {
            return;
        };
        r.latency_ms = self.started.elapsed().as_millis() as i64;
        r.ttfb_ms = self
            .first_byte
            .unwrap_or_else(|| self.started.elapsed())
            .as_millis() as i64;
        let read = std::mem::replace(&mut self.read, Reader::Whole(None));
        let (usage, text) = match read {
            Reader::Whole(Some(chunks)) => {
                let copy = chunks.whole();
                let text = self
                    .stream_policies
                    .is_some()
                    .then(|| crate::policies::stream_text(self.format, &copy));
                // The model is the request's when it named one: then only the usage is read.
                let usage = match top_level_usage(self.format, &copy) {
                    Some((p, c)) if !r.model.is_empty() => (p, c, None),
                    _ => parse_usage(self.format, &copy),
                };
                (Some(usage), text)
            }
            Reader::Whole(None) => (None, None),
            Reader::Events {
                line,
                mut usage,
                mut text,
            } => {
                // A last line without its newline.
                read_event_line(&line, self.format, &mut usage, Some(&mut text));
                (Some(usage), Some(text))
            }
        };
        if let Some((p, c, model)) = usage {
            r.prompt_tokens = p;
            r.completion_tokens = c;
            if let Some(m) = model.filter(|_| r.model.is_empty()) {
                r.model = m;
            }
        }
        if let (Some(matcher), Some(text)) = (&self.stream_policies, text) {
            r.violations.extend(
                matcher
                    .check_text(&text, crate::policies::rules::AppliesTo::Response)
                    .into_iter()
                    // The chunks have left: whatever the rule says, this was a flag.
                    .map(|mut hit| {
                        hit.action = crate::policies::rules::Action::Flag;
                        crate::policies::violations::Found::new("response", hit)
                    }),
            );
        }
        self.writer.record(r);
    }
}

/// The answer's body as it passes: its length (so that a whole answer keeps its
/// `Content-Length` on the way to the client) and its end are the provider's.
impl<B> http_body::Body for Tap<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(chunk) = frame.data_ref() {
                    if this.first_byte.is_none() {
                        this.first_byte = Some(this.started.elapsed());
                    }
                    let want_text = this.stream_policies.is_some();
                    this.read.push(chunk, this.format, want_text);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S> Drop for Tap<S> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_in_each_format() {
        let json = br#"{"model":"gpt-4o","usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
        assert_eq!(
            parse_usage(Format::OpenAi, json),
            (12, 5, Some("gpt-4o".into()))
        );
        let sse = b"data: {\"model\":\"m\",\"choices\":[]}\n\ndata: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        assert_eq!(parse_usage(Format::OpenAi, sse), (3, 4, Some("m".into())));
        assert_eq!(parse_usage(Format::OpenAi, b"garbage"), (0, 0, None));
        let anthropic = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        assert_eq!(
            parse_usage(Format::Anthropic, anthropic),
            (25, 15, Some("claude".into()))
        );
        let msg =
            br#"{"type":"message","model":"claude","usage":{"input_tokens":8,"output_tokens":2}}"#;
        assert_eq!(
            parse_usage(Format::Anthropic, msg),
            (8, 2, Some("claude".into()))
        );
        // OpenAI's Responses API and audio: input/output tokens, streamed under `response`; the
        // same read when a field of an unexpected type sends the document down the slow path.
        let responses = br#"{"model":"gpt-4.1","usage":{"input_tokens":5,"output_tokens":6}}"#;
        assert_eq!(
            parse_usage(Format::OpenAi, responses),
            (5, 6, Some("gpt-4.1".into()))
        );
        let odd = br#"{"model":"gpt-4.1","usage":{"input_tokens":5,"output_tokens":6,"prompt_tokens":"?"}}"#;
        assert_eq!(
            parse_usage(Format::OpenAi, odd),
            (5, 6, Some("gpt-4.1".into()))
        );
        let responses_sse = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":null}}\n\n\
            event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":11,\"output_tokens\":22}}}\n\n";
        assert_eq!(
            parse_usage(Format::OpenAi, responses_sse),
            (11, 22, Some("gpt-4.1".into()))
        );
        let gemini = br#"[{"modelVersion":"gemini-2.0-flash"},{"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":9}}]"#;
        assert_eq!(
            parse_usage(Format::Google, gemini),
            (4, 9, Some("gemini-2.0-flash".into()))
        );
    }

    #[test]
    fn a_whole_answers_usage_is_read_from_its_last_member() {
        for (format, body) in [
            (
                Format::OpenAi,
                &br#"{"model":"gpt-4o","choices":[{"message":{"content":"say \"usage\": {} here"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":0}}}"#[..],
            ),
            (
                Format::OpenAi,
                br#"{"model":"gpt-4.1","output":[],"usage":{"input_tokens":5,"output_tokens":6}}  "#,
            ),
            (
                Format::Anthropic,
                br#"{"type":"message","model":"claude","content":[],"usage":{"input_tokens":8,"output_tokens":2}}"#,
            ),
        ] {
            let (p, c, _) = parse_usage(format, body);
            assert_eq!(top_level_usage(format, body), Some((p, c)));
            assert!(p > 0 && c > 0);
        }
        // Shapes it does not read (the whole document is read instead).
        for body in [
            &br#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"model":"m"}"#[..],
            br#"{"model":"m","choices":[{"x":{"usage":{"prompt_tokens":1,"completion_tokens":1}}}]}"#,
            br#"{"model":"m","note":"a \"usage\":{\"prompt_tokens\":9}}"}"#,
            br#"{"model":"m","usage":null}"#,
            br#"{"model":"m","usage":{"prompt_tokens":"many"}}"#,
        ] {
            assert_eq!(top_level_usage(Format::OpenAi, body), None, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(
            top_level_usage(
                Format::Google,
                br#"{"usageMetadata":{"promptTokenCount":1},"usage":{"input_tokens":1}}"#
            ),
            None
        );
    }

    #[test]
    fn server_sent_events_are_read_across_chunk_boundaries() {
        let sse = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n\
                   data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n\
                   data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n\
                   data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}";
        // Every way of cutting the stream in three reads the same.
        for i in 1..sse.len() - 1 {
            for j in [i + 1, sse.len() - 1] {
                let mut r = Reader::Events {
                    line: Vec::new(),
                    usage: (0, 0, None),
                    text: String::new(),
                };
                for part in [&sse[..i], &sse[i..j], &sse[j..]] {
                    r.push(
                        &Bytes::copy_from_slice(part.as_bytes()),
                        Format::Anthropic,
                        true,
                    );
                }
                let Reader::Events {
                    line,
                    mut usage,
                    mut text,
                } = r
                else {
                    unreachable!()
                };
                read_event_line(&line, Format::Anthropic, &mut usage, Some(&mut text));
                assert_eq!(usage, (25, 15, Some("claude".into())), "cut at {i}, {j}");
                assert_eq!(text, "Hello", "cut at {i}, {j}");
            }
        }
    }

    #[test]
    fn costs_come_from_the_price_table() {
        let p = Prices::builtin();
        let c = p.cost("gpt-4o-mini", 1_000_000, 1_000_000);
        assert!((c - 0.75).abs() < 1e-9, "{c}");
        assert!(p.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) > 0.0);
        assert_eq!(p.cost("unknown-model", 1000, 1000), 0.0);
    }
}
