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
) -> Result<axum::Json<Value>, Error> {
    let answer = login_answer(&state, &meta, &body).await?;
    Ok(axum::Json(super::camel_cased(answer)))
}
