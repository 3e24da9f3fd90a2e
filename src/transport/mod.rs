//! The TCP connection task: one glommio task per accepted socket, through its HTTP phase, its
//! WebSocket phase and closing.

pub mod conn;
mod hooked;
mod http;
mod longpoll;
mod state;
mod websocket;
