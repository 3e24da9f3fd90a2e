//! The live dashboard (issue 14), on a real server: `GET /dashboard` and `GET /dashboard/live`
//! are 404 unless `dashboard = true`; then they follow the API's access rule (loopback only
//! without `api_key`; with it the key, also as `?key=`), and the socket gets one JSON frame a
//! second whose numbers move with the server's traffic.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

/// Send `request` on a new connection to `addr`; (status, head, body) of the answer.
fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (status, head) = http_exchange(&mut s, request.as_bytes());
    let len = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("response body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

fn get(addr: SocketAddr, target: &str, extra: &str) -> (u16, String, String) {
    exchange(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// The status of an upgrade request for `target` with `extra` headers (each ending in CRLF).
fn upgrade_status(addr: SocketAddr, target: &str, extra: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = upgrade_request(target).replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1);
    s.write_all(req.as_bytes()).unwrap();
    read_head(&mut s).0
}

/// This host's address on its default route, if it has one (no packet is sent).
fn non_loopback_ipv4() -> Option<IpAddr> {
    let udp = UdpSocket::bind("0.0.0.0:0").ok()?;
    udp.connect("198.51.100.1:9").ok()?;
    let ip = udp.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn dashboard_is_404_unless_enabled() {
    let srv = TestServer::start(&[]);
    for target in ["/dashboard", "/dashboard/live", "/dashboard?key=x"] {
        assert_eq!(get(srv.addr, target, "").0, 404, "{target}");
    }
    assert_eq!(upgrade_status(srv.addr, "/dashboard/live", ""), 404);
}

#[test]
fn without_a_key_the_dashboard_answers_loopback_peers_only() {
    let srv = TestServer::start_on("0.0.0.0:0", "dashboard = true\n", &[]);
    let local = SocketAddr::from(([127, 0, 0, 1], srv.addr.port()));
    let (status, head, body) = get(local, "/dashboard", "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    assert!(header(&head, "content-security-policy").is_some_and(|c| c.contains("'none'")));
    assert!(body.starts_with("<!doctype html>") && body.contains("/dashboard/live"));
    assert!(
        !body.contains("src=\"http") && !body.contains("href=\"http"),
        "no external assets"
    );
    let mut s = TcpStream::connect(local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head_req = b"HEAD /dashboard HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (status, head) = http_exchange(&mut s, head_req);
    assert_eq!(status, 200, "{head}");
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    assert_eq!(len, body.len(), "the GET's length");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no body after a HEAD");
    assert_eq!(
        exchange(
            local,
            "POST /dashboard HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(upgrade_status(local, "/dashboard/live", ""), 101);
    // The socket refuses a page of another origin (any page could open it from loopback),
    // and takes the dashboard's own page.
    let evil = "Origin: https://evil.example\r\n";
    assert_eq!(upgrade_status(local, "/dashboard/live", evil), 403);
    let own = "Origin: http://localhost\r\n";
    assert_eq!(upgrade_status(local, "/dashboard/live", own), 101);
    // Without a key, `?key=` is no way in from elsewhere.
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("no non-loopback address on this host: only the loopback side is tested");
        return;
    };
    let remote = SocketAddr::new(ip, srv.addr.port());
    assert_eq!(get(remote, "/dashboard", "").0, 403);
    assert_eq!(get(remote, "/dashboard?key=anything", "").0, 403);
    assert_eq!(upgrade_status(remote, "/dashboard/live", ""), 403);
}

#[test]
fn with_api_key_the_dashboard_needs_the_key_as_bearer_or_query() {
    let srv = TestServer::start_with_config("dashboard = true\napi_key = \"s3cret/+\"\n", &[]);
    let a = srv.addr;
    let (status, head, _) = get(a, "/dashboard", "");
    assert_eq!(status, 401, "the key is needed from loopback too");
    assert_eq!(header(&head, "www-authenticate"), Some("Bearer"));
    assert_eq!(get(a, "/dashboard?key=s3cret%2F%2B", "").0, 200);
    assert_eq!(get(a, "/dashboard?key=s3cret/%2B", "").0, 200);
    for wrong in [
        "/dashboard?key=s3cret",
        "/dashboard?key=",
        "/dashboard?key=S3CRET%2F%2B",
    ] {
        assert_eq!(get(a, wrong, "").0, 401, "{wrong}");
    }
    let bearer = "Authorization: Bearer s3cret/+\r\n";
    assert_eq!(get(a, "/dashboard", bearer).0, 200);
    assert_eq!(get(a, "/dashboard?key=wrong", bearer).0, 200);
    // The socket: the same.
    assert_eq!(upgrade_status(a, "/dashboard/live", ""), 401);
    assert_eq!(upgrade_status(a, "/dashboard/live?key=nope", ""), 401);
    assert_eq!(
        upgrade_status(a, "/dashboard/live?key=s3cret%2F%2B", ""),
        101
    );
    assert_eq!(upgrade_status(a, "/dashboard/live", bearer), 101);
    // `?key=` is for the dashboard's two URLs only: the API still wants the header.
    let post = "POST /api/broadcast?key=s3cret%2F%2B HTTP/1.1\r\nHost: x\r\n\
        Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(exchange(a, post).0, 401);
    assert_eq!(get(a, "/metrics?key=s3cret%2F%2B", "").0, 200, "loopback");
}

/// `POST /api/broadcast` of one message on `topic`.
fn broadcast(addr: SocketAddr, topic: &str, n: u32) {
    let body = json!({"topic": topic, "event": "tick", "payload": {"n": n}}).to_string();
    let req = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = exchange(addr, &req);
    assert_eq!(status, 202, "{body}");
}

#[test]
fn the_live_socket_sends_a_frame_a_second_that_follows_the_traffic() {
    let srv = TestServer::start_with_config("dashboard = true\ncores = 2\n", &[]);
    let (mut dash, _core) = ws_connect(&srv.url("/dashboard/live"), Duration::from_secs(5));
    // What the client sends is read and ignored (a keep-alive), pings answered.
    dash.send(Message::text("ping")).unwrap();
    dash.send(Message::Ping(vec![1, 2, 3].into())).unwrap();
    let (tx, rx) = mpsc::channel::<(Instant, Value)>();
    let reader = std::thread::spawn(move || {
        loop {
            match dash.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("a JSON frame");
                    if tx.send((Instant::now(), v)).is_err() {
                        return;
                    }
                }
                Ok(Message::Pong(p)) => assert_eq!(&p[..], [1, 2, 3]),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => panic!("dashboard socket: {e}"),
            }
        }
    });
    let (_, first) = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("a first frame");
    assert_eq!(first["cores"].as_array().unwrap().len(), 2, "{first}");
    let before = first["total"]["connections"].as_u64().unwrap();
    assert!(before >= 1, "the dashboard's own socket: {first}");
    assert!(first["rss_bytes"].as_u64().unwrap() > 0);
    for field in [
        "connections",
        "websockets",
        "joins",
        "channels",
        "deliveries_per_s",
        "broadcasts_per_s",
        "mesh_backlog",
        "slow_consumer_closes",
        "presence_entries",
    ] {
        assert!(first["cores"][0][field].is_number(), "{field}: {first}");
        assert!(first["total"][field].is_number(), "{field}: {first}");
    }

    // Four subscribers of one topic, then broadcasts to it.
    let mut subs = Vec::new();
    for i in 0..4 {
        let (mut ws, _) = srv.phx_ws(Duration::from_secs(5));
        ws_send(&mut ws, json!(["1", "1", "room:dash", "phx_join", {}]));
        let reply = ws_recv(&mut ws);
        assert_eq!(reply[4]["status"], "ok", "join {i}: {reply}");
        subs.push(ws);
    }
    let start = Instant::now();
    let mut n = 0;
    let mut frames = vec![];
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(8) && seen.is_none() {
        broadcast(srv.addr, "room:dash", n);
        n += 1;
        while let Ok((at, f)) = rx.try_recv() {
            let t = &f["total"];
            let moved = t["deliveries_per_s"].as_f64().unwrap() > 0.0
                && t["broadcasts_per_s"].as_f64().unwrap() > 0.0
                && t["connections"].as_u64().unwrap() >= before + 4
                && t["channels"].as_u64().unwrap() >= 4
                && t["joins"].as_u64().unwrap() >= 4
                && f["top_topics"][0] == json!({"topic": "room:dash", "subscribers": 4});
            frames.push(at);
            if moved {
                seen = Some(f);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let f = seen.unwrap_or_else(|| panic!("no frame showed the traffic in 8 s"));
    eprintln!("a frame with the traffic: {f}");
    // One frame a second (ticks are 100 ms: a little jitter).
    let more: Vec<Instant> = (0..3)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(3))
                .expect("frames go on")
                .0
        })
        .collect();
    frames.extend(more);
    for w in frames.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(600) && gap <= Duration::from_millis(1600),
            "frames {gap:?} apart"
        );
    }
    // The subscribers got the broadcasts the frames counted.
    for ws in &mut subs {
        let m = ws_recv(ws);
        assert_eq!(
            (m[2].as_str(), m[3].as_str()),
            (Some("room:dash"), Some("tick"))
        );
    }
    drop(subs);
    // Their leaving shows too.
    let gone = (0..6).find_map(|_| {
        let (_, f) = rx.recv_timeout(Duration::from_secs(3)).ok()?;
        (f["total"]["channels"] == 0 && f["top_topics"] == json!([])).then_some(f)
    });
    assert!(gone.is_some(), "the channels' leaving never showed");
    drop(rx);
    drop(reader); // detached: it ends with the server
}
