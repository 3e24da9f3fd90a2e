//! Embedding corecast with your own channel behaviour.
//!
//! ```sh
//! cargo run --release --example private_rooms -- 127.0.0.1:4000
//! ```
//!
//! - `user:<id>` may be joined only by a socket whose token subject is `<id>`
//!   (start with `auth_secret` set and mint tokens with `corecast token`);
//! - `room:*` may be joined by anyone, except `room:admin`;
//! - presence on `room:*` (phoenix.js `Presence` shows who is in the room): the handler tracks
//!   each joiner under its token subject (or `guest`) with `{"role":"member"}`, and a push of
//!   `typing` updates that meta to `{"role":"member","typing":true}`;
//! - a push of event `ping` is answered `{"pong":true}` and not broadcast;
//! - a push of event `boom` panics inside the handler: only that channel is closed
//!   (`phx_error`, like a crashed Phoenix channel), the socket and the core carry on;
//! - every other push gets the default: `ok` reply and a broadcast to the topic.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use corecast::app::handler::{Handler, InReply, Socket, Terminate};
use corecast::config::Config;
use corecast::proto::phoenix::Payload;
use corecast::server::Server;

struct PrivateRooms;

impl Handler for PrivateRooms {
    fn join(
        &self,
        socket: Socket<'_>,
        topic: &str,
        _payload: Payload<'_>,
    ) -> Result<Cow<'static, str>, Cow<'static, str>> {
        if let Some(id) = topic.strip_prefix("user:") {
            return if socket.user == Some(id) {
                Ok(Cow::Borrowed("{}"))
            } else {
                Err(Cow::Borrowed(r#"{"reason":"unauthorized"}"#))
            };
        }
        if topic == "room:admin" {
            return Err(Cow::Borrowed(r#"{"reason":"unauthorized"}"#));
        }
        // On a presence topic (`presence = ["room:*"]`), track this channel our way; without
        // this the default would track the token's subject with the client's own meta.
        socket.track(socket.user.unwrap_or("guest"), r#"{"role":"member"}"#);
        Ok(Cow::Owned(format!(r#"{{"core":{}}}"#, socket.core)))
    }

    fn handle_in(
        &self,
        socket: Socket<'_>,
        _topic: &str,
        event: &str,
        _payload: Payload<'_>,
    ) -> InReply {
        match event {
            "typing" => {
                let who = socket.user.unwrap_or("guest");
                socket.update(who, r#"{"role":"member","typing":true}"#);
                InReply::Reply {
                    ok: true,
                    response: Cow::Borrowed("{}"),
                }
            }
            "ping" => InReply::Reply {
                ok: true,
                response: Cow::Borrowed(r#"{"pong":true}"#),
            },
            "boom" => panic!("handler bug"),
            _ => InReply::OkAndBroadcast,
        }
    }

    fn terminate(&self, socket: Socket<'_>, topic: &str, why: Terminate) {
        tracing::debug!(?why, topic, user = socket.user, "channel ended");
    }
}

/// Start the example server; used by `main` and by `tests/handler.rs`.
pub fn start(cfg: Config) -> Server {
    Server::start_with_handler(
        cfg,
        Arc::new(PrivateRooms),
        Arc::new(AtomicBool::new(false)),
    )
    .expect("start server")
}

#[allow(dead_code)]
fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4000".into());
    let cfg = Config {
        listen: listen.parse().expect("listen address"),
        presence: vec!["room:*".into()],
        ..Config::default()
    };
    let server = start(cfg);
    println!("private_rooms listening on {}", server.local_addr());
    server.join().expect("server");
}
