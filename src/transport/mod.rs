//! The TCP connection task: the HTTP phase, the WebSocket phase, closing.

pub mod conn;
