//! The compiled matcher: every rule of an organization in one [`Matcher`], evaluated against
//! request and response bodies without I/O.

use super::detectors::{self, Detector, Validator};
use super::extract::{self, Format};
use super::rules::{compile_user_regex, Action, AppliesTo, Kind, Rule, Severity};
use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexSet, RegexSetBuilder};
use serde::Serialize;
use serde_json::Value;

/// At most this many [`MatchInfo`] are kept per [`Hit`].
pub const MAX_MATCHES_PER_HIT: usize = 20;
/// Longest excerpt shown for keyword / injection matches, in characters.
const MAX_TERM_EXCERPT: usize = 80;

/// One match inside a hit: its type (`email`, `aws_access_key`, `keyword`, `model`, …) and a
/// masked excerpt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchInfo {
    /// The match type (serialized as `type`).
    #[serde(rename = "type")]
    pub r#type: String,
    /// Masked excerpt; never the raw secret or personal value.
    pub excerpt: String,
}

/// One rule that matched, with up to [`MAX_MATCHES_PER_HIT`] matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// The rule's id.
    pub policy_id: String,
    /// The rule's name.
    pub policy_name: String,
    /// The rule's type.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The rule's action.
    pub action: Action,
    /// The rule's severity.
    pub severity: Severity,
    /// What matched (masked), at most [`MAX_MATCHES_PER_HIT`].
    pub matches: Vec<MatchInfo>,
}

/// The result of checking one body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One entry per rule that matched, in rule order.
    pub hits: Vec<Hit>,
    /// The rewritten body when a `redact` rule matched inside a JSON body.
    pub redacted: Option<Vec<u8>>,
}

impl Outcome {
    /// Whether any `block` rule matched.
    pub fn blocked(&self) -> bool {
        self.hits.iter().any(|h| h.action == Action::Block)
    }

    /// The hits of `block` rules (to name them in the refusal).
    pub fn blocking_rules(&self) -> Vec<&Hit> {
        self.hits
            .iter()
            .filter(|h| h.action == Action::Block)
            .collect()
    }
}

struct RuleMeta {
    id: String,
    name: String,
    kind: Kind,
    action: Action,
    severity: Severity,
    applies_to: AppliesTo,
}

/// A rule that reports matches of a pattern, under a match type.
struct Owner {
    rule: usize,
    ty: Box<str>,
}

struct RegexEntry {
    regex: Regex,
    validate: Option<Validator>,
    owners: Vec<Owner>,
}

struct TermEntry {
    owners: Vec<Owner>,
    word_start: bool,
    word_end: bool,
}

enum Gate {
    Allow(Vec<String>),
    Deny(Vec<String>),
    MaxTokens(u64),
}

/// Every enabled rule of an organization, compiled once: one `RegexSet` prefilter over all
/// regex detectors, one Aho-Corasick automaton over all keywords and injection phrases, and
/// the request gates (model lists, max tokens).
pub struct Matcher {
    rules: Vec<RuleMeta>,
    set: Option<RegexSet>,
    regexes: Vec<RegexEntry>,
    ac: Option<AhoCorasick>,
    terms: Vec<TermEntry>,
    gates: Vec<(usize, Gate)>,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("rules", &self.rules.len())
            .field("regexes", &self.regexes.len())
            .field("terms", &self.terms.len())
            .field("gates", &self.gates.len())
            .finish()
    }
}

/// A raw match inside one text.
struct Found<'m> {
    rule: usize,
    ty: &'m str,
    start: usize,
    end: usize,
}

