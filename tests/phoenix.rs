//! Phoenix Channels V2 on real sockets, with tungstenite as the client: the reserved events
//! answered as Phoenix answers them, broadcasts across cores, the API, and tokens.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{PHX_PATH, TestServer, Ws, header, http_exchange, ws_recv as recv, ws_send as send};
use serde_json::{Value, json};
use tungstenite::Message;

fn start(cfg: &str) -> TestServer {
    TestServer::start_with_config(cfg, &["--cores", "2"])
}

fn open(srv: &TestServer) -> (Ws, u64) {
    srv.phx_ws(Duration::from_secs(5))
}

fn join(ws: &mut Ws, topic: &str, join_ref: &str) -> Value {
    send(ws, json!([join_ref, join_ref, topic, "phx_join", {}]));
    recv(ws)
}

fn ok_reply(join_ref: Value, msg_ref: &str, topic: &str) -> Value {
    json!([join_ref, msg_ref, topic, "phx_reply", {"response": {}, "status": "ok"}])
}

#[test]
fn heartbeat_join_push_leave_as_phoenix_answers() {
    let srv = start("");
    let (mut ws, _) = open(&srv);
    send(&mut ws, json!([null, "1", "phoenix", "heartbeat", {}]));
    assert_eq!(recv(&mut ws), ok_reply(Value::Null, "1", "phoenix"));

    assert_eq!(
        join(&mut ws, "room:1", "2"),
        ok_reply(json!("2"), "2", "room:1")
    );
    // A push is broadcast to the topic, sender included, and answered ok.
    send(
        &mut ws,
        json!(["2", "3", "room:1", "new_msg", {"body": "hi"}]),
    );
    let mut got = [recv(&mut ws), recv(&mut ws)];
    got.sort_by_key(|v| v[3].as_str().unwrap().to_string());
    assert_eq!(
        got[0],
        json!([null, null, "room:1", "new_msg", {"body": "hi"}])
    );
    assert_eq!(got[1], ok_reply(json!("2"), "3", "room:1"));

    // A push to a topic not joined.
    send(&mut ws, json!(["9", "4", "room:2", "new_msg", {}]));
    assert_eq!(
        recv(&mut ws),
        json!([null, "4", "room:2", "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}])
    );
    // A stale join_ref is ignored: the next answer is the heartbeat's.
    send(&mut ws, json!(["1", "5", "room:1", "new_msg", {}]));
    send(&mut ws, json!([null, "6", "phoenix", "heartbeat", {}]));
    assert_eq!(recv(&mut ws), ok_reply(Value::Null, "6", "phoenix"));

    // Leave: ok reply, then phx_close with the join ref.
    send(&mut ws, json!(["2", "7", "room:1", "phx_leave", {}]));
    assert_eq!(recv(&mut ws), ok_reply(json!("2"), "7", "room:1"));
    assert_eq!(recv(&mut ws), json!(["2", "2", "room:1", "phx_close", {}]));
    send(&mut ws, json!(["2", "8", "room:1", "new_msg", {}]));
    assert_eq!(recv(&mut ws)[4]["response"]["reason"], "unmatched topic");
}

#[test]
fn duplicate_join_closes_the_old_join_first() {
    let srv = start("");
    let (mut ws, _) = open(&srv);
    assert_eq!(
        join(&mut ws, "room:d", "1"),
        ok_reply(json!("1"), "1", "room:d")
    );
    send(&mut ws, json!(["5", "5", "room:d", "phx_join", {}]));
    assert_eq!(recv(&mut ws), json!(["1", "1", "room:d", "phx_close", {}]));
    assert_eq!(recv(&mut ws), ok_reply(json!("5"), "5", "room:d"));
}

#[test]
fn topic_patterns_and_channel_limit() {
    let srv = start("topics = [\"room:*\"]\nmax_channels = 3\n");
    let (mut ws, _) = open(&srv);
    assert_eq!(
        join(&mut ws, "chat:1", "1"),
        json!([null, "1", "chat:1", "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}])
    );
    for i in 0..3 {
        let r = i.to_string();
        assert_eq!(join(&mut ws, &format!("room:{i}"), &r)[4]["status"], "ok");
    }
    assert_eq!(
        join(&mut ws, "room:9", "9"),
        json!(["9", "9", "room:9", "phx_reply", {"response": {"reason": "too many channels joined"}, "status": "error"}])
    );
}

#[test]
fn broadcast_reaches_every_subscriber_on_both_cores_once() {
    let srv = start("");
    let mut clients = Vec::new();
    let mut cores = HashSet::new();
    for i in 0..16 {
        let (mut ws, core) = open(&srv);
        cores.insert(core);
        assert_eq!(join(&mut ws, "room:all", &i.to_string())[4]["status"], "ok");
        clients.push(ws);
    }
    assert_eq!(cores.len(), 2, "16 sockets all on one core");
    send(
        &mut clients[0],
        json!(["0", "p", "room:all", "shout", {"n": 1}]),
    );
    for (i, ws) in clients.iter_mut().enumerate() {
        let mut seen = 0;
        for _ in 0..(if i == 0 { 2 } else { 1 }) {
            let v = recv(ws);
            if v[3] == "shout" {
                assert_eq!(v, json!([null, null, "room:all", "shout", {"n": 1}]));
                seen += 1;
            }
        }
        assert_eq!(seen, 1, "client {i}");
    }
    // And nothing more arrives (no duplicates): a heartbeat is answered next.
    for ws in clients.iter_mut() {
        send(ws, json!([null, "h", "phoenix", "heartbeat", {}]));
        assert_eq!(recv(ws)[3], "phx_reply");
    }
}

#[test]
fn binary_push_is_broadcast_as_a_binary_frame() {
    let srv = start("");
    let (mut ws, _) = open(&srv);
    join(&mut ws, "room:b", "1");
    // V2 binary push: kind 0, sizes of join_ref, ref, topic, event, then the strings, then data.
    let (jr, r, t, e, data) = ("1", "2", "room:b", "bin", [0u8, 1, 2, 255]);
    let mut frame = vec![
        0u8,
        jr.len() as u8,
        r.len() as u8,
        t.len() as u8,
        e.len() as u8,
    ];
    for s in [jr, r, t, e] {
        frame.extend_from_slice(s.as_bytes());
    }
    frame.extend_from_slice(&data);
    ws.send(Message::binary(frame)).unwrap();
    let mut saw_broadcast = false;
    let mut saw_reply = false;
    for _ in 0..2 {
        match ws.read().unwrap() {
            Message::Binary(b) => {
                let mut want = vec![2u8, t.len() as u8, e.len() as u8];
                want.extend_from_slice(t.as_bytes());
                want.extend_from_slice(e.as_bytes());
                want.extend_from_slice(&data);
                assert_eq!(&b[..], &want[..]);
                saw_broadcast = true;
            }
            Message::Text(txt) => {
                let v: Value = serde_json::from_str(&txt).unwrap();
                assert_eq!(v, ok_reply(json!("1"), "2", "room:b"));
                saw_reply = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_broadcast && saw_reply);
}

#[test]
fn api_broadcast_with_key_reaches_subscribers() {
    let srv = start("api_key = \"k1\"\n");
    let (mut ws, _) = open(&srv);
    join(&mut ws, "room:api", "1");
    let body = r#"{"topic":"room:api","event":"announce","payload":{"x":1}}"#;
    let post = |auth: &str| {
        let mut s = srv.connect_tcp();
        let req = format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        http_exchange(&mut s, req.as_bytes()).0
    };
    assert_eq!(post(""), 401);
    assert_eq!(post("Authorization: Bearer nope\r\n"), 401);
    assert_eq!(post("Authorization: Bearer k1\r\n"), 202);
    assert_eq!(
        recv(&mut ws),
        json!([null, null, "room:api", "announce", {"x": 1}])
    );
    // A bad body is a 400, not a broadcast.
    let mut s = srv.connect_tcp();
    let req = "POST /api/broadcast HTTP/1.1\r\nAuthorization: Bearer k1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{bad}";
    assert_eq!(http_exchange(&mut s, req.as_bytes()).0, 400);
}

#[test]
fn tokens_required_checked_and_expiring() {
    let srv = start("auth_secret = \"s3cret\"\nrequire_token = true\n");
    let mint = |extra: &[&str]| mint_cli(extra).1;
    let status = |query: &str, protocol: Option<&str>| upgrade_status(&srv, query, protocol);
    let good = mint(&["--ttl-secs", "60"]);
    let expired = mint(&["--exp-unix", "1000"]);
    // A JWT whose claims are swapped for another subject's, keeping the signature.
    let forged = {
        use base64::Engine;
        let parts: Vec<String> = good.split('.').map(String::from).collect();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"mallory","exp":99999999999}"#);
        format!("{}.{claims}.{}", parts[0], parts[2])
    };
    assert_eq!(status("", None).0, 403, "no token");
    assert_eq!(status(&format!("&token={good}"), None).0, 101);
    assert_eq!(status(&format!("&token={expired}"), None).0, 403);
    assert_eq!(status(&format!("&token={forged}"), None).0, 403);
    // As phoenix.js sends it: the bearer subprotocol, answered with "phoenix".
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&good);
    let (st, head) = status("", Some(&format!("phoenix, base64url.bearer.phx.{b64}")));
    assert_eq!(st, 101);
    assert_eq!(header(&head, "sec-websocket-protocol"), Some("phoenix"));
}

#[test]
fn unknown_vsn_is_403_and_bad_frames_close() {
    let srv = start("");
    let mut s = srv.connect_tcp();
    let req = common::upgrade_request("/socket/websocket?vsn=9.9.9");
    assert_eq!(http_exchange(&mut s, req.as_bytes()).0, 403);
    // Not a Phoenix message: closed with 1007, other sockets unaffected.
    let (mut bad, _) = open(&srv);
    let (mut good, _) = open(&srv);
    bad.send(Message::text("{\"not\":\"an array\"}")).unwrap();
    match bad.read().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1007),
        other => panic!("{other:?}"),
    }
    send(&mut good, json!([null, "1", "phoenix", "heartbeat", {}]));
    assert_eq!(recv(&mut good)[4]["status"], "ok");
}

#[test]
fn idle_sockets_are_closed_and_heartbeats_keep_them() {
    let srv = start("idle_timeout_ms = 400\n");
    let (mut idle, _) = open(&srv);
    let (mut alive, _) = open(&srv);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        send(&mut alive, json!([null, "h", "phoenix", "heartbeat", {}]));
        assert_eq!(recv(&mut alive)[4]["status"], "ok");
        std::thread::sleep(Duration::from_millis(100));
    }
    match idle.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("idle socket not closed: {other:?}"),
    }
}

