//! HTTP/1.1 keep-alive and the API a backend leans on (issue 11), on real sockets: many requests
//! (sequential and pipelined) on one connection, answered in order by one core; publications
//! over one connection in order on every core; batches; HEAD; reason phrases; bearer keys;
//! the keep-alive wait and what an idle kept-alive connection costs; bad requests close only
//! their own connection.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{TestServer, Ws, header, ws_recv as next_message, ws_send};

/// One HTTP response as read from the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    /// The status line's reason phrase.
    reason: String,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn kept_alive(&self) -> bool {
        header(&self.head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("keep-alive"))
    }
}

/// A client connection that reads responses by their `Content-Length` (never to EOF).
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(srv: &TestServer) -> Client {
        Client {
            r: BufReader::new(srv.connect_tcp()),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).expect("write");
    }

    /// Read one response; `head_only` for the answer to a HEAD (no body follows).
    fn response(&mut self, head_only: bool) -> Response {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).expect("read response head");
            assert!(n > 0, "closed by the server; head so far {head:?}");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut status_line = head.lines().next().unwrap_or("").splitn(3, ' ');
        let status = status_line
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect(&head);
        let reason = status_line.next().unwrap_or("").to_string();
        let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; if head_only { 0 } else { len }];
        self.r.read_exact(&mut body).expect("read response body");
        Response {
            status,
            reason,
            head,
            body,
        }
    }

    fn request(&mut self, raw: &str) -> Response {
        self.send(raw.as_bytes());
        self.response(raw.starts_with("HEAD "))
    }

    /// The core serving this connection (from `/health`).
    fn core(&mut self) -> u64 {
        let r = self.request(HEALTH);
        assert!(r.kept_alive(), "{}", r.head);
        r.json()["core"].as_u64().unwrap()
    }

    /// True once the server has closed the connection (EOF or reset) within `limit`.
    fn closed_within(&mut self, limit: Duration) -> bool {
        let s = self.r.get_mut();
        s.set_read_timeout(Some(limit)).unwrap();
        let mut byte = [0u8; 1];
        let closed = match s.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => panic!("unexpected byte {byte:?}"),
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        closed
    }
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

