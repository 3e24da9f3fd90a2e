//! Pure protocol code: bytes in, events out. Nothing here touches a socket, a clock or a thread.

pub mod frame;
pub mod handshake;
pub mod phoenix;