/// Status and head of an upgrade to `/socket/websocket?vsn=2.0.0<query>` offering `protocols`.
fn upgrade_status(srv: &TestServer, query: &str, protocols: Option<&str>) -> (u16, String) {
    let mut s = srv.connect_tcp();
    let mut req = common::upgrade_request(&format!("{PHX_PATH}{query}"));
    if let Some(p) = protocols {
        req = req.replace(
            "\r\n\r\n",
            &format!("\r\nSec-WebSocket-Protocol: {p}\r\n\r\n"),
        );
    }
    let (status, head) = http_exchange(&mut s, req.as_bytes());
    if status == 101 {
        return (status, head);
    }
    // The reason follows the head, up to the close.
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut body);
    (status, head + &body)
}

/// `corecast token --secret s3cret --sub alice <extra>`: (success, stdout, stderr).
fn mint_cli(extra: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["token", "--secret", "s3cret", "--sub", "alice"])
        .args(extra)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn bearer_subprotocol_without_phoenix_is_refused_with_a_reason() {
    let srv = start("auth_secret = \"s3cret\"\nrequire_token = true\n");
    let (ok, token, _) = mint_cli(&["--ttl-secs", "60"]);
    assert!(ok);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&token);
    let bearer = format!("base64url.bearer.phx.{b64}");
    // Alone (a browser would fail a 101 that chose no subprotocol): 400, saying why.
    let (status, text) = upgrade_status(&srv, "", Some(&bearer));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"phoenix\""), "{text}");
    // With another subprotocol but not "phoenix": the same.
    assert_eq!(
        upgrade_status(&srv, "", Some(&format!("{bearer}, chat"))).0,
        400
    );
    // As phoenix.js offers it: 101 with "phoenix" chosen.
    let (status, head) = upgrade_status(&srv, "", Some(&format!("phoenix, {bearer}")));
    assert_eq!(status, 101);
    assert_eq!(header(&head, "sec-websocket-protocol"), Some("phoenix"));
}