/// `POST /api/broadcast` with `body` of `content_type` and `headers` (each ending in CRLF).
fn post(content_type: &str, headers: &str, body: &str) -> String {
    format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn publication(topic: &str, n: usize) -> Value {
    json!({"topic": topic, "event": "seq", "payload": {"n": n}})
}

fn post_one(topic: &str, n: usize) -> String {
    post("application/json", "", &publication(topic, n).to_string())
}

/// A Phoenix V2 socket joined to `topic`, and the core it is on.
fn subscriber(srv: &TestServer, topic: &str) -> (Ws, u64) {
    let (mut ws, core) = srv.phx_ws(Duration::from_secs(10));
    ws_send(&mut ws, json!(["1", "1", topic, "phx_join", {}]));
    let reply = next_message(&mut ws);
    assert_eq!(reply[3], "phx_reply", "{reply}");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    (ws, core)
}

/// The `n` of the next `seq` broadcast on `ws`.
fn next_seq(ws: &mut Ws) -> u64 {
    let m = next_message(ws);
    assert_eq!(m[3], "seq", "{m}");
    m[4]["n"].as_u64().unwrap()
}

/// A connection to the server on a core other than `not` (the kernel spreads new connections
/// over the cores' listeners; try until one lands elsewhere).
fn client_on_other_core(srv: &TestServer, not: u64) -> Client {
    for _ in 0..200 {
        let mut c = Client::connect(srv);
        if c.core() != not {
            return c;
        }
    }
    panic!("no connection landed on a core other than {not}");
}

#[test]
fn requests_on_one_connection_are_answered_in_order_by_one_core() {
    let srv = TestServer::start(&["--cores", "2"]);
    let mut c = Client::connect(&srv);
    let core = c.core();
    for i in 0..200 {
        let r = if i % 2 == 0 {
            c.request(HEALTH)
        } else {
            c.request(&post_one("room:ka", i))
        };
        assert!(r.kept_alive(), "{i}: {}", r.head);
        if i % 2 == 0 {
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["core"].as_u64(), Some(core), "request {i}");
        } else {
            assert_eq!(
                (r.status, r.json()),
                (202, json!({"ok": true, "published": 1}))
            );
        }
    }
    // HTTP/1.1 `Connection: close`: answered with it, then closed.
    let r = c.request("GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(header(&r.head, "connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));
    // HTTP/1.0 keeps the connection only when asked to.
    let mut c = Client::connect(&srv);
    let r = c.request("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(r.kept_alive(), "{}", r.head);
    assert!(header(&r.head, "keep-alive").is_some(), "{}", r.head);
    let r = c.request("GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(header(&r.head, "connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    // A small out-queue bound, so the answers of the pipelined requests pass it and the rest
    // wait in the connection's buffer until the client reads.
    let srv = TestServer::start_with_config("out_queue_max_frames = 8\n", &["--cores", "1"]);
    let mut c = Client::connect(&srv);
    let mut batch = String::new();
    for i in 0..2_000 {
        batch.push_str(&match i % 4 {
            0 => HEALTH.to_string(),
            1 => post_one("room:pipe", i),
            2 => "HEAD /health HTTP/1.1\r\n\r\n".to_string(),
            _ => format!("GET /nope/{i} HTTP/1.1\r\n\r\n"),
        });
    }
    batch.push_str(&post("application/json", "", "{bad json"));
    batch.push_str("GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
    batch.push_str(HEALTH); // after the close: never answered
    // Written by another thread: the server stops reading while its answers are not read.
    let mut w = c.r.get_ref().try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(batch.as_bytes()));
    for i in 0..2_000 {
        let r = c.response(i % 4 == 2);
        let want = [200, 202, 200, 404][i % 4];
        assert_eq!(r.status, want, "response {i}: {}", r.head);
        assert!(r.kept_alive(), "response {i}: {}", r.head);
        if i % 4 == 2 {
            assert!(header(&r.head, "content-length").is_some(), "{}", r.head);
        }
    }
    let r = c.response(false);
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(
        r.kept_alive(),
        "a bad body that was read keeps the connection"
    );
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("bad request body")
    );
    let r = c.response(false);
    assert_eq!(
        (r.status, header(&r.head, "connection")),
        (200, Some("close"))
    );
    assert!(c.closed_within(Duration::from_secs(5)));
    writer
        .join()
        .unwrap()
        .expect("the server read every request");
}

#[test]
fn publications_on_one_connection_arrive_in_order_on_the_other_core() {
    let srv = TestServer::start(&["--cores", "2"]);
    let (mut ws, sub_core) = subscriber(&srv, "room:order");
    let mut c = client_on_other_core(&srv, sub_core);
    let reader = std::thread::spawn(move || (0..1_000).map(|_| next_seq(&mut ws)).collect());
    // Half one request at a time, half pipelined in one write.
    for n in 0..500 {
        assert_eq!(c.request(&post_one("room:order", n)).status, 202);
    }
    let pipelined: String = (500..1_000).map(|n| post_one("room:order", n)).collect();
    c.send(pipelined.as_bytes());
    for _ in 500..1_000 {
        assert_eq!(c.response(false).status, 202);
    }
    assert_ne!(c.core(), sub_core, "the publisher stayed on its core");
    let got: Vec<u64> = reader.join().unwrap();
    assert_eq!(got, (0..1_000).collect::<Vec<_>>(), "out of order or lost");
}

