//! The seed adapters (issue 22, `src/compat/`): each seed's own examples replayed against a
//! fresh server, its documented answer shape checked.

mod common;

use common::{Backend, TestServer, PASSWORD};
use serde_json::json;

on_both_databases!(
    seed_002_login_answers_camel_case_for_both_grants,
    seed_002_login_errors_keep_the_spec_envelope,
    seed_002_login_with_mfa_asks_for_the_second_factor_camel_cased,
);

const LOGIN: &str = "/api/v1/auth/login";
const EMAIL: &str = "seed@example.com";

/// Seed 002's example login body, verbatim but for the account.
async fn seed_login(srv: &TestServer, password: &str) -> common::Response {
    srv.post_json(
        LOGIN,
        &json!({"grantType": "password", "email": EMAIL, "password": password}),
    )
    .await
}

/// A fresh server with one registered user, [`EMAIL`]; and the user's access token.
async fn a_seed_user(backend: Backend) -> (TestServer, String) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register(EMAIL).await;
    let token = reg["access_token"].as_str().unwrap().to_string();
    (srv, token)
}

async fn seed_002_login_answers_camel_case_for_both_grants(backend: Backend) {
    let (srv, _) = a_seed_user(backend).await;
    let res = seed_login(&srv, PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let access = res.json["accessToken"].as_str().expect("accessToken");
    let refresh = res.json["refreshToken"].as_str().expect("refreshToken");
    assert_eq!(res.json["expiresIn"], 3600, "{}", res.text);
    assert_eq!(res.json["tokenType"], "Bearer", "{}", res.text);
    assert_eq!(res.json["user"]["email"], EMAIL);
    assert_eq!(res.json["user"]["emailVerified"], false, "{}", res.text);
    assert!(res.json.get("access_token").is_none(), "{}", res.text);
    // The access token works as a Bearer, as the seed shows.
    let me = srv.get_as("/v1/me", access).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json["email"], EMAIL);

    // The refresh grant, camelCased both ways; the refresh token rotates.
    let res = srv
        .post_json(
            LOGIN,
            &json!({"grantType": "refresh_token", "refreshToken": refresh}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let renewed = res.json["accessToken"].as_str().expect("accessToken");
    assert_ne!(res.json["refreshToken"].as_str(), Some(refresh));
    assert_eq!(res.json["expiresIn"], 3600);
    assert_eq!(srv.get_as("/v1/me", renewed).await.status, 200);
    // Spent: the old refresh token no longer works.
    srv.post_json(
        LOGIN,
        &json!({"grantType": "refresh_token", "refreshToken": refresh}),
    )
    .await
    .assert_error(401, "unauthorized");
}

async fn seed_002_login_errors_keep_the_spec_envelope(backend: Backend) {
    let (srv, _) = a_seed_user(backend).await;
    let err = seed_login(&srv, "wrong-one-here").await;
    let body = err.assert_error(401, "unauthorized");
    assert_eq!(body["message"], "Invalid email or password");
    assert!(body["request_id"].is_string(), "{}", err.text);

    let err = srv
        .post_json(LOGIN, &json!({"grantType": "password", "email": EMAIL}))
        .await;
    let body = err.assert_error(400, "invalid_request");
    assert!(
        body["details"].to_string().contains("password"),
        "{}",
        err.text
    );

    srv.post_json(LOGIN, &json!({"grantType": "client_credentials"}))
        .await
        .assert_error(400, "invalid_request");
    srv.post_json(
        LOGIN,
        &json!({"grantType": "password", "email": EMAIL, "password": PASSWORD, "extra": 1}),
    )
    .await
    .assert_error(400, "invalid_request");
}

async fn seed_002_login_with_mfa_asks_for_the_second_factor_camel_cased(backend: Backend) {
    let (srv, t) = a_seed_user(backend).await;
    let t = t.as_str();
    let enrol = srv.post_as("/v1/me/mfa/totp", t, &json!({})).await;
    assert_eq!(enrol.status, 201, "{}", enrol.text);
    let secret = totp_rs::Secret::Encoded(enrol.json["secret"].as_str().unwrap().to_string())
        .to_bytes()
        .unwrap();
    let totp =
        totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret, None, "x".into()).unwrap();
    let code = totp.generate_current().unwrap();
    let res = srv
        .post_as("/v1/me/mfa/totp/verify", t, &json!({"code": code}))
        .await;
    assert_eq!(res.status, 200, "{}", res.text);

    let res = seed_login(&srv, PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["mfaRequired"], true, "{}", res.text);
    assert!(res.json["mfaToken"].is_string(), "{}", res.text);
    assert!(res.json.get("accessToken").is_none(), "{}", res.text);
    assert!(res.json.get("mfa_required").is_none(), "{}", res.text);
}
