//! The HTTP side: health, routing, and every bad form of the opening handshake, on real sockets.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{TestServer, closed_within, header, http_exchange, upgrade_request};

#[test]
fn health_answers_200_with_the_core() {
    let srv = TestServer::start(&["--cores", "2"]);
    let mut s = srv.connect_tcp();
    let req = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, head) = http_exchange(&mut s, req);
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    assert_eq!(header(&head, "connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(5)));
}

#[test]
fn good_upgrade_gets_101_with_the_rfc_accept_key() {
    let srv = TestServer::start(&["--echo"]);
    let mut s = srv.connect_tcp();
    let (status, head) = http_exchange(&mut s, upgrade_request("/echo").as_bytes());
    assert_eq!(status, 101, "{head}");
    // RFC 6455 section 1.3 example.
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(
        header(&head, "upgrade")
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );
    assert!(header(&head, "x-corecast-core").is_some());
}

#[test]
fn each_bad_handshake_gets_its_status() {
    let srv = TestServer::start(&["--echo"]);
    let good = upgrade_request("/echo");
    let cases: Vec<(&str, String, u16)> = vec![
        ("garbage", "HELLO\x01\x02 nonsense\r\n\r\n".into(), 400),
        (
            "plain GET on the WebSocket path",
            "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            426,
        ),
        (
            "missing key",
            good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
        ),
        (
            "key not 16 bytes",
            good.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            400,
        ),
        (
            "wrong version",
            good.replace("Version: 13", "Version: 8"),
            426,
        ),
        ("POST upgrade", good.replacen("GET", "POST", 1), 400),
        ("HTTP/1.0", good.replace("HTTP/1.1", "HTTP/1.0"), 400),
        ("unknown path", upgrade_request("/nope"), 404),
    ];
    for (name, req, want) in cases {
        let mut s = srv.connect_tcp();
        let (status, head) = http_exchange(&mut s, req.as_bytes());
        assert_eq!(status, want, "{name}: {head}");
        if want == 426 && name == "wrong version" {
            assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
        }
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "{name}: not closed"
        );
    }
}

#[test]
fn echo_is_not_served_without_the_flag() {
    let srv = TestServer::start(&[]);
    let mut s = srv.connect_tcp();
    let (status, _) = http_exchange(&mut s, upgrade_request("/echo").as_bytes());
    assert_eq!(status, 404);
}

#[test]
fn oversized_request_head_gets_431() {
    let srv = TestServer::start(&["--echo"]);
    let mut s = srv.connect_tcp();
    let mut req = String::from("GET /echo HTTP/1.1\r\nHost: x\r\n");
    for i in 0..4 {
        req.push_str(&format!("X-Filler-{i}: {}\r\n", "a".repeat(4000)));
    }
    req.push_str("\r\n");
    let (status, _) = http_exchange(&mut s, req.as_bytes());
    assert_eq!(status, 431);
}

#[test]
fn silent_and_slow_handshakes_are_closed_at_the_timeout() {
    let srv = TestServer::start(&["--echo", "--handshake-timeout-ms", "500"]);
    let start = Instant::now();
    // Opens TCP and sends nothing.
    let mut silent = srv.connect_tcp();
    // Sends half a request and stops.
    let mut slow = srv.connect_tcp();
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
    assert!(closed_within(&mut slow, Duration::from_secs(5)));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    // The server still serves others.
    let mut s = srv.connect_tcp();
    let (status, _) = http_exchange(&mut s, b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
}

#[test]
fn bad_config_file_is_a_clear_error() {
    let path = common::write_config("lissten = \"127.0.0.1:1\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lissten"), "{err}");
}

#[test]
fn a_core_that_cannot_start_fails_the_process() {
    // io_uring (glommio) needs RLIMIT_MEMLOCK >= 512 KiB; below it no executor can start, and
    // the process must say so and exit non-zero (so a supervisor restarts or alerts).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -l 256 && exec {} serve --listen 127.0.0.1:0",
            env!("CARGO_BIN_EXE_corecast")
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start executor"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "printed listening anyway"
    );
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP security (issue 10, points 2 and 6): who may call /api and /metrics, and that every
// refusal is made from the request head, before a body byte is buffered.

const BROADCAST: &str = r#"{"topic":"room:http","event":"e","payload":{"x":1}}"#;