#[test]
fn batches_are_published_in_order_all_or_nothing_and_bounded() {
    let srv = TestServer::start_with_config("max_broadcast_batch = 1000\n", &["--cores", "2"]);
    let (mut ws, sub_core) = subscriber(&srv, "room:batch");
    let mut c = client_on_other_core(&srv, sub_core);
    let array = |range: std::ops::Range<usize>| {
        Value::Array(range.map(|n| publication("room:batch", n)).collect()).to_string()
    };
    // A JSON array, answered once.
    let r = c.request(&post("application/json", "", &array(0..1000)));
    assert_eq!(
        (r.status, r.json()),
        (202, json!({"ok": true, "published": 1000}))
    );
    assert_eq!(r.reason, "Accepted");
    // NDJSON: one per line, CRLF or LF, blank lines ignored.
    let ndjson: String = (1000..1300)
        .map(|n| {
            format!(
                "{}{}",
                publication("room:batch", n),
                ["\n", "\r\n\n"][n % 2]
            )
        })
        .collect();
    let r = c.request(&post("application/x-ndjson; charset=utf-8", "", &ndjson));
    assert_eq!(
        (r.status, r.json()),
        (202, json!({"ok": true, "published": 300}))
    );
    for n in 0..1300 {
        assert_eq!(next_seq(&mut ws), n);
    }

    // All or nothing: one bad publication refuses the batch, with its index and the reason.
    let with_bad = |i: usize, bad: Value| {
        let mut items: Vec<Value> = (0..10).map(|n| publication("room:batch", n)).collect();
        items[i] = bad;
        Value::Array(items).to_string()
    };
    let cases = [
        (
            with_bad(
                7,
                json!({"topic": "room:batch", "event": "phx_reply", "payload": {}}),
            ),
            7,
            "reserved event",
        ),
        (
            with_bad(3, json!({"topic": "room:batch", "payload": {}})),
            3,
            "missing field `event`",
        ),
        (
            with_bad(
                0,
                json!({"topic": "room:batch", "event": "e", "payload": [1]}),
            ),
            0,
            "JSON object",
        ),
        (
            with_bad(9, json!({"topic": "", "event": "e", "payload": {}})),
            9,
            "empty topic",
        ),
    ];
    for (body, index, why) in cases {
        let r = c.request(&post("application/json", "", &body));
        assert_eq!(r.status, 400, "{body}");
        assert!(r.kept_alive());
        let v = r.json();
        assert_eq!(v["index"], index, "{v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{v}");
    }
    let mut lines: Vec<String> = (0..6)
        .map(|n| publication("room:batch", n).to_string())
        .collect();
    lines[4] = "{\"topic\": \"room:batch\", \"event\": ".into();
    let r = c.request(&post("application/x-ndjson", "", &lines.join("\n")));
    let v = r.json();
    assert_eq!(
        (r.status, v["index"].as_u64(), v["line"].as_u64()),
        (400, Some(4), Some(5)),
        "{v}"
    );
    // Over the bound: 413, nothing published.
    let r = c.request(&post("application/json", "", &array(0..1001)));
    assert_eq!(r.status, 413, "{}", r.head);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("max_broadcast_batch")
    );
    let too_many: String = (0..1001)
        .map(|n| format!("{}\n", publication("room:batch", n)))
        .collect();
    assert_eq!(
        c.request(&post("application/x-ndjson", "", &too_many))
            .status,
        413
    );
    // Nothing of the refused batches reached the subscriber: the next message is this one.
    assert_eq!(c.request(&post_one("room:batch", 4242)).status, 202);
    assert_eq!(next_seq(&mut ws), 4242);
}

