//! What an embedder or operator plugs in: the [`handler::Handler`] trait and connection tokens.

pub mod auth;
pub mod handler;
