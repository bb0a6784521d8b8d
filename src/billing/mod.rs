//! Plans and usage (SPEC §6): the plan catalogue (`GET /v1/plans`, `/v1/admin/plans`), kept in
//! memory so that the request path never queries it, and an organization's usage against its
//! plan (`GET /v1/organizations/{org_id}/usage`); [`subscriptions`]: an organization's
//! subscription, which sets its plan; [`invoices`]: the invoice of each closed subscription
//! period; [`thresholds`]: the 80 % / 100 % usage warnings. The queries are in [`store`] (plans, an organization's
//! plan and counts) and [`subscriptions::store`]; the handlers here extract, validate, call a
//! store and respond, and every change of the catalogue is written through
//! [`Change`](crate::events::Change) (audited as the admin, then every
//! node reloads its catalogue).

pub mod invoices;
pub mod payments;
pub mod pdf;
pub mod store;
pub mod subscriptions;
pub mod thresholds;

pub use store::{BillingInterval, Plan};

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{extract::State, http::StatusCode};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{
    app::AppState,
    auth::extract::{AuthUser, PlatformAdmin},
    error::{Error, FieldError},
    http::{
        extract::{Json, Path},
        pagination::{List, Page},
        request_meta::RequestMeta,
        routes::Routes,
    },
    orgs::{access::OrgAccess, roles::perm},
    storage::Db,
};

/// The numeric limits every plan states (`null` = unlimited), in the order shown.
pub const LIMIT_NAMES: &[&str] = &[
    "requests_per_hour",
    "api_requests_per_month",
    "gateway_requests_per_month",
    "gateway_tokens_per_month",
    "members",
    "projects",
];

/// The limits whose usage beyond them may be billed (`overage_prices` keys): every quantity,
/// not the hourly rate limit.
pub const BILLABLE_LIMITS: &[&str] = &[
    "api_requests_per_month",
    "gateway_requests_per_month",
    "gateway_tokens_per_month",
    "members",
    "projects",
];

/// The metered quantities of a period: (usage name, plan limit, meter metric).
pub const METERED: &[(&str, &str, &str)] = &[
    ("api_requests", "api_requests_per_month", "api_requests"),
    (
        "gateway_requests",
        "gateway_requests_per_month",
        "gateway_requests",
    ),
    (
        "gateway_tokens",
        "gateway_tokens_per_month",
        "gateway_tokens",
    ),
];

/// The plan of an organization whose plan is missing from the catalogue.
pub const DEFAULT_PLAN: &str = "smb";

/// The catalogue in memory: loaded at start, reloaded after every admin change on this node and
/// every [`REFRESH_EVERY`] (other nodes' changes).
#[derive(Debug, Default)]
pub struct PlanCatalogue {
    plans: RwLock<Arc<BTreeMap<String, Arc<Plan>>>>,
}

pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

impl PlanCatalogue {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn load(db: &Db) -> Result<PlanCatalogue, sqlx::Error> {
        let c = PlanCatalogue::new();
        c.reload(db).await?;
        Ok(c)
    }

    pub async fn reload(&self, db: &Db) -> Result<(), sqlx::Error> {
        let map: BTreeMap<_, _> = store::plans(db)
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), Arc::new(p)))
            .collect();
        *self.plans.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(())
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Plan>>> {
        self.plans.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The plan, or the default plan when `id` is unknown.
    pub fn get(&self, id: &str) -> Option<Arc<Plan>> {
        let s = self.snapshot();
        s.get(id).or_else(|| s.get(DEFAULT_PLAN)).cloned()
    }

    /// Every plan, cheapest first.
    pub fn all(&self) -> Vec<Arc<Plan>> {
        let mut v: Vec<_> = self.snapshot().values().cloned().collect();
        v.sort_by(|a, b| {
            a.fields
                .amount
                .cmp(&b.fields.amount)
                .then_with(|| a.id.cmp(&b.id))
        });
        v
    }

    /// Reloads every `every` until the process ends (a failure is logged and retried).
    pub fn spawn_refresher(self: &Arc<Self>, db: Db, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = me.reload(&db).await {
                    tracing::warn!(error = %e, "could not reload the plan catalogue");
                }
            }
        });
    }
}

