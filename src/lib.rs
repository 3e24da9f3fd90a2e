//! corecast: a thread-per-core io_uring WebSocket engine speaking Phoenix Channels.
//!
//! Layers, bottom up; a layer imports only the layers below it (see ARCHITECTURE.md):
//! - [`proto`]: bytes in, events out: HTTP upgrade, RFC 6455 frames, Phoenix serializers. No I/O.
//! - [`runtime`]: one core's machinery: slots, timer wheel, readiness reactor, the kernel wrapper
//!   (the only `unsafe`), the cross-core mesh, counters. Knows nothing of Phoenix.
//! - [`cluster`]: several nodes as one over NATS: the bridge thread and each core's end of it.
//!   Carries opaque publication bytes and topic interest; knows nothing of Phoenix.
//! - [`app`]: what an embedder plugs in: the `Handler` trait, tokens, the connect policy.
//! - [`pubsub`]: publications, topics per core, channel sessions, presence, the per-core hub
//!   that delivers and encodes once per wire format.
//! - [`http`]: plain HTTP on the same port: routing from the head, `/api/*`, `/metrics`.
//! - [`transport`]: the TCP connection task (HTTP phase, WebSocket phase, closing).
//! - [`server`]: the one place that wires them: cores, pinning, mesh, signals, drain.
//!
//! [`config`] is read by every layer; [`sim`] runs the runtime and pubsub layers without sockets.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod app;
pub mod cluster;
pub mod config;
pub mod hooks;
pub mod http;
pub mod proto;
pub mod pubsub;
pub mod runtime;
pub mod server;
pub mod sim;
pub mod transport;
