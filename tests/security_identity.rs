//! Security issue #20, identity items, through the real HTTP API on both databases:
//! 4 (MFA on the passwordless login), 6 (an address proven by a login code, a reset or an
//! invitation takes a pre-registered account back), 12 (second-factor attempt limits, counted
//! atomically, per `mfa_token` and per user), 13 (email normalisation and look-alikes, addresses
//! stored before it folded by a data step) and 17 (the "mail me" requests do no
//! per-account work before they answer).

mod common;

use common::{find_code, fixtures::an_org, Backend, TestServer, PASSWORD};
use futures_util::future::join_all;
use serde_json::{json, Value};

on_both_databases!(
    passwordless_login_asks_for_the_second_factor,
    a_login_code_takes_a_pre_registered_account_back,
    a_password_reset_takes_a_pre_registered_account_back,
    an_accepted_invitation_takes_a_pre_registered_account_back,
    wrong_codes_of_a_signed_in_user_are_limited_even_in_parallel,
    parallel_guesses_on_one_mfa_token_are_counted_atomically,
    the_mfa_step_of_logins_is_limited_per_user_across_mfa_tokens,
    a_right_code_at_the_mfa_step_clears_the_users_count,
    email_look_alikes_are_one_account_or_refused,
    every_route_taking_an_address_folds_and_checks_it,
    real_non_ascii_addresses_are_stored_folded,
    emails_stored_before_folding_are_folded_and_collisions_left_and_reported,
    mail_me_requests_answer_before_any_account_work,
);

const ATTACKER_PASSWORD: &str = "attacker-chose-this-one";

fn token(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .to_string()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn totp(secret_b32: &str) -> totp_rs::TOTP {
    let secret = totp_rs::Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .unwrap();
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret, None, "x".into()).unwrap()
}