pub fn routes() -> Routes {
    const S: &str = "/v1/organizations/{org_id}/subscription";
    const PLANS: &str = "/v1/admin/plans";
    const PLAN: &str = "/v1/admin/plans/{id}";
    Routes::new()
        .get("/v1/organizations/{org_id}/usage", usage)
        .get(S, subscriptions::get)
        .post(S, subscriptions::create)
        .patch(S, subscriptions::update)
        .delete(S, subscriptions::cancel)
        .get("/v1/plans", list_plans)
        .get(PLANS, admin_list)
        .post(PLANS, admin_create)
        .get(PLAN, admin_get)
        .patch(PLAN, admin_update)
        .delete(PLAN, admin_delete)
        .merge(invoices::routes())
}

fn list_body(plans: Vec<Arc<Plan>>, page: &Page) -> List<Plan> {
    let plans = plans.iter().map(|p| p.as_ref().clone()).collect();
    List::slice("plans", plans, page)
}

pub(crate) async fn list_plans(
    State(state): State<AppState>,
    _user: AuthUser,
    page: Page,
) -> Result<axum::Json<List<Plan>>, Error> {
    Ok(axum::Json(list_body(state.plans.all(), &page)))
}

async fn admin_list(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    page: Page,
) -> Result<axum::Json<List<Plan>>, Error> {
    Ok(axum::Json(list_body(state.plans.all(), &page)))
}