fn strings_of(config: &Value, key: &str) -> Vec<String> {
    config
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Collapses whitespace runs to one space (how terms and texts are compared).
fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Matcher {
    /// Compiles `rules`. Disabled rules are skipped, and so is any rule whose config does not
    /// compile (configs are expected to have passed [`validate`](super::rules::validate)).
    pub fn compile(rules: &[Rule]) -> Matcher {
        let mut m = Matcher {
            rules: Vec::new(),
            set: None,
            regexes: Vec::new(),
            ac: None,
            terms: Vec::new(),
            gates: Vec::new(),
        };
        // Regex entries keyed by pattern text, term entries by lower-cased term.
        let mut regex_keys: Vec<String> = Vec::new();
        let mut term_keys: Vec<String> = Vec::new();
        let mut term_pats: Vec<String> = Vec::new();
        let builtin_phrases = detectors::injection_phrases();

        for rule in rules.iter().filter(|r| r.enabled) {
            let idx = m.rules.len();
            let mut ok = true;
            let mut add_regex = |m: &mut Matcher,
                                 pattern: &str,
                                 compiled: Option<Regex>,
                                 validate: Option<Validator>,
                                 ty: &str|
             -> bool {
                let pos = regex_keys.iter().position(|k| k == pattern);
                let i = match pos {
                    Some(i) => i,
                    None => {
                        let regex = match compiled.map_or_else(|| compile_user_regex(pattern), Ok) {
                            Ok(r) => r,
                            Err(_) => return false,
                        };
                        regex_keys.push(pattern.to_string());
                        m.regexes.push(RegexEntry {
                            regex,
                            validate,
                            owners: Vec::new(),
                        });
                        m.regexes.len() - 1
                    }
                };
                let owners = &mut m.regexes[i].owners;
                if !owners.iter().any(|o| o.rule == idx && &*o.ty == ty) {
                    owners.push(Owner {
                        rule: idx,
                        ty: ty.into(),
                    });
                }
                true
            };
            let mut add_term = |m: &mut Matcher, term: &str, ty: &str| {
                let term = collapse_ws(term);
                if term.is_empty() {
                    return;
                }
                let key = term.to_ascii_lowercase();
                let i = match term_keys.iter().position(|k| *k == key) {
                    Some(i) => i,
                    None => {
                        term_keys.push(key);
                        m.terms.push(TermEntry {
                            owners: Vec::new(),
                            word_start: term.chars().next().is_some_and(is_word),
                            word_end: term.chars().next_back().is_some_and(is_word),
                        });
                        term_pats.push(term);
                        m.terms.len() - 1
                    }
                };
                let owners = &mut m.terms[i].owners;
                if !owners.iter().any(|o| o.rule == idx) {
                    owners.push(Owner {
                        rule: idx,
                        ty: ty.into(),
                    });
                }
            };
            match rule.kind {
                Kind::Pii | Kind::Secrets => {
                    let table: &'static [Detector] = if rule.kind == Kind::Pii {
                        detectors::PII
                    } else {
                        detectors::SECRETS
                    };
                    let mut kinds = strings_of(&rule.config, "kinds");
                    if kinds.is_empty() {
                        kinds = table.iter().map(|d| d.name.to_string()).collect();
                    }
                    for d in detectors::detectors_for(&kinds, table) {
                        let re = Regex::new(d.pattern).ok();
                        ok &= add_regex(&mut m, d.pattern, re, Some(d.validate), d.name);
                    }
                }
                Kind::Regex => {
                    let pattern = rule.config.get("pattern").and_then(Value::as_str);
                    let label = rule
                        .config
                        .get("label")
                        .and_then(Value::as_str)
                        .unwrap_or("regex");
                    ok = match pattern {
                        Some(p) if !p.is_empty() => add_regex(&mut m, p, None, None, label),
                        _ => false,
                    };
                }
                Kind::Keyword => {
                    let words = strings_of(&rule.config, "keywords");
                    ok = !words.is_empty();
                    for w in &words {
                        add_term(&mut m, w, "keyword");
                    }
                }
                Kind::PromptInjection => {
                    for p in builtin_phrases
                        .iter()
                        .chain(&strings_of(&rule.config, "extra_phrases"))
                    {
                        add_term(&mut m, p, "prompt_injection");
                    }
                }
                Kind::ModelAllowlist | Kind::ModelDenylist => {
                    let models = strings_of(&rule.config, "models");
                    ok = !models.is_empty();
                    m.gates.push((
                        idx,
                        if rule.kind == Kind::ModelAllowlist {
                            Gate::Allow(models)
                        } else {
                            Gate::Deny(models)
                        },
                    ));
                }
                Kind::MaxTokens => match rule.config.get("max").and_then(Value::as_u64) {
                    Some(n) => m.gates.push((idx, Gate::MaxTokens(n))),
                    None => ok = false,
                },
            }
            if !ok {
                // Undo anything this rule registered; it is skipped.
                for e in &mut m.regexes {
                    e.owners.retain(|o| o.rule != idx);
                }
                for t in &mut m.terms {
                    t.owners.retain(|o| o.rule != idx);
                }
                m.gates.retain(|(r, _)| *r != idx);
            }
            m.rules.push(RuleMeta {
                id: rule.id.clone(),
                name: rule.name.clone(),
                kind: rule.kind,
                action: rule.action,
                severity: rule.severity,
                applies_to: rule.applies_to,
            });
        }
        if !m.regexes.is_empty() {
            // One set over every regex: a single pass says which regexes need a full search.
            // If the union is too big, fall back to running each regex on its own.
            m.set = RegexSetBuilder::new(&regex_keys)
                .size_limit(64 << 20)
                .dfa_size_limit(16 << 20)
                .build()
                .ok();
        }
        if !term_pats.is_empty() {
            m.ac = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&term_pats)
                .ok();
        }
        m
    }

    /// Whether no rule can ever match (the gateway can skip all work).
    pub fn is_empty(&self) -> bool {
        !self.has_request_rules() && !self.has_response_rules()
    }

    /// Whether any rule inspects requests.
    pub fn has_request_rules(&self) -> bool {
        !self.gates.is_empty() || self.has_text_rules(AppliesTo::Request)
    }

    /// Whether any rule inspects responses (model and max-token rules are request-only).
    pub fn has_response_rules(&self) -> bool {
        self.has_text_rules(AppliesTo::Response)
    }

    fn applies(&self, rule: usize, side: AppliesTo) -> bool {
        let a = self.rules[rule].applies_to;
        match side {
            AppliesTo::Request => a.request(),
            AppliesTo::Response => a.response(),
            AppliesTo::Both => true,
        }
    }

    fn has_text_rules(&self, side: AppliesTo) -> bool {
        let any = |owners: &[Owner]| owners.iter().any(|o| self.applies(o.rule, side));
        self.regexes.iter().any(|e| any(&e.owners)) || self.terms.iter().any(|t| any(&t.owners))
    }

    /// Checks a request body: model and max-token gates plus every request-side text rule.
    /// `model` is the requested model (for Gemini, from the URL path). A body that is not
    /// JSON is inspected as plain text and never rewritten.
    pub fn check_request(&self, format: Format, model: Option<&str>, body: &[u8]) -> Outcome {
        self.check(format, model, body, AppliesTo::Request)
    }

    /// Checks a complete (non-streamed) response body with every response-side text rule.
    pub fn check_response(&self, format: Format, model: Option<&str>, body: &[u8]) -> Outcome {
        self.check(format, model, body, AppliesTo::Response)
    }

    /// Checks free text (e.g. a streamed response's accumulated text) with the text rules that
    /// apply to `applies` (`Both`: every text rule). Nothing is rewritten; the caller records.
    pub fn check_text(&self, text: &str, applies: AppliesTo) -> Vec<Hit> {
        let mut hits: Vec<Option<Hit>> = Vec::new();
        hits.resize_with(self.rules.len(), || None);
        let mut found = Vec::new();
        self.scan(text, applies, &mut found);
        self.record(text, &found, &mut hits);
        hits.into_iter().flatten().collect()
    }

    fn check(&self, format: Format, model: Option<&str>, body: &[u8], side: AppliesTo) -> Outcome {
        let mut hits: Vec<Option<Hit>> = Vec::new();
        hits.resize_with(self.rules.len(), || None);
        let gates = side == AppliesTo::Request && !self.gates.is_empty();
        let text_rules = self.has_text_rules(side);
        if !gates && !text_rules {
            return Outcome::default();
        }
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        if gates {
            self.check_gates(format, model, parsed.as_ref(), &mut hits);
        }
        let mut redacted = None;
        if text_rules {
            match parsed {
                Some(mut v) => {
                    let mut changed = false;
                    let mut found = Vec::new();
                    let slots = if side == AppliesTo::Request {
                        extract::request_texts(format, &mut v)
                    } else {
                        extract::response_texts(format, &mut v)
                    };
                    for slot in slots {
                        found.clear();
                        self.scan(slot, side, &mut found);
                        if found.is_empty() {
                            continue;
                        }
                        self.record(slot, &found, &mut hits);
                        let mut spans: Vec<(usize, usize, &str)> = found
                            .iter()
                            .filter(|f| self.rules[f.rule].action == Action::Redact)
                            .map(|f| (f.start, f.end, f.ty))
                            .collect();
                        if !spans.is_empty() {
                            *slot = redact(slot, &mut spans);
                            changed = true;
                        }
                    }
                    if changed {
                        redacted = serde_json::to_vec(&v).ok();
                    }
                }
                None => {
                    let text = String::from_utf8_lossy(body);
                    let mut found = Vec::new();
                    self.scan(&text, side, &mut found);
                    self.record(&text, &found, &mut hits);
                }
            }
        }
        Outcome {
            hits: hits.into_iter().flatten().collect(),
            redacted,
        }
    }

    fn check_gates(
        &self,
        format: Format,
        model: Option<&str>,
        body: Option<&Value>,
        hits: &mut [Option<Hit>],
    ) {
        for (rule, gate) in &self.gates {
            if !self.applies(*rule, AppliesTo::Request) {
                continue;
            }
            let info = match gate {
                Gate::Allow(globs) => model
                    .filter(|m| !globs.iter().any(|g| detectors::glob_match(g, m)))
                    .map(|m| ("model", m.to_string())),
                Gate::Deny(globs) => model
                    .filter(|m| globs.iter().any(|g| detectors::glob_match(g, m)))
                    .map(|m| ("model", m.to_string())),
                Gate::MaxTokens(max) => body
                    .and_then(|b| extract::requested_max_tokens(format, b))
                    .filter(|n| n > max)
                    .map(|n| ("max_tokens", format!("requested {n} > max {max}"))),
            };
            if let Some((ty, excerpt)) = info {
                self.push(hits, *rule, ty, excerpt);
            }
        }
    }

    fn push(&self, hits: &mut [Option<Hit>], rule: usize, ty: &str, excerpt: String) {
        let meta = &self.rules[rule];
        let hit = hits[rule].get_or_insert_with(|| Hit {
            policy_id: meta.id.clone(),
            policy_name: meta.name.clone(),
            kind: meta.kind,
            action: meta.action,
            severity: meta.severity,
            matches: Vec::new(),
        });
        if hit.matches.len() < MAX_MATCHES_PER_HIT {
            hit.matches.push(MatchInfo {
                r#type: ty.to_string(),
                excerpt,
            });
        }
    }

    fn record(&self, text: &str, found: &[Found<'_>], hits: &mut [Option<Hit>]) {
        for f in found {
            let full = hits[f.rule]
                .as_ref()
                .is_some_and(|h| h.matches.len() >= MAX_MATCHES_PER_HIT);
            if full {
                continue;
            }
            let raw = &text[f.start..f.end];
            let excerpt = match self.rules[f.rule].kind {
                // The rule's own terms, not user secrets: shown as matched (whitespace
                // collapsed, truncated).
                Kind::Keyword | Kind::PromptInjection => {
                    collapse_ws(raw).chars().take(MAX_TERM_EXCERPT).collect()
                }
                _ if f.ty == "email" => detectors::mask_email(raw),
                _ => detectors::mask(raw),
            };
            self.push(hits, f.rule, f.ty, excerpt);
        }
    }

    /// Every match in `text` of the text rules applying to `side`.
    fn scan<'m>(&'m self, text: &str, side: AppliesTo, out: &mut Vec<Found<'m>>) {
        if text.is_empty() {
            return;
        }
        if !self.regexes.is_empty() {
            match &self.set {
                Some(set) => {
                    let which = set.matches(text);
                    for i in which.iter() {
                        self.run_regex(i, text, side, out);
                    }
                }
                None => {
                    for i in 0..self.regexes.len() {
                        self.run_regex(i, text, side, out);
                    }
                }
            }
        }
        if let Some(ac) = &self.ac {
            self.run_terms(ac, text, side, out);
        }
    }

    fn run_regex<'m>(&'m self, i: usize, text: &str, side: AppliesTo, out: &mut Vec<Found<'m>>) {
        let e = &self.regexes[i];
        if !e.owners.iter().any(|o| self.applies(o.rule, side)) {
            return;
        }
        for m in e.regex.find_iter(text) {
            if m.is_empty() {
                continue;
            }
            let span = match e.validate {
                Some(v) => v(text, m.start(), m.end()),
                None => Some((m.start(), m.end())),
            };
            let Some((start, end)) = span else { continue };
            for o in e.owners.iter().filter(|o| self.applies(o.rule, side)) {
                out.push(Found {
                    rule: o.rule,
                    ty: &o.ty,
                    start,
                    end,
                });
            }
        }
    }

    fn run_terms<'m>(
        &'m self,
        ac: &AhoCorasick,
        text: &str,
        side: AppliesTo,
        out: &mut Vec<Found<'m>>,
    ) {
        let norm = Normalized::new(text);
        let hay = norm.text(text);
        for m in ac.find_overlapping_iter(hay) {
            let t = &self.terms[m.pattern().as_usize()];
            if t.word_start && hay[..m.start()].chars().next_back().is_some_and(is_word) {
                continue;
            }
            if t.word_end && hay[m.end()..].chars().next().is_some_and(is_word) {
                continue;
            }
            let (start, end) = norm.original_span(hay, m.start(), m.end());
            for o in t.owners.iter().filter(|o| self.applies(o.rule, side)) {
                out.push(Found {
                    rule: o.rule,
                    ty: &o.ty,
                    start,
                    end,
                });
            }
        }
    }
}

