//! A dry run of the organization's policies: `POST /v1/organizations/{org_id}/policies/evaluate`
//! (member / `policies:read`, like reading the rules). The text or messages are checked as the
//! request of an OpenAI chat completion, by the very matcher the gateway uses (the cached
//! [`Matcher`] of the enabled rules, or one compiled by [`Matcher::compile`] from the rules named
//! in `policy_ids`), and the answer says what the gateway would do. Nothing is recorded: no
//! violation, no usage-log entry, no event.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    engine::{Hit, MatchInfo, Matcher},
    extract::Format,
    rules::{Action, Kind, Severity},
    store,
};
use crate::{
    app::AppState,
    error::{Error, FieldError},
    http::extract::Json,
    orgs::{access::OrgAccess, roles::perm},
};

/// At most this much text (`text`, or all messages' `content` together), in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// At most this many messages.
pub const MAX_MESSAGES: usize = 100;
/// The roles a message may have.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// What to check: `text` (one user message) or `messages`, exactly one of them.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateInput {
    /// A prompt, checked as one user message (at most 64 KiB).
    text: Option<String>,
    /// A conversation, checked as a chat completion's messages (at most 100, 64 KiB of content
    /// in all).
    messages: Option<Vec<EvaluateMessage>>,
    /// The model the request would name (for model allowlist/denylist rules).
    model: Option<String>,
    /// Only these rules, enabled or not (to try a rule before turning it on); without it, every
    /// enabled rule, as the gateway runs them.
    policy_ids: Option<Vec<String>>,
}

/// One message of a conversation.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
}

crate::wire::string_enum! {
    /// What the gateway would do with the request.
    Verdict, "action" {
        /// No rule matched: forwarded unchanged.
        Allow => "allow",
        /// A `block` rule matched: refused with 403 `policy_violation`.
        Block => "block",
        /// A `redact` rule matched (and none blocks): forwarded with the matches replaced.
        Redact => "redact",
        /// Only `flag` rules matched: forwarded unchanged, the violations recorded.
        Flag => "flag",
    }
}

/// One rule that matched.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct MatchedPolicy {
    pub policy_id: crate::ids::PolicyId,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub action: Action,
    pub severity: Severity,
    /// What matched, masked as in violations (at most 20 per rule).
    pub matches: Vec<MatchInfo>,
}

impl From<Hit> for MatchedPolicy {
    fn from(h: Hit) -> Self {
        MatchedPolicy {
            policy_id: h.policy_id.into(),
            name: h.policy_name,
            kind: h.kind,
            action: h.action,
            severity: h.severity,
            matches: h.matches,
        }
    }
}

/// The verdict of a dry run.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Evaluation {
    /// `block` if any matched rule blocks, else `redact` if any redacts, else `flag` if any
    /// matched, else `allow`.
    pub action: Verdict,
    /// The rules that matched, in rule order.
    pub matched: Vec<MatchedPolicy>,
    /// The text as the provider would receive it, when the action is `redact` and `text` was
    /// sent.
    pub redacted_text: Option<String>,
    /// The messages as the provider would receive them, when the action is `redact` and
    /// `messages` were sent.
    pub redacted_messages: Option<Vec<EvaluateMessage>>,
}

/// The validated input: the messages to check and the rules to check them with.
struct Checked {
    messages: Vec<EvaluateMessage>,
    single: bool,
    model: Option<String>,
    policy_ids: Option<Vec<String>>,
}

