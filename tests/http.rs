//! The HTTP side: health, routing, and every bad form of the opening handshake, on real sockets.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{TestServer, closed_within, header, http_exchange, upgrade_request};

#[test]
fn health_answers_200_with_the_core() {
    let srv = TestServer::start(&["--cores", "2"]);
    let mut s = srv.connect_tcp();
    let (status, head) = http_exchange(&mut s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
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
    let dir = std::env::temp_dir().join(format!("corecast-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "lissten = \"127.0.0.1:1\"\n").unwrap();
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
