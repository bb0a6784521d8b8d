//! Gateway policies (SPEC §10): guardrails evaluated on the gateway's request path.
//!
//! The engine is pure and I/O-free. [`rules`] defines the stored [`Rule`] model and
//! [`validate`], which normalizes a rule's config and names the offending field on error.
//! [`detectors`] holds the built-in PII and secret detectors (candidate regexes plus
//! validators such as Luhn, IBAN mod-97, SSN ranges and `std::net` IP parsing), the
//! prompt-injection phrase list, model globs and masking. [`extract`] finds the text to
//! inspect inside each provider's request and response JSON as `&mut String` slots, so
//! redaction rewrites matches in place and re-serializes with every other field and the key
//! order intact (`serde_json` with `preserve_order`). [`engine`] compiles all enabled rules of
//! an organization into one [`Matcher`]: every regex-based detector of every rule goes into a
//! single `RegexSet` used as a prefilter (only regexes the set reports are run for spans, and
//! their validators drop false positives), and every keyword and injection phrase goes into a
//! single ASCII-case-insensitive Aho-Corasick automaton searched over a whitespace-collapsed
//! view of the text with whole-word checks at the match boundaries. A check yields one
//! [`Hit`] per matching rule with masked excerpts, plus the redacted body when a `redact`
//! rule matched; the gateway decides what to do with `block` hits.
//!
//! Around the engine: [`routes`] (the rules' CRUD routes), [`evaluate`] (a dry run of the
//! rules on a prompt, recording nothing), [`store`] (their queries and the
//! per-organization cache of compiled matchers, dropped on every node by the bus's `org:<id>`
//! message) and [`violations`]
//! (recording, with the usage-log entry, and the `…/analytics/violations` routes). The gateway
//! calls [`engine::Matcher::check_request`] before forwarding, `check_response` on a whole answer
//! and [`stream_text`] + `check_text` when a streamed answer ends.

pub mod detectors;
pub mod engine;
pub mod evaluate;
pub mod extract;
pub mod routes;
pub mod rules;
pub mod store;
pub mod violations;

pub use engine::{mask, Hit, MatchInfo, Matcher, Outcome};
pub use extract::{requested_max_tokens, stream_delta_text, Format};
pub use rules::{validate, Action, AppliesTo, FieldError, Kind, Rule, Severity};

use crate::http::routes::Routes;

/// Organization-scoped routes (in the route table, so the isolation test covers them).
pub fn routes() -> Routes {
    const P: &str = "/v1/organizations/{org_id}/policies";
    const ONE: &str = "/v1/organizations/{org_id}/policies/{id}";
    Routes::new()
        .get(P, routes::list)
        .post(P, routes::create)
        .post(
            "/v1/organizations/{org_id}/policies/evaluate",
            evaluate::evaluate,
        )
        .get(ONE, routes::get)
        .put(ONE, routes::replace)
        .delete(ONE, routes::delete)
        .get(
            "/v1/organizations/{org_id}/analytics/violations",
            violations::list,
        )
        .get(
            "/v1/organizations/{org_id}/analytics/violations/{id}",
            violations::get,
        )
}

/// The text a streamed answer added: the deltas of its server-sent events (or of the items of
/// Gemini's JSON-array stream), concatenated in order.
pub fn stream_text(format: extract::Format, body: &[u8]) -> String {
    let mut text = String::new();
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(body) {
        for item in items {
            if let Some(t) = extract::stream_delta_text(format, item.to_string().as_bytes()) {
                text.push_str(&t);
            }
        }
        return text;
    }
    for line in body.split(|b| *b == b'\n') {
        if let Some(data) = line.strip_prefix(b"data:") {
            if let Some(t) = extract::stream_delta_text(format, data.trim_ascii()) {
                text.push_str(&t);
            }
        }
    }
    text
}
