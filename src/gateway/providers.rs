//! The organization's upstream providers: `CRUD /v1/organizations/{org_id}/providers` (admin).
//! API keys are write-only and encrypted with the master key (bound to the provider's id).
//!
//! A `base_url` must point at a public address (the webhook guard, `src/events/ssrf.rs`): a
//! literal address, or every address its host resolves to, when the provider is saved — and
//! again by the gateway's connector whenever it opens a connection — unless the operator sets
//! `allow_private_provider_targets`. Changing the `base_url` of a provider that has a key needs
//! the key again in the same PATCH, so a stored key cannot be sent to another host.
//!
//! A caller confined to an environment (a key, or a token scoped to a tenant and environment)
//! sees, changes and deletes only that environment's providers — another environment's answers
//! 404 like a foreign id — and cannot create or move one into the other environment (400 naming
//! `environment`). An unscoped user token sees both.
//!
//! Here: the routes (validate, then write through [`Change`], which drops the organization's
//! cached providers on every node) and the proxy's view of the providers ([`upstreams`]); the
//! queries are in `providers/store.rs`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderName, HeaderValue, StatusCode},
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use store::Provider;
use store::{NewProvider, ProviderPatch};

use crate::ids::ProviderId;
use crate::{
    app::AppState,
    error::{Error, FieldError},
    events::{
        ssrf::{self, TargetError},
        Change, Invalidation,
    },
    http::{
        extract::{Json, Path},
        pagination::{List, Page},
    },
    orgs::{access::OrgAccess, roles::perm},
    secret::Secret,
};

mod store;

/// The kinds of upstream provider (SPEC §12): each its own API format, or the OpenAI format
/// (`openai_compatible`: vLLM, Ollama, any server speaking it) or the built-in `mock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Google,
    Azure,
    OpenaiCompatible,
    Mock,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Openai,
        ProviderKind::Anthropic,
        ProviderKind::Google,
        ProviderKind::Azure,
        ProviderKind::OpenaiCompatible,
        ProviderKind::Mock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Google => "google",
            ProviderKind::Azure => "azure",
            ProviderKind::OpenaiCompatible => "openai_compatible",
            ProviderKind::Mock => "mock",
        }
    }

    pub fn parse(s: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider as the proxy uses it: with its decrypted key, ready as the header the provider
/// takes it in.
#[derive(Clone)]
pub struct Upstream {
    pub id: String,
    pub provider: ProviderKind,
    /// The name its organization gave it (told when it fails).
    pub name: String,
    pub base_url: Option<String>,
    pub credential: Option<Credential>,
    pub models: Vec<String>,
}

/// The header a provider's key travels in.
#[derive(Clone)]
pub enum Credential {
    Header(HeaderName, HeaderValue),
    /// The key cannot be a header value (requests to this provider fail with a clear error).
    Invalid,
}

/// Each provider's own way of taking a key: `Authorization: Bearer` (OpenAI and compatible
/// servers), `api-key` (Azure OpenAI), `x-api-key` (Anthropic), `x-goog-api-key` (Gemini).
pub fn credential(provider: ProviderKind, key: &Secret) -> Credential {
    let key = key.expose();
    let (name, value) = match provider {
        ProviderKind::Azure => ("api-key", HeaderValue::from_str(key)),
        ProviderKind::Anthropic => ("x-api-key", HeaderValue::from_str(key)),
        ProviderKind::Google => ("x-goog-api-key", HeaderValue::from_str(key)),
        _ => (
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}")),
        ),
    };
    match value {
        Ok(mut value) => {
            value.set_sensitive(true);
            Credential::Header(HeaderName::from_static(name), value)
        }
        Err(_) => Credential::Invalid,
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Header(name, _) => write!(f, "Credential({name}: [redacted])"),
            Credential::Invalid => f.write_str("Credential(invalid)"),
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({} {})", self.provider, self.id)
    }
}

