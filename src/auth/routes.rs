//! `/v1/auth/*`, `/v1/me*` and `/.well-known/jwks.json` (SPEC §2). Handlers are thin: extract,
//! call the domain functions, answer.

use crate::auth::sessions::SessionView;
use crate::auth::users::User;
use axum::http::HeaderName;
use std::time::Duration;

use axum::{
    extract::State,
    http::{header, StatusCode},
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::secret::Secret;
use crate::wire::Standing;
use crate::{
    app::AppState,
    auth::{
        background::{self, BoundedSpawner},
        codes::{self, Purpose},
        extract::{tenant_of, AuthUser},
        mfa, sessions,
        users::{self, NewUser, ProfilePatch},
    },
    error::{Error, ErrorCode, FieldError},
    events::{record_security_event, Actor, ActorContext, NewEvent},
    http::{
        extract::{Json, Path},
        pagination::{List, Page},
        request_meta::RequestMeta,
        routes::Routes,
    },
    ids::UserId,
    limits::LimitSpec,
    mail::{self, Mail},
};

/// Records a security event about a user (audit only).
async fn security_event(
    state: &AppState,
    meta: &RequestMeta,
    user_id: Option<&str>,
    action: &str,
    metadata: Value,
) {
    let actor = match user_id {
        Some(id) => Actor::User(UserId(id.to_string())),
        None => Actor::System,
    };
    record_security_event(
        &state.db,
        &ActorContext::new(actor, meta.into()),
        NewEvent::new(action, "user", user_id.map(str::to_string)).metadata(metadata),
    )
    .await;
}

pub fn routes() -> Routes {
    Routes::new()
        .get("/.well-known/jwks.json", jwks)
        .post("/v1/auth/register", register)
        .post("/v1/auth/verify-email", verify_email)
        .post("/v1/auth/login", login)
        .post("/v1/auth/mfa/verify", mfa_verify)
        .post("/v1/auth/otp/request", otp_request)
        .post("/v1/auth/otp/verify", otp_verify)
        .post("/v1/auth/forgot-password", forgot_password)
        .post("/v1/auth/reset-password", reset_password)
        .put("/v1/auth/password", change_password)
        .post("/v1/auth/select-tenant", select_tenant)
        .post("/v1/auth/switch-environment", switch_environment)
        .post("/v1/auth/logout", logout)
        .get("/v1/me", me)
        .patch("/v1/me", update_me)
        .get("/v1/me/sessions", my_sessions)
        .delete("/v1/me/sessions/{id}", end_session)
        .post("/v1/me/mfa/totp", mfa_enrol)
        .post("/v1/me/mfa/totp/verify", mfa_activate)
        .delete("/v1/me/mfa", mfa_disable)
}

/// Login attempts per (IP, email): `rate_limits.login_attempts` per
/// `rate_limits.login_window_secs` (10 per 15 minutes).
fn login_limit(state: &AppState) -> (u64, Duration) {
    let c = &state.config.rate_limits;
    (c.login_attempts, Duration::from_secs(c.login_window_secs))
}

/// Reset and passwordless-code requests per email: `rate_limits.password_reset_per_hour` (3).
fn mail_limit(state: &AppState) -> (u64, Duration) {
    (
        state.config.rate_limits.password_reset_per_hour,
        Duration::from_secs(3600),
    )
}

async fn throttle(
    state: &AppState,
    key: String,
    (limit, period): (u64, Duration),
) -> Result<(), Error> {
    let spec = [LimitSpec::new(key, limit, period)];
    let v = state.limiter.check(&spec).await?;
    if v.allowed {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::RateLimitExceeded,
            "Too many attempts; try again later",
        )
        .with_retry_after(v.retry_after_secs().unwrap_or(1)))
    }
}

fn required<'a>(value: &'a Option<String>, field: &str, errors: &mut Vec<FieldError>) -> &'a str {
    present(value.as_deref(), field, errors)
}

/// A secret field's value, or the field named as required.
fn required_secret<'a>(
    value: &'a Option<Secret>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> &'a str {
    present(value.as_ref().map(Secret::expose), field, errors)
}

fn present<'a>(value: Option<&'a str>, field: &str, errors: &mut Vec<FieldError>) -> &'a str {
    match value {
        Some(v) if !v.trim().is_empty() => v,
        _ => {
            errors.push(FieldError::new(field, "is required"));
            ""
        }
    }
}

/// `202 Accepted` with a message: the same answer whether or not the account exists.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct Accepted {
    message: &'static str,
}

