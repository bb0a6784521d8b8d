//! Policy rules of an organization: `GET/POST /v1/organizations/{org_id}/policies`,
//! `GET/PUT/DELETE …/policies/{id}` (reading: member / `policies:read`; writing: editor /
//! `policies:manage`). Every write validates the rule with the engine's own
//! [`validate`](super::rules::validate) — so a stored rule always compiles — emits
//! `policy.created|updated|deleted` in its transaction, and drops the organization's compiled
//! matcher on every node (bus message `org:<id>`). The queries are in [`super::store`].

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    rules::{self, Action, AppliesTo, Kind, Severity},
    store::{self, Policy, PolicyFields},
};
use crate::{
    app::AppState,
    error::{Error, FieldError},
    events::{Change, Invalidation},
    http::{
        extract::{Json, Path},
        pagination::{List, Page},
    },
    orgs::{access::OrgAccess, roles::perm},
};

/// The body of `POST` and `PUT` (a `PUT` replaces the whole rule, so both require the same).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    name: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    #[serde(rename = "type")]
    kind: Option<String>,
    config: Option<Value>,
    action: Option<String>,
    applies_to: Option<String>,
    severity: Option<String>,
}

fn parse_field<T: std::str::FromStr>(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<&str>,
    default: Option<T>,
    choices: &str,
) -> Option<T> {
    match value {
        Some(v) => match v.parse() {
            Ok(t) => Some(t),
            Err(_) => {
                errors.push(FieldError::new(field, format!("must be one of {choices}")));
                None
            }
        },
        None if default.is_some() => default,
        None => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
    }
}

impl PolicyInput {
    fn validate(self) -> Result<PolicyFields, Error> {
        let mut errors = Vec::new();
        let name = self.name.as_deref().map(str::trim).unwrap_or_default();
        if name.is_empty() || name.chars().count() > 200 {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
        let description = self.description.unwrap_or_default();
        if description.chars().count() > 2000 {
            errors.push(FieldError::new("description", "at most 2000 characters"));
        }
        let kind: Option<Kind> = parse_field(
            &mut errors,
            "type",
            self.kind.as_deref(),
            None,
            "pii, secrets, keyword, regex, model_allowlist, model_denylist, max_tokens, prompt_injection",
        );
        let action: Option<Action> = parse_field(
            &mut errors,
            "action",
            self.action.as_deref(),
            None,
            "block, redact, flag",
        );
        let applies_to = parse_field(
            &mut errors,
            "applies_to",
            self.applies_to.as_deref(),
            Some(AppliesTo::Request),
            "request, response, both",
        );
        let severity = parse_field(
            &mut errors,
            "severity",
            self.severity.as_deref(),
            Some(Severity::Medium),
            "low, medium, high, critical",
        );
        let mut config = self.config.unwrap_or_else(|| json!({}));
        if let (Some(kind), Some(action)) = (kind, action) {
            match rules::validate(kind, action, &config) {
                Ok(normalized) => config = normalized,
                Err(e) => errors.push(FieldError::new(&e.field, e.message)),
            }
        }
        match (kind, action, applies_to, severity) {
            (Some(kind), Some(action), Some(applies_to), Some(severity)) if errors.is_empty() => {
                Ok(PolicyFields {
                    name: name.to_string(),
                    description,
                    enabled: self.enabled.unwrap_or(true),
                    kind,
                    config,
                    action,
                    applies_to,
                    severity,
                })
            }
            _ => Err(Error::invalid(errors)),
        }
    }
}

/// Every change of a rule is audited and drops the organization's compiled matcher on every
/// node.
fn change<P>(action: &'static str, id: &str, data: Value, access: &OrgAccess<P>) -> Change {
    Change::new(action, "policy", id, data).invalidates(Invalidation::organization(access.org_id()))
}

/// The event of a stored rule.
fn saved<P>(action: &'static str, id: &str, v: &PolicyFields, access: &OrgAccess<P>) -> Change {
    let data =
        json!({"id": id, "name": v.name, "type": v.kind.as_str(), "action": v.action.as_str()});
    change(action, id, data, access)
}

pub async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesManage>,
    Json(body): Json<PolicyInput>,
) -> Result<(StatusCode, axum::Json<Policy>), Error> {
    let valid = body.validate()?;
    let id = crate::ids::PolicyId::generate();
    saved("policy.created", &id, &valid, &access)
        .write(&state, &access, async |tx| {
            store::insert(tx, access.org_id(), &id, &valid).await
        })
        .await?;
    let policy = store::load(&state.db, access.org_id(), &id).await?;
    Ok((StatusCode::CREATED, axum::Json(policy)))
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesRead>,
    page: Page,
) -> Result<axum::Json<List<Policy>>, Error> {
    Ok(axum::Json(
        store::list(&state.db, access.org_id(), &page).await?,
    ))
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesRead>,
    Path((_, id)): Path<(String, crate::ids::PolicyId)>,
) -> Result<axum::Json<Policy>, Error> {
    Ok(axum::Json(
        store::load(&state.db, access.org_id(), &id).await?,
    ))
}

pub async fn replace(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesManage>,
    Path((_, id)): Path<(String, crate::ids::PolicyId)>,
    Json(body): Json<PolicyInput>,
) -> Result<axum::Json<Policy>, Error> {
    let valid = body.validate()?;
    saved("policy.updated", &id, &valid, &access)
        .write(&state, &access, async |tx| {
            store::replace(tx, access.org_id(), &id, &valid).await
        })
        .await?;
    Ok(axum::Json(
        store::load(&state.db, access.org_id(), &id).await?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    access: OrgAccess<perm::PoliciesManage>,
    Path((_, id)): Path<(String, crate::ids::PolicyId)>,
) -> Result<StatusCode, Error> {
    change("policy.deleted", &id, json!({"id": id}), &access)
        .write(&state, &access, async |tx| {
            store::delete(tx, access.org_id(), &id).await
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
