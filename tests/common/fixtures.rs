//! Typed builders for the state most tests start from: people, an organization with its owner,
//! members with a [`Role`], keys with scopes — each through the real API (members through the
//! database, as an accepted invitation would leave them). No test file keeps its own copy.

use gatehouse::{app::AppState, environment::Environment, ids::OrgId, orgs::roles::Role};
use serde_json::{json, Map, Value};

use super::TestServer;

/// A registered user, signed in.
pub struct Person {
    pub id: String,
    /// The access token.
    pub token: String,
}

/// Registers `email` (with [`super::PASSWORD`]).
pub async fn a_person(srv: &TestServer, email: &str) -> Person {
    let reg = srv.register(email).await;
    Person {
        id: reg["user"]["id"].as_str().unwrap().to_string(),
        token: reg["access_token"].as_str().unwrap().to_string(),
    }
}

/// An organization and its owner, signed in.
pub struct Org {
    pub id: String,
    /// `/v1/organizations/{id}`
    pub base: String,
    /// The owner's access token.
    pub owner: String,
    pub owner_id: String,
    /// The organization as its creation returned it.
    pub json: Value,
}

/// Registers `owner@example.com` and creates the organization `acme` as them.
pub async fn an_org(srv: &TestServer) -> Org {
    let owner = a_person(srv, "owner@example.com").await;
    an_org_of(srv, &owner, "Acme", "acme").await
}

/// Another organization: registers `owner-{slug}@example.com` and creates `slug` as them.
pub async fn an_org_called(srv: &TestServer, slug: &str) -> Org {
    let owner = a_person(srv, &format!("owner-{slug}@example.com")).await;
    an_org_of(srv, &owner, slug, slug).await
}

/// Creates the organization `name` / `slug` as `owner` (who becomes its owner).
pub async fn an_org_of(srv: &TestServer, owner: &Person, name: &str, slug: &str) -> Org {
    let res = srv
        .post_as(
            "/v1/organizations",
            &owner.token,
            &json!({"name": name, "slug": slug}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let id = res.json["id"].as_str().unwrap().to_string();
    Org {
        base: format!("/v1/organizations/{id}"),
        id,
        owner: owner.token.clone(),
        owner_id: owner.id.clone(),
        json: res.json,
    }
}

/// An organization row written straight to the database, with no owner and no event (for
/// tests of the domain functions, and of organizations in a given `status`); returns its id.
pub async fn an_org_row(state: &AppState, slug: &str, status: &str) -> OrgId {
    let id = OrgId::generate();
    sqlx::query(
        "INSERT INTO organizations (id, name, slug, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(id.as_str())
    .bind(slug)
    .bind(slug)
    .bind(status)
    .bind(gatehouse::storage::now())
    .execute(state.db.pool())
    .await
    .unwrap();
    id
}

/// Makes `user` a member of `org` with `role`, as an accepted invitation would.
pub async fn add_member(srv: &TestServer, org: &str, user: &str, role: Role) {
    sqlx::query(
        "INSERT INTO memberships (id, organization_id, user_id, role, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(gatehouse::ids::MembershipId::generate())
    .bind(org)
    .bind(user)
    .bind(role.as_str())
    .bind(gatehouse::storage::now())
    .execute(srv.state.db.pool())
    .await
    .unwrap();
}

impl Org {
    /// Registers `email` and makes them a member with `role`; returns (access token, user id).
    pub async fn a_member(&self, srv: &TestServer, email: &str, role: Role) -> (String, String) {
        let p = a_person(srv, email).await;
        self.add(srv, &p, role).await;
        (p.token, p.id)
    }

    /// Makes an existing `person` a member with `role`.
    pub async fn add(&self, srv: &TestServer, person: &Person, role: Role) {
        add_member(srv, &self.id, &person.id, role).await
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

    /// Creates the key `spec` describes as the owner; returns its JSON, `token` included.
    pub async fn key(&self, srv: &TestServer, spec: KeySpec) -> Value {
        self.a_key(srv, &self.owner, spec.body()).await
    }

    /// The token of the key `spec` describes, created by the owner.
    pub async fn key_token(&self, srv: &TestServer, spec: KeySpec) -> String {
        token(&self.key(srv, spec).await)
    }

    /// The token of a new key with `scopes`, in `environment`, created by the owner.
    pub async fn a_key_token(
        &self,
        srv: &TestServer,
        environment: Environment,
        scopes: &[&str],
    ) -> String {
        self.key_token(srv, a_key().environment(environment).scopes(scopes))
            .await
    }
}

/// The token of a gateway key of the test environment (answered by the built-in mock
/// provider), created by `o`'s owner.
pub async fn a_test_key(srv: &TestServer, o: &Org) -> String {
    o.key_token(
        srv,
        a_key()
            .named("t")
            .environment(gatehouse::environment::Environment::Test)
            .scopes(&["gateway:proxy"]),
    )
    .await
}

/// A key to create: named `k`, everything else the API's default until set.
pub fn a_key() -> KeySpec {
    KeySpec(Map::new()).named("k")
}

/// The body of a key creation, built field by field.
pub struct KeySpec(Map<String, Value>);

impl KeySpec {
    pub fn named(self, name: &str) -> KeySpec {
        self.with("name", json!(name))
    }

    pub fn scopes(self, scopes: &[&str]) -> KeySpec {
        self.with("scopes", json!(scopes))
    }

    pub fn environment(self, environment: Environment) -> KeySpec {
        self.with("environment", json!(environment.as_str()))
    }

    /// A per-key limit of `per_minute` requests a minute.
    pub fn rate_limit_per_minute(self, per_minute: u64) -> KeySpec {
        self.with("rate_limit", json!({"requests_per_minute": per_minute}))
    }

    /// Any other field of the creation body.
    pub fn with(mut self, field: &str, value: Value) -> KeySpec {
        self.0.insert(field.to_string(), value);
        self
    }

    pub fn body(self) -> Value {
        Value::Object(self.0)
    }
}

/// The `token` of a created or rotated key.
pub fn token(key: &Value) -> String {
    key["token"].as_str().unwrap().to_string()
}

/// The invitation token mailed to `to` (read from the development mailbox as `admin`).
pub async fn mailed_invitation_token(srv: &TestServer, admin: &str, to: &str) -> String {
    let mail = srv.mail(admin, to, "invited").await;
    mail.split_whitespace()
        .find(|w| w.starts_with("invt_"))
        .expect("an invitation token in the mail")
        .to_string()
}
