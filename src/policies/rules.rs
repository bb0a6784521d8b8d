//! Rule model and configuration validation.
//!
//! A [`Rule`] is what an organization stores: an identity, a [`Kind`] of detector, a JSON
//! `config` specific to that kind, the [`Action`] to take on a match, which side of the
//! exchange it [`AppliesTo`], and a [`Severity`] used for reporting. [`validate`] checks a
//! config against its kind and returns the normalized form that should be stored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

use crate::wire::string_enum;
pub use crate::wire::UnknownValue;

string_enum! {
    /// The detector a rule runs.
    Kind, "type" {
        /// Personal data: emails, phones, cards, SSNs, IBANs, IP addresses.
        Pii => "pii",
        /// Credentials: cloud and VCS tokens, private keys, Gatehouse keys, JWTs.
        Secrets => "secrets",
        /// A list of words or phrases, case-insensitive, whole words.
        Keyword => "keyword",
        /// A customer-supplied regular expression.
        Regex => "regex",
        /// Only the listed models (globs) may be requested.
        ModelAllowlist => "model_allowlist",
        /// The listed models (globs) may not be requested.
        ModelDenylist => "model_denylist",
        /// Caps the output tokens a request may ask for.
        MaxTokens => "max_tokens",
        /// Known prompt-injection / jailbreak phrasings.
        PromptInjection => "prompt_injection",
    }
}

impl Kind {
    /// Whether this kind inspects text (and so supports `redact`).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            Kind::Pii | Kind::Secrets | Kind::Keyword | Kind::Regex | Kind::PromptInjection
        )
    }
}

string_enum! {
    /// What happens when a rule matches.
    Action, "action" {
        /// Refuse the request, naming the rule.
        Block => "block",
        /// Replace each match with `[REDACTED:<TYPE>]` and forward.
        Redact => "redact",
        /// Forward unchanged and record the match.
        Flag => "flag",
    }
}

string_enum! {
    /// Which side of the exchange a rule inspects.
    AppliesTo, "applies_to" {
        /// The client's request only.
        Request => "request",
        /// The provider's response only.
        Response => "response",
        /// Both.
        Both => "both",
    }
}

impl AppliesTo {
    /// Whether requests are inspected.
    pub fn request(self) -> bool {
        matches!(self, AppliesTo::Request | AppliesTo::Both)
    }

    /// Whether responses are inspected.
    pub fn response(self) -> bool {
        matches!(self, AppliesTo::Response | AppliesTo::Both)
    }
}

string_enum! {
    /// How serious a match is (reporting only; it does not change the action).
    Severity, "severity" {
        /// Low.
        Low => "low",
        /// Medium.
        Medium => "medium",
        /// High.
        High => "high",
        /// Critical.
        Critical => "critical",
    }
}

/// One stored policy rule, as the engine consumes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rule {
    /// Stable identifier (reported in hits).
    pub id: String,
    /// Human-readable name (reported in hits).
    pub name: String,
    /// The detector kind (`type` on the wire).
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Kind-specific configuration, normalized by [`validate`].
    pub config: Value,
    /// What to do on a match.
    pub action: Action,
    /// Which side is inspected.
    pub applies_to: AppliesTo,
    /// Reporting severity.
    pub severity: Severity,
    /// Disabled rules are ignored by the engine.
    pub enabled: bool,
}

/// A validation error naming the offending field (dotted path, e.g. `config.kinds`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted field path: `config`, `config.kinds`, `action`, …
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Largest accepted config, serialized.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Longest keyword, phrase or model glob, in characters (after trimming).
pub const MAX_TERM_CHARS: usize = 200;
/// Most keywords / phrases / model globs per rule.
pub const MAX_TERMS: usize = 1000;
/// Longest regex pattern, in characters.
pub const MAX_PATTERN_CHARS: usize = 1000;
/// Compiled-size limit for customer regexes (NFA and lazy DFA), in bytes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Largest accepted `max_tokens.max`.
pub const MAX_TOKENS_LIMIT: u64 = 10_000_000;
/// Longest regex `label`.
pub const MAX_LABEL_CHARS: usize = 40;

/// PII kinds understood by the `pii` rule.
pub const PII_KINDS: &[&str] = &["email", "phone", "credit_card", "ssn", "iban", "ip_address"];

