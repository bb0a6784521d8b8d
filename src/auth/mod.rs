//! Identity and authentication (SPEC §2): accounts, passwords, sessions and refresh tokens,
//! signed access tokens, MFA, one-time codes, and the extractors every route authenticates with.

pub mod background;
pub mod codes;
pub mod extract;
pub mod mfa;
pub mod password;
pub mod routes;
pub mod sessions;
pub mod tokens;
pub mod users;

pub use routes::routes;