/// Enrols and enables TOTP for the signed-in user; returns the secret and the recovery codes.
async fn enable_mfa(srv: &TestServer, access: &str) -> (String, Vec<String>) {
    let enrol = srv.post_as("/v1/me/mfa/totp", access, &json!({})).await;
    assert_eq!(enrol.status, 201, "{}", enrol.text);
    let secret = token(&enrol.json, "secret");
    let res = srv
        .post_as(
            "/v1/me/mfa/totp/verify",
            access,
            &json!({"code": totp(&secret).generate(now_secs())}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let recovery = res.json["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    (secret, recovery)
}

/// Asks for a sign-in code and reads it from the development mailbox.
async fn login_code(srv: &TestServer, admin: &str, email: &str) -> String {
    let res = srv
        .post_json("/v1/auth/otp/request", &json!({"email": email}))
        .await;
    assert_eq!(res.status, 202, "{}", res.text);
    find_code(&srv.mail(admin, email, "sign-in").await, 6)
}

fn password_login<'a>(
    srv: &'a TestServer,
    email: &str,
    password: &str,
) -> impl std::future::Future<Output = common::Response> + use<'a> {
    srv.post_json(
        "/v1/auth/login",
        &json!({"email": email, "password": password}),
    )
}

/// What a platform admin sees of a user.
async fn admin_view(srv: &TestServer, admin: &str, user_id: &str) -> Value {
    let res = srv
        .get_as(&format!("/v1/admin/users/{user_id}"), admin)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    res.json
}

/// The attacker registers the victim's address first, with a password of their own, and keeps
/// the session registration gave them: `(user id, access token, refresh token)`.
async fn pre_register(srv: &TestServer, email: &str) -> (String, String, String) {
    let res = srv
        .post_json(
            "/v1/auth/register",
            &json!({"email": email, "password": ATTACKER_PASSWORD, "name": "Not the owner"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["user"]["email_verified"], false);
    (
        token(&res.json["user"], "id"),
        token(&res.json, "access_token"),
        token(&res.json, "refresh_token"),
    )
}

/// The attacker's hold on the account is gone: the session's access and refresh tokens and
/// the password they chose are all refused.
async fn attacker_is_out(srv: &TestServer, email: &str, access: &str, refresh: &str) {
    srv.get_as("/v1/me", access)
        .await
        .assert_error(401, "unauthorized");
    srv.post_json(
        "/v1/auth/login",
        &json!({"grant_type": "refresh_token", "refresh_token": refresh}),
    )
    .await
    .assert_error(401, "unauthorized");
    password_login(srv, email, ATTACKER_PASSWORD)
        .await
        .assert_error(401, "unauthorized");
}

// ---- item 4 ---------------------------------------------------------------------------------

async fn passwordless_login_asks_for_the_second_factor(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let email = "mfa-otp@example.com";
    let reg = srv.register(email).await;
    let access = token(&reg, "access_token");
    // A verified address, so the code below proves nothing new (item 6 does not apply).
    let code = find_code(&srv.mail(&admin, email, "Verify").await, 6);
    let res = srv
        .post_json(
            "/v1/auth/verify-email",
            &json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let (_, recovery) = enable_mfa(&srv, &access).await;

    let code = login_code(&srv, &admin, email).await;
    let res = srv
        .post_json(
            "/v1/auth/otp/verify",
            &json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["mfa_required"], true, "{}", res.text);
    assert!(res.json.get("access_token").is_none(), "{}", res.text);
    assert!(res.json.get("refresh_token").is_none(), "{}", res.text);
    let mfa_token = token(&res.json, "mfa_token");
    assert!(mfa_token.starts_with("mfa_"));
    // The emailed code is spent: it cannot be replayed for another challenge.
    srv.post_json(
        "/v1/auth/otp/verify",
        &json!({"email": email, "code": code}),
    )
    .await
    .assert_error(401, "unauthorized");

    // The MFA step completes the login, as after a password.
    let verify = |code: &str| {
        srv.post_json(
            "/v1/auth/mfa/verify",
            &json!({"mfa_token": mfa_token, "code": code}),
        )
    };
    verify("000000").await.assert_error(401, "unauthorized");
    let res = verify(&recovery[0]).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let fresh = token(&res.json, "access_token");
    assert_eq!(srv.get_as("/v1/me", &fresh).await.json["email"], email);
    // A verified account keeps its other sessions on such a login.
    assert_eq!(srv.get_as("/v1/me", &access).await.status, 200);
}

// ---- item 6 ---------------------------------------------------------------------------------

async fn a_login_code_takes_a_pre_registered_account_back(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let email = "victim@example.com";
    let (id, access, refresh) = pre_register(&srv, email).await;
    assert_eq!(srv.get_as("/v1/me", &access).await.status, 200);
    // The registrant even enrols a second factor of their own.
    enable_mfa(&srv, &access).await;

    // The owner of the mailbox signs in with an emailed code — no second factor asked: the one
    // enrolled before the address was proven went with the password.
    let code = login_code(&srv, &admin, email).await;
    let res = srv
        .post_json(
            "/v1/auth/otp/verify",
            &json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let owner = token(&res.json, "access_token");

    attacker_is_out(&srv, email, &access, &refresh).await;
    let me = srv.get_as("/v1/me", &owner).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json["email_verified"], true);
    let sessions = srv.get_as("/v1/me/sessions", &owner).await;
    assert_eq!(sessions.json["total"], 1, "{}", sessions.text);
    assert_eq!(admin_view(&srv, &admin, &id).await["email_verified"], true);

    // The owner sets a password of their own with a reset; only theirs works.
    srv.reset_password(&admin, email, "the-owners-own-password")
        .await;
    assert_eq!(
        password_login(&srv, email, "the-owners-own-password")
            .await
            .status,
        200
    );
    password_login(&srv, email, ATTACKER_PASSWORD)
        .await
        .assert_error(401, "unauthorized");
}

async fn a_password_reset_takes_a_pre_registered_account_back(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let email = "victim@example.com";
    let (id, access, refresh) = pre_register(&srv, email).await;
    // The attacker also turns MFA on and starts a password login they can finish later.
    let (_, attacker_recovery) = enable_mfa(&srv, &access).await;
    let pending = password_login(&srv, email, ATTACKER_PASSWORD).await;
    assert_eq!(pending.json["mfa_required"], true, "{}", pending.text);
    let pending = token(&pending.json, "mfa_token");

    // The owner of the mailbox resets the password.
    srv.reset_password(&admin, email, "the-owners-own-password")
        .await;

    // The reset proved the address.
    assert_eq!(admin_view(&srv, &admin, &id).await["email_verified"], true);
    attacker_is_out(&srv, email, &access, &refresh).await;
    // The login the attacker started before the reset cannot be finished.
    let res = srv
        .post_json(
            "/v1/auth/mfa/verify",
            &json!({"mfa_token": pending, "code": attacker_recovery[0]}),
        )
        .await;
    res.assert_error(401, "unauthorized");
    assert!(res.json.get("access_token").is_none());
    // The owner signs in with their own password alone: the attacker's second factor went too
    // (otherwise the owner would be stuck at a second step they cannot pass).
    let res = password_login(&srv, email, "the-owners-own-password").await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(res.json["access_token"].is_string(), "{}", res.text);
}

async fn an_accepted_invitation_takes_a_pre_registered_account_back(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    let email = "victim@example.com";
    let (id, access, refresh) = pre_register(&srv, email).await;
    // A second session signed in with the pre-verification password: the one that accepts.
    let accepting = password_login(&srv, email, ATTACKER_PASSWORD).await;
    assert_eq!(accepting.status, 200, "{}", accepting.text);
    let accepting = token(&accepting.json, "access_token");

    let org = an_org(&srv).await;
    let (owner, org_id) = (org.owner.clone(), org.id.clone());
    let res = srv
        .post_as(
            &format!("/v1/organizations/{org_id}/invitations"),
            &owner,
            &json!({"email": email, "role": "member"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let mail = srv.mail(&admin, email, "invited").await;
    let invitation = mail
        .split_whitespace()
        .find(|w| w.starts_with("invt_"))
        .unwrap();

    let res = srv
        .post_as(
            "/v1/invitations/accept",
            &accepting,
            &json!({"token": invitation}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["role"], "member");

    assert_eq!(admin_view(&srv, &admin, &id).await["email_verified"], true);
    // Every session from before ends and the password set before is dropped; the session
    // that presented the proof goes on.
    attacker_is_out(&srv, email, &access, &refresh).await;
    let me = srv.get_as("/v1/me", &accepting).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json["email_verified"], true);
}

// ---- item 12 --------------------------------------------------------------------------------

fn delete_mfa<'a>(
    srv: &'a TestServer,
    access: &str,
    code: &str,
) -> impl std::future::Future<Output = common::Response> + use<'a> {
    srv.call(
        reqwest::Method::DELETE,
        "/v1/me/mfa",
        Some(access),
        Some(&json!({ "code": code })),
    )
}

async fn wrong_codes_of_a_signed_in_user_are_limited_even_in_parallel(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let access = token(&srv.register("limits@example.com").await, "access_token");
    let (_, recovery) = enable_mfa(&srv, &access).await;

    // 20 wrong codes at once: at most 5 are evaluated (400, wrong code), the rest are refused
    // before any code is checked.
    let answers = join_all((0..20).map(|_| delete_mfa(&srv, &access, "000000"))).await;
    let evaluated = answers.iter().filter(|r| r.status == 400).count();
    let locked: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert!(
        (1..=5).contains(&evaluated),
        "{evaluated} wrong codes evaluated: {:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(evaluated + locked.len(), 20);
    for res in &locked {
        let err = res.assert_error(429, "rate_limit_exceeded");
        assert!(err["message"].as_str().unwrap().contains("wrong codes"));
        let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=15 * 60).contains(&retry), "{retry}");
    }
    // The right code is refused too while the account is locked, and MFA stays on.
    delete_mfa(&srv, &access, &recovery[0])
        .await
        .assert_error(429, "rate_limit_exceeded");
    assert_eq!(
        srv.get_as("/v1/me", &access).await.json["mfa_enabled"],
        true
    );

    // Enabling MFA checks codes too: five wrong ones, then locked.
    let other = token(&srv.register("enrol@example.com").await, "access_token");
    let enrol = srv.post_as("/v1/me/mfa/totp", &other, &json!({})).await;
    let secret = token(&enrol.json, "secret");
    let activate = |code: String| {
        srv.call(
            reqwest::Method::POST,
            "/v1/me/mfa/totp/verify",
            Some(&other),
            Some(&json!({ "code": code })),
        )
    };
    for _ in 0..5 {
        activate("000000".into())
            .await
            .assert_error(400, "invalid_request");
    }
    activate("000000".into())
        .await
        .assert_error(429, "rate_limit_exceeded");
    activate(totp(&secret).generate(now_secs()))
        .await
        .assert_error(429, "rate_limit_exceeded");
    assert_eq!(
        srv.get_as("/v1/me", &other).await.json["mfa_enabled"],
        false
    );
}

async fn parallel_guesses_on_one_mfa_token_are_counted_atomically(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let email = "race@example.com";
    let access = token(&srv.register(email).await, "access_token");
    let (_, recovery) = enable_mfa(&srv, &access).await;
    let res = password_login(&srv, email, PASSWORD).await;
    let mfa_token = token(&res.json, "mfa_token");

    let guess = |code: &str| {
        srv.post_json(
            "/v1/auth/mfa/verify",
            &json!({"mfa_token": mfa_token, "code": code}),
        )
    };
    let answers = join_all((0..20).map(|_| guess("000000"))).await;
    let messages: Vec<String> = answers
        .iter()
        .map(|r| format!("{} {}", r.status, r.json["error"]["message"]))
        .collect();
    let evaluated = answers
        .iter()
        .filter(|r| r.json["error"]["message"] == "The code is invalid")
        .count();
    assert!(
        (1..=5).contains(&evaluated),
        "{evaluated} guesses evaluated: {messages:?}"
    );
    for res in &answers {
        assert!(res.json.get("access_token").is_none());
        assert!(res.status == 401 || res.status == 429, "{}", res.text);
    }
    // The token's attempts are spent: even the right code is refused on it.
    let res = guess(&recovery[0]).await;
    res.assert_error(401, "unauthorized");
    assert_eq!(
        res.json["error"]["message"], "The MFA token is invalid or expired",
        "{}",
        res.text
    );
}

/// A password login's `mfa_token`.
async fn mfa_token(srv: &TestServer, email: &str) -> String {
    let res = password_login(srv, email, PASSWORD).await;
    assert_eq!(res.json["mfa_required"], true, "{}", res.text);
    token(&res.json, "mfa_token")
}

fn mfa_verify<'a>(
    srv: &'a TestServer,
    mfa_token: &str,
    code: &str,
) -> impl std::future::Future<Output = common::Response> + use<'a> {
    srv.post_json(
        "/v1/auth/mfa/verify",
        &json!({"mfa_token": mfa_token, "code": code}),
    )
}

async fn the_mfa_step_of_logins_is_limited_per_user_across_mfa_tokens(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let email = "guesser@example.com";
    let access = token(&srv.register(email).await, "access_token");
    let (_, recovery) = enable_mfa(&srv, &access).await;

    // Three logins with the password, three tokens of 5 attempts each, 15 wrong codes at once:
    // the user's 10 are evaluated, the rest refused before any code is checked.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(mfa_token(&srv, email).await);
    }
    let answers = join_all(
        tokens
            .iter()
            .flat_map(|t| (0..5).map(move |_| t))
            .map(|t| mfa_verify(&srv, t, "000000")),
    )
    .await;
    let evaluated = answers
        .iter()
        .filter(|r| r.status == 401 && r.json["error"]["message"] == "The code is invalid")
        .count();
    let locked: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        (evaluated, locked.len()),
        (10, 5),
        "{:?}",
        answers.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for res in &locked {
        let err = res.assert_error(429, "rate_limit_exceeded");
        assert!(err["message"].as_str().unwrap().contains("wrong codes"));
        let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=15 * 60).contains(&retry), "{retry}");
    }

    // A fresh token from a new password login brings no new guesses: even the right code is
    // refused while the window lasts.
    let fresh = mfa_token(&srv, email).await;
    let res = mfa_verify(&srv, &fresh, &recovery[0]).await;
    res.assert_error(429, "rate_limit_exceeded");
    assert!(res.json.get("access_token").is_none());

    // The signed-in user's own checks are counted apart: disabling MFA still evaluates a code.
    delete_mfa(&srv, &access, "000000")
        .await
        .assert_error(400, "invalid_request");
}