impl EvaluateInput {
    fn validate(self) -> Result<Checked, Error> {
        let mut errors = Vec::new();
        let (messages, single) = match (self.text, self.messages) {
            (Some(text), None) => {
                if text.len() > MAX_TEXT_BYTES {
                    errors.push(FieldError::new("text", "at most 64 KiB"));
                }
                let one = EvaluateMessage {
                    role: "user".into(),
                    content: text,
                };
                (vec![one], true)
            }
            (None, Some(messages)) => {
                if messages.is_empty() || messages.len() > MAX_MESSAGES {
                    errors.push(FieldError::new("messages", "1 to 100 messages"));
                }
                for (i, m) in messages.iter().enumerate() {
                    if !ROLES.contains(&m.role.as_str()) {
                        errors.push(FieldError::new(
                            format!("messages[{i}].role"),
                            "must be one of system, developer, user, assistant, tool",
                        ));
                    }
                }
                let total: usize = messages.iter().map(|m| m.content.len()).sum();
                if total > MAX_TEXT_BYTES {
                    errors.push(FieldError::new(
                        "messages",
                        "at most 64 KiB of content in all",
                    ));
                }
                (messages, false)
            }
            (Some(_), Some(_)) => {
                errors.push(FieldError::new("text", "send text or messages, not both"));
                (Vec::new(), true)
            }
            (None, None) => {
                errors.push(FieldError::new("text", "text or messages is required"));
                (Vec::new(), true)
            }
        };
        let model = self.model.map(|m| m.trim().to_string());
        if model
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > 200)
        {
            errors.push(FieldError::new("model", "must be 1 to 200 characters"));
        }
        if let Some(ids) = &self.policy_ids {
            if ids.is_empty() || ids.len() as i64 > store::MAX_RULES {
                errors.push(FieldError::new(
                    "policy_ids",
                    format!("1 to {} policy ids", store::MAX_RULES),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        Ok(Checked {
            messages,
            single,
            model,
            policy_ids: self.policy_ids,
        })
    }
}

/// The matcher to run: the gateway's own (cached, enabled rules), or the named rules compiled
/// by the same engine. An id that is not one of the organization's rules is refused.
async fn matcher(
    state: &AppState,
    org_id: &str,
    ids: Option<&[String]>,
) -> Result<std::sync::Arc<Matcher>, Error> {
    let Some(ids) = ids else {
        return state.policies.get(&state.db, org_id).await;
    };
    let rules = store::rules(&state.db, org_id).await?;
    let mut chosen = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match rules.iter().find(|r| &r.id == id) {
            Some(rule) => {
                if !chosen.iter().any(|r: &super::Rule| r.id == rule.id) {
                    // Named, so run even if it is turned off.
                    chosen.push(super::Rule {
                        enabled: true,
                        ..rule.clone()
                    });
                }
            }
            None => {
                return Err(Error::invalid_field(
                    format!("policy_ids[{i}]"),
                    format!("{id} is not a policy of this organization"),
                ))
            }
        }
    }
    Ok(std::sync::Arc::new(Matcher::compile(&chosen)))
}

pub async fn evaluate(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesRead>,
    Json(body): Json<EvaluateInput>,
) -> Result<axum::Json<Evaluation>, Error> {
    let input = body.validate()?;
    let matcher = matcher(&state, access.org_id(), input.policy_ids.as_deref()).await?;
    let request = json!({"model": input.model, "messages": input.messages});
    let body = serde_json::to_vec(&request).map_err(|e| Error::bad_request(e.to_string()))?;
    let outcome = matcher.check_request(Format::OpenAi, input.model.as_deref(), &body);
    let action = if outcome.blocked() {
        Verdict::Block
    } else if outcome.redacted.is_some() {
        Verdict::Redact
    } else if outcome.hits.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Flag
    };
    let redacted: Option<Vec<EvaluateMessage>> = match (action, &outcome.redacted) {
        (Verdict::Redact, Some(bytes)) => serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| serde_json::from_value(v["messages"].clone()).ok()),
        _ => None,
    };
    let (redacted_text, redacted_messages) = match redacted {
        Some(mut m) if input.single => (m.pop().map(|m| m.content), None),
        other => (None, other),
    };
    Ok(axum::Json(Evaluation {
        action,
        matched: outcome.hits.into_iter().map(MatchedPolicy::from).collect(),
        redacted_text,
        redacted_messages,
    }))
}
