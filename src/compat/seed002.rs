//! Seed 002 (TruthVouch authentication): `POST /api/v1/auth/login` with the seed's body
//! (`{"grantType": "password", email, password}` or `{"grantType": "refresh_token",
//! refreshToken}`) answering what `/v1/auth/login` answers, camelCased (`accessToken`,
//! `refreshToken`, `tokenType`, `expiresIn`, `user`; with MFA on, `mfaRequired`, `mfaToken`).
//! Errors keep SPEC's envelope.

use axum::extract::State;
use serde_json::Value;

use crate::{
    app::AppState,
    auth::routes::{login_answer, LoginRequest},
    error::Error,
    http::{extract::Json, request_meta::RequestMeta, routes::Routes},
};

pub fn routes() -> Routes {
    Routes::new().post("/api/v1/auth/login", login)
}

async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<LoginRequest>,
) -> Result<axum::Json<CamelCasedLogin>, Error> {
    let answer = login_answer(&state, &meta, &body).await?;
    let answer = serde_json::to_value(answer).map_err(anyhow::Error::from)?;
    Ok(axum::Json(CamelCasedLogin(super::camel_cased(answer))))
}

/// `/v1/auth/login`'s answer ([`crate::auth::routes::LoginAnswer`]) with camelCased names.
#[derive(serde::Serialize)]
#[serde(transparent)]
pub struct CamelCasedLogin(Value);

impl schemars::JsonSchema for CamelCasedLogin {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Seed002LoginAnswer".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "What `POST /v1/auth/login` answers, its field names camelCased: a session's tokens (and, for a password login, the user), or with MFA on `{mfaRequired, mfaToken}`",
            "properties": {
                "accessToken": { "type": "string" },
                "refreshToken": { "type": "string" },
                "tokenType": { "type": "string" },
                "expiresIn": { "type": "integer", "minimum": 0 },
                "user": { "type": "object", "description": "The user as `GET /v1/me` shows it, field names camelCased (`metadata` as stored)" },
                "mfaRequired": { "type": "boolean" },
                "mfaToken": { "type": "string" },
            },
            "anyOf": [
                { "required": ["accessToken", "refreshToken", "tokenType", "expiresIn"] },
                { "required": ["mfaRequired", "mfaToken"] },
            ],
        })
    }
}