#[test]
fn tokens_living_longer_than_token_max_age_are_refused_and_not_minted() {
    let day = 86_400u64;
    let strict = start("auth_secret = \"s3cret\"\nrequire_token = true\n");
    let query = |t: &str| format!("&token={t}");
    // A token that never expires: refused by default however well it is signed.
    let forever = corecast::app::auth::mint(b"s3cret", "alice", u64::MAX);
    assert_eq!(upgrade_status(&strict, &query(&forever), None).0, 403);
    // The longest lifetime the default allows is minted and accepted.
    let (ok, token, _) = mint_cli(&["--ttl-secs", &day.to_string()]);
    assert!(ok);
    assert_eq!(upgrade_status(&strict, &query(&token), None).0, 101);
    // Longer is not minted (the server would refuse it), with the reason.
    for extra in [
        vec!["--ttl-secs".to_string(), (day + 1).to_string()],
        vec!["--exp-unix".to_string(), u64::MAX.to_string()],
    ] {
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (ok, out, err) = mint_cli(&args);
        assert!(!ok && out.is_empty(), "{extra:?} minted {out}");
        assert!(err.contains("token_max_age_secs"), "{err}");
    }
    // Minted for a server that allows a week: refused by default, accepted there.
    let week = (7 * day).to_string();
    let (ok, long, _) = mint_cli(&["--ttl-secs", &week, "--max-age-secs", &week]);
    assert!(ok);
    assert_eq!(upgrade_status(&strict, &query(&long), None).0, 403);
    let lenient = start(&format!(
        "auth_secret = \"s3cret\"\nrequire_token = true\ntoken_max_age_secs = {week}\n"
    ));
    assert_eq!(upgrade_status(&lenient, &query(&long), None).0, 101);
    assert_eq!(upgrade_status(&lenient, &query(&forever), None).0, 403);
}
