//! `/platform/api/global/…`: sign-in answering `global_access_token` (an unscoped access
//! token, beside `access_token`), `select-tenant` and `switch-environment` answering
//! `scoped_access_token` (a token whose claims carry the tenant, role and environment), and the
//! tenants (= organizations) of the caller. Bodies are the `/v1` routes' bodies.

use axum::extract::State;
use axum::http::StatusCode;

use super::{alias, items, reshape, Reshaped};
use crate::{
    app::AppState,
    auth::{
        extract::AuthUser,
        routes::{self as v1, LoginRequest},
    },
    error::Error,
    http::{
        extract::{Json, Query},
        openapi::Output,
        pagination::Page,
        request_meta::RequestMeta,
        routes::Routes,
    },
    orgs::{access::OrgCreator, organizations},
};

pub fn routes() -> Routes {
    const AUTH: &str = "/platform/api/global/auth";
    Routes::new()
        .post(&format!("{AUTH}/register"), register)
        .post(&format!("{AUTH}/login"), login)
        .post(&format!("{AUTH}/otp/request"), otp_request)
        .post(&format!("{AUTH}/otp/verify"), otp_verify)
        .post(&format!("{AUTH}/forgot-password"), forgot_password)
        .post(&format!("{AUTH}/reset-password"), reset_password)
        .put(&format!("{AUTH}/password"), change_password)
        .post(&format!("{AUTH}/select-tenant"), select_tenant)
        .get(&format!("{AUTH}/me"), me)
        .post(
            "/platform/api/service/auth/switch-environment",
            switch_environment,
        )
        .post("/platform/api/global/tenants", create_tenant)
        .get("/platform/api/global/tenants", list_tenants)
        .get(
            "/platform/api/global/tenants/check-availability",
            check_availability,
        )
}

const GLOBAL: fn(&mut serde_json::Value) = |v| alias("access_token", "global_access_token")(v);
const SCOPED: fn(&mut serde_json::Value) = |v| alias("access_token", "scoped_access_token")(v);

async fn register(
    state: State<AppState>,
    meta: RequestMeta,
    body: Json<v1::RegisterRequest>,
) -> Reshaped<impl Output> {
    reshape(v1::register(state, meta, body).await, GLOBAL).await
}

async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<LoginRequest>,
) -> Result<Reshaped<impl Output>, Error> {
    let answer = v1::login_answer(&state, &meta, &body).await?;
    Ok(reshape(axum::Json(answer), GLOBAL).await)
}

async fn otp_request(
    state: State<AppState>,
    body: Json<v1::EmailOnly>,
) -> Result<(axum::http::StatusCode, axum::Json<v1::Accepted>), Error> {
    v1::otp_request(state, body).await
}

async fn otp_verify(
    state: State<AppState>,
    meta: RequestMeta,
    body: Json<v1::EmailCode>,
) -> Reshaped<impl Output> {
    reshape(v1::otp_verify(state, meta, body).await, GLOBAL).await
}

async fn forgot_password(
    state: State<AppState>,
    body: Json<v1::EmailOnly>,
) -> Result<(axum::http::StatusCode, axum::Json<v1::Accepted>), Error> {
    v1::forgot_password(state, body).await
}

async fn reset_password(
    state: State<AppState>,
    meta: RequestMeta,
    body: Json<v1::ResetPassword>,
) -> Result<StatusCode, Error> {
    v1::reset_password(state, meta, body).await
}

async fn change_password(
    state: State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    body: Json<v1::ChangePassword>,
) -> Result<StatusCode, Error> {
    v1::change_password(state, auth, meta, body).await
}

async fn select_tenant(
    state: State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    body: Json<v1::SelectTenant>,
) -> Reshaped<impl Output> {
    reshape(v1::select_tenant(state, auth, meta, body).await, SCOPED).await
}

async fn switch_environment(
    state: State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    body: Json<v1::SwitchEnvironment>,
) -> Reshaped<impl Output> {
    reshape(
        v1::switch_environment(state, auth, meta, body).await,
        SCOPED,
    )
    .await
}

async fn me(auth: AuthUser) -> axum::Json<crate::auth::users::User> {
    v1::me(auth).await
}

async fn create_tenant(
    state: State<AppState>,
    creator: OrgCreator,
    meta: RequestMeta,
    body: Json<organizations::CreateOrganization>,
) -> Result<
    (
        StatusCode,
        axum::Json<crate::orgs::organizations::Organization>,
    ),
    Error,
> {
    organizations::create(state, creator, meta, body).await
}

async fn list_tenants(state: State<AppState>, auth: AuthUser, page: Page) -> Reshaped<impl Output> {
    reshape(
        organizations::list_mine(state, auth, page).await,
        items("organizations"),
    )
    .await
}

async fn check_availability(
    state: State<AppState>,
    query: Query<organizations::SlugQuery>,
) -> Result<axum::Json<organizations::SlugAvailability>, Error> {
    organizations::check_availability(state, query).await
}