async fn a_right_code_at_the_mfa_step_clears_the_users_count(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let email = "forgetful@example.com";
    let access = token(&srv.register(email).await, "access_token");
    let (_, recovery) = enable_mfa(&srv, &access).await;
    let misses = |t: String, n: usize| {
        let srv = &srv;
        async move {
            for _ in 0..n {
                mfa_verify(srv, &t, "000000")
                    .await
                    .assert_error(401, "unauthorized");
            }
        }
    };

    // Nine misses over two tokens, then the right code: signed in.
    misses(mfa_token(&srv, email).await, 5).await;
    let second = mfa_token(&srv, email).await;
    misses(second.clone(), 4).await;
    let res = mfa_verify(&srv, &second, &recovery[0]).await;
    assert_eq!(res.status, 200, "{}", res.text);
    // The count starts again: nine more misses and the right code still sign in.
    misses(mfa_token(&srv, email).await, 5).await;
    let fourth = mfa_token(&srv, email).await;
    misses(fourth.clone(), 4).await;
    let res = mfa_verify(&srv, &fourth, &recovery[1]).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(res.json["access_token"].is_string());
}

// ---- item 13 --------------------------------------------------------------------------------

async fn email_look_alikes_are_one_account_or_refused(backend: Backend) {
    let srv = TestServer::start(backend).await;
    srv.register("alice@example.com").await;
    let register = |email: &str| {
        srv.post_json(
            "/v1/auth/register",
            &json!({"email": email, "password": PASSWORD}),
        )
    };
    // Full-width letters and other compatibility forms are the same address: taken.
    for same in [
        "\u{ff41}lice@example.com",
        "ALICE@\u{ff25}XAMPLE.COM",
        "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}@\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}.\u{ff43}\u{ff4f}\u{ff4d}",
    ] {
        register(same).await.assert_error(409, "conflict");
    }
    // Invisible characters, mixed scripts and whole-script look-alikes are refused, naming
    // the field.
    for (bad, reason) in [
        ("ali\u{200b}ce@example.com", "invisible"),
        ("alice\u{200d}@example.com", "invisible"),
        ("\u{202e}alice@example.com", "invisible"),
        ("alice@exa\u{2066}mple.com", "invisible"),
        ("ali\u{ad}ce@example.com", "invisible"),
        ("\u{430}lice@example.com", "scripts"),
        ("alice@ex\u{430}mple.com", "scripts"),
        (
            "\u{430}\u{4cf}\u{456}\u{441}\u{435}@example.com",
            "look-alike",
        ),
    ] {
        let res = register(bad).await;
        let err = res.assert_error(400, "invalid_request");
        assert_eq!(err["details"][0]["field"], "email", "{bad:?}: {}", res.text);
        let message = err["details"][0]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{bad:?}: {message}");
    }
    // Only the one account exists.
    let admin = srv.admin_token().await;
    let users = srv.get_as("/v1/admin/users?q=lice", &admin).await;
    assert_eq!(users.json["total"], 1, "{}", users.text);
}