/// A whitespace-normalized copy of a text (every whitespace run → one space), with the
/// offset map back to the original. Texts whose only whitespace is single ASCII spaces are
/// used as they are (no copy).
struct Normalized {
    text: Option<String>,
    /// `(normalized offset, original - normalized)` from that offset on.
    map: Vec<(usize, usize)>,
}

impl Normalized {
    fn new(text: &str) -> Normalized {
        if !needs_normalizing(text) {
            return Normalized {
                text: None,
                map: Vec::new(),
            };
        }
        let mut out = String::with_capacity(text.len());
        let mut map = Vec::new();
        let mut delta = 0usize;
        let mut in_ws = false;
        for (i, c) in text.char_indices() {
            let ws = c.is_whitespace();
            if ws && in_ws {
                continue;
            }
            in_ws = ws;
            let d = i - out.len();
            if d != delta {
                map.push((out.len(), d));
                delta = d;
            }
            out.push(if ws { ' ' } else { c });
        }
        Normalized {
            text: Some(out),
            map,
        }
    }

    fn text<'a>(&'a self, original: &'a str) -> &'a str {
        self.text.as_deref().unwrap_or(original)
    }

    fn to_original(&self, x: usize) -> usize {
        let i = self.map.partition_point(|(p, _)| *p <= x);
        if i == 0 {
            x
        } else {
            x + self.map[i - 1].1
        }
    }