fn accepted(message: &'static str) -> (StatusCode, axum::Json<Accepted>) {
    (StatusCode::ACCEPTED, axum::Json(Accepted { message }))
}

/// The public keys that verify the access tokens (RFC 7517).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct Jwks {
    /// One public JWK per published signing key (`kty`, `kid`, `alg`, `use` and the key's
    /// public parameters).
    keys: Vec<Value>,
}

async fn jwks(
    State(state): State<AppState>,
) -> ([(HeaderName, &'static str); 1], axum::Json<Jwks>) {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(Jwks {
            keys: state.keys.jwks(),
        }),
    )
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    email: String,
    password: Secret,
    #[serde(default)]
    name: String,
    /// Registers and joins the organization that sent this invitation (the email must match).
    #[serde(default)]
    invitation_token: Option<String>,
}

pub(crate) async fn register(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<RegisterRequest>,
) -> Result<(StatusCode, axum::Json<SignedIn>), Error> {
    // With signups closed (the platform's `signup_open`), only an invitation opens an account:
    // an organization asked for this person.
    if body.invitation_token.is_none() && !state.platform.current().signup_open {
        return Err(Error::forbidden(
            "Registration is closed on this platform; ask an organization admin for an invitation and register with its invitation_token",
        ));
    }
    // An invitation is checked before the account exists, so a bad token creates nothing.
    if let Some(token) = &body.invitation_token {
        let (_, _, invited, _) = crate::orgs::members::find_invitation(&state.db, token).await?;
        if users::fold_email(&invited) != users::fold_email(&body.email) {
            return Err(Error::invalid_field(
                "invitation_token",
                "was sent to another email address",
            ));
        }
    }
    let user = users::create(
        &state.db,
        &ActorContext::new(Actor::System, (&meta).into()),
        NewUser::signing_up(
            &body.email,
            body.name.trim(),
            body.password.expose(),
            // The invitation came by email: the address is proven.
            body.invitation_token.is_some(),
        ),
    )
    .await?;
    let membership = match &body.invitation_token {
        Some(token) => {
            let ctx = crate::events::ActorContext::new(
                crate::events::Actor::User(user.id.clone()),
                (&meta).into(),
            );
            Some(
                crate::orgs::members::accept(&state, &ctx, token, &user.id, &user.email, None)
                    .await?,
            )
        }
        None => None,
    };
    if !user.email_verified {
        let code = codes::issue_code(&state, &user.id, Purpose::VerifyEmail).await?;
        // The console's page that sends the code (`/verify-email`, console/js/auth.js).
        let email: String = url::form_urlencoded::byte_serialize(user.email.as_bytes()).collect();
        let link = state
            .config
            .link(&format!("/verify-email?email={email}&code={code}"));
        mail::send_later(
            &state.mailer,
            Mail {
                to: user.email.clone(),
                subject: "Verify your email address".into(),
                body: format!(
                    "Your Gatehouse verification code is {code}.\nIt expires in {} minutes. Verify in the console: {link}\nIf you did not create this account, ignore this email.\n",
                    codes::CODE_TTL_MINUTES
                ),
            },
        );
    }
    let mut body = signed_in(&state, &user.id, &meta).await?;
    body.membership = membership;
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// The answer of every route that signs a user in (register, password login, MFA and emailed
/// code completions): a new session's tokens and the user, as `GET /v1/me` shows them.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct SignedIn {
    #[serde(flatten)]
    tokens: sessions::Tokens,
    user: User,
    /// Registering with an `invitation_token`: the membership it made.
    #[serde(skip_serializing_if = "Option::is_none")]
    membership: Option<crate::orgs::members::Membership>,
}

async fn signed_in(
    state: &AppState,
    user_id: &UserId,
    meta: &RequestMeta,
) -> Result<SignedIn, Error> {
    let tokens = sessions::start(state, user_id, meta).await?;
    let user = users::get(&state.db, user_id)
        .await?
        .ok_or_else(|| Error::unauthorized("The account no longer exists"))?;
    Ok(SignedIn {
        tokens,
        user,
        membership: None,
    })
}

/// What a login route answers (SPEC §2): a new session's tokens and the user, a refreshed
/// session's tokens (`grant_type: refresh_token`), or, with MFA on, the challenge that
/// `POST /v1/auth/mfa/verify` completes.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub(crate) enum LoginAnswer {
    SignedIn(Box<SignedIn>),
    Refreshed(sessions::Tokens),
    MfaRequired(MfaChallenge),
}

