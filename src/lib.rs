//! Gatehouse: a SaaS platform backbone and AI gateway in one server.
//!
//! The module tree is the architecture: one module per domain (`auth`, …), each with its
//! routes, service logic and queries together; `http` holds what every route shares; `storage`
//! the database; `server` start-up.

pub mod admin;
pub mod app;
pub mod auth;
pub mod billing;
pub mod compat;
pub mod config;
pub mod console;
pub mod crypto;
pub mod environment;
pub mod error;
pub mod events;
pub mod gateway;
pub mod health;
pub mod http;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod mail;
pub mod memory;
pub mod metrics;
pub mod orgs;
pub mod platform;
pub mod policies;
pub mod redis;
pub mod secret;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod wire;