    /// Maps a match `[s, e)` of the normalized text back to the original (matches start and
    /// end on non-whitespace characters, which are copied verbatim).
    fn original_span(&self, hay: &str, s: usize, e: usize) -> (usize, usize) {
        if self.text.is_none() {
            return (s, e);
        }
        let last = hay[..e].chars().next_back().map_or(0, char::len_utf8);
        (self.to_original(s), self.to_original(e - last) + last)
    }
}

fn needs_normalizing(text: &str) -> bool {
    let mut prev_space = false;
    for &b in text.as_bytes() {
        match b {
            b'\t' | b'\n' | 0x0b | 0x0c | b'\r' => return true,
            b' ' if prev_space => return true,
            b' ' => prev_space = true,
            0x80.. => return text.chars().any(|c| !c.is_ascii() && c.is_whitespace()),
            _ => prev_space = false,
        }
    }
    false
}

/// Replaces the spans with `[REDACTED:<TYPE>]`. Overlapping or adjacent spans merge into one
/// replacement named after the leftmost-longest span.
fn redact(text: &str, spans: &mut [(usize, usize, &str)]) -> String {
    spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut i = 0;
    while i < spans.len() {
        let (s, mut e, ty) = spans[i];
        let mut j = i + 1;
        while j < spans.len() && spans[j].0 <= e {
            e = e.max(spans[j].1);
            j += 1;
        }
        let s = s.max(last);
        out.push_str(&text[last..s]);
        out.push_str("[REDACTED:");
        out.push_str(&ty.to_ascii_uppercase());
        out.push(']');
        last = e.max(last);
        i = j;
    }
    out.push_str(&text[last..]);
    out
}

/// Masks a sensitive value (see [`detectors::mask`]).
pub fn mask(s: &str) -> String {
    detectors::mask(s)
}