async fn every_route_taking_an_address_folds_and_checks_it(backend: Backend) {
    let srv = TestServer::start(backend).await;
    srv.register("alice@example.com").await;
    // Every other route that takes an address folds and checks it the same way.
    let res = password_login(&srv, "\u{ff41}lice@Example.com", PASSWORD).await;
    assert_eq!(res.status, 200, "{}", res.text);
    for path in [
        "/v1/auth/otp/request",
        "/v1/auth/forgot-password",
        "/v1/auth/login",
        "/v1/auth/verify-email",
        "/v1/auth/otp/verify",
    ] {
        let body =
            json!({"email": "ali\u{200b}ce@example.com", "password": PASSWORD, "code": "123456"});
        let body = match path {
            "/v1/auth/login" => json!({"email": body["email"], "password": PASSWORD}),
            "/v1/auth/verify-email" | "/v1/auth/otp/verify" => {
                json!({"email": body["email"], "code": "123456"})
            }
            _ => json!({"email": body["email"]}),
        };
        let res = srv.post_json(path, &body).await;
        let err = res.assert_error(400, "invalid_request");
        assert_eq!(err["details"][0]["field"], "email", "{path}: {}", res.text);
    }
    // Invitations.
    let org = an_org(&srv).await;
    let (owner, base) = (org.owner.clone(), org.base.clone());
    let res = srv
        .post_as(
            &format!("{base}/invitations"),
            &owner,
            &json!({"email": "b\u{200b}ob@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(
        res.assert_error(400, "invalid_request")["details"][0]["field"],
        "email"
    );
    let res = srv
        .post_as(
            &format!("{base}/invitations"),
            &owner,
            &json!({"email": "\u{ff42}OB@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["email"], "bob@example.com");
    // Accounts created by an operator (`gatehouse admin create`) go through the same rules.
    let err = gatehouse::auth::users::create(
        &srv.state.db,
        &gatehouse::events::ActorContext::system(),
        gatehouse::auth::users::NewUser::platform_admin(
            "ad\u{200b}min@example.com",
            "Admin",
            PASSWORD,
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("email") || format!("{err:?}").contains("email"));
}

async fn real_non_ascii_addresses_are_stored_folded(backend: Backend) {
    let srv = TestServer::start(backend).await;
    srv.register("alice@example.com").await;
    let register = |email: &str| {
        srv.post_json(
            "/v1/auth/register",
            &json!({"email": email, "password": PASSWORD}),
        )
    };
    // Real non-ASCII addresses stay possible, stored in their folded form.
    let res = register("Jos\u{c9}@example.com").await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["user"]["email"], "jos\u{e9}@example.com");
    let res =
        register("\u{418}\u{432}\u{430}\u{43d}@\u{43f}\u{43e}\u{447}\u{442}\u{430}.\u{440}\u{444}")
            .await;
    assert_eq!(res.status, 201, "{}", res.text);
}

/// A user row as one written before emails were folded: the address as it was typed.
async fn raw_user(srv: &TestServer, email: &str) -> String {
    let id = gatehouse::ids::UserId::generate().0;
    let hash = gatehouse::crypto::hash_password(PASSWORD);
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, email_verified, created_at, updated_at) \
         VALUES ($1, $2, '', $3, $4, $5, $5)",
    )
    .bind(&id)
    .bind(email)
    .bind(&hash)
    .bind(true)
    .bind(gatehouse::storage::now())
    .execute(srv.state.db.pool())
    .await
    .unwrap();
    id
}

async fn stored_email(srv: &TestServer, table: &str, id: &str) -> String {
    sqlx::query_scalar(&format!("SELECT email FROM {table} WHERE id = $1"))
        .bind(id)
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap()
}

async fn data_steps_recorded(srv: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM data_steps WHERE name = 'fold_stored_emails'")
        .fetch_one(srv.state.db.pool())
        .await
        .unwrap()
}

/// Users and an invitation written as they were before addresses were folded: one to fold in
/// case, one in width, two pairs that collide once folded, and an invitation.
struct Unfolded {
    mixed: String,
    wide: String,
    bob_raw: String,
    bob: String,
    carol_upper: String,
    carol_title: String,
    invitation: String,
}

async fn unfolded_rows(srv: &TestServer) -> Unfolded {
    let mixed = raw_user(srv, "  Mixed.Case@Example.COM").await;
    let wide = raw_user(srv, "\u{ff41}lice@example.com").await;
    let bob_raw = raw_user(srv, "Bob@example.com").await;
    let bob = raw_user(srv, "bob@example.com").await;
    let carol_upper = raw_user(srv, "CAROL@example.com").await;
    let carol_title = raw_user(srv, "Carol@example.com").await;
    let o = common::fixtures::an_org(srv).await;
    let invitation = gatehouse::ids::InvitationId::generate();
    sqlx::query(
        "INSERT INTO invitations (id, organization_id, email, name, role, token_hash, status, \
         created_at, sent_at, expires_at) VALUES ($1, $2, $3, '', 'member', $4, 'pending', $5, $5, $5)",
    )
    .bind(&invitation)
    .bind(&o.id)
    .bind("Invitee@EXAMPLE.com")
    .bind(gatehouse::crypto::random_base62(40))
    .bind(gatehouse::storage::now())
    .execute(srv.state.db.pool())
    .await
    .unwrap();
    Unfolded {
        mixed,
        wide,
        bob_raw,
        bob,
        carol_upper,
        carol_title,
        invitation: invitation.into(),
    }
}

async fn emails_stored_before_folding_are_folded_and_collisions_left_and_reported(
    backend: Backend,
) {
    use gatehouse::auth::users::{fold_stored_emails, EmailCollision};
    let srv = TestServer::start(backend).await;
    // The step ran at start (nothing to fold) and was recorded.
    assert_eq!(data_steps_recorded(&srv).await, 1);
    let Unfolded {
        mixed,
        wide,
        bob_raw,
        bob,
        carol_upper,
        carol_title,
        invitation,
    } = unfolded_rows(&srv).await;

    // Recorded: a restart does not run the step again.
    srv.state.db.migrate().await.unwrap();
    assert_eq!(
        stored_email(&srv, "users", &mixed).await,
        "  Mixed.Case@Example.COM"
    );

    // A database that has not had the step yet gets it at its next start.
    sqlx::query("DELETE FROM data_steps")
        .execute(srv.state.db.pool())
        .await
        .unwrap();
    srv.state.db.migrate().await.unwrap();
    assert_eq!(
        stored_email(&srv, "users", &mixed).await,
        "mixed.case@example.com"
    );
    assert_eq!(
        stored_email(&srv, "users", &wide).await,
        "alice@example.com"
    );
    assert_eq!(
        stored_email(&srv, "invitations", &invitation).await,
        "invitee@example.com"
    );
    // Colliding rows are left as they were.
    assert_eq!(
        stored_email(&srv, "users", &bob_raw).await,
        "Bob@example.com"
    );
    assert_eq!(stored_email(&srv, "users", &bob).await, "bob@example.com");
    assert_eq!(
        stored_email(&srv, "users", &carol_upper).await,
        "CAROL@example.com"
    );
    assert_eq!(
        stored_email(&srv, "users", &carol_title).await,
        "Carol@example.com"
    );
    // While collisions remain, the step is not recorded (it runs and warns at each start).
    assert_eq!(data_steps_recorded(&srv).await, 0);

    // The report names them; a second run folds nothing more.
    let report = fold_stored_emails(&srv.state.db).await.unwrap();
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    assert_eq!(
        report.collisions,
        [
            EmailCollision {
                email: "bob@example.com".into(),
                user_ids: sorted(vec![bob_raw.clone(), bob.clone()]),
            },
            EmailCollision {
                email: "carol@example.com".into(),
                user_ids: sorted(vec![carol_upper.clone(), carol_title.clone()]),
            },
        ]
    );
    assert!(report.users_folded.is_empty(), "{report:?}");
    assert_eq!(report.invitations_folded, 0);

    // A folded account signs in with its address as typed.
    let res = password_login(&srv, "MIXED.case@example.com", PASSWORD).await;
    assert!(res.json["access_token"].is_string(), "{}", res.text);

    // Once an operator resolves the collisions, the next start folds the rest and records it.
    for id in [&bob_raw, &carol_title] {
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(srv.state.db.pool())
            .await
            .unwrap();
    }
    srv.state.db.migrate().await.unwrap();
    assert_eq!(
        stored_email(&srv, "users", &carol_upper).await,
        "carol@example.com"
    );
    assert_eq!(stored_email(&srv, "users", &bob).await, "bob@example.com");
    assert_eq!(data_steps_recorded(&srv).await, 1);
}

// ---- item 17 --------------------------------------------------------------------------------

/// A connection that holds the tables an account's reset or sign-in code is written to (and,
/// on PostgreSQL, the users table itself) until it is dropped.
async fn hold_account_tables(srv: &TestServer, backend: Backend) -> sqlx::AnyConnection {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&srv.db.url).await.unwrap();
    match backend {
        Backend::Sqlite => {
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Backend::Postgres => {
            sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
            sqlx::query(
                "LOCK TABLE users, password_resets, one_time_codes IN ACCESS EXCLUSIVE MODE",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    conn
}

async fn mail_me_requests_answer_before_any_account_work(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let admin = srv.admin_token().await;
    srv.register("known@example.com").await;

    // While nothing can be written for (or, on PostgreSQL, even read about) any account, both
    // requests still answer, known and unknown address alike: the answer depends on no account
    // work. (The bound only turns a request stuck behind the lock into a failure.)
    let mut lock = hold_account_tables(&srv, backend).await;
    for path in ["/v1/auth/forgot-password", "/v1/auth/otp/request"] {
        let mut answers = Vec::new();
        for email in ["ghost@example.com", "known@example.com"] {
            let res = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                srv.post_json(path, &json!({ "email": email })),
            )
            .await
            .unwrap_or_else(|_| panic!("{path} for {email} waited for the account tables"));
            assert_eq!(res.status, 202, "{path} {email}: {}", res.text);
            let length = res.header("content-length").map(str::to_owned);
            answers.push((res.status, res.json, length));
        }
        assert_eq!(answers[0], answers[1], "{path}");
    }
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);

    // The work happens after the answer: the known address gets its mail, the unknown none.
    let reset = srv.mail(&admin, "known@example.com", "Reset").await;
    assert!(reset.contains("rst_"));
    let code = find_code(&srv.mail(&admin, "known@example.com", "sign-in").await, 6);
    let res = srv
        .post_json(
            "/v1/auth/otp/verify",
            &json!({"email": "known@example.com", "code": code}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(srv.mail_count(&admin, "ghost@example.com").await, 0);
}