impl Upstream {
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// The enabled providers of an organization for one environment, in priority order — from the
/// cache when this node has them (dropped on every node when a provider changes).
pub async fn upstreams(
    state: &AppState,
    org_id: &str,
    env: &str,
) -> Result<Arc<Vec<Upstream>>, Error> {
    if let Some((list, due)) = state.api_keys.providers(org_id, env) {
        if due {
            // Re-read in the background: no request waits for it while the list is in use.
            let (state, org_id, env) = (state.clone(), org_id.to_string(), env.to_string());
            tokio::spawn(async move {
                let generation = state.api_keys.generation();
                match load_upstreams(&state, &org_id, &env).await {
                    Ok(list) => {
                        state
                            .api_keys
                            .put_providers(generation, &org_id, &env, Arc::new(list))
                    }
                    Err(e) => tracing::warn!(error = %e, "re-reading providers failed"),
                }
                state.api_keys.providers_reread_done(&org_id, &env);
            });
        }
        return Ok(list);
    }
    let generation = state.api_keys.generation();
    let list = Arc::new(load_upstreams(state, org_id, env).await?);
    state
        .api_keys
        .put_providers(generation, org_id, env, list.clone());
    Ok(list)
}

async fn load_upstreams(state: &AppState, org_id: &str, env: &str) -> Result<Vec<Upstream>, Error> {
    store::enabled(&state.db, org_id, env)
        .await?
        .into_iter()
        .map(|r| {
            let api_key = match r.sealed_key {
                Some(sealed) => Some(Secret::from(
                    String::from_utf8(
                        state
                            .master_key
                            .decrypt(&sealed, r.id.as_bytes())
                            .map_err(|e| anyhow::anyhow!("provider key unreadable: {e}"))?,
                    )
                    .map_err(|e| anyhow::anyhow!("provider key is not UTF-8: {e}"))?,
                )),
                None => None,
            };
            Ok(Upstream {
                credential: api_key.map(|k| credential(r.provider, &k)),
                provider: r.provider,
                name: r.name,
                base_url: r.base_url,
                models: r.models,
                id: r.id,
            })
        })
        .collect()
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderInput {
    provider: Option<String>,
    name: Option<String>,
    base_url: Option<String>,
    api_key: Option<Secret>,
    models: Option<Vec<String>>,
    priority: Option<i64>,
    enabled: Option<bool>,
    environment: Option<String>,
}

impl ProviderInput {
    fn validate(&self, creating: bool) -> Result<(), Error> {
        let mut errors = Vec::new();
        match &self.provider {
            Some(p) if ProviderKind::parse(p).is_none() => errors.push(FieldError::new(
                "provider",
                format!(
                    "must be one of {}",
                    ProviderKind::ALL.map(ProviderKind::as_str).join(", ")
                ),
            )),
            None if creating => errors.push(FieldError::new("provider", "is required")),
            Some(_) if !creating => errors.push(FieldError::new("provider", "is immutable")),
            _ => {}
        }
        match &self.name {
            Some(n) if n.trim().is_empty() || n.len() > 200 => {
                errors.push(FieldError::new("name", "must be 1 to 200 characters"))
            }
            None if creating => errors.push(FieldError::new("name", "is required")),
            _ => {}
        }
        if let Some(u) = &self.base_url {
            if let Err(e) = ssrf::parse_url(u) {
                errors.push(FieldError::new("base_url", e.to_string()));
            }
        } else if creating && matches!(self.provider.as_deref(), Some("openai_compatible")) {
            errors.push(FieldError::new("base_url", "is required for this provider"));
        }
        if let Some(k) = self.api_key.as_ref().map(Secret::expose) {
            if k.is_empty() || k.len() > 4096 {
                errors.push(FieldError::new("api_key", "must be 1 to 4096 characters"));
            }
        }
        if let Some(m) = &self.models {
            if m.len() > 200 || m.iter().any(|x| x.is_empty() || x.len() > 200) {
                errors.push(FieldError::new(
                    "models",
                    "at most 200 model names of 1 to 200 characters",
                ));
            }
        }
        if let Some(p) = self.priority {
            if !(0..=1000).contains(&p) {
                errors.push(FieldError::new("priority", "must be from 0 to 1000"));
            }
        }
        if let Some(e) = &self.environment {
            if e != "live" && e != "test" {
                errors.push(FieldError::new("environment", "must be live or test"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(errors))
        }
    }
}

/// Where `base_url` points, unless private targets are allowed: a literal non-public address,
/// or a host name resolving to one (or to nothing), is refused naming `base_url`. The message
/// does not say which address a name resolved to.
async fn vet_base_url(state: &AppState, base_url: Option<&str>) -> Result<(), Error> {
    let Some(u) = base_url else {
        return Ok(());
    };
    let parsed = ssrf::parse_url(u).map_err(|e| Error::invalid_field("base_url", e.to_string()))?;
    match ssrf::vet_url(&parsed, state.config.allow_private_provider_targets).await {
        Ok(_) => Ok(()),
        Err(TargetError::NonPublic(_)) => Err(Error::invalid_field(
            "base_url",
            "must point at a public address: private, loopback, link-local, metadata and other \
             internal addresses are refused (an operator can allow them with \
             allow_private_provider_targets)",
        )),
        Err(e) => Err(Error::invalid_field("base_url", e.to_string())),
    }
}

/// A caller confined to one environment cannot put a provider in the other.
fn check_environment(access_env: Option<&str>, wanted: Option<&str>) -> Result<(), Error> {
    match (access_env, wanted) {
        (Some(mine), Some(wanted)) if mine != wanted => Err(Error::invalid_field(
            "environment",
            "a caller in one environment cannot put providers in the other",
        )),
        _ => Ok(()),
    }
}

pub async fn create(
    State(state): State<AppState>,
    access: OrgAccess<perm::ProvidersManage>,
    Json(body): Json<ProviderInput>,
) -> Result<(StatusCode, axum::Json<Provider>), Error> {
    body.validate(true)?;
    check_environment(access.environment(), body.environment.as_deref())?;
    vet_base_url(&state, body.base_url.as_deref()).await?;
    // The caller's environment, unless it says (an unscoped user token: live by default).
    let environment = body
        .environment
        .as_deref()
        .or(access.environment())
        .unwrap_or("live");
    let id = ProviderId::generate();
    let new = NewProvider {
        id: &id,
        organization_id: access.org_id(),
        // Validated above: present and one of the kinds.
        provider: body
            .provider
            .as_deref()
            .and_then(ProviderKind::parse)
            .unwrap_or(ProviderKind::Mock),
        name: body.name.as_deref().unwrap_or_default().trim(),
        base_url: body.base_url.as_deref(),
        sealed_key: body.api_key.as_ref().map(|k| {
            state
                .master_key
                .encrypt(k.expose().as_bytes(), id.as_bytes())
        }),
        models: body.models.as_deref().unwrap_or_default(),
        priority: body.priority.unwrap_or(0),
        enabled: body.enabled.unwrap_or(true),
        environment,
    };
    let event = json!({"id": id, "provider": body.provider});
    change("provider.created", &id, event, &access)
        .write(&state, &access, async |tx| store::insert(tx, new).await)
        .await?;
    let created = store::load(&state.db, access.org_id(), &id, None).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Every change of a provider is audited and drops the organization's cached providers on
/// every node.
fn change<P>(action: &'static str, id: &str, data: Value, access: &OrgAccess<P>) -> Change {
    Change::new(action, "provider", id, data)
        .invalidates(Invalidation::organization(access.org_id()))
}

pub async fn list(
    State(state): State<AppState>,
    access: OrgAccess<perm::ProvidersManage>,
    page: Page,
) -> Result<axum::Json<List<Provider>>, Error> {
    let list = store::list(&state.db, access.org_id(), access.environment(), &page).await?;
    Ok(axum::Json(list))
}

pub async fn get(
    State(state): State<AppState>,
    access: OrgAccess<perm::ProvidersManage>,
    Path((_, id)): Path<(String, ProviderId)>,
) -> Result<axum::Json<Provider>, Error> {
    Ok(axum::Json(
        store::load(&state.db, access.org_id(), &id, access.environment()).await?,
    ))
}

pub async fn update(
    State(state): State<AppState>,
    access: OrgAccess<perm::ProvidersManage>,
    Path((_, id)): Path<(String, ProviderId)>,
    Json(body): Json<ProviderInput>,
) -> Result<axum::Json<Provider>, Error> {
    body.validate(false)?;
    let stored = store::load(&state.db, access.org_id(), &id, access.environment()).await?;
    check_environment(access.environment(), body.environment.as_deref())?;
    let moved = body
        .base_url
        .as_ref()
        .is_some_and(|u| stored.base_url.as_ref() != Some(u));
    if moved && stored.api_key_set && body.api_key.is_none() {
        return Err(Error::invalid_field(
            "api_key",
            "must be given again when base_url changes (the stored key is not sent to a new host)",
        ));
    }
    vet_base_url(&state, body.base_url.as_deref()).await?;
    let patch = ProviderPatch {
        name: body.name.map(|v| v.trim().to_string()),
        sealed_key: body.api_key.map(|k| {
            state
                .master_key
                .encrypt(k.expose().as_bytes(), id.as_bytes())
        }),
        base_url: body.base_url,
        models: body.models,
        priority: body.priority,
        enabled: body.enabled,
        environment: body.environment,
    };
    change("provider.updated", &id, json!({"id": id}), &access)
        .write(&state, &access, async |tx| {
            store::update(tx, &id, patch).await
        })
        .await?;
    Ok(axum::Json(
        store::load(&state.db, access.org_id(), &id, None).await?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    access: OrgAccess<perm::ProvidersManage>,
    Path((_, id)): Path<(String, ProviderId)>,
) -> Result<StatusCode, Error> {
    let (org_id, env) = (access.org_id(), access.environment());
    change("provider.deleted", &id, json!({"id": id}), &access)
        .write(&state, &access, async |tx| {
            store::delete(tx, org_id, &id, env).await
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_and_its_credential_never_print_the_key() {
        for kind in ProviderKind::ALL {
            let key = Secret::from("sk-live-0123456789abcdef");
            let upstream = Upstream {
                id: "prv_1".into(),
                provider: kind,
                name: "main".into(),
                base_url: Some("https://api.example.com".into()),
                credential: Some(credential(kind, &key)),
                models: vec!["gpt-4o".into()],
            };
            for shown in [
                format!("{upstream:?}"),
                format!("{:?}", upstream.credential),
                format!("{key:?} {key}"),
            ] {
                assert!(!shown.contains("0123456789abcdef"), "{kind}: {shown}");
            }
            // The key still reaches the provider, in the provider's own header.
            let Some(Credential::Header(_, value)) = &upstream.credential else {
                panic!("{kind}: no header credential");
            };
            assert!(value.is_sensitive());
            assert!(value
                .to_str()
                .unwrap()
                .ends_with("sk-live-0123456789abcdef"));
        }
    }

    #[test]
    fn a_provider_body_never_prints_its_key() {
        let body: ProviderInput = serde_json::from_str(
            r#"{"provider":"openai","name":"main","api_key":"sk-body-secret-42"}"#,
        )
        .unwrap();
        assert!(!format!("{body:?}").contains("sk-body-secret-42"));
        assert!(body.validate(true).is_ok());
        let empty: ProviderInput = serde_json::from_str(r#"{"api_key":""}"#).unwrap();
        assert!(empty.validate(false).is_err());
    }
}