async fn admin_get(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
    Path(id): Path<String>,
) -> Result<axum::Json<Plan>, Error> {
    Ok(axum::Json(store::plan(&state.db, &id).await?))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct PlanInput {
    id: Option<String>,
    name: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    interval: Option<String>,
    limits: Option<Value>,
    features: Option<Value>,
    overage_prices: Option<Value>,
}

fn valid_id(id: &str) -> bool {
    (1..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks each given field; with `creating`, every field is required.
fn validate(input: &PlanInput, creating: bool) -> Result<(), Error> {
    let mut errors = Vec::new();
    let mut missing = |field: &str, present: bool| {
        if creating && !present {
            errors.push(FieldError::new(field, "is required"));
        }
    };
    missing("id", input.id.is_some());
    missing("name", input.name.is_some());
    missing("amount", input.amount.is_some());
    missing("currency", input.currency.is_some());
    missing("interval", input.interval.is_some());
    missing("limits", input.limits.is_some());
    if let Some(id) = &input.id {
        if !valid_id(id) {
            errors.push(FieldError::new(
                "id",
                "must be 1 to 40 lowercase letters, digits, '-' or '_'",
            ));
        }
    }
    if let Some(name) = &input.name {
        if name.trim().is_empty() || name.len() > 100 {
            errors.push(FieldError::new("name", "must be 1 to 100 characters"));
        }
    }
    if let Some(amount) = input.amount {
        if amount < 0 {
            errors.push(FieldError::new(
                "amount",
                "must be zero or more (minor units)",
            ));
        }
    }
    if let Some(c) = &input.currency {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_lowercase()) {
            errors.push(FieldError::new(
                "currency",
                "must be a lowercase ISO 4217 code, e.g. usd",
            ));
        }
    }
    if let Some(i) = &input.interval {
        if BillingInterval::parse(i).is_none() {
            errors.push(FieldError::new("interval", "must be month or year"));
        }
    }
    if let Some(limits) = &input.limits {
        match limits.as_object() {
            None => errors.push(FieldError::new("limits", "must be an object")),
            Some(map) => {
                for (k, v) in map {
                    if !LIMIT_NAMES.contains(&k.as_str()) {
                        errors.push(FieldError::new(
                            format!("limits.{k}"),
                            format!("unknown limit; known: {}", LIMIT_NAMES.join(", ")),
                        ));
                    } else if !(v.is_null() || v.as_u64().is_some()) {
                        errors.push(FieldError::new(
                            format!("limits.{k}"),
                            "must be a non-negative integer or null (unlimited)",
                        ));
                    }
                }
                if creating {
                    for name in LIMIT_NAMES {
                        if !map.contains_key(*name) {
                            errors.push(FieldError::new(
                                format!("limits.{name}"),
                                "is required (null for unlimited)",
                            ));
                        }
                    }
                }
            }
        }
    }
    if let Some(f) = &input.features {
        if !f.is_object() {
            errors.push(FieldError::new("features", "must be an object"));
        }
    }
    if let Some(prices) = &input.overage_prices {
        if !prices.is_object() {
            errors.push(FieldError::new("overage_prices", "must be an object"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(errors))
    }
}

/// Checks a plan's whole `overage_prices` against its whole `limits`: each key a billable
/// limit the plan sets to a number, each price `{"per": units ≥ 1, "amount": minor units ≥ 0}`.
fn validate_overage_prices(prices: &Map<String, Value>, limits: &Value) -> Result<(), Error> {
    let mut errors = Vec::new();
    for (k, v) in prices {
        let field = format!("overage_prices.{k}");
        if !BILLABLE_LIMITS.contains(&k.as_str()) {
            errors.push(FieldError::new(
                field,
                format!(
                    "not a billable limit; one of {}",
                    BILLABLE_LIMITS.join(", ")
                ),
            ));
            continue;
        }
        if limits.get(k).and_then(Value::as_u64).is_none() {
            errors.push(FieldError::new(
                field,
                "the plan's limits set no number for this key (unlimited usage has no overage)",
            ));
            continue;
        }
        let ok = v.as_object().is_some_and(|o| {
            o.len() == 2
                && o.get("per")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| (1..=1_000_000_000_000).contains(&n))
                && o.get("amount")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| n <= 1_000_000_000)
        });
        if !ok {
            errors.push(FieldError::new(
                field,
                "must be {\"per\": units (1 to 10^12), \"amount\": minor units (0 to 10^9)}",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(errors))
    }
}

/// `current` (an object) with `patch`'s keys set, and those `patch` sets to null removed.
fn merge_removing_nulls(current: &Value, patch: Option<&Value>) -> Map<String, Value> {
    let mut merged = current.as_object().cloned().unwrap_or_default();
    if let Some(Value::Object(m)) = patch {
        for (k, v) in m {
            if v.is_null() {
                merged.remove(k);
            } else {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    merged
}

/// A change of the catalogue: audited as the admin, then every node reloads its catalogue (this
/// one at once, before it answers).
fn plan_change(
    admin: &PlatformAdmin,
    meta: &RequestMeta,
    action: &str,
    id: &str,
    data: Value,
) -> (crate::events::Change, crate::events::ActorContext) {
    (
        crate::events::Change::new(action, "plan", id, data)
            .invalidates(crate::events::Invalidation::Plans),
        admin.context(meta),
    )
}

async fn admin_create(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Json(input): Json<PlanInput>,
) -> Result<(StatusCode, axum::Json<Plan>), Error> {
    validate(&input, true)?;
    let id = input.id.clone().unwrap_or_default();
    let fields = store::PlanFields {
        name: input.name.as_deref().unwrap_or_default().trim().to_string(),
        amount: input.amount.unwrap_or_default(),
        currency: input.currency.clone().unwrap_or_default(),
        interval: input
            .interval
            .as_deref()
            .and_then(BillingInterval::parse)
            .unwrap_or(BillingInterval::Month),
        limits: input.limits.clone().unwrap_or_else(|| json!({})),
        features: input.features.clone().unwrap_or_else(|| json!({})),
        overage_prices: input.overage_prices.clone().unwrap_or_else(|| json!({})),
    };
    if let Some(prices) = fields.overage_prices.as_object() {
        validate_overage_prices(prices, &fields.limits)?;
    }
    let data = json!({"id": id, "limits": input.limits, "amount": input.amount,
                      "overage_prices": fields.overage_prices});
    let (change, by) = plan_change(&admin, &meta, "plan.created", &id, data);
    change
        .write(&state, &by, async |tx| {
            store::insert_plan(tx, &id, &fields).await
        })
        .await?;
    state.plans.reload(&state.db).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(store::plan(&state.db, &id).await?),
    ))
}

async fn admin_update(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<String>,
    Json(input): Json<PlanInput>,
) -> Result<axum::Json<Plan>, Error> {
    if input.id.as_deref().is_some_and(|new| new != id) {
        return Err(Error::invalid_field("id", "cannot be changed"));
    }
    validate(&input, false)?;
    let current = store::plan(&state.db, &id).await?;
    // `limits` and `features` are merged into the current objects (null removes a feature).
    let mut limits = current
        .fields
        .limits
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Object(m)) = &input.limits {
        limits.extend(m.clone());
    }
    // `features` and `overage_prices` are merged key by key (null removes one).
    let features = merge_removing_nulls(&current.fields.features, input.features.as_ref());
    let prices = merge_removing_nulls(
        &current.fields.overage_prices,
        input.overage_prices.as_ref(),
    );
    let limits = Value::Object(limits);
    validate_overage_prices(&prices, &limits)?;
    let fields = store::PlanFields {
        name: input
            .name
            .as_deref()
            .map(str::trim)
            .unwrap_or(&current.fields.name)
            .to_string(),
        amount: input.amount.unwrap_or(current.fields.amount),
        currency: input.currency.unwrap_or(current.fields.currency),
        interval: input
            .interval
            .as_deref()
            .and_then(BillingInterval::parse)
            .unwrap_or(current.fields.interval),
        limits,
        features: Value::Object(features),
        overage_prices: Value::Object(prices),
    };
    let data = json!({"id": id, "previous_limits": current.fields.limits, "limits": fields.limits,
                      "overage_prices": fields.overage_prices});
    let (change, by) = plan_change(&admin, &meta, "plan.updated", &id, data);
    change
        .write(&state, &by, async |tx| {
            store::update_plan(tx, &id, &fields).await
        })
        .await?;
    state.plans.reload(&state.db).await?;
    Ok(axum::Json(store::plan(&state.db, &id).await?))
}

async fn admin_delete(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    meta: RequestMeta,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    store::plan(&state.db, &id).await?;
    if id == DEFAULT_PLAN {
        return Err(Error::conflict("The default plan (smb) cannot be deleted"));
    }
    let used = store::organizations_on_plan(&state.db, &id).await?;
    if used > 0 {
        return Err(Error::conflict(format!(
            "{used} organization(s) are on this plan; move them first"
        )));
    }
    let (change, by) = plan_change(&admin, &meta, "plan.deleted", &id, json!({"id": id}));
    change
        .write(&state, &by, async |tx| store::delete_plan(tx, &id).await)
        .await?;
    state.plans.reload(&state.db).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How `GET …/usage` shows a period: a calendar month as dates, end inclusive (seed 000); a
/// billing cycle as its start and end times (RFC 3339, end excluded: the next cycle's start).
pub fn period_document(p: &crate::limits::usage::UsagePeriod) -> PeriodDocument {
    if p.calendar {
        let last = p.end - chrono::Duration::days(1);
        PeriodDocument {
            start: p.start.date_naive().to_string(),
            end: last.date_naive().to_string(),
        }
    } else {
        let t = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        PeriodDocument {
            start: t(p.start),
            end: t(p.end),
        }
    }
}

async fn usage(
    State(state): State<AppState>,
    access: OrgAccess<perm::UsageRead>,
) -> Result<axum::Json<UsageDocument>, Error> {
    Ok(axum::Json(usage_document(&state, access.org_id()).await?))
}

/// One metered quantity of an organization's current period: its name in `GET …/usage`, the
/// plan's limit (`None`: unlimited) and what was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    pub name: &'static str,
    pub limit: Option<u64>,
    pub used: u64,
}

/// An organization's usage in its current period: what `GET …/usage` shows and the threshold
/// warnings ([`thresholds`]) compare, read from the counters the period's invoice reads.
#[derive(Debug, Clone)]
pub struct PeriodUsage {
    pub plan: String,
    pub period: crate::limits::usage::UsagePeriod,
    pub quantities: Vec<Quantity>,
}

/// Millionths of a USD (the gateway's cost counter) in cents, rounded half up.
pub fn micros_to_cents(micros: u64) -> u64 {
    micros.saturating_add(5_000) / 10_000
}

/// The organization's usage this period against its plan's limits.
pub async fn period_usage(state: &AppState, org_id: &str) -> Result<PeriodUsage, Error> {
    use crate::limits::usage::Counter;
    let plan_id = store::organization_plan(&state.db, org_id).await?;
    let plan = state.plans.get(&plan_id);
    let limit = |name: &str| plan.as_ref().and_then(|p| p.limit(name));
    // The same counters the invoice of this period will read (limits::usage).
    let period = state.usage.period(org_id).await?;
    let counter = |metric: &str| Counter::new(org_id, metric, period.key.as_str());
    let mut quantities = Vec::with_capacity(METERED.len() + 3);
    for (name, limit_name, metric) in METERED {
        quantities.push(Quantity {
            name,
            limit: limit(limit_name),
            used: state.usage.current(&counter(metric)).await?,
        });
    }
    // Gateway cost: the price table is in USD; shown in its minor units (cents). No plan
    // limits it.
    let micros = state
        .usage
        .current(&counter(crate::limits::middleware::GATEWAY_COST_MICROS))
        .await?;
    quantities.push(Quantity {
        name: "gateway_cost",
        limit: None,
        used: micros_to_cents(micros),
    });
    let (members, projects) = store::member_and_project_counts(&state.db, org_id).await?;
    quantities.push(Quantity {
        name: "members",
        limit: limit("members"),
        used: members.max(0) as u64,
    });
    quantities.push(Quantity {
        name: "projects",
        limit: limit("projects"),
        used: projects.max(0) as u64,
    });
    Ok(PeriodUsage {
        plan: plan_id,
        period,
        quantities,
    })
}

/// An organization's usage this period against its plan's limits (the `…/usage` body; also in
/// the platform admin's organization detail).
pub async fn usage_document(state: &AppState, org_id: &str) -> Result<UsageDocument, Error> {
    let usage = period_usage(state, org_id).await?;
    Ok(UsageDocument {
        organization_id: org_id.to_string(),
        plan: usage.plan,
        period: period_document(&usage.period),
        quantities: usage
            .quantities
            .iter()
            .map(|q| {
                (
                    q.name,
                    Used {
                        limit: q.limit,
                        used: q.used,
                    },
                )
            })
            .collect(),
    })
}

/// `GET …/usage`: the current period and, per metered quantity (`api_requests`,
/// `gateway_requests`, `gateway_tokens`, `gateway_cost` in cents, `members`, `projects`), the
/// plan's limit and what was used.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct UsageDocument {
    organization_id: String,
    plan: String,
    period: PeriodDocument,
    #[serde(flatten)]
    quantities: std::collections::BTreeMap<&'static str, Used>,
}

/// One metered quantity: the plan's limit (`null`: unlimited) and what was used.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Used {
    limit: Option<u64>,
    used: u64,
}

/// A usage period: a calendar month as dates (`YYYY-MM-DD`, end inclusive), or a billing
/// cycle as RFC 3339 times (end excluded).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PeriodDocument {
    pub start: String,
    pub end: String,
}

/// Refuses with 429 `quota_exceeded` when an organization already has as many `what` (members,
/// projects) as its plan allows (`limit_name` in the plan's `limits`; absent = unlimited).
pub async fn check_count_quota(
    state: &AppState,
    org_id: &str,
    limit_name: &str,
    what: &str,
    current: i64,
) -> Result<(), Error> {
    let plan_id = store::organization_plan(&state.db, org_id).await?;
    // A limit with an overage price is billed beyond (on the period's invoice), not refused.
    let Some(limit) = state
        .plans
        .get(&plan_id)
        .and_then(|p| p.hard_limit(limit_name))
    else {
        return Ok(());
    };
    if current as u64 >= limit {
        return Err(Error::new(
            crate::error::ErrorCode::QuotaExceeded,
            format!("The {plan_id} plan allows {limit} {what}; upgrade the plan to add more"),
        ));
    }
    Ok(())
}