#[test]
fn head_has_the_get_headers_and_no_body() {
    let srv = TestServer::start(&["--cores", "1"]);
    let mut c = Client::connect(&srv);
    let get = c.request(HEALTH);
    let head = c.request("HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head.status, 200);
    let len = header(&get.head, "content-length").unwrap();
    assert_eq!(header(&head.head, "content-length"), Some(len));
    assert_eq!(header(&head.head, "content-type"), Some("application/json"));
    // No body followed the HEAD answer: the next bytes are the next response's status line.
    let m = c.request("HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(m.status, 200);
    assert!(
        header(&m.head, "content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );
    let refused = c.request("HEAD /nope HTTP/1.1\r\n\r\n");
    assert_eq!(refused.status, 404);
    assert_eq!(c.request(HEALTH).status, 200);
}

#[test]
fn reason_phrases_on_the_wire() {
    let srv = TestServer::start_with_config(
        "echo = true\nmetrics_key = \"m1\"\nmax_request_body = 100\nmax_body_bytes_in_flight = 100\n",
        &["--cores", "1"],
    );
    let json = "application/json";
    let fresh = |raw: &str| {
        let mut c = Client::connect(&srv);
        c.request(raw)
    };
    let big_head = format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    let cases: Vec<(String, u16, &str)> = vec![
        (HEALTH.into(), 200, "OK"),
        (post_one("room:r", 1), 202, "Accepted"),
        ("BAD\x01 nonsense\r\n\r\n".into(), 400, "Bad Request"),
        ("GET /metrics HTTP/1.1\r\n\r\n".into(), 401, "Unauthorized"),
        (
            post(json, "Origin: https://evil.example\r\n", "{}"),
            403,
            "Forbidden",
        ),
        ("GET /nope HTTP/1.1\r\n\r\n".into(), 404, "Not Found"),
        (
            "PUT /api/broadcast HTTP/1.1\r\n\r\n".into(),
            405,
            "Method Not Allowed",
        ),
        (
            format!("POST /api/broadcast HTTP/1.1\r\nContent-Type: {json}\r\n\r\n"),
            411,
            "Length Required",
        ),
        (post(json, "", &"x".repeat(101)), 413, "Content Too Large"),
        (post("text/plain", "", "{}"), 415, "Unsupported Media Type"),
        ("GET /echo HTTP/1.1\r\n\r\n".into(), 426, "Upgrade Required"),
        (big_head, 431, "Request Header Fields Too Large"),
        (common::upgrade_request("/echo"), 101, "Switching Protocols"),
    ];
    for (raw, status, phrase) in cases {
        let r = fresh(&raw);
        assert_eq!(
            (r.status, r.reason.trim_end()),
            (status, phrase),
            "{raw:.60}"
        );
    }
    // 100 Continue, and 503 while another request's body holds the core's budget.
    let mut holder = Client::connect(&srv);
    let body = json!({"topic": "room:r", "event": "e", "payload": {"p": "x".repeat(30)}});
    let body = body.to_string();
    assert!(
        (51..=100).contains(&body.len()),
        "two must not fit the budget of 100"
    );
    let expect = post(json, "Expect: 100-continue\r\n", &body);
    holder.send(&expect.as_bytes()[..expect.len() - body.len()]);
    let r = holder.response(false);
    assert_eq!((r.status, r.reason.trim_end()), (100, "Continue"));
    let r = fresh(&post(json, "", &body));
    assert_eq!(
        (r.status, r.reason.trim_end()),
        (503, "Service Unavailable")
    );
    holder.send(body.as_bytes());
    assert_eq!(holder.response(false).status, 202);
}

#[test]
fn bearer_scheme_is_case_insensitive_and_errors_are_json() {
    let srv = TestServer::start_with_config(
        "api_key = \"k1\"\nmetrics_key = \"m1\"\n",
        &["--cores", "1"],
    );
    let mut c = Client::connect(&srv);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("Authorization: {scheme} k1\r\n");
        let body = publication("room:b", 1).to_string();
        let r = c.request(&post("application/json", &auth, &body));
        assert_eq!(r.status, 202, "{scheme}: {}", r.head);
        let r = c.request(&format!(
            "GET /metrics HTTP/1.1\r\nAuthorization: {scheme} m1\r\n\r\n"
        ));
        assert_eq!(r.status, 200, "{scheme}: {}", r.head);
        assert!(r.kept_alive());
    }
    // Refusals of /metrics and /api are JSON with the reason; without a body they keep the
    // connection.
    for raw in [
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer m2\r\n\r\n".to_string(),
        "GET /metrics HTTP/1.1\r\nAuthorization: Basic bTE=\r\n\r\n".into(),
        "POST /metrics HTTP/1.1\r\nAuthorization: Bearer m1\r\n\r\n".into(),
        "GET /api/broadcast HTTP/1.1\r\nAuthorization: Bearer k1\r\n\r\n".into(),
        "GET /api/nope HTTP/1.1\r\nAuthorization: bearer k1\r\n\r\n".into(),
    ] {
        let r = c.request(&raw);
        assert!(r.status >= 400, "{raw}");
        assert_eq!(
            header(&r.head, "content-type"),
            Some("application/json"),
            "{raw}"
        );
        assert!(
            r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{raw}"
        );
        assert!(r.kept_alive(), "{raw}");
    }
}

#[test]
fn idle_kept_alive_connections_hold_no_buffer_and_close_after_the_wait() {
    const N: usize = 2_000;
    let srv = TestServer::start_with_config("http_keepalive_ms = 3000\n", &["--cores", "2"]);
    // Warm up (allocator arenas, tables) with as many connections, then let them go.
    let warm: Vec<Client> = (0..N).map(|_| Client::connect(&srv)).collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(500));
    let before = srv.rss_bytes();
    let payload = "x".repeat(4000);
    let body = format!(r#"{{"topic":"room:idle","event":"e","payload":{{"p":"{payload}"}}}}"#);
    let mut clients: Vec<Client> = (0..N)
        .map(|_| {
            let mut c = Client::connect(&srv);
            assert_eq!(c.request(&post("application/json", "", &body)).status, 202);
            assert!(c.request(HEALTH).kept_alive());
            c
        })
        .collect();
    let opened = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let grown = srv.rss_bytes().saturating_sub(before);
    let per_conn = grown / N as u64;
    println!("{N} idle kept-alive connections: RSS +{grown} B, {per_conn} B each");
    // A read buffer, a request or a 4 KB body kept per connection would be kilobytes each.
    assert!(
        per_conn < 1024,
        "{per_conn} B per idle kept-alive connection"
    );

    // One more, timed on its own: open until the wait is over, closed soon after.
    let mut last = Client::connect(&srv);
    assert!(last.request(HEALTH).kept_alive());
    let answered = Instant::now();
    assert!(
        !last.closed_within(Duration::from_millis(2700)),
        "closed before the wait"
    );
    assert!(
        last.closed_within(Duration::from_secs(2)),
        "not closed after the wait"
    );
    let took = answered.elapsed();
    println!("closed {took:?} after its answer (http_keepalive_ms = 3000)");
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "connection {i} still open"
        );
    }
    assert!(opened.elapsed() < Duration::from_secs(10));
    assert!(srv.metric("corecast_connections") <= 1);
    assert_eq!(srv.metric("corecast_handshake_timeouts_total"), 0);
}

#[test]
fn a_slow_next_request_gets_the_handshake_timeout_from_its_first_byte() {
    let srv = TestServer::start_with_config(
        "http_keepalive_ms = 1000\nhandshake_timeout_ms = 2500\n",
        &["--cores", "1"],
    );
    let mut c = Client::connect(&srv);
    assert_eq!(c.request(HEALTH).status, 200);
    std::thread::sleep(Duration::from_millis(700));
    let first_byte = Instant::now();
    c.send(b"GET /health HTTP/1.1\r\n");
    // Past the keep-alive wait: not closed, the request has its own time.
    assert!(!c.closed_within(Duration::from_millis(1200)));
    c.send(b"Host: x\r\n\r\n");
    assert_eq!(c.response(false).status, 200);
    // The same again, never finished: dropped at the handshake timeout after its first byte.
    c.send(b"GET /health HTTP/1.1\r\n");
    let started = Instant::now();
    assert!(c.closed_within(Duration::from_secs(5)));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2300), "{took:?}");
    assert!(first_byte.elapsed() < Duration::from_secs(8));
    assert_eq!(srv.metric("corecast_handshake_timeouts_total"), 1);
}

