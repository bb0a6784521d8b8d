//! Identity and authentication (SPEC §2), every flow and its failure modes, on both databases.

mod common;

use common::{
    find_code,
    fixtures::{add_member, an_org, an_org_row, token},
    Backend, ServerOptions, TestServer, PASSWORD,
};
use gatehouse::orgs::roles::Role;
use serde_json::{json, Value};

on_both_databases!(
    an_api_key_on_a_token_only_route_is_told_which_credential_it_takes,
    sessions_and_signing_keys_page_with_limit_and_offset,
    registration_validates_and_returns_tokens,
    email_verification_codes_are_single_use_with_five_attempts,
    login_answers_are_identical_for_unknown_email_and_wrong_password,
    login_is_throttled_per_ip_and_email,
    refresh_tokens_rotate_and_reuse_ends_the_session,
    logout_and_ended_sessions_refuse_their_tokens,
    profile_can_be_read_and_updated,
    changing_the_password_ends_the_other_sessions,
    password_reset_is_single_use_and_ends_every_session,
    passwordless_otp_login,
    login_answers_carry_the_user_as_register_does,
    totp_is_active_once_a_first_code_is_verified,
    with_totp_login_needs_a_second_factor_and_recovery_codes_work_once,
    disabling_totp_needs_a_valid_code,
    tenant_scoped_tokens_need_membership,
    signing_key_rotation_keeps_old_tokens_valid,
    access_tokens_verify_with_an_independent_jwt_library,
    platform_admin_manages_users_and_suspension_is_immediate,
);

fn body_without_request_id(res: &common::Response) -> Value {
    let mut v = res.json.clone();
    v["error"]["request_id"] = Value::Null;
    v
}

async fn registration_validates_and_returns_tokens(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("Alice@Example.com").await;
    assert_eq!(reg["user"]["email"], "alice@example.com");
    assert_eq!(reg["user"]["email_verified"], false);
    assert_eq!(reg["user"]["is_platform_admin"], false);
    assert!(reg["user"]["id"].as_str().unwrap().starts_with("user_"));
    assert_eq!(reg["token_type"], "Bearer");
    assert_eq!(reg["expires_in"], 3600);
    assert!(reg["refresh_token"].as_str().unwrap().starts_with("rt_"));
    let me = srv
        .get_as("/v1/me", reg["access_token"].as_str().unwrap())
        .await;
    assert_eq!(me.json["email"], "alice@example.com");

    // The same address in another case is taken.
    let res = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": "ALICE@example.com", "password": PASSWORD}),
        )
        .await;
    res.assert_error(409, "conflict");
    // Weak, short and bad input, each naming the field.
    for (body, field) in [
        (
            json!({"email": "b@example.com", "password": "password123"}),
            "password",
        ),
        (
            json!({"email": "b@example.com", "password": "short"}),
            "password",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"email": "b@example.com", "password": PASSWORD, "role": "admin"}),
            "role",
        ),
    ] {
        let res = srv.post_json("/v1/auth/register", &body).await;
        let err = res.assert_error(400, "invalid_request");
        assert_eq!(err["details"][0]["field"], field, "{}", res.text);
    }
    let res = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": "b@example.com", "password": "password123"}),
        )
        .await;
    assert!(res.json["error"]["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("common"));
}

async fn email_verification_codes_are_single_use_with_five_attempts(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    srv.register("v@example.com").await;
    let code = find_code(&srv.mail(&admin, "v@example.com", "Verify").await, 6);
    let wrong = if code == "000000" { "000001" } else { "000000" };

    let verify = |c: &str| {
        srv.post_json(
            "/v1/auth/verify-email",
            &json!({"email": "v@example.com", "code": c}),
        )
    };
    verify(wrong).await.assert_error(401, "unauthorized");
    let ok = verify(&code).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json["email_verified"], true);
    // Single use.
    verify(&code).await.assert_error(401, "unauthorized");

    // Five wrong attempts kill a code: the right one fails on the sixth.
    srv.register("w@example.com").await;
    let code = find_code(&srv.mail(&admin, "w@example.com", "Verify").await, 6);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for _ in 0..5 {
        srv.post_json(
            "/v1/auth/verify-email",
            &json!({"email": "w@example.com", "code": wrong}),
        )
        .await
        .assert_error(401, "unauthorized");
    }
    srv.post_json(
        "/v1/auth/verify-email",
        &json!({"email": "w@example.com", "code": code}),
    )
    .await
    .assert_error(401, "unauthorized");

    // An unknown email gets the same answer as a wrong code.
    srv.post_json(
        "/v1/auth/verify-email",
        &json!({"email": "nobody@example.com", "code": "123456"}),
    )
    .await
    .assert_error(401, "unauthorized");
}

