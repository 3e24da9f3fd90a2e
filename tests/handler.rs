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

#[test]
fn the_examples_handler_tracks_its_own_presence_and_updates_it() {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: 2,
        auth_secret: Some("k".into()),
        presence: vec!["room:*".into()],
        ..Config::default()
    };
    let server = private_rooms::start(cfg);
    let token = corecast::app::auth::mint(b"k", "alice", corecast::app::auth::now_unix() + 60);
    let url = format!("ws://{}{PHX_PATH}&token={token}", server.local_addr());
    let (mut ws, _) = ws_connect(&url, Duration::from_secs(5));
    send(
        &mut ws,
        json!(["1", "1", "room:lobby", "phx_join", {"meta": {"mine": 1}}]),
    );
    assert_eq!(recv(&mut ws)[4]["status"], "ok");
    assert_eq!(recv(&mut ws)[3], "presence_state");
    let diff = recv(&mut ws);
    assert_eq!(diff[3], "presence_diff");
    let meta = &diff[4]["joins"]["alice"]["metas"][0];
    assert_eq!(
        meta["role"], "member",
        "the handler's meta, not the client's: {diff}"
    );
    assert!(meta.get("mine").is_none());
    send(&mut ws, json!(["1", "2", "room:lobby", "typing", {}]));
    assert_eq!(recv(&mut ws)[4]["status"], "ok");
    let diff = recv(&mut ws);
    let new = &diff[4]["joins"]["alice"]["metas"][0];
    assert_eq!(
        (&new["typing"], &new["phx_ref_prev"]),
        (&json!(true), &meta["phx_ref"])
    );
    assert_eq!(
        diff[4]["leaves"]["alice"]["metas"][0]["phx_ref"],
        meta["phx_ref"]
    );
    server.stop();
    server.join().expect("clean stop");
}

/// A handler whose `connect` panics for sockets that ask for it.
struct PanicsOnConnect;

impl corecast::app::handler::Handler for PanicsOnConnect {
    fn connect(&self, info: &corecast::app::handler::ConnectInfo<'_>) -> bool {
        if info.query.contains("boom=1") {
            panic!("connect blew up");
        }
        true
    }
}

#[test]
fn a_panic_in_connect_is_refused_and_counted_like_the_others() {
    use std::io::{Read, Write};

    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: 1,
        ..Config::default()
    };
    let server = corecast::server::Server::start_with_handler(
        cfg,
        std::sync::Arc::new(PanicsOnConnect),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .expect("start");
    let addr = server.local_addr();
    let panics = || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find(|l| l.starts_with("corecast_handler_panics_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .expect("the series")
    };
    assert_eq!(panics(), 0);
    let refused = tungstenite::connect(format!("ws://{addr}{PHX_PATH}&boom=1"));
    match refused {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert_eq!(panics(), 1, "the connect panic is counted");
    // The server goes on: an ordinary socket connects.
    let (mut ws, _) = ws_connect(&format!("ws://{addr}{PHX_PATH}"), Duration::from_secs(5));
    send(&mut ws, json!(["1", "1", "room:1", "phx_join", {}]));
    assert_eq!(recv(&mut ws)[4]["status"], "ok");
    server.stop();
    server.join().expect("clean stop");
}