/// Secret kinds understood by the `secrets` rule.
pub const SECRET_KINDS: &[&str] = &[
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "google_api_key",
    "stripe_key",
    "openai_key",
    "anthropic_key",
    "private_key",
    "gatehouse_key",
    "jwt",
];

/// Checks `config` for a rule of `kind` with `action` and returns its normalized form
/// (defaults filled in, strings trimmed, duplicates removed). Errors name the field.
pub fn validate(kind: Kind, action: Action, config: &Value) -> Result<Value, FieldError> {
    if action == Action::Redact && !kind.is_text() {
        return Err(FieldError::new(
            "action",
            format!(
                "redact is not available for {}; use block or flag",
                kind.as_str()
            ),
        ));
    }
    let size = serde_json::to_vec(config).map(|v| v.len()).unwrap_or(0);
    if size > MAX_CONFIG_BYTES {
        return Err(FieldError::new(
            "config",
            format!("is too large ({size} bytes; max {MAX_CONFIG_BYTES})"),
        ));
    }
    let empty = Map::new();
    let obj = match config {
        Value::Null => &empty,
        Value::Object(m) => m,
        _ => return Err(FieldError::new("config", "must be a JSON object")),
    };
    let allowed: &[&str] = match kind {
        Kind::Pii | Kind::Secrets => &["kinds"],
        Kind::Keyword => &["keywords"],
        Kind::Regex => &["pattern", "label"],
        Kind::ModelAllowlist | Kind::ModelDenylist => &["models"],
        Kind::MaxTokens => &["max"],
        Kind::PromptInjection => &["extra_phrases"],
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(FieldError::new(
            format!("config.{k}"),
            format!(
                "is not a recognized field for {} (expected: {})",
                kind.as_str(),
                allowed.join(", ")
            ),
        ));
    }
    let mut out = Map::new();
    match kind {
        Kind::Pii | Kind::Secrets => {
            let valid = if kind == Kind::Pii {
                PII_KINDS
            } else {
                SECRET_KINDS
            };
            let kinds = match obj.get("kinds") {
                None | Some(Value::Null) => valid.iter().map(|s| s.to_string()).collect(),
                Some(v) => {
                    let list = string_list(v, "config.kinds", 64, valid.len().max(1) * 4)?;
                    if list.is_empty() {
                        return Err(FieldError::new(
                            "config.kinds",
                            "must not be empty (omit it to enable every kind)",
                        ));
                    }
                    let mut kinds = Vec::new();
                    for k in list {
                        let k = k.to_ascii_lowercase();
                        if !valid.contains(&k.as_str()) {
                            return Err(FieldError::new(
                                "config.kinds",
                                format!(
                                    "unknown {} kind `{k}` (valid: {})",
                                    kind.as_str(),
                                    valid.join(", ")
                                ),
                            ));
                        }
                        if !kinds.contains(&k) {
                            kinds.push(k);
                        }
                    }
                    kinds
                }
            };
            out.insert("kinds".into(), strings(kinds));
        }
        Kind::Keyword => {
            let v = obj
                .get("keywords")
                .ok_or_else(|| FieldError::new("config.keywords", "is required"))?;
            let list = dedup_ci(string_list(
                v,
                "config.keywords",
                MAX_TERM_CHARS,
                MAX_TERMS,
            )?);
            if list.is_empty() {
                return Err(FieldError::new("config.keywords", "must not be empty"));
            }
            out.insert("keywords".into(), strings(list));
        }
        Kind::PromptInjection => {
            let list = match obj.get("extra_phrases") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => dedup_ci(string_list(
                    v,
                    "config.extra_phrases",
                    MAX_TERM_CHARS,
                    MAX_TERMS,
                )?),
            };
            out.insert("extra_phrases".into(), strings(list));
        }
        Kind::Regex => {
            let pattern = match obj.get("pattern") {
                Some(Value::String(s)) => s.as_str(),
                None | Some(Value::Null) => {
                    return Err(FieldError::new("config.pattern", "is required"))
                }
                Some(_) => return Err(FieldError::new("config.pattern", "must be a string")),
            };
            if pattern.trim().is_empty() {
                return Err(FieldError::new("config.pattern", "must not be empty"));
            }
            if pattern.chars().count() > MAX_PATTERN_CHARS {
                return Err(FieldError::new(
                    "config.pattern",
                    format!("is too long (max {MAX_PATTERN_CHARS} characters)"),
                ));
            }
            if let Err(e) = compile_user_regex(pattern) {
                return Err(FieldError::new(
                    "config.pattern",
                    format!("does not compile: {e}"),
                ));
            }
            let label = match obj.get("label") {
                None | Some(Value::Null) => "regex".to_string(),
                Some(Value::String(s)) => {
                    let l = s.trim().to_ascii_lowercase();
                    if l.is_empty()
                        || l.len() > MAX_LABEL_CHARS
                        || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(FieldError::new(
                            "config.label",
                            format!(
                                "must be 1..={MAX_LABEL_CHARS} characters of letters, digits and _"
                            ),
                        ));
                    }
                    l
                }
                Some(_) => return Err(FieldError::new("config.label", "must be a string")),
            };
            out.insert("pattern".into(), Value::String(pattern.to_string()));
            out.insert("label".into(), Value::String(label));
        }
        Kind::ModelAllowlist | Kind::ModelDenylist => {
            let v = obj
                .get("models")
                .ok_or_else(|| FieldError::new("config.models", "is required"))?;
            let mut list = string_list(v, "config.models", MAX_TERM_CHARS, MAX_TERMS)?;
            list.dedup();
            let mut seen = Vec::<String>::new();
            list.retain(|m| {
                let fresh = !seen.contains(m);
                seen.push(m.clone());
                fresh
            });
            if list.is_empty() {
                return Err(FieldError::new("config.models", "must not be empty"));
            }
            out.insert("models".into(), strings(list));
        }
        Kind::MaxTokens => {
            let v = obj
                .get("max")
                .ok_or_else(|| FieldError::new("config.max", "is required"))?;
            let n = v.as_u64().ok_or_else(|| {
                FieldError::new(
                    "config.max",
                    format!("must be an integer between 1 and {MAX_TOKENS_LIMIT}"),
                )
            })?;
            if !(1..=MAX_TOKENS_LIMIT).contains(&n) {
                return Err(FieldError::new(
                    "config.max",
                    format!("must be an integer between 1 and {MAX_TOKENS_LIMIT}"),
                ));
            }
            out.insert("max".into(), Value::from(n));
        }
    }
    Ok(Value::Object(out))
}

