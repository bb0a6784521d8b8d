//! Typed builders for the state most tests start from: an organization with its owner, members
//! with a role, keys with scopes — each through the real API (members through the database, as
//! an accepted invitation would leave them).

use serde_json::{json, Value};

use super::TestServer;

/// An organization (`acme`) and its owner, signed in.
pub struct Org {
    pub id: String,
    /// `/v1/organizations/{id}`
    pub base: String,
    /// The owner's access token.
    pub owner: String,
    pub owner_id: String,
}

/// Registers `owner@example.com` and creates the organization `acme` as them.
pub async fn an_org(srv: &TestServer) -> Org {
    let reg = srv.register("owner@example.com").await;
    let owner = reg["access_token"].as_str().unwrap().to_string();
    let res = srv
        .post_as(
            "/v1/organizations",
            &owner,
            &json!({"name": "Acme", "slug": "acme"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let id = res.json["id"].as_str().unwrap().to_string();
    Org {
        base: format!("/v1/organizations/{id}"),
        id,
        owner,
        owner_id: reg["user"]["id"].as_str().unwrap().to_string(),
    }
}

impl Org {
    /// Registers `email` and makes them a member with `role`; returns (access token, user id).
    pub async fn a_member(&self, srv: &TestServer, email: &str, role: &str) -> (String, String) {
        let reg = srv.register(email).await;
        let id = reg["user"]["id"].as_str().unwrap().to_string();
        sqlx::query(
            "INSERT INTO memberships (id, organization_id, user_id, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(gatehouse::ids::new_id("mem"))
        .bind(&self.id)
        .bind(&id)
        .bind(role)
        .bind(gatehouse::storage::now())
        .execute(srv.state.db.pool())
        .await
        .unwrap();
        (reg["access_token"].as_str().unwrap().to_string(), id)
    }

    /// Creates a key as `creator` (a token or a key) with `body`; returns its JSON, `token`
    /// included.
    pub async fn a_key(&self, srv: &TestServer, creator: &str, body: Value) -> Value {
        let res = srv
            .post_as(&format!("{}/api-keys", self.base), creator, &body)
            .await;
        assert_eq!(res.status, 201, "{}", res.text);
        res.json
    }

    /// The token of a new key with `scopes`, in `environment`, created by the owner.
    pub async fn a_key_token(
        &self,
        srv: &TestServer,
        environment: &str,
        scopes: &[&str],
    ) -> String {
        token(
            &self
                .a_key(
                    srv,
                    &self.owner,
                    json!({"name": "k", "environment": environment, "scopes": scopes}),
                )
                .await,
        )
    }
}

/// The `token` of a created or rotated key.
pub fn token(key: &Value) -> String {
    key["token"].as_str().unwrap().to_string()
}
