//! Phoenix pub/sub on one core: publications (the one checked way into a broadcast), the topic
//! table, channel sessions (join, leave, push), the per-core hub that delivers publications and
//! encodes them once per wire format.

pub mod encode;
pub mod history;
pub mod hub;
pub mod live;
pub mod longpoll;
pub mod pending;
pub mod presence;
pub mod publication;
pub mod session;
pub mod topics;