async fn login_answers_are_identical_for_unknown_email_and_wrong_password(backend: Backend) {
    let srv = TestServer::start(backend).await;
    srv.register("l@example.com").await;
    let wrong = srv
        .post_json(
            "/v1/auth/login",
            &json!({"email": "l@example.com", "password": "not-the-password"}),
        )
        .await;
    let unknown = srv
        .post_json(
            "/v1/auth/login",
            &json!({"email": "ghost@example.com", "password": "not-the-password"}),
        )
        .await;
    wrong.assert_error(401, "unauthorized");
    unknown.assert_error(401, "unauthorized");
    assert_eq!(
        body_without_request_id(&wrong),
        body_without_request_id(&unknown)
    );

    // Both spellings of the password grant work.
    for body in [
        json!({"grant_type": "password", "email": "L@example.com", "password": PASSWORD}),
        json!({"grantType": "password", "email": "l@example.com", "password": PASSWORD}),
    ] {
        let res = srv.post_json("/v1/auth/login", &body).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert!(res.json["access_token"].is_string());
    }
    let res = srv
        .post_json("/v1/auth/login", &json!({"email": "l@example.com"}))
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "password"
    );
    let res = srv
        .post_json("/v1/auth/login", &json!({"grant_type": "magic"}))
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "grant_type"
    );
}

