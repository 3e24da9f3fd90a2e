//! What one Phoenix client can do to the other members of its topics (issue 10, points 1, 3, 5),
//! on real sockets with tungstenite as the client: reserved events and non-object payloads are
//! never relayed, whichever way they enter (JSON text, V2 binary, the HTTP API), and refs are
//! bounded so a client cannot pin memory with them.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{TestServer, Ws, ws_recv as recv, ws_send as send};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

fn open(srv: &TestServer) -> Ws {
    srv.phx_ws(Duration::from_secs(5)).0
}

fn join(ws: &mut Ws, topic: &str) {
    send(ws, json!(["1", "1", topic, "phx_join", {}]));
    assert_eq!(recv(ws)[4]["status"], "ok");
}

fn error_reply(msg_ref: &str, topic: &str, reason: &str) -> Value {
    json!(["1", msg_ref, topic, "phx_reply", {"response": {"reason": reason}, "status": "error"}])
}

/// Two members of `topic`, on both cores of a two-core server.
fn members(srv: &TestServer, topic: &str) -> (Ws, Ws) {
    let (mut a, mut b) = (open(srv), open(srv));
    join(&mut a, topic);
    join(&mut b, topic);
    (a, b)
}

/// `a` pushes an ordinary message; it must be the very next thing `b` receives (so nothing
/// refused before it reached `b`).
fn next_is_ordinary(a: &mut Ws, b: &mut Ws, topic: &str) {
    send(a, json!(["1", "99", topic, "new_msg", {"n": 1}]));
    let broadcast = json!([null, null, topic, "new_msg", {"n": 1}]);
    // The sender gets the broadcast (queued first) and its ok reply.
    let got = [recv(a), recv(a)];
    assert!(got.contains(&broadcast), "{got:?}");
    assert!(
        got.iter().any(|m| m[1] == "99" && m[4]["status"] == "ok"),
        "{got:?}"
    );
    assert_eq!(recv(b), broadcast);
}

/// POST /api/broadcast from loopback; the status and the whole response (the server closes).
fn post(srv: &TestServer, body: &str) -> (u16, String) {
    let mut s = srv.connect_tcp();
    let req = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[test]
fn reserved_events_from_a_member_never_reach_the_others() {
    let srv = TestServer::start(&["--cores", "2"]);
    let topic = "room:x";
    let (mut a, mut b) = members(&srv, topic);
    let events = [
        "phx_close",
        "phx_error",
        "phx_reply",
        "phx_whatever",
        "presence_diff",
        "presence_state",
    ];
    for (i, event) in events.iter().enumerate() {
        let r = format!("{}", 10 + i);
        send(&mut a, json!(["1", r, topic, event, {}]));
        assert_eq!(
            recv(&mut a),
            error_reply(&r, topic, "reserved event"),
            "{event}"
        );
    }
    // Without a ref there is nothing to reply to, and still nothing relayed.
    send(&mut a, json!(["1", null, topic, "phx_close", {}]));
    // The same in a V2 binary push: kind 0, sizes, join_ref, ref, topic, event, payload.
    let (jr, r, e) = ("1", "30", "phx_close");
    let mut frame = vec![0u8, 1, 2, topic.len() as u8, e.len() as u8];
    for s in [jr, r, topic, e] {
        frame.extend_from_slice(s.as_bytes());
    }
    frame.extend_from_slice(b"{}");
    a.send(Message::binary(frame)).unwrap();
    assert_eq!(recv(&mut a), error_reply("30", topic, "reserved event"));
    next_is_ordinary(&mut a, &mut b, topic);
    let refused: u64 = srv.metric("corecast_refused_events_total");
    assert_eq!(refused, events.len() as u64 + 2);
    // The HTTP API is refused the same way.
    let (status, body) = post(
        &srv,
        r#"{"topic":"room:x","event":"phx_close","payload":{}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("reserved event"), "{body}");
    let (status, _) = post(
        &srv,
        r#"{"topic":"room:x","event":"presence_diff","payload":{"joins":{},"leaves":{}}}"#,
    );
    assert_eq!(status, 400);
    next_is_ordinary(&mut a, &mut b, topic);
}

#[test]
fn non_object_payloads_are_refused_not_relayed() {
    let srv = TestServer::start(&["--cores", "2"]);
    let topic = "room:p";
    let (mut a, mut b) = members(&srv, topic);
    for (i, payload) in [json!(null), json!([1]), json!(1), json!("s"), json!(true)]
        .into_iter()
        .enumerate()
    {
        let r = format!("{}", 10 + i);
        send(&mut a, json!(["1", r, topic, "new_msg", payload]));
        assert_eq!(
            recv(&mut a),
            error_reply(&r, topic, "payload must be a JSON object"),
            "{payload}"
        );
    }
    next_is_ordinary(&mut a, &mut b, topic);
    let (status, body) = post(&srv, r#"{"topic":"room:p","event":"e","payload":null}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("payload must be a JSON object"), "{body}");
    assert_eq!(srv.metric("corecast_refused_payloads_total"), 6);
    next_is_ordinary(&mut a, &mut b, topic);
}

#[test]
fn overlong_refs_close_the_socket_and_pin_nothing() {
    let srv = TestServer::start(&["--cores", "2"]);
    // 64 bytes is fine, and kept as the join ref.
    let mut ws = open(&srv);
    let r64 = "7".repeat(64);
    send(&mut ws, json!([r64, r64, "room:r", "phx_join", {}]));
    assert_eq!(recv(&mut ws)[0], json!(r64));
    // 65 closes with 1008, in either ref.
    for (jr, r) in [
        ("8".repeat(65), "1".to_string()),
        ("1".into(), "9".repeat(65)),
    ] {
        let mut ws = open(&srv);
        send(&mut ws, json!([jr, r, "room:r", "phx_join", {}]));
        let code = match ws.read() {
            Ok(Message::Close(Some(c))) => c.code,
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(other) => panic!("expected a close, got {other:?}"),
            Err(e) => panic!("expected a close frame, got {e}"),
        };
        assert_eq!(code, CloseCode::Policy);
    }
    // The attack of the issue, scaled: 4 sockets try to join 100 topics with 512 KiB join refs.
    // Before the bound each kept ~50 MiB; now the first join closes the socket.
    let before = srv.metric("corecast_rss_bytes");
    let big = "1".repeat(512 << 10); // under max_message (1 MiB)
    for _ in 0..4 {
        let mut ws = open(&srv);
        for t in 0..100 {
            let msg = json!([big, "1", format!("room:{t}"), "phx_join", {}]).to_string();
            if ws.send(Message::text(msg)).is_err() {
                break; // closed by the server
            }
        }
        while let Ok(m) = ws.read() {
            if let Message::Close(c) = m {
                assert_eq!(c.map(|c| c.code), Some(CloseCode::Policy));
                break;
            }
        }
    }
    let after = srv.metric("corecast_rss_bytes");
    let grew = after.saturating_sub(before);
    println!("RSS before {before} B, after {after} B (+{grew} B)");
    assert!(grew < 64 << 20, "RSS grew by {grew} bytes");
    assert_eq!(srv.metric("corecast_channels"), 1, "only the 64-byte join");
}
