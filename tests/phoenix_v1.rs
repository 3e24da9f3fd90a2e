//! Phoenix Channels V1 (`vsn=1.0.0`, and a connect with no `vsn`) on real sockets, with
//! tungstenite as the client, next to V2 sockets in the same topic: every socket gets each
//! broadcast in its own format, encoded once per format per core.

mod common;

use std::time::Duration;

use common::{PHX_PATH, TestServer, Ws, http_exchange, ws_connect, ws_recv, ws_send};
use serde_json::{Value, json};
use tungstenite::Message;

const V1_PATH: &str = "/socket/websocket?vsn=1.0.0";
const NO_VSN_PATH: &str = "/socket/websocket";

fn start() -> TestServer {
    TestServer::start_with_config("api_key = \"k1\"\n", &["--cores", "2"])
}

/// The next text message, skipping pings and pongs.
fn recv_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
}

/// A V1 reply `ok {}`, byte for byte as Phoenix writes it.
fn v1_ok(msg_ref: &str, topic: &str) -> String {
    format!(
        r#"{{"event":"phx_reply","payload":{{"response":{{}},"status":"ok"}},"ref":"{msg_ref}","topic":"{topic}"}}"#
    )
}

/// A V1 broadcast, byte for byte.
fn v1_broadcast(topic: &str, event: &str, payload: &str) -> String {
    format!(r#"{{"event":"{event}","payload":{payload},"ref":null,"topic":"{topic}"}}"#)
}

/// Sockets on `path`, one on each of the server's two cores (extras are dropped unjoined).
fn one_per_core(srv: &TestServer, path: &str) -> Vec<Ws> {
    let mut by_core: [Option<Ws>; 2] = [None, None];
    for _ in 0..200 {
        let (ws, core) = ws_connect(&srv.url(path), Duration::from_secs(5));
        let slot = &mut by_core[core as usize];
        if slot.is_none() {
            *slot = Some(ws);
        }
        if by_core.iter().all(Option::is_some) {
            return by_core.into_iter().flatten().collect();
        }
    }
    panic!("200 sockets on {path} all on one core");
}

fn post_broadcast(srv: &TestServer, body: &str) -> u16 {
    let mut s = srv.connect_tcp();
    let req = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_exchange(&mut s, req.as_bytes()).0
}

#[test]
fn v1_with_vsn_v1_without_and_v2_share_a_topic_each_in_its_format() {
    let srv = start();
    let topic = "room:mix";
    let mut v1 = one_per_core(&srv, V1_PATH);
    let mut bare = one_per_core(&srv, NO_VSN_PATH);
    let mut v2 = one_per_core(&srv, PHX_PATH);
    // V1 joins: the vsn=1.0.0 sockets send a join_ref, the ones without vsn (old clients)
    // none; replies never carry one.
    for (i, ws) in v1.iter_mut().enumerate() {
        let r = format!("a{i}");
        let join =
            json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": r, "join_ref": r});
        send_text(ws, &join.to_string());
        assert_eq!(recv_text(ws), v1_ok(&r, topic));
    }
    for (i, ws) in bare.iter_mut().enumerate() {
        let r = format!("b{i}");
        let join = json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": r});
        send_text(ws, &join.to_string());
        assert_eq!(recv_text(ws), v1_ok(&r, topic));
        send_text(
            ws,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"hb"}"#,
        );
        assert_eq!(recv_text(ws), v1_ok("hb", "phoenix"));
    }
    for (i, ws) in v2.iter_mut().enumerate() {
        let r = format!("c{i}");
        ws_send(ws, json!([r, r, topic, "phx_join", {}]));
        assert_eq!(
            ws_recv(ws),
            json!([r, r, topic, "phx_reply", {"response": {}, "status": "ok"}])
        );
    }
    let encodes = srv.metric("corecast_broadcast_encodes_total");

    // A push from a V1 socket without vsn: every member gets it, the pusher its reply too.
    send_text(
        &mut bare[0],
        &json!({"topic": topic, "event": "shout", "payload": {"n": 1}, "ref": "p"}).to_string(),
    );
    let pushed = v1_broadcast(topic, "shout", r#"{"n":1}"#);
    let mut got = [recv_text(&mut bare[0]), recv_text(&mut bare[0])];
    got.sort();
    let mut want = [pushed.clone(), v1_ok("p", topic)];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(recv_text(&mut bare[1]), pushed);
    for ws in &mut v1 {
        assert_eq!(recv_text(ws), pushed);
    }
    for ws in &mut v2 {
        assert_eq!(ws_recv(ws), json!([null, null, topic, "shout", {"n": 1}]));
    }

    // An API broadcast.
    let body = format!(r#"{{"topic":"{topic}","event":"announce","payload":{{"x":"é\n"}}}}"#);
    assert_eq!(post_broadcast(&srv, &body), 202);
    let announced = v1_broadcast(topic, "announce", r#"{"x":"é\n"}"#);
    for ws in v1.iter_mut().chain(bare.iter_mut()) {
        assert_eq!(recv_text(ws), announced);
    }
    for ws in &mut v2 {
        assert_eq!(
            ws_recv(ws),
            json!([null, null, topic, "announce", {"x": "é\n"}])
        );
    }
    // Two publications x two formats x two cores, whatever the number of sockets.
    assert_eq!(srv.metric("corecast_broadcast_encodes_total") - encodes, 8);

    // Leave, on a V1 socket: the reply, then phx_close with the join ref as its ref.
    let leave =
        json!({"topic": topic, "event": "phx_leave", "payload": {}, "ref": "l", "join_ref": "a0"});
    send_text(&mut v1[0], &leave.to_string());
    assert_eq!(recv_text(&mut v1[0]), v1_ok("l", topic));
    assert_eq!(
        recv_text(&mut v1[0]),
        r#"{"event":"phx_close","payload":{},"ref":"a0","topic":"room:mix"}"#
    );
}

#[test]
fn v1_sockets_close_on_what_is_not_a_v1_message() {
    let srv = start();
    let close_code = |ws: &mut Ws| loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return u16::from(f.code),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("not closed: {other:?}"),
        }
    };
    let v1 = || ws_connect(&srv.url(V1_PATH), Duration::from_secs(5)).0;
    let long = "r".repeat(65);
    for (msg, want) in [
        // A V2 array is not a V1 message.
        (
            Message::text(r#"[null,"1","phoenix","heartbeat",{}]"#),
            1007,
        ),
        // A missing key, as Phoenix's Message.from_map! raises.
        (
            Message::text(r#"{"topic":"phoenix","event":"heartbeat","payload":{}}"#),
            1007,
        ),
        (
            Message::text(
                json!({"topic": "t", "event": "e", "payload": {}, "ref": long}).to_string(),
            ),
            1008,
        ),
        // A binary frame that is not JSON (a V2 binary push).
        (Message::binary(b"\x00\x01\x01\x01\x0112te!".to_vec()), 1003),
    ] {
        let mut ws = v1();
        ws.send(msg.clone()).unwrap();
        assert_eq!(close_code(&mut ws), want, "{msg:?}");
    }
    // A binary frame holding a V1 message is read as one, as Phoenix's V1 decoder does; the
    // answer is a text frame.
    let mut ws = v1();
    let hb = r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#;
    ws.send(Message::binary(hb.as_bytes().to_vec())).unwrap();
    assert_eq!(recv_text(&mut ws), v1_ok("1", "phoenix"));
    // Reserved events are refused, not relayed.
    send_text(
        &mut ws,
        r#"{"topic":"room:1","event":"phx_join","payload":{},"ref":"2"}"#,
    );
    assert_eq!(recv_text(&mut ws), v1_ok("2", "room:1"));
    send_text(
        &mut ws,
        r#"{"topic":"room:1","event":"presence_diff","payload":{},"ref":"3"}"#,
    );
    let v: Value = serde_json::from_str(&recv_text(&mut ws)).unwrap();
    assert_eq!(
        v,
        json!({"topic": "room:1", "event": "phx_reply", "ref": "3",
            "payload": {"status": "error", "response": {"reason": "reserved event"}}})
    );
}

#[test]
fn only_vsn_1_0_x_and_2_0_x_are_served() {
    let srv = start();
    for (query, want) in [
        ("", 101),
        ("?vsn=1.0.0", 101),
        ("?vsn=2.0.0", 101),
        ("?vsn=1.1.0", 403),
        ("?vsn=3.0.0", 403),
        ("?vsn=", 403),
    ] {
        let mut s = srv.connect_tcp();
        let req = common::upgrade_request(&format!("/socket/websocket{query}"));
        assert_eq!(http_exchange(&mut s, req.as_bytes()).0, want, "{query:?}");
    }
}