/// A password login answers the tokens and the `user` object, the same fields register
/// answers and `GET /v1/me` shows (with `last_login` now set).
async fn login_answers_carry_the_user_as_register_does(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("u@example.com").await;
    let res = srv
        .post_json(
            "/v1/auth/login",
            &json!({"email": "u@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let user = &res.json["user"];
    assert_eq!(user["id"], reg["user"]["id"], "{}", res.text);
    assert_eq!(user["email"], "u@example.com");
    assert!(user["last_login"].is_string(), "{user}");
    let mut fields: Vec<&String> = user.as_object().unwrap().keys().collect();
    let mut registered: Vec<&String> = reg["user"].as_object().unwrap().keys().collect();
    fields.sort();
    registered.sort();
    assert_eq!(fields, registered);
    let me = srv
        .get_as("/v1/me", res.json["access_token"].as_str().unwrap())
        .await;
    assert_eq!(*user, me.json);
    assert!(user.get("password_hash").is_none());
}

async fn login_is_throttled_per_ip_and_email(backend: Backend) {
    let srv = TestServer::start(backend).await;
    srv.register("t@example.com").await;
    for _ in 0..10 {
        srv.post_json(
            "/v1/auth/login",
            &json!({"email": "t@example.com", "password": "wrong-password"}),
        )
        .await
        .assert_error(401, "unauthorized");
    }
    // The eleventh attempt is refused even with the right password.
    let res = srv
        .post_json(
            "/v1/auth/login",
            &json!({"email": "t@example.com", "password": PASSWORD}),
        )
        .await;
    res.assert_error(429, "rate_limit_exceeded");
    let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=15 * 60).contains(&retry), "{retry}");
    // Another email from the same address is not affected.
    srv.register("u@example.com").await;
    srv.login("u@example.com", PASSWORD).await;
}

async fn refresh_tokens_rotate_and_reuse_ends_the_session(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("r@example.com").await;
    let first = reg["refresh_token"].as_str().unwrap();
    let res = srv
        .post_json(
            "/v1/auth/login",
            &json!({"grant_type": "refresh_token", "refresh_token": first}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let second = res.json["refresh_token"].as_str().unwrap().to_string();
    let access = res.json["access_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(srv.get_as("/v1/me", &access).await.status, 200);

    // Presenting the spent token again ends the whole session: the new pair dies too.
    let res = srv
        .post_json(
            "/v1/auth/login",
            &json!({"grantType": "refresh_token", "refresh_token": first}),
        )
        .await;
    res.assert_error(401, "unauthorized");
    srv.get_as("/v1/me", &access)
        .await
        .assert_error(401, "unauthorized");
    srv.post_json(
        "/v1/auth/login",
        &json!({"grant_type": "refresh_token", "refresh_token": second}),
    )
    .await
    .assert_error(401, "unauthorized");
    srv.post_json(
        "/v1/auth/login",
        &json!({"grant_type": "refresh_token", "refresh_token": "rt_nonsense"}),
    )
    .await
    .assert_error(401, "unauthorized");
    srv.post_json("/v1/auth/login", &json!({"grant_type": "refresh_token"}))
        .await
        .assert_error(400, "invalid_request");
}

async fn logout_and_ended_sessions_refuse_their_tokens(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("s@example.com").await;
    let a = reg["access_token"].as_str().unwrap().to_string();
    let b = srv.login("s@example.com", PASSWORD).await;

    let list = srv.get_as("/v1/me/sessions", &a).await;
    assert_eq!(list.json["sessions"].as_array().unwrap().len(), 2);
    let current: Vec<&Value> = list.json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["current"] == true)
        .collect();
    assert_eq!(current.len(), 1);
    let other_id = list.json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Ending the other session refuses its token at once.
    assert_eq!(
        srv.delete_as(&format!("/v1/me/sessions/{other_id}"), &a)
            .await
            .status,
        204
    );
    srv.get_as("/v1/me", &b)
        .await
        .assert_error(401, "unauthorized");
    srv.delete_as("/v1/me/sessions/sess_01aaaaaaaaaaaaaaaaaaaaaaaa", &a)
        .await
        .assert_error(404, "not_found");
    // Another user's session is not found either.
    let c = srv.register("other@example.com").await;
    let c_token = c["access_token"].as_str().unwrap();
    let c_sessions = srv.get_as("/v1/me/sessions", c_token).await;
    let c_id = c_sessions.json["sessions"][0]["id"].as_str().unwrap();
    srv.delete_as(&format!("/v1/me/sessions/{c_id}"), &a)
        .await
        .assert_error(404, "not_found");
    assert_eq!(srv.get_as("/v1/me", c_token).await.status, 200);

    // Logout ends the current session.
    assert_eq!(
        srv.post_as("/v1/auth/logout", &a, &json!({})).await.status,
        204
    );
    srv.get_as("/v1/me", &a)
        .await
        .assert_error(401, "unauthorized");
    // No token, a garbage token, an API-key-shaped token: all 401 with the envelope.
    srv.get("/v1/me").await.assert_error(401, "unauthorized");
    srv.get_as("/v1/me", "garbage")
        .await
        .assert_error(401, "unauthorized");
    srv.get_as("/v1/me", "sk_live_abc")
        .await
        .assert_error(401, "unauthorized");
}

async fn profile_can_be_read_and_updated(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("p@example.com").await;
    let t = reg["access_token"].as_str().unwrap();
    let res = srv
        .patch_as(
            "/v1/me",
            t,
            &json!({"name": "Pat", "metadata": {"theme": "dark"}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["name"], "Pat");
    assert_eq!(res.json["metadata"]["theme"], "dark");
    assert_eq!(srv.get_as("/v1/me", t).await.json["name"], "Pat");
    let res = srv
        .patch_as("/v1/me", t, &json!({"email": "x@example.com"}))
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "email"
    );
    let res = srv
        .patch_as("/v1/me", t, &json!({"metadata": [1, 2]}))
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "metadata"
    );
    let res = srv
        .patch_as("/v1/me", t, &json!({"metadata": {"x": "y".repeat(9000)}}))
        .await;
    res.assert_error(400, "invalid_request");
}

async fn changing_the_password_ends_the_other_sessions(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("c@example.com").await;
    let mine = reg["access_token"].as_str().unwrap();
    let other = srv.login("c@example.com", PASSWORD).await;
    let res = srv
        .put_as("/v1/auth/password", mine, &json!({"current_password": "nope-nope-nope", "new_password": "a-brand-new-passphrase"}))
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "current_password"
    );
    let res = srv
        .put_as(
            "/v1/auth/password",
            mine,
            &json!({"current_password": PASSWORD, "new_password": "12345678"}),
        )
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "new_password"
    );
    let res = srv
        .put_as(
            "/v1/auth/password",
            mine,
            &json!({"current_password": PASSWORD, "new_password": "a-brand-new-passphrase"}),
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.text);
    assert_eq!(srv.get_as("/v1/me", mine).await.status, 200);
    srv.get_as("/v1/me", &other)
        .await
        .assert_error(401, "unauthorized");
    srv.post_json(
        "/v1/auth/login",
        &json!({"email": "c@example.com", "password": PASSWORD}),
    )
    .await
    .assert_error(401, "unauthorized");
    srv.login("c@example.com", "a-brand-new-passphrase").await;
}

async fn password_reset_is_single_use_and_ends_every_session(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let reg = srv.register("f@example.com").await;
    let old = reg["access_token"].as_str().unwrap();

    let known = srv
        .post_json(
            "/v1/auth/forgot-password",
            &json!({"email": "f@example.com"}),
        )
        .await;
    let unknown = srv
        .post_json(
            "/v1/auth/forgot-password",
            &json!({"email": "ghost@example.com"}),
        )
        .await;
    assert_eq!(known.status, 202);
    assert_eq!(unknown.status, 202);
    assert_eq!(known.json, unknown.json);
    let mail = srv.mail(&admin, "f@example.com", "Reset").await;
    let token = mail
        .split_whitespace()
        .find(|w| w.starts_with("rst_"))
        .unwrap()
        .to_string();
    assert_eq!(srv.mail_count(&admin, "ghost@example.com").await, 0);

    // A weak new password is refused without spending the token.
    let res = srv
        .post_json(
            "/v1/auth/reset-password",
            &json!({"token": token, "new_password": "password"}),
        )
        .await;
    res.assert_error(400, "invalid_request");
    let res = srv
        .post_json(
            "/v1/auth/reset-password",
            &json!({"token": token, "new_password": "reset-to-something-new"}),
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.text);
    srv.get_as("/v1/me", old)
        .await
        .assert_error(401, "unauthorized");
    srv.login("f@example.com", "reset-to-something-new").await;
    // Reused token.
    srv.post_json(
        "/v1/auth/reset-password",
        &json!({"token": token, "new_password": "and-yet-another-one"}),
    )
    .await
    .assert_error(401, "unauthorized");

    // Three requests an hour per email; the fourth is refused.
    for _ in 0..2 {
        assert_eq!(
            srv.post_json(
                "/v1/auth/forgot-password",
                &json!({"email": "f@example.com"})
            )
            .await
            .status,
            202
        );
    }
    srv.post_json(
        "/v1/auth/forgot-password",
        &json!({"email": "f@example.com"}),
    )
    .await
    .assert_error(429, "rate_limit_exceeded");
}

async fn passwordless_otp_login(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    srv.register("o@example.com").await;
    let known = srv
        .post_json("/v1/auth/otp/request", &json!({"email": "o@example.com"}))
        .await;
    let unknown = srv
        .post_json(
            "/v1/auth/otp/request",
            &json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!((known.status, unknown.status), (202, 202));
    assert_eq!(known.json, unknown.json);
    let code = find_code(&srv.mail(&admin, "o@example.com", "sign-in").await, 6);
    let wrong = if code == "999999" { "999998" } else { "999999" };
    let verify = |c: &str| {
        srv.post_json(
            "/v1/auth/otp/verify",
            &json!({"email": "o@example.com", "code": c}),
        )
    };
    for _ in 0..5 {
        verify(wrong).await.assert_error(401, "unauthorized");
    }
    // Sixth attempt: dead even with the right code.
    verify(&code).await.assert_error(401, "unauthorized");

    srv.post_json("/v1/auth/otp/request", &json!({"email": "o@example.com"}))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let code = loop {
        let c = find_code(&srv.mail(&admin, "o@example.com", "sign-in").await, 6);
        if c != code || std::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    let res = verify(&code).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let t = res.json["access_token"].as_str().unwrap();
    let me = srv.get_as("/v1/me", t).await.json;
    assert_eq!(me["email_verified"], true);
    // The user comes with the tokens, as register answers it (the code proved the email).
    assert_eq!(res.json["user"], me);
    verify(&code).await.assert_error(401, "unauthorized");
    srv.post_json("/v1/auth/otp/request", &json!({"email": "bad"}))
        .await
        .assert_error(400, "invalid_request");
}

fn totp_now(secret_b32: &str) -> (totp_rs::TOTP, u64) {
    let secret = totp_rs::Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .unwrap();
    let t =
        totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret, None, "x".into()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (t, now)
}

/// Enrols `t`'s user (m@example.com) in TOTP: not asked at login before the first code, active
/// after it; returns the generator, the step it activated with, and the recovery codes.
async fn enrol_totp(srv: &TestServer, t: &str) -> (totp_rs::TOTP, u64, Vec<String>) {
    let enrol = srv.post_as("/v1/me/mfa/totp", t, &json!({})).await;
    assert_eq!(enrol.status, 201, "{}", enrol.text);
    let uri = enrol.json["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let secret = enrol.json["secret"].as_str().unwrap().to_string();
    assert!(uri.contains(&secret));

    // Enrolled but not verified: login does not ask for a second factor yet.
    let res = srv
        .post_json(
            "/v1/auth/login",
            &json!({"email": "m@example.com", "password": PASSWORD}),
        )
        .await;
    assert!(res.json["access_token"].is_string(), "{}", res.text);

    let res = srv
        .post_as("/v1/me/mfa/totp/verify", t, &json!({"code": "000000"}))
        .await;
    res.assert_error(400, "invalid_request");
    let (totp, now) = totp_now(&secret);
    let res = srv
        .post_as(
            "/v1/me/mfa/totp/verify",
            t,
            &json!({"code": totp.generate(now)}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let recovery: Vec<String> = res.json["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(srv.get_as("/v1/me", t).await.json["mfa_enabled"], true);

    (totp, now, recovery)
}

async fn totp_is_active_once_a_first_code_is_verified(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("m@example.com").await;
    let t = reg["access_token"].as_str().unwrap();
    enrol_totp(&srv, t).await;
}

async fn with_totp_login_needs_a_second_factor_and_recovery_codes_work_once(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("m@example.com").await;
    let t = reg["access_token"].as_str().unwrap();
    let (totp, now, recovery) = enrol_totp(&srv, t).await;
    // Login now requires the second factor.
    let login = || {
        srv.post_json(
            "/v1/auth/login",
            &json!({"email": "m@example.com", "password": PASSWORD}),
        )
    };
    let res = login().await;
    assert_eq!(res.json["mfa_required"], true, "{}", res.text);
    assert!(res.json.get("access_token").is_none());
    let mfa_token = res.json["mfa_token"].as_str().unwrap().to_string();
    let verify = |token: &str, code: &str| {
        srv.post_json(
            "/v1/auth/mfa/verify",
            &json!({"mfa_token": token, "code": code}),
        )
    };
    verify(&mfa_token, "123456")
        .await
        .assert_error(401, "unauthorized");
    // The code used for activation cannot be replayed (same 30 s step).
    verify(&mfa_token, &totp.generate(now))
        .await
        .assert_error(401, "unauthorized");
    // A recovery code works once.
    let res = verify(&mfa_token, &recovery[0]).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(res.json["access_token"].is_string());
    // The completed login carries the user, as register answers it.
    assert_eq!(res.json["user"]["email"], "m@example.com");
    assert_eq!(res.json["user"]["mfa_enabled"], true);
    assert_eq!(res.json["user"]["id"], reg["user"]["id"]);
    verify(&mfa_token, &recovery[1])
        .await
        .assert_error(401, "unauthorized");
    let again = login().await.json["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    verify(&again, &recovery[0])
        .await
        .assert_error(401, "unauthorized");
    // Five misses exhaust a challenge.
    for _ in 0..5 {
        verify(&again, "000000").await;
    }
    verify(&again, &recovery[2])
        .await
        .assert_error(401, "unauthorized");
}

async fn disabling_totp_needs_a_valid_code(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("m@example.com").await;
    let t = reg["access_token"].as_str().unwrap();
    let (_, _, recovery) = enrol_totp(&srv, t).await;
    let login = || {
        srv.post_json(
            "/v1/auth/login",
            &json!({"email": "m@example.com", "password": PASSWORD}),
        )
    };
    // Disabling needs a valid code.
    let res = srv
        .call(
            reqwest::Method::DELETE,
            "/v1/me/mfa",
            Some(t),
            Some(&json!({"code": "000000"})),
        )
        .await;
    res.assert_error(400, "invalid_request");
    let res = srv
        .call(
            reqwest::Method::DELETE,
            "/v1/me/mfa",
            Some(t),
            Some(&json!({"code": recovery[3]})),
        )
        .await;
    assert_eq!(res.status, 204, "{}", res.text);
    assert_eq!(srv.get_as("/v1/me", t).await.json["mfa_enabled"], false);
    assert!(login().await.json["access_token"].is_string());
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

async fn tenant_scoped_tokens_need_membership(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let reg = srv.register("ten@example.com").await;
    let t = reg["access_token"].as_str().unwrap();
    let user_id = reg["user"]["id"].as_str().unwrap();
    let acme = an_org_row(&srv.state, "acme", "active").await.0;
    let other = an_org_row(&srv.state, "other", "active").await.0;
    let frozen = an_org_row(&srv.state, "frozen", "suspended").await.0;
    add_member(&srv, &acme, user_id, Role::Editor).await;
    add_member(&srv, &frozen, user_id, Role::Owner).await;

    let res = srv
        .post_as(
            "/v1/auth/select-tenant",
            t,
            &json!({"organization_id": "acme"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["organization_id"], acme);
    let scoped = res.json["access_token"].as_str().unwrap().to_string();
    let c = claims(&scoped);
    assert_eq!(
        (
            c["sub"].as_str(),
            c["tid"].as_str(),
            c["role"].as_str(),
            c["env"].as_str()
        ),
        (
            Some(user_id),
            Some(acme.as_str()),
            Some("editor"),
            Some("live")
        )
    );
    assert_eq!(srv.get_as("/v1/me", &scoped).await.status, 200);

    let res = srv
        .post_as(
            "/v1/auth/switch-environment",
            &scoped,
            &json!({"environment": "test"}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(
        claims(res.json["access_token"].as_str().unwrap())["env"],
        "test"
    );
    srv.post_as(
        "/v1/auth/switch-environment",
        &scoped,
        &json!({"environment": "staging"}),
    )
    .await
    .assert_error(400, "invalid_request");
    srv.post_as(
        "/v1/auth/switch-environment",
        t,
        &json!({"environment": "test"}),
    )
    .await
    .assert_error(400, "invalid_request");

    // Not a member, unknown, suspended.
    srv.post_as(
        "/v1/auth/select-tenant",
        t,
        &json!({"organization_id": other}),
    )
    .await
    .assert_error(404, "not_found");
    srv.post_as(
        "/v1/auth/select-tenant",
        t,
        &json!({"organization_id": "org_nope"}),
    )
    .await
    .assert_error(404, "not_found");
    srv.post_as(
        "/v1/auth/select-tenant",
        t,
        &json!({"organization_id": frozen}),
    )
    .await
    .assert_error(403, "organization_suspended");
    // Removal from the organization kills the scoped token at once.
    sqlx::query("DELETE FROM memberships WHERE organization_id = $1")
        .bind(&acme)
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    srv.get_as("/v1/me", &scoped)
        .await
        .assert_error(404, "not_found");
}

async fn signing_key_rotation_keeps_old_tokens_valid(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let reg = srv.register("k@example.com").await;
    let before = reg["access_token"].as_str().unwrap().to_string();
    let jwks = srv.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.json["keys"].as_array().unwrap().len(), 1);
    let old_kid = jwks.json["keys"][0]["kid"].as_str().unwrap().to_string();

    srv.post_as("/v1/admin/signing-keys/rotate", &before, &json!({}))
        .await
        .assert_error(403, "forbidden");
    let res = srv
        .post_as("/v1/admin/signing-keys/rotate", &admin, &json!({}))
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let new_kid = res.json["id"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);

    // The old token still works; the JWKS publishes both keys; new tokens use the new key.
    assert_eq!(srv.get_as("/v1/me", &before).await.status, 200);
    let jwks = srv.get("/.well-known/jwks.json").await;
    let kids: Vec<&str> = jwks.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));
    let after = srv.login("k@example.com", PASSWORD).await;
    use base64::Engine;
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(after.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], new_kid);
    assert_eq!(header["alg"], "EdDSA");

    let list = srv.get_as("/v1/admin/signing-keys", &admin).await;
    let keys = list.json["signing_keys"].as_array().unwrap();
    assert_eq!(keys[0]["status"], "active");
    assert_eq!(keys[1]["status"], "retired");
    assert!(keys[1]["published_until"].is_string());
    assert!(keys[0].get("private_key").is_none());
    assert!(!list.text.contains("private"));

    // A tampered token is refused.
    let mut tampered = before.clone();
    tampered.pop();
    tampered.push(if before.ends_with('A') { 'B' } else { 'A' });
    srv.get_as("/v1/me", &tampered)
        .await
        .assert_error(401, "unauthorized");
}

async fn access_tokens_verify_with_an_independent_jwt_library(backend: Backend) {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let has_pyjwt = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import jwt, cryptography"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_pyjwt {
        assert!(
            !common::in_ci(),
            "CI=true but .venv with PyJWT is missing (.ci/run creates it)"
        );
        eprintln!("\n!!! SKIPPED the PyJWT check: run `python3 -m venv .venv && .venv/bin/pip install 'pyjwt[crypto]'` !!!\n");
        return;
    }
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let reg = srv.register("j@example.com").await;
    let before = reg["access_token"].as_str().unwrap().to_string();
    srv.post_as("/v1/admin/signing-keys/rotate", &admin, &json!({}))
        .await;
    let after = srv.login("j@example.com", PASSWORD).await;
    let jwks = srv.get("/.well-known/jwks.json").await.text;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jwt_verify.py");
    for token in [&before, &after] {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .args([jwks.as_str(), token.as_str(), srv.state.config.issuer()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "PyJWT refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verified["sub"], reg["user"]["id"]);
    }
    // And it refuses a token whose signature was altered.
    let mut bad = after.clone();
    bad.pop();
    bad.push(if after.ends_with('A') { 'B' } else { 'A' });
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args([jwks.as_str(), bad.as_str(), srv.state.config.issuer()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

async fn platform_admin_manages_users_and_suspension_is_immediate(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let reg = srv.register("sus@example.com").await;
    let t = reg["access_token"].as_str().unwrap();
    let id = reg["user"]["id"].as_str().unwrap();
    srv.register("zed@example.com").await;

    srv.get_as("/v1/admin/users", t)
        .await
        .assert_error(403, "forbidden");
    let all = srv.get_as("/v1/admin/users?limit=2", &admin).await;
    assert_eq!(all.json["total"], 3);
    assert_eq!(all.json["users"].as_array().unwrap().len(), 2);
    assert_eq!(all.json["has_more"], true);
    let found = srv.get_as("/v1/admin/users?q=SUS", &admin).await;
    assert_eq!(found.json["total"], 1);
    assert_eq!(found.json["users"][0]["id"], id);
    // LIKE wildcards in the search term are literal.
    assert_eq!(
        srv.get_as("/v1/admin/users?q=%25", &admin).await.json["total"],
        0
    );
    let by_name = srv.get_as("/v1/admin/users?q=test%20user", &admin).await;
    assert_eq!(by_name.json["total"], 2);

    let detail = srv.get_as(&format!("/v1/admin/users/{id}"), &admin).await;
    assert_eq!(detail.status, 200);
    assert_eq!(detail.json["sessions"].as_array().unwrap().len(), 1);
    assert!(detail.json["organizations"].as_array().unwrap().is_empty());
    srv.get_as("/v1/admin/users/user_missing", &admin)
        .await
        .assert_error(404, "not_found");

    let res = srv
        .patch_as(
            &format!("/v1/admin/users/{id}"),
            &admin,
            &json!({"status": "frozen"}),
        )
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "status"
    );
    let res = srv
        .patch_as(
            &format!("/v1/admin/users/{id}"),
            &admin,
            &json!({"status": "suspended", "metadata": {"reason": "abuse"}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "suspended");
    // At once: the existing token, a new login and a refresh are refused.
    srv.get_as("/v1/me", t).await.assert_error(403, "forbidden");
    srv.post_json(
        "/v1/auth/login",
        &json!({"email": "sus@example.com", "password": PASSWORD}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.post_json(
        "/v1/auth/login",
        &json!({"grant_type": "refresh_token", "refresh_token": reg["refresh_token"]}),
    )
    .await
    .assert_error(403, "forbidden");
    srv.patch_as(
        &format!("/v1/admin/users/{id}"),
        &admin,
        &json!({"status": "active"}),
    )
    .await;
    assert_eq!(srv.get_as("/v1/me", t).await.status, 200);

    assert_eq!(
        srv.delete_as(&format!("/v1/admin/users/{id}"), &admin)
            .await
            .status,
        204
    );
    srv.get_as(&format!("/v1/admin/users/{id}"), &admin)
        .await
        .assert_error(404, "not_found");
    srv.get_as("/v1/me", t)
        .await
        .assert_error(401, "unauthorized");
}

/// SMTP delivery, through a minimal SMTP receiver on loopback.
#[tokio::test]
async fn mail_is_delivered_over_smtp_when_configured() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 test ESMTP\r\n").await.unwrap();
                let mut data = String::new();
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            tx.send(std::mem::take(&mut data)).unwrap();
                            w.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let cmd = line.to_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250 localhost\r\n"
                    } else if cmd.starts_with("DATA") {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    let srv = TestServer::start_with(
        Backend::Sqlite,
        ServerOptions {
            configure: Box::new(move |c| {
                c.smtp_url = Some(format!("smtp://127.0.0.1:{port}").into())
            }),
            ..Default::default()
        },
    )
    .await;
    srv.register("smtp@example.com").await;
    let message = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("mail within 10 s")
        .unwrap();
    assert!(message.contains("To: smtp@example.com"), "{message}");
    assert!(
        message.contains("Subject: Verify your email address"),
        "{message}"
    );
    let code = find_code(&message, 6);
    let res = srv
        .post_json(
            "/v1/auth/verify-email",
            &json!({"email": "smtp@example.com", "code": code}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
}

async fn sessions_and_signing_keys_page_with_limit_and_offset(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    srv.register("pager@example.com").await;
    srv.login("pager@example.com", PASSWORD).await;
    let token = srv.login("pager@example.com", PASSWORD).await;
    srv.assert_pages("/v1/me/sessions", &token, "sessions", 3)
        .await;

    for _ in 0..2 {
        let res = srv
            .post_as("/v1/admin/signing-keys/rotate", &admin, &json!({}))
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
    }
    srv.assert_pages("/v1/admin/signing-keys", &admin, "signing_keys", 3)
        .await;
    srv.get_as("/v1/admin/signing-keys?limit=101", &admin)
        .await
        .assert_error(400, "invalid_request");
}

/// `/v1/me` and `/v1/admin/*` take a user's access token only: an API key there (as a bearer or
/// in `X-API-Key`) is told so, not that it is an invalid token.
async fn an_api_key_on_a_token_only_route_is_told_which_credential_it_takes(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let org = an_org(&srv).await;
    let key = token(&org.a_key(&srv, &org.owner, json!({"name": "ci"})).await);
    assert!(key.starts_with("sk_live_"));
    let says_token_not_key = |res: &common::Response| {
        let err = res.assert_error(401, "unauthorized");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains("user access token") && message.contains("not an API key"),
            "{message}"
        );
    };
    for path in ["/v1/me", "/v1/admin/users"] {
        says_token_not_key(&srv.get_as(path, &key).await);
        let res = srv
            .send(srv.client.get(srv.url(path)).header("X-API-Key", &key))
            .await;
        says_token_not_key(&res);
    }
    // The same key is fine where keys are taken, and an access token still works here even
    // beside an X-API-Key header.
    assert_eq!(
        srv.get_as(&format!("{}/api-keys", org.base), &key)
            .await
            .status,
        200
    );
    let res = srv
        .send(
            srv.client
                .get(srv.url("/v1/me"))
                .bearer_auth(&org.owner)
                .header("X-API-Key", &key),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    // Other failures keep their messages.
    let garbage = srv.get_as("/v1/me", "not-a-token").await;
    let err = garbage.assert_error(401, "unauthorized");
    assert!(
        err["message"].as_str().unwrap().contains("invalid"),
        "{}",
        garbage.text
    );
    let none = srv.get("/v1/me").await;
    let err = none.assert_error(401, "unauthorized");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("Authentication required"),
        "{}",
        none.text
    );
}
