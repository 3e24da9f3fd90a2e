//! An embedder's handler (examples/private_rooms.rs) run in-process: join authorisation,
//! custom replies, and a panicking handler that costs only its own channel.

mod common;
#[path = "../examples/private_rooms.rs"]
mod private_rooms;

use std::time::Duration;

use common::{PHX_PATH, ws_connect, ws_recv as recv, ws_send as send};
use corecast::config::Config;
use serde_json::json;

#[test]
fn custom_handler_authorises_replies_and_survives_its_own_panic() {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: 2,
        auth_secret: Some("k".into()),
        ..Config::default()
    };
    let server = private_rooms::start(cfg);
    let token = corecast::app::auth::mint(b"k", "alice", corecast::app::auth::now_unix() + 60);
    let url = format!("ws://{}{PHX_PATH}&token={token}", server.local_addr());
    let (mut ws, _) = ws_connect(&url, Duration::from_secs(5));

    send(&mut ws, json!(["1", "1", "user:alice", "phx_join", {}]));
    assert_eq!(recv(&mut ws)[4]["status"], "ok");
    send(&mut ws, json!(["2", "2", "user:bob", "phx_join", {}]));
    assert_eq!(
        recv(&mut ws)[4],
        json!({"response": {"reason": "unauthorized"}, "status": "error"})
    );
    send(&mut ws, json!(["3", "3", "room:1", "phx_join", {}]));
    let joined = recv(&mut ws);
    assert_eq!(joined[4]["status"], "ok");
    assert!(joined[4]["response"]["core"].is_u64());

    send(&mut ws, json!(["3", "4", "room:1", "ping", {}]));
    assert_eq!(
        recv(&mut ws),
        json!(["3", "4", "room:1", "phx_reply", {"response": {"pong": true}, "status": "ok"}])
    );

    // The handler panics: that channel gets phx_error and is gone; the socket lives on.
    send(&mut ws, json!(["3", "5", "room:1", "boom", {}]));
    assert_eq!(
        recv(&mut ws),
        json!(["3", "3", "room:1", "phx_error", {"reason": "channel_crash"}])
    );
    send(&mut ws, json!(["3", "6", "room:1", "hello", {}]));
    assert_eq!(recv(&mut ws)[4]["response"]["reason"], "unmatched topic");
    send(&mut ws, json!(["1", "7", "user:alice", "hello", {"a": 1}]));
    let mut events: Vec<String> = (0..2)
        .map(|_| recv(&mut ws)[3].as_str().unwrap().to_string())
        .collect();
    events.sort();
    assert_eq!(events, vec!["hello", "phx_reply"]);
    // Another socket on the same server is unaffected.
    let url = format!("ws://{}{PHX_PATH}", server.local_addr());
    let (mut other, _) = ws_connect(&url, Duration::from_secs(5));
    send(&mut other, json!([null, "1", "phoenix", "heartbeat", {}]));
    assert_eq!(recv(&mut other)[4]["status"], "ok");
    server.stop();
    server.join().expect("clean stop");
}
