//! The TCP connection task: one glommio task per accepted socket, through its HTTP phase, its
//! WebSocket phase and closing.

pub mod conn;
mod hooked;
mod http;
mod state;
mod websocket;
