//! corecast: a thread-per-core io_uring WebSocket engine speaking Phoenix Channels.
//!
//! Layers, bottom up:
//! - [`proto`]: pure protocol code (HTTP upgrade, RFC 6455 frames, Phoenix messages). No I/O.
//! - [`wheel`]: the per-core timer wheel (handshake and idle timeouts).
//! - [`http`]: plain HTTP on the WebSocket port, decided from the request head (access, routes,
//!   limits) before any body is read; [`api`] answers the accepted requests.
//! - [`conn`]: one connection's state machine, driven by its core.
//! - [`shard`]: one core's world: listener, connection slab, timer wheel.
//! - [`server`]: starts one pinned glommio executor per core, handles signals and drain.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod auth;
pub mod channel;
pub mod config;
pub mod conn;
pub mod handler;
pub mod http;
pub mod mesh;
pub mod proto;
pub mod reactor;
pub mod server;
pub mod shard;
pub mod sim;
pub mod sys;
pub mod topics;
pub mod wheel;