/// Compiles a customer regex with the engine's size limits (after [`user_pattern`]).
pub fn compile_user_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&user_pattern(pattern))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// The form of a customer pattern the engine runs: word boundaries `\b`/`\B` become ASCII
/// boundaries `(?-u:\b)`/`(?-u:\B)`. A Unicode word boundary makes the regex crate's lazy DFA
/// give up on any non-ASCII text and fall back to a ~50x slower engine; with ASCII boundaries
/// non-ASCII letters simply count as non-word characters. Escaped backslashes (`\\b`) and the
/// `\b{…}` forms are left alone.
pub fn user_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(b @ ('b' | 'B')) if chars.peek() != Some(&'{') => {
                out.push_str("(?-u:\\");
                out.push(b);
                out.push(')');
            }
            Some(n) => {
                out.push('\\');
                out.push(n);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn strings(v: Vec<String>) -> Value {
    Value::Array(v.into_iter().map(Value::String).collect())
}

/// A list of trimmed, non-empty strings with length and count bounds.
fn string_list(
    v: &Value,
    field: &str,
    max_chars: usize,
    max_items: usize,
) -> Result<Vec<String>, FieldError> {
    let arr = v
        .as_array()
        .ok_or_else(|| FieldError::new(field, "must be an array of strings"))?;
    if arr.len() > max_items {
        return Err(FieldError::new(
            field,
            format!("has too many entries (max {max_items})"),
        ));
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let s = item
            .as_str()
            .ok_or_else(|| FieldError::new(field, format!("entry {i} must be a string")))?
            .trim();
        let n = s.chars().count();
        if n == 0 || n > max_chars {
            return Err(FieldError::new(
                field,
                format!("entry {i} must be 1 to {max_chars} characters"),
            ));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

/// Removes case-insensitive duplicates, keeping the first spelling.
fn dedup_ci(list: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    list.into_iter()
        .filter(|s| seen.insert(s.to_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(kind: Kind, action: Action, config: Value) -> String {
        validate(kind, action, &config).unwrap_err().field
    }

    #[test]
    fn enums_round_trip_and_reject_unknown() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), *k);
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
        assert_eq!(
            Kind::parse("model_allowlist").unwrap(),
            Kind::ModelAllowlist
        );
        assert!("PII".parse::<Kind>().is_err());
        assert!("deny".parse::<Action>().is_err());
        assert!("everything".parse::<AppliesTo>().is_err());
        assert!("urgent".parse::<Severity>().is_err());
        assert_eq!(Severity::parse("critical").unwrap(), Severity::Critical);
        assert!(AppliesTo::Both.request() && AppliesTo::Both.response());
        assert!(AppliesTo::Request.request() && !AppliesTo::Request.response());
        assert!(!AppliesTo::Response.request() && AppliesTo::Response.response());
        let err = "nope".parse::<Action>().unwrap_err().to_string();
        assert!(err.contains("block, redact, flag"), "{err}");
    }

    #[test]
    fn rule_deserializes_with_type_field() {
        let r: Rule = serde_json::from_value(json!({
            "id": "pol_1", "name": "n", "type": "pii", "config": {}, "action": "redact",
            "applies_to": "both", "severity": "high", "enabled": true
        }))
        .unwrap();
        assert_eq!(r.kind, Kind::Pii);
        assert_eq!(r.action, Action::Redact);
    }

    #[test]
    fn pii_defaults_and_errors() {
        let v = validate(Kind::Pii, Action::Flag, &Value::Null).unwrap();
        assert_eq!(v["kinds"].as_array().unwrap().len(), PII_KINDS.len());
        let v = validate(
            Kind::Pii,
            Action::Flag,
            &json!({"kinds": [" email ", "email", "iban"]}),
        )
        .unwrap();
        assert_eq!(v, json!({"kinds": ["email", "iban"]}));
        let e = validate(Kind::Pii, Action::Flag, &json!({"kinds": ["email", "dna"]})).unwrap_err();
        assert_eq!(e.field, "config.kinds");
        assert!(e.message.contains("dna") && e.message.contains("credit_card"));
        assert_eq!(
            field(Kind::Pii, Action::Flag, json!({"kinds": []})),
            "config.kinds"
        );
        assert_eq!(
            field(Kind::Pii, Action::Flag, json!({"kinds": "email"})),
            "config.kinds"
        );
        assert_eq!(field(Kind::Pii, Action::Flag, json!([1])), "config");
        assert_eq!(
            field(Kind::Pii, Action::Flag, json!({"kind": []})),
            "config.kind"
        );
    }

    #[test]
    fn secrets_kinds() {
        let v = validate(Kind::Secrets, Action::Block, &json!({})).unwrap();
        assert_eq!(v["kinds"].as_array().unwrap().len(), SECRET_KINDS.len());
        let e = validate(Kind::Secrets, Action::Block, &json!({"kinds": ["email"]})).unwrap_err();
        assert_eq!(e.field, "config.kinds");
        assert!(e.message.contains("email") && e.message.contains("gatehouse_key"));
    }

    #[test]
    fn keyword_bounds() {
        let v = validate(
            Kind::Keyword,
            Action::Redact,
            &json!({"keywords": [" Zeus ", "zeus", "Apollo"]}),
        )
        .unwrap();
        assert_eq!(v, json!({"keywords": ["Zeus", "Apollo"]}));
        assert_eq!(
            field(Kind::Keyword, Action::Flag, json!({})),
            "config.keywords"
        );
        assert_eq!(
            field(Kind::Keyword, Action::Flag, json!({"keywords": []})),
            "config.keywords"
        );
        assert_eq!(
            field(Kind::Keyword, Action::Flag, json!({"keywords": ["  "]})),
            "config.keywords"
        );
        let long = "x".repeat(201);
        assert_eq!(
            field(Kind::Keyword, Action::Flag, json!({"keywords": [long]})),
            "config.keywords"
        );
        let many: Vec<String> = (0..1001).map(|i| format!("w{i}")).collect();
        assert_eq!(
            field(Kind::Keyword, Action::Flag, json!({"keywords": many})),
            "config.keywords"
        );
        let ok: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
        assert!(validate(Kind::Keyword, Action::Flag, &json!({"keywords": ok})).is_ok());
    }

    #[test]
    fn config_too_large() {
        let big: Vec<String> = (0..900).map(|_| "y".repeat(150)).collect();
        let e = validate(Kind::Keyword, Action::Flag, &json!({"keywords": big})).unwrap_err();
        assert_eq!(e.field, "config");
        assert!(e.message.contains("too large"));
    }

    #[test]
    fn regex_validation() {
        let v = validate(
            Kind::Regex,
            Action::Redact,
            &json!({"pattern": r"ORD-\d{6}"}),
        )
        .unwrap();
        assert_eq!(v, json!({"pattern": r"ORD-\d{6}", "label": "regex"}));
        let v = validate(
            Kind::Regex,
            Action::Redact,
            &json!({"pattern": "x", "label": " Order_ID "}),
        )
        .unwrap();
        assert_eq!(v["label"], "order_id");
        let e = validate(Kind::Regex, Action::Flag, &json!({"pattern": "(unclosed"})).unwrap_err();
        assert_eq!(e.field, "config.pattern");
        assert!(e.message.contains("does not compile"), "{}", e.message);
        assert_eq!(
            field(Kind::Regex, Action::Flag, json!({"pattern": ""})),
            "config.pattern"
        );
        assert_eq!(
            field(Kind::Regex, Action::Flag, json!({})),
            "config.pattern"
        );
        assert_eq!(
            field(
                Kind::Regex,
                Action::Flag,
                json!({"pattern": "a".repeat(1001)})
            ),
            "config.pattern"
        );
        // Too big once compiled: a huge counted repetition blows the 1 MiB limit.
        assert_eq!(
            field(
                Kind::Regex,
                Action::Flag,
                json!({"pattern": r"\w{1000}\w{1000}"})
            ),
            "config.pattern"
        );
        assert_eq!(
            field(
                Kind::Regex,
                Action::Flag,
                json!({"pattern": "a", "label": "no spaces"})
            ),
            "config.label"
        );
    }

    #[test]
    fn user_pattern_uses_ascii_boundaries() {
        assert_eq!(user_pattern(r"\bORD-\d+\B"), r"(?-u:\b)ORD-\d+(?-u:\B)");
        assert_eq!(user_pattern(r"a\\b"), r"a\\b");
        assert_eq!(user_pattern(r"\b{start}x"), r"\b{start}x");
        let re = compile_user_regex(r"\bzeus\b").unwrap();
        assert!(re.is_match("« zeus »") && !re.is_match("zeusx"));
    }

    #[test]
    fn models_and_max_tokens() {
        let v = validate(
            Kind::ModelDenylist,
            Action::Block,
            &json!({"models": ["gpt-4o*", " gpt-4o* ", "claude-3-?-sonnet"]}),
        )
        .unwrap();
        assert_eq!(v, json!({"models": ["gpt-4o*", "claude-3-?-sonnet"]}));
        assert_eq!(
            field(Kind::ModelAllowlist, Action::Block, json!({"models": []})),
            "config.models"
        );
        assert_eq!(
            field(
                Kind::ModelAllowlist,
                Action::Block,
                json!({"models": ["m".repeat(201)]})
            ),
            "config.models"
        );
        let e = validate(
            Kind::ModelAllowlist,
            Action::Redact,
            &json!({"models": ["x"]}),
        )
        .unwrap_err();
        assert_eq!(e.field, "action");
        assert_eq!(
            e.message,
            "redact is not available for model_allowlist; use block or flag"
        );
        assert_eq!(
            field(Kind::MaxTokens, Action::Redact, json!({"max": 5})),
            "action"
        );
        assert_eq!(
            validate(Kind::MaxTokens, Action::Block, &json!({"max": 4096})).unwrap(),
            json!({"max": 4096})
        );
        for bad in [
            json!({"max": 0}),
            json!({"max": 10_000_001}),
            json!({"max": 1.5}),
            json!({"max": "10"}),
            json!({}),
        ] {
            assert_eq!(field(Kind::MaxTokens, Action::Block, bad), "config.max");
        }
    }

    #[test]
    fn prompt_injection_extra_phrases() {
        assert_eq!(
            validate(Kind::PromptInjection, Action::Block, &Value::Null).unwrap(),
            json!({"extra_phrases": []})
        );
        assert_eq!(
            field(
                Kind::PromptInjection,
                Action::Block,
                json!({"extra_phrases": [""]})
            ),
            "config.extra_phrases"
        );
        assert!(validate(
            Kind::PromptInjection,
            Action::Redact,
            &json!({"extra_phrases": ["open sesame"]})
        )
        .is_ok());
    }
}