/// The first factor passed and MFA is on: the second factor goes to `POST /v1/auth/mfa/verify`
/// with this token.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct MfaChallenge {
    /// Always `true`.
    mfa_required: bool,
    mfa_token: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmailCode {
    email: String,
    code: String,
}

/// The account a valid emailed code belongs to (the code is spent); an unknown email gets the
/// same answer as a wrong code, after the same statements.
async fn spend_code(
    state: &AppState,
    body: &EmailCode,
    purpose: Purpose,
) -> Result<users::Credentials, Error> {
    let email = users::normalize_email(&body.email)?;
    let user = users::credentials_by_email(&state.db, &email).await?;
    codes::consume_code(
        state,
        user.as_ref().map(|u| u.id.as_str()),
        purpose,
        &body.code,
    )
    .await?;
    user.ok_or_else(|| Error::unauthorized("The code is invalid or expired"))
}

/// `POST /v1/auth/verify-email`: the address verified.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct EmailVerified {
    email: String,
    /// Always `true`.
    email_verified: bool,
}

async fn verify_email(
    State(state): State<AppState>,
    Json(body): Json<EmailCode>,
) -> Result<axum::Json<EmailVerified>, Error> {
    let user = spend_code(&state, &body, Purpose::VerifyEmail).await?;
    users::mark_email_verified(&state.db, &user.id).await?;
    Ok(axum::Json(EmailVerified {
        email: user.email,
        email_verified: true,
    }))
}

/// The login body of `/v1/auth/login` and of the seed adapters (`grantType`/`refreshToken`
/// are accepted beside the snake_case names).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    #[serde(default, alias = "grantType")]
    grant_type: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default, alias = "refreshToken")]
    refresh_token: Option<Secret>,
}

async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<LoginRequest>,
) -> Result<axum::Json<LoginAnswer>, Error> {
    Ok(axum::Json(login_answer(&state, &meta, &body).await?))
}

/// What a login answers (SPEC §2): a refreshed session's tokens, a new session's tokens and the
/// user, or `{mfa_required, mfa_token}`. Shared by `/v1/auth/login` and the seed adapters.
pub(crate) async fn login_answer(
    state: &AppState,
    meta: &RequestMeta,
    body: &LoginRequest,
) -> Result<LoginAnswer, Error> {
    let mut errors = Vec::new();
    match body.grant_type.as_deref().unwrap_or("password") {
        "refresh_token" => {
            let token = required_secret(&body.refresh_token, "refresh_token", &mut errors);
            if !errors.is_empty() {
                return Err(Error::invalid(errors));
            }
            Ok(LoginAnswer::Refreshed(
                sessions::refresh(state, token).await?,
            ))
        }
        "password" => {
            let email = required(&body.email, "email", &mut errors).to_string();
            let password = required_secret(&body.password, "password", &mut errors);
            if !errors.is_empty() {
                return Err(Error::invalid(errors));
            }
            let email = users::normalize_email(&email)?;
            throttle(
                state,
                format!("login:{}:{email}", meta.ip_string()),
                login_limit(state),
            )
            .await?;
            password_login(state, meta, &email, password).await
        }
        _ => Err(Error::invalid_field(
            "grant_type",
            "must be password or refresh_token",
        )),
    }
}

async fn password_login(
    state: &AppState,
    meta: &RequestMeta,
    email: &str,
    password: &str,
) -> Result<LoginAnswer, Error> {
    let account = users::credentials_by_email(&state.db, email).await?;
    let hash = account.as_ref().and_then(|a| a.password_hash.as_deref());
    // Unknown email and wrong password: the same work, the same answer.
    if !users::verify_password(password, hash).await? {
        tracing::info!(ip = %meta.ip_string(), "login failed");
        let id = account.as_ref().map(|a| a.id.as_str());
        security_event(
            state,
            meta,
            id,
            "user.login_failed",
            json!({"email": email, "method": "password"}),
        )
        .await;
        return Err(Error::unauthorized("Invalid email or password"));
    }
    let account = account.ok_or_else(|| Error::unauthorized("Invalid email or password"))?;
    if account.status != Standing::Active {
        return Err(Error::forbidden("This account is suspended"));
    }
    first_factor_passed(state, meta, &account, "password").await
}

