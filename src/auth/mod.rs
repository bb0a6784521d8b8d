//! Identity: users and their credentials.

pub mod password;
pub mod users;