/// `POST /api/broadcast` with `headers` (each ending in CRLF) and `body`.
fn post_request(headers: &str, body: &str) -> String {
    format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const JSON: &str = "Content-Type: application/json\r\n";

/// Send `request` on a new connection to `addr`; (status, head, body) of the answer (the body
/// read by its `Content-Length`: a kept-alive connection does not end after it).
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (status, head) = http_exchange(&mut s, request);
    let len = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("response body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// This host's address on its default route, if it has one (no packet is sent).
fn non_loopback_ipv4() -> Option<IpAddr> {
    let udp = UdpSocket::bind("0.0.0.0:0").ok()?;
    udp.connect("198.51.100.1:9").ok()?;
    let ip = udp.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A server on 0.0.0.0 and the two addresses to reach it by: loopback, and (if this host has
/// one) a non-loopback address of its own.
fn start_on_all(config: &str) -> (TestServer, SocketAddr, Option<SocketAddr>) {
    let srv = TestServer::start_on("0.0.0.0:0", config, &[]);
    let port = srv.addr.port();
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let remote = non_loopback_ipv4().map(|ip| SocketAddr::new(ip, port));
    if remote.is_none() {
        eprintln!("no non-loopback address on this host: only the loopback side is tested here");
    }
    (srv, local, remote)
}

#[test]
fn api_and_metrics_without_keys_answer_only_loopback_peers() {
    let (_srv, local, remote) = start_on_all("");
    let req = post_request(JSON, BROADCAST);
    let (status, _, body) = exchange(local, req.as_bytes());
    assert_eq!(status, 202, "{body}");
    let (status, _, _) = exchange(local, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    let Some(remote) = remote else { return };
    let (status, head, body) = exchange(remote, req.as_bytes());
    assert_eq!(status, 403, "{head}{body}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    assert!(body.contains("loopback"), "{body}");
    let (status, _, _) = exchange(remote, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 403);
    let (status, _, _) = exchange(remote, b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200, "/health stays open");
}

/// DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 reaches the API
/// from loopback, under its own `Host` (and a same-origin GET carries no `Origin`); so does a
/// reverse proxy on this host that passes on its client's `Host`. Without a key, loopback is
/// trusted only under an address-like `Host`.
#[test]
fn loopback_under_a_dotted_host_name_is_not_trusted_without_a_key() {
    let srv = TestServer::start_with_config(
        "[[history]]\npattern = \"room:*\"\nsize = 100\nttl_secs = 300\n",
        &[],
    );
    let with_host =
        |host: &str, request: &str| request.replacen("Host: x", &format!("Host: {host}"), 1);
    let history = "GET /api/history?topic=room:1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let metrics = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let publish = post_request(JSON, BROADCAST);
    for host in ["evil.example", "evil.example:4000", "corecast.example.com"] {
        for request in [history, metrics, publish.as_str()] {
            let (status, head, body) = exchange(srv.addr, with_host(host, request).as_bytes());
            assert_eq!(status, 403, "{host}: {head}{body}");
            assert!(body.contains("under an IP address, localhost"), "{body}");
        }
    }
    for host in [
        "127.0.0.1",
        &srv.addr.to_string(),
        "localhost:4000",
        "myhost",
    ] {
        let (status, _, body) = exchange(srv.addr, with_host(host, history).as_bytes());
        assert_eq!(status, 200, "{host}: {body}");
        let (status, _, body) = exchange(srv.addr, with_host(host, &publish).as_bytes());
        assert_eq!(status, 202, "{host}: {body}");
    }
    // With a key the Host does not matter.
    let keyed = TestServer::start_with_config("api_key = \"k1\"\n", &[]);
    let bearer = post_request(&format!("{JSON}Authorization: Bearer k1\r\n"), BROADCAST);
    let (status, _, body) = exchange(keyed.addr, with_host("evil.example", &bearer).as_bytes());
    assert_eq!(status, 202, "{body}");
}

#[test]
fn api_refuses_browser_origins_and_non_json_bodies() {
    let srv = TestServer::start_with_config("api_origins = [\"https://admin.example.com\"]\n", &[]);
    let cases = [
        (
            "foreign origin",
            format!("{JSON}Origin: https://evil.example\r\n"),
            403,
        ),
        (
            "text/plain (a CSRF simple request)",
            "Content-Type: text/plain\r\n".into(),
            415,
        ),
        (
            "form",
            "Content-Type: application/x-www-form-urlencoded\r\n".into(),
            415,
        ),
        ("no content type", String::new(), 415),
        (
            "json with charset",
            "Content-Type: application/json; charset=utf-8\r\n".into(),
            202,
        ),
        (
            "listed origin",
            format!("{JSON}Origin: https://admin.example.com\r\n"),
            202,
        ),
    ];
    for (name, headers, want) in cases {
        let (status, head, body) = exchange(srv.addr, post_request(&headers, BROADCAST).as_bytes());
        assert_eq!(status, want, "{name}: {head}{body}");
        if want != 202 {
            assert!(body.starts_with("{\"error\":"), "{name}: {body}");
        }
    }
    // Without api_origins, any Origin is refused, even the server's own.
    let srv = TestServer::start(&[]);
    let origin = format!("{JSON}Origin: http://{}\r\n", srv.addr);
    let (status, _, _) = exchange(srv.addr, post_request(&origin, BROADCAST).as_bytes());
    assert_eq!(status, 403);
}

#[test]
fn api_key_is_checked_on_the_head_from_every_address() {
    let (_srv, local, remote) = start_on_all("api_key = \"k1\"\n");
    // Heads only: the promised body never comes, the answer must not wait for it.
    let head = |auth: &str| {
        format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: x\r\n{auth}{JSON}Content-Length: 100\r\n\r\n"
        )
    };
    let started = Instant::now();
    for auth in [
        "",
        "Authorization: Bearer nope\r\n",
        "Authorization: Basic azE=\r\n",
    ] {
        let (status, head, _) = exchange(local, head(auth).as_bytes());
        assert_eq!(status, 401, "{auth}: {head}");
        assert_eq!(header(&head, "www-authenticate"), Some("Bearer"), "{head}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited for bodies"
    );
    let req = post_request(&format!("Authorization: Bearer k1\r\n{JSON}"), BROADCAST);
    assert_eq!(exchange(local, req.as_bytes()).0, 202);
    if let Some(remote) = remote {
        assert_eq!(
            exchange(remote, req.as_bytes()).0,
            202,
            "with the key any address"
        );
        assert_eq!(exchange(remote, head("").as_bytes()).0, 401);
    }
}

#[test]
fn metrics_key_guards_metrics_from_every_address() {
    let (_srv, local, remote) = start_on_all("metrics_key = \"m1\"\n");
    let (status, head, _) = exchange(local, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 401, "{head}");
    let wrong = b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer m2\r\n\r\n";
    assert_eq!(exchange(local, wrong).0, 401);
    let good = b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer m1\r\n\r\n";
    let (status, _, body) = exchange(local, good);
    assert_eq!(status, 200);
    assert!(body.contains("corecast_rss_bytes"));
    if let Some(remote) = remote {
        assert_eq!(exchange(remote, good).0, 200);
    }
}

#[test]
fn requests_are_refused_from_the_head_without_reading_a_body() {
    let srv = TestServer::start(&["--echo"]);
    let mib = 1 << 20;
    let upgrade = upgrade_request("/echo").replace("\r\n\r\n", "\r\nContent-Length: 10\r\n\r\n");
    let cases = [
        (
            format!("GET /health HTTP/1.1\r\nContent-Length: {mib}\r\n\r\n"),
            400,
        ),
        (
            "HEAD /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            400,
        ),
        (upgrade, 400),
        (
            format!("POST /health HTTP/1.1\r\nContent-Length: {mib}\r\n\r\n"),
            405,
        ),
        (
            format!("POST /nope HTTP/1.1\r\nContent-Length: {mib}\r\n\r\n"),
            404,
        ),
        (
            format!(
                "POST /api/broadcast HTTP/1.1\r\n{JSON}Content-Length: {}\r\n\r\n",
                mib + 1
            ),
            413,
        ),
        (
            format!("POST /api/broadcast HTTP/1.1\r\n{JSON}Transfer-Encoding: chunked\r\n\r\n"),
            411,
        ),
    ];
    for (req, want) in cases {
        let started = Instant::now();
        let mut s = srv.connect_tcp();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let (status, head) = common::read_head(&mut s);
        assert_eq!(status, want, "{req}: {head}");
        assert!(started.elapsed() < Duration::from_secs(2), "{req}: slow");
        assert!(
            closed_within(&mut s, Duration::from_secs(5)),
            "{req}: not closed"
        );
    }
}

#[test]
fn body_attack_on_health_does_not_grow_memory() {
    // 300 connections each promise a 1 MiB body to GET /health and stream it. Before: every
    // body was buffered until the handshake timeout (+300 MiB). Now each gets 400 from its head
    // and the bytes that still arrive are read into the core's scratch buffer and dropped.
    let srv = TestServer::start(&[]);
    let before = srv.rss_bytes();
    let body = 1usize << 20;
    let head = format!("GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: {body}\r\n\r\n");
    let mut socks: Vec<(TcpStream, usize)> = (0..300)
        .map(|_| {
            let mut s = srv.connect_tcp();
            s.write_all(head.as_bytes()).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, body)
        })
        .collect();
    let chunk = vec![b'x'; 64 * 1024];
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(20);
    while socks.iter().any(|(_, left)| *left > 0) && Instant::now() < deadline {
        for (s, left) in socks.iter_mut().filter(|(_, left)| *left > 0) {
            match s.write(&chunk[..chunk.len().min(*left)]) {
                Ok(n) => *left -= n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => *left = 0, // the server closed after its answer
            }
        }
        peak = peak.max(srv.rss_bytes());
    }
    let mut answered = 0;
    for (s, _) in &mut socks {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf)
            && buf[..n].starts_with(b"HTTP/1.1 400")
        {
            answered += 1;
        }
    }
    peak = peak.max(srv.rss_bytes());
    let grown = peak.saturating_sub(before);
    println!("RSS {before} -> peak {peak} (+{grown}), {answered} answered 400");
    assert!(grown < 24 << 20, "RSS grew by {grown} bytes");
    assert_eq!(answered, 300);
}

#[test]
fn body_budget_gives_503_and_is_released_on_every_exit() {
    let srv = TestServer::start_with_config(
        "max_request_body = 1000\nmax_body_bytes_in_flight = 1500\n",
        &["--cores", "1", "--handshake-timeout-ms", "1500"],
    );
    let payload = format!("{{\"p\":\"{}\"}}", "p".repeat(1000 - 70));
    let body = format!(r#"{{"topic":"room:budget","event":"e","payload":{payload}}}"#);
    let body = format!("{body}{}", " ".repeat(1000 - body.len())); // exactly 1000 bytes
    let full = post_request(JSON, &body).into_bytes();
    let head_len = full.len() - body.len();
    let in_flight = || srv.metric("corecast_http_body_bytes");

    // A holds 1000 bytes of the budget while its body trickles in.
    let mut a = srv.connect_tcp();
    a.write_all(&full[..head_len + 10]).unwrap();
    let wait_for = |want: u64| {
        let start = Instant::now();
        while in_flight() != want && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(in_flight(), want);
    };
    wait_for(1000);
    // B's 1000 would pass 1500: 503 at once, from the head.
    let (status, head, reply) = exchange(srv.addr, &full[..head_len]);
    assert_eq!(status, 503, "{head}{reply}");
    assert_eq!(header(&head, "retry-after"), Some("1"));
    assert!(reply.contains("busy"), "{reply}");
    assert_eq!(srv.metric("corecast_http_body_busy_total"), 1);
    // A completes: answered, and its bytes are given back.
    a.write_all(&full[head_len + 10..]).unwrap();
    let (status, head) = common::read_head(&mut a);
    assert_eq!(status, 202, "{head}");
    wait_for(0);
    assert_eq!(exchange(srv.addr, &full).0, 202);
    // C gives up half way: its bytes come back when its connection closes.
    let mut c = srv.connect_tcp();
    c.write_all(&full[..head_len + 10]).unwrap();
    wait_for(1000);
    drop(c);
    wait_for(0);
    // D is too slow: dropped at the handshake timeout, its bytes given back as well.
    let mut d = srv.connect_tcp();
    d.write_all(&full[..head_len + 10]).unwrap();
    wait_for(1000);
    assert!(closed_within(&mut d, Duration::from_secs(5)));
    wait_for(0);
    assert_eq!(exchange(srv.addr, &full).0, 202);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let srv = TestServer::start_with_config("api_key = \"k1\"\n", &[]);
    let with = |auth: &str| {
        format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: x\r\n{auth}{JSON}Expect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            BROADCAST.len()
        )
    };
    let mut s = srv.connect_tcp();
    let (status, _) = http_exchange(&mut s, with("Authorization: Bearer k1\r\n").as_bytes());
    assert_eq!(status, 100);
    s.write_all(BROADCAST.as_bytes()).unwrap();
    assert_eq!(common::read_head(&mut s).0, 202);
    // Refused: the final answer comes straight away, no 100.
    let mut s = srv.connect_tcp();
    assert_eq!(http_exchange(&mut s, with("").as_bytes()).0, 401);
}
