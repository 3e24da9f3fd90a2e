//! Phoenix pub/sub on one core: channel sessions (join, leave, push), the topic table, and
//! the one way into a broadcast.

pub mod session;
pub mod topics;