#[test]
fn a_bad_request_on_a_kept_alive_connection_closes_only_that_one() {
    let srv = TestServer::start_with_config(
        "api_key = \"k1\"\nmax_request_body = 100\nmax_body_bytes_in_flight = 100\n",
        &["--cores", "1"],
    );
    let mut other = Client::connect(&srv);
    assert_eq!(other.request(HEALTH).status, 200);
    let auth = "Authorization: Bearer k1\r\n";
    let cases = [
        (
            "malformed",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n".to_string(),
            400,
        ),
        (
            "head too large",
            format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)),
            431,
        ),
        (
            "body over max",
            post("application/json", auth, &"x".repeat(101)),
            413,
        ),
        (
            "refused with an unread body",
            post("application/json", "", "{}"),
            401,
        ),
        (
            "chunked",
            format!(
                "POST /api/broadcast HTTP/1.1\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            411,
        ),
    ];
    for (name, raw, status) in cases {
        let mut c = Client::connect(&srv);
        assert_eq!(c.request(HEALTH).status, 200, "{name}");
        let r = c.request(&raw);
        assert_eq!(r.status, status, "{name}: {}", r.head);
        assert_eq!(header(&r.head, "connection"), Some("close"), "{name}");
        assert!(
            c.closed_within(Duration::from_secs(3)),
            "{name}: not closed"
        );
        // The other kept-alive connection is not affected.
        let r = other.request(HEALTH);
        assert!(r.status == 200 && r.kept_alive(), "{name}: {}", r.head);
    }
}