/// The end of every login route's first factor (password, emailed code): with MFA on, the
/// answer is `{mfa_required, mfa_token}` and only `/v1/auth/mfa/verify` starts the session.
async fn first_factor_passed(
    state: &AppState,
    meta: &RequestMeta,
    account: &users::Credentials,
    method: &str,
) -> Result<LoginAnswer, Error> {
    if account.mfa_enabled {
        let mfa_token =
            codes::issue_mfa_challenge(&state.db, &account.id, &meta.user_agent, &meta.ip_string())
                .await?;
        return Ok(LoginAnswer::MfaRequired(MfaChallenge {
            mfa_required: true,
            mfa_token,
        }));
    }
    security_event(
        state,
        meta,
        Some(&account.id),
        "user.login_succeeded",
        json!({ "method": method }),
    )
    .await;
    Ok(LoginAnswer::SignedIn(Box::new(
        signed_in(state, &account.id, meta).await?,
    )))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct MfaVerify {
    mfa_token: Secret,
    code: Secret,
}

async fn mfa_verify(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<MfaVerify>,
) -> Result<axum::Json<SignedIn>, Error> {
    // The attempt is counted on the challenge, then on the user, before the code is checked:
    // at most 5 per token and 10 per user in 15 minutes (across tokens), however many requests
    // race.
    let user_id = codes::claim_mfa_attempt(&state.db, body.mfa_token.expose()).await?;
    if !mfa::check_login_second_factor(&state, &user_id, body.code.expose()).await? {
        return Err(Error::unauthorized("The code is invalid"));
    }
    if !codes::spend_mfa_challenge(&state.db, body.mfa_token.expose()).await? {
        return Err(Error::unauthorized("The MFA token is invalid or expired"));
    }
    Ok(axum::Json(signed_in(&state, &user_id, &meta).await?))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmailOnly {
    email: String,
}

/// The places for [`after_the_answer`]'s work, shared by every server of the process.
static ACCOUNT_MAIL: std::sync::LazyLock<BoundedSpawner> =
    std::sync::LazyLock::new(|| BoundedSpawner::new(background::MAX_IN_FLIGHT));

/// Runs the per-account part of an unauthenticated "mail me a secret" request off the request
/// path. The answer leaves before the account is even looked up, so a known and an unknown
/// address cost the request the same work (normalising, the per-address throttle, this spawn)
/// and are answered alike; what only a known address costs (the secret's write, the mail)
/// happens here, after the answer. At most [`background::MAX_IN_FLIGHT`] such tasks run at
/// once; beyond that the work is dropped with a warning (the answer is the same either way).
fn after_the_answer<F>(what: &'static str, work: F)
where
    F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    ACCOUNT_MAIL.spawn(what, work);
}

/// Passwordless login, step 1: always 202, whether or not the account exists.
pub(crate) async fn otp_request(
    State(state): State<AppState>,
    Json(body): Json<EmailOnly>,
) -> Result<(StatusCode, axum::Json<Accepted>), Error> {
    let email = users::normalize_email(&body.email)?;
    throttle(&state, format!("otp:{email}"), mail_limit(&state)).await?;
    after_the_answer("sign-in code", async move {
        let Some(user) = users::credentials_by_email(&state.db, &email)
            .await?
            .filter(|u| u.status == Standing::Active)
        else {
            return Ok(());
        };
        let code = codes::issue_code(&state, &user.id, Purpose::Login).await?;
        mail::send_later(
            &state.mailer,
            Mail {
                to: user.email,
                subject: "Your sign-in code".into(),
                body: format!(
                    "Your Gatehouse sign-in code is {code}.\nIt expires in {} minutes. If you did not ask for it, ignore this email.\n",
                    codes::CODE_TTL_MINUTES
                ),
            },
        );
        Ok(())
    });
    Ok(accepted(
        "If an account exists for this email, a sign-in code has been sent.",
    ))
}

/// Records that a first proof of an address took the account back from whoever registered it.
async fn proof_event(state: &AppState, meta: &RequestMeta, user_id: &str, proof: &str) {
    security_event(
        state,
        meta,
        Some(user_id),
        "user.email_proven",
        json!({"proof": proof, "password_dropped": true, "sessions_ended": true}),
    )
    .await;
}

pub(crate) async fn otp_verify(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<EmailCode>,
) -> Result<axum::Json<LoginAnswer>, Error> {
    let mut user = spend_code(&state, &body, Purpose::Login).await?;
    if user.status != Standing::Active {
        return Err(Error::forbidden("This account is suspended"));
    }
    // The code came by email: the address is proven. If it was not before, the password and
    // second factor set before, and every session of the account, end here.
    if users::prove_email(&state.db, &user.id, None).await? {
        proof_event(&state, &meta, &user.id, "login_code").await;
        user.mfa_enabled = false;
    }
    // MFA applies to this login route as to the password.
    Ok(axum::Json(
        first_factor_passed(&state, &meta, &user, "email_code").await?,
    ))
}

pub(crate) async fn forgot_password(
    State(state): State<AppState>,
    Json(body): Json<EmailOnly>,
) -> Result<(StatusCode, axum::Json<Accepted>), Error> {
    let email = users::normalize_email(&body.email)?;
    throttle(&state, format!("reset:{email}"), mail_limit(&state)).await?;
    after_the_answer("password reset", async move {
        let Some(user) = users::credentials_by_email(&state.db, &email)
            .await?
            .filter(|u| u.status == Standing::Active)
        else {
            return Ok(());
        };
        let token = codes::issue_reset_token(&state.db, &user.id).await?;
        let link = state.config.link(&format!("/reset-password?token={token}"));
        let minutes = codes::RESET_TTL_MINUTES;
        let body = format!(
            "Reset your Gatehouse password within {minutes} minutes with this token:\n\n{token}\n\nor open {link}\n\nIf you did not ask for it, ignore this email.\n"
        );
        mail::send_later(
            &state.mailer,
            Mail::new(user.email, "Reset your password", body),
        );
        Ok(())
    });
    Ok(accepted(
        "If an account exists for this email, a reset link has been sent.",
    ))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetPassword {
    token: Secret,
    new_password: Secret,
}

pub(crate) async fn reset_password(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<ResetPassword>,
) -> Result<StatusCode, Error> {
    let user_id = codes::peek_reset_token(&state.db, body.token.expose()).await?;
    let user = users::get(&state.db, &user_id).await?.ok_or_else(|| {
        Error::unauthorized("The reset token is invalid, expired or already used")
    })?;
    // Check the new password before spending the token, so a weak one can be corrected.
    crate::auth::password::check_password(body.new_password.expose(), Some(&user.email))
        .map_err(|reason| Error::invalid_field("new_password", reason))?;
    codes::consume_reset_token(&state.db, body.token.expose()).await?;
    // The token came by email: the address is proven (a password set before it was verified
    // is dropped, its sessions end), then the new password is set.
    if users::prove_email(&state.db, &user_id, None).await? {
        proof_event(&state, &meta, &user_id, "password_reset").await;
    }
    users::set_password(&state.db, &user_id, &user.email, body.new_password.expose()).await?;
    sessions::revoke_all(&state.db, &user_id, None, "password_reset").await?;
    security_event(
        &state,
        &meta,
        Some(&user_id),
        "user.password_reset",
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangePassword {
    current_password: Secret,
    new_password: Secret,
}

pub(crate) async fn change_password(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Json(body): Json<ChangePassword>,
) -> Result<StatusCode, Error> {
    let account = users::credentials_by_email(&state.db, &auth.user.email)
        .await?
        .ok_or_else(|| Error::unauthorized("The session has ended"))?;
    if !users::verify_password(
        body.current_password.expose(),
        account.password_hash.as_deref(),
    )
    .await?
    {
        return Err(Error::invalid_field(
            "current_password",
            "is not your current password",
        ));
    }
    users::set_password(
        &state.db,
        &account.id,
        &account.email,
        body.new_password.expose(),
    )
    .await?;
    sessions::revoke_all(
        &state.db,
        &account.id,
        Some(&auth.session_id),
        "password_changed",
    )
    .await?;
    security_event(
        &state,
        &meta,
        Some(&account.id),
        "user.password_changed",
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

fn parse_environment(env: Option<&str>) -> Result<&'static str, Error> {
    match env.unwrap_or("live") {
        "live" => Ok("live"),
        "test" => Ok("test"),
        _ => Err(Error::invalid_field("environment", "must be live or test")),
    }
}

/// An access token scoped to one organization (tenant), role and environment.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct ScopedToken {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds.
    expires_in: u64,
    organization_id: String,
    role: String,
    /// `live` or `test`.
    environment: String,
}

fn scoped_token(
    state: &AppState,
    auth: &AuthUser,
    tenant: &crate::auth::extract::Tenant,
) -> Result<ScopedToken, Error> {
    let mut claims = state.keys.claims(&auth.user.id, &auth.session_id);
    claims.tid = Some(tenant.organization_id.clone());
    claims.role = Some(tenant.role.clone());
    claims.env = Some(tenant.environment.clone());
    Ok(ScopedToken {
        access_token: state.keys.sign(&claims)?,
        token_type: "Bearer",
        expires_in: crate::auth::tokens::ACCESS_TTL.as_secs(),
        organization_id: tenant.organization_id.clone(),
        role: tenant.role.clone(),
        environment: tenant.environment.clone(),
    })
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelectTenant {
    organization_id: String,
    #[serde(default)]
    environment: Option<String>,
}

pub(crate) async fn select_tenant(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Json(body): Json<SelectTenant>,
) -> Result<axum::Json<ScopedToken>, Error> {
    let env = parse_environment(body.environment.as_deref())?;
    let tenant = tenant_of(
        &state,
        &auth.user.id,
        &body.organization_id,
        Some(env),
        meta.ip,
    )
    .await?;
    Ok(axum::Json(scoped_token(&state, &auth, &tenant)?))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SwitchEnvironment {
    environment: String,
}

pub(crate) async fn switch_environment(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Json(body): Json<SwitchEnvironment>,
) -> Result<axum::Json<ScopedToken>, Error> {
    let env = parse_environment(Some(&body.environment))?;
    let current = auth.tenant.as_ref().ok_or_else(|| {
        Error::bad_request("switch-environment needs a tenant-scoped token (see select-tenant)")
    })?;
    let tenant = tenant_of(
        &state,
        &auth.user.id,
        &current.organization_id,
        Some(env),
        meta.ip,
    )
    .await?;
    Ok(axum::Json(scoped_token(&state, &auth, &tenant)?))
}

async fn logout(State(state): State<AppState>, auth: AuthUser) -> Result<StatusCode, Error> {
    sessions::revoke(&state.db, &auth.session_id, "logout").await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn me(auth: AuthUser) -> axum::Json<User> {
    axum::Json(auth.user)
}

async fn update_me(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Json(patch): Json<ProfilePatch>,
) -> Result<axum::Json<User>, Error> {
    let ctx = ActorContext::new(Actor::User(auth.user.id.clone()), (&meta).into());
    let user = users::update(&state.db, &ctx, &auth.user.id, patch, Default::default()).await?;
    Ok(axum::Json(user))
}

async fn my_sessions(
    State(state): State<AppState>,
    auth: AuthUser,
    page: Page,
) -> Result<axum::Json<List<SessionView>>, Error> {
    let list = sessions::list(&state.db, &auth.user.id, Some(&auth.session_id)).await?;
    Ok(axum::Json(List::slice("sessions", list, &page)))
}

async fn end_session(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    let mine = sessions::list(&state.db, &auth.user.id, None).await?;
    if !mine.iter().any(|s| s.id == id) {
        return Err(Error::not_found("Session not found"));
    }
    sessions::revoke(&state.db, &id, "ended_by_user").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// TOTP enrolment started: the secret, also as an `otpauth://` URI (a QR code's content).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct TotpEnrolment {
    secret: String,
    otpauth_uri: String,
}

async fn mfa_enrol(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<(StatusCode, axum::Json<TotpEnrolment>), Error> {
    let e = mfa::enrol(&state, &auth.user.id, &auth.user.email).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TotpEnrolment {
            secret: e.secret,
            otpauth_uri: e.otpauth_uri,
        }),
    ))
}

/// MFA turned on, and the recovery codes (shown once).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct MfaEnabled {
    /// Always `true`.
    mfa_enabled: bool,
    recovery_codes: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct CodeOnly {
    code: String,
}

async fn mfa_activate(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Json(body): Json<CodeOnly>,
) -> Result<axum::Json<MfaEnabled>, Error> {
    let codes = mfa::activate(&state, &auth.user.id, &body.code).await?;
    security_event(
        &state,
        &meta,
        Some(&auth.user.id),
        "user.mfa_enabled",
        json!({"method": "totp"}),
    )
    .await;
    Ok(axum::Json(MfaEnabled {
        mfa_enabled: true,
        recovery_codes: codes,
    }))
}

async fn mfa_disable(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Json(body): Json<CodeOnly>,
) -> Result<StatusCode, Error> {
    mfa::disable(&state, &auth.user.id, &body.code).await?;
    security_event(
        &state,
        &meta,
        Some(&auth.user.id),
        "user.mfa_disabled",
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
