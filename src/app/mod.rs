//! What an embedder or operator plugs in: the [`handler::Handler`] trait, connection tokens
//! ([`auth`]) and the connect policy ([`policy`]).

pub mod auth;
pub mod handler;
pub mod policy;
