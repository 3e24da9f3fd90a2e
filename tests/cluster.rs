//! Several corecast nodes over a real `nats-server` (issue 13), every one a separate process on
//! its own port: a broadcast on any node reaches every subscriber on every node exactly once and
//! in order, one NATS publish per broadcast; NATS lost and back; NATS absent at start; a node
//! killed with SIGKILL costs the others nothing. `make test` installs nats-server when missing.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, Ws, ws_recv, ws_send};
use serde_json::{Value, json};

/// A nats-server on a free loopback port, stopped when dropped.
struct Nats {
    child: Child,
    port: u16,
}

fn nats_bin() -> String {
    for p in [
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ] {
        if Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok()
        {
            return p.to_string();
        }
    }
    panic!("nats-server is not installed: `make test` installs it (apt-get install nats-server)");
}

impl Nats {
    fn start_on(port: u16) -> Nats {
        let child = Command::new(nats_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { child, port }
    }

    fn start() -> Nats {
        Nats::start_on(free_port())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node(nats_port: u16, name: &str) -> TestServer {
    let config =
        format!("[cluster]\nnats_url = [\"nats://127.0.0.1:{nats_port}\"]\nnode = \"{name}\"\n");
    TestServer::start_with_config(&config, &["--cores", "2"])
}

/// `n` joined members of `topic` on `srv`.
fn members(srv: &TestServer, topic: &str, n: usize) -> Vec<Ws> {
    (0..n)
        .map(|i| {
            let (mut ws, _) = srv.phx_ws(Duration::from_secs(5));
            ws_send(&mut ws, json!([i.to_string(), "1", topic, "phx_join", {}]));
            assert_eq!(ws_recv(&mut ws)[4]["status"], "ok");
            ws
        })
        .collect()
}

/// Wait until `srv` is subscribed to `topics` topics on NATS (its bridge flushed the SUB).
fn wait_subscribed(srv: &TestServer, topics: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.metric("corecast_cluster_subscriptions") < topics {
        assert!(Instant::now() < deadline, "node never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `metric` of `srv` reaches `want` within a second (and is not past it).
fn settled(srv: &TestServer, metric: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut got = srv.metric(metric);
    while got < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        got = srv.metric(metric);
    }
    assert_eq!(got, want, "{metric}");
}

fn wait_connected(srv: &TestServer, connected: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while (srv.metric("corecast_cluster_connected") == 1) != connected {
        assert!(
            Instant::now() < deadline,
            "connected never became {connected}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `n` of every `new_msg` a member gets within `for_` (until `want` arrived).
fn take(ws: &mut Ws, want: usize, for_: Duration) -> Vec<i64> {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let deadline = Instant::now() + for_;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v[3] == "new_msg" {
                    got.push(v[4]["n"].as_i64().unwrap());
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

fn api_broadcast(srv: &TestServer, topic: &str, n: i64) {
    let body = json!({"topic": topic, "event": "new_msg", "payload": {"n": n}}).to_string();
    let req = format!(
        "POST /api/broadcast HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = srv.connect_tcp();
    let (status, _) = common::http_exchange(&mut s, req.as_bytes());
    assert_eq!(status, 202, "broadcast answered {status}");
}

fn health(srv: &TestServer) -> Value {
    let mut s = srv.connect_tcp();
    let (status, _) = common::http_exchange(&mut s, b"GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut body);
    serde_json::from_str(body.trim()).unwrap_or(Value::Null)
}

#[test]
fn three_nodes_deliver_every_broadcast_once_and_in_order() {
    let nats = Nats::start();
    let nodes: Vec<TestServer> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| node(nats.port, n))
        .collect();
    let mut subs: Vec<Vec<Ws>> = nodes.iter().map(|n| members(n, "room:all", 3)).collect();
    for n in &nodes {
        wait_subscribed(n, 1);
        assert_eq!(health(n)["status"], "ok");
    }
    // A member on node 1 pushes 20 messages; every member on every node gets each once, in
    // order (the pusher included).
    let (mut pusher, _) = nodes[0].phx_ws(Duration::from_secs(5));
    ws_send(&mut pusher, json!(["p", "1", "room:all", "phx_join", {}]));
    assert_eq!(ws_recv(&mut pusher)[4]["status"], "ok");
    for n in 0..20 {
        ws_send(
            &mut pusher,
            json!(["p", n.to_string(), "room:all", "new_msg", {"n": n}]),
        );
    }
    let want: Vec<i64> = (0..20).collect();
    for (i, node_subs) in subs.iter_mut().enumerate() {
        for ws in node_subs.iter_mut() {
            let got = take(ws, 20, Duration::from_secs(5));
            assert_eq!(got, want, "node {}", i + 1);
        }
    }
    // The API on node 3 likewise.
    api_broadcast(&nodes[2], "room:all", 100);
    for node_subs in subs.iter_mut() {
        for ws in node_subs.iter_mut() {
            assert_eq!(take(ws, 1, Duration::from_secs(5)), [100]);
        }
    }
    // Nothing more arrives: no duplicate from an echo.
    for node_subs in subs.iter_mut() {
        for ws in node_subs.iter_mut() {
            assert!(take(ws, 1, Duration::from_millis(200)).is_empty());
        }
    }
    // One NATS publish per broadcast, whatever the number of subscribers and nodes.
    // (Counted by the bridge once NATS took it: look again for a moment.)
    settled(&nodes[0], "corecast_cluster_published_total", 20);
    settled(&nodes[2], "corecast_cluster_published_total", 1);
    assert_eq!(nodes[1].metric("corecast_cluster_published_total"), 0);
    // Each other node received each publication once (not once per subscriber or core).
    assert_eq!(nodes[1].metric("corecast_cluster_received_total"), 21);

    // A node with no subscriber of a topic is not subscribed to it.
    drop(subs.remove(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes[1].metric("corecast_cluster_subscriptions") > 0 {
        assert!(Instant::now() < deadline, "node 2 kept its subscription");
        std::thread::sleep(Duration::from_millis(20));
    }
    api_broadcast(&nodes[0], "room:all", 101);
    for node_subs in subs.iter_mut() {
        for ws in node_subs.iter_mut() {
            assert_eq!(take(ws, 1, Duration::from_secs(5)), [101]);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(nodes[1].metric("corecast_cluster_received_total"), 21);

    // kill -9 node 3: the others go on.
    let mut gone = nodes.into_iter().collect::<Vec<_>>();
    let n3 = gone.pop().unwrap();
    drop(subs.pop());
    let mut n3 = n3;
    n3.child.kill().unwrap();
    let _ = n3.child.wait();
    api_broadcast(&gone[1], "room:all", 102);
    for ws in subs[0].iter_mut() {
        assert_eq!(take(ws, 1, Duration::from_secs(5)), [102]);
    }
}

#[test]
fn nats_lost_and_back_and_absent_at_start() {
    let port = free_port();
    // NATS is not there yet: the node starts, serves its local clients, says degraded.
    let a = node(port, "a");
    let mut local = members(&a, "room:x", 2);
    let h = health(&a);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["reason"].as_str().unwrap().contains("NATS"), "{h}");
    api_broadcast(&a, "room:x", 1);
    for ws in local.iter_mut() {
        assert_eq!(
            take(ws, 1, Duration::from_secs(5)),
            [1],
            "local delivery without NATS"
        );
    }
    // Counted by the bridge thread when it takes the publication off its queue.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.metric("corecast_cluster_unreachable_total") < 1 {
        assert!(
            Instant::now() < deadline,
            "the lost publication was not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // NATS comes: the node connects (retrying with backoff) and its subscription is restored.
    let nats = Nats::start_on(port);
    wait_connected(&a, true, Duration::from_secs(15));
    let b = node(port, "b");
    let mut remote = members(&b, "room:x", 2);
    wait_subscribed(&a, 1);
    wait_subscribed(&b, 1);
    assert_eq!(health(&a)["status"], "ok");
    api_broadcast(&b, "room:x", 2);
    for ws in local.iter_mut().chain(remote.iter_mut()) {
        assert_eq!(take(ws, 1, Duration::from_secs(5)), [2]);
    }

    // NATS dies: both nodes go on delivering locally and say degraded; it comes back on the same
    // port: delivery across nodes resumes without restarting corecast.
    drop(nats);
    wait_connected(&a, false, Duration::from_secs(10));
    assert_eq!(health(&b)["status"], "degraded");
    api_broadcast(&a, "room:x", 3);
    for ws in local.iter_mut() {
        assert_eq!(take(ws, 1, Duration::from_secs(5)), [3]);
    }
    for ws in remote.iter_mut() {
        assert!(
            take(ws, 1, Duration::from_millis(300)).is_empty(),
            "NATS is down"
        );
    }
    let _nats = Nats::start_on(port);
    wait_connected(&a, true, Duration::from_secs(15));
    wait_connected(&b, true, Duration::from_secs(15));
    // The client resubscribes on reconnect; give the SUBs a moment to reach the server.
    std::thread::sleep(Duration::from_millis(300));
    api_broadcast(&a, "room:x", 4);
    for ws in local.iter_mut().chain(remote.iter_mut()) {
        assert_eq!(take(ws, 1, Duration::from_secs(5)), [4]);
    }
}

/// A member's presence view (key -> phx_refs), from `presence_state` and diffs, like phoenix.js.
struct View {
    ws: Ws,
    keys: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl View {
    fn join(srv: &TestServer, topic: &str) -> View {
        let (mut ws, _) = srv.phx_ws(Duration::from_secs(5));
        ws_send(&mut ws, json!(["1", "1", topic, "phx_join", {}]));
        assert_eq!(ws_recv(&mut ws)[4]["status"], "ok");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        View {
            ws,
            keys: Default::default(),
        }
    }

    fn apply(&mut self, v: &Value, join: bool) {
        for (k, e) in v.as_object().into_iter().flatten() {
            for m in e["metas"].as_array().into_iter().flatten() {
                let r = m["phx_ref"].as_str().unwrap().to_string();
                if join {
                    self.keys.entry(k.clone()).or_default().insert(r);
                } else if let Some(set) = self.keys.get_mut(k) {
                    set.remove(&r);
                    if set.is_empty() {
                        self.keys.remove(k);
                    }
                }
            }
        }
    }

    /// Read until the view has `n` keys (or `within` passes); the number it has.
    fn until(&mut self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(tungstenite::Message::Text(t)) = self.ws.read() {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v[3].as_str() {
                    Some("presence_state") => self.apply(&v[4], true),
                    Some("presence_diff") => {
                        self.apply(&v[4]["joins"], true);
                        self.apply(&v[4]["leaves"], false);
                    }
                    _ => {}
                }
            }
            if self.keys.len() == n {
                break;
            }
        }
        self.keys.len()
    }
}

#[test]
fn presence_spans_nodes_and_a_dead_node_leaves_after_the_down_period() {
    let nats = Nats::start();
    let config = |name: &str| {
        format!(
            "presence = [\"room:*\"]\npresence_anonymous = true\n[cluster]\n\
             nats_url = [\"nats://127.0.0.1:{}\"]\nnode = \"{name}\"\n\
             presence_heartbeat_ms = 200\ndown_period_ms = 1500\n",
            nats.port
        )
    };
    let a = TestServer::start_with_config(&config("a"), &["--cores", "2"]);
    let mut a1 = View::join(&a, "room:p");
    assert_eq!(a1.until(1, Duration::from_secs(3)), 1, "a1 sees itself");
    // A node that comes later gets the others' state (its first member's view has both).
    let mut b = TestServer::start_with_config(&config("b"), &["--cores", "2"]);
    let mut b1 = View::join(&b, "room:p");
    assert_eq!(b1.until(2, Duration::from_secs(5)), 2, "b1: {:?}", b1.keys);
    assert_eq!(a1.until(2, Duration::from_secs(5)), 2, "a1: {:?}", a1.keys);
    // A second member on a: the state it gets already holds b's member.
    let mut a2 = View::join(&a, "room:p");
    assert_eq!(a2.until(3, Duration::from_secs(5)), 3, "a2: {:?}", a2.keys);
    assert_eq!(b1.until(3, Duration::from_secs(5)), 3);
    // kill -9 node b: its member leaves everyone's view after the down period, not before.
    b.child.kill().unwrap();
    let _ = b.child.wait();
    let t0 = Instant::now();
    assert_eq!(
        a1.until(2, Duration::from_secs(6)),
        2,
        "b1 left: {:?}",
        a1.keys
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "left after {:?}",
        t0.elapsed()
    );
    assert_eq!(a2.until(2, Duration::from_secs(2)), 2);
    // A node that stops cleanly says goodbye: its members leave at once.
    let b = TestServer::start_with_config(&config("b"), &["--cores", "1"]);
    let mut b2 = View::join(&b, "room:p");
    assert_eq!(b2.until(3, Duration::from_secs(5)), 3, "b2: {:?}", b2.keys);
    assert_eq!(a1.until(3, Duration::from_secs(5)), 3);
    b.terminate();
    let t0 = Instant::now();
    assert_eq!(a1.until(2, Duration::from_secs(3)), 2, "{:?}", a1.keys);
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "took {:?}",
        t0.elapsed()
    );
}

/// A socket with a token for `sub` on `srv`, joined to `room:d`.
fn with_token(srv: &TestServer, sub: &str) -> (Ws, u64) {
    let token = corecast::app::auth::mint(b"k", sub, corecast::app::auth::now_unix() + 600);
    let url = srv.url(&format!("{}&token={token}", common::PHX_PATH));
    let (mut ws, core) = common::ws_connect(&url, Duration::from_secs(5));
    ws_send(&mut ws, json!(["1", "1", "room:d", "phx_join", {}]));
    assert_eq!(ws_recv(&mut ws)[4]["status"], "ok");
    (ws, core)
}

/// Closed with `code` within `within`?
fn closed_with(ws: &mut Ws, within: Duration) -> Option<u16> {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => return Some(f.code.into()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn disconnect_by_id_closes_every_socket_of_that_id_on_every_core_and_node() {
    let nats = Nats::start();
    let config = |name: &str| {
        format!(
            "auth_secret = \"k\"\n[cluster]\nnats_url = [\"nats://127.0.0.1:{}\"]\nnode = \"{name}\"\n",
            nats.port
        )
    };
    let a = TestServer::start_with_config(&config("a"), &["--cores", "2"]);
    let b = TestServer::start_with_config(&config("b"), &["--cores", "2"]);
    // alice on both cores of a and on b; bob on a.
    let mut alice = Vec::new();
    let mut cores = std::collections::BTreeSet::new();
    while cores.len() < 2 {
        let (ws, core) = with_token(&a, "alice");
        cores.insert(core);
        alice.push(ws);
        assert!(
            alice.len() < 30,
            "the kernel never spread sockets over both cores"
        );
    }
    alice.push(with_token(&b, "alice").0);
    let (mut bob, _) = with_token(&a, "bob");
    std::thread::sleep(Duration::from_millis(300)); // b's bridge subscribed to disconnects
    let body = json!({"id": "users_socket:alice"}).to_string();
    let req = format!(
        "POST /api/disconnect HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = a.connect_tcp();
    let (status, _) = common::http_exchange(&mut s, req.as_bytes());
    assert_eq!(status, 202);
    for (i, ws) in alice.iter_mut().enumerate() {
        assert_eq!(
            closed_with(ws, Duration::from_secs(5)),
            Some(1000),
            "alice socket {i}"
        );
    }
    // bob is untouched.
    ws_send(&mut bob, json!([null, "9", "phoenix", "heartbeat", {}]));
    assert_eq!(ws_recv(&mut bob)[4]["status"], "ok");
    assert_eq!(
        a.metric("corecast_disconnects_total") + b.metric("corecast_disconnects_total"),
        alice.len() as u64
    );
    // A socket id nobody has, and a body without one.
    let mut s = a.connect_tcp();
    let bad = "{}";
    let req = format!(
        "POST /api/disconnect HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{bad}",
        bad.len()
    );
    assert_eq!(common::http_exchange(&mut s, req.as_bytes()).0, 400);
}

/// A publication's bytes as a node sends them over NATS (`pubsub::publication` layout).
fn publication(topic: &str, event: &str, payload: &str) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&(topic.len() as u32).to_le_bytes());
    b.extend_from_slice(&(event.len() as u32).to_le_bytes());
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(event.as_bytes());
    b.extend_from_slice(payload.as_bytes());
    b
}

#[test]
fn a_reserved_event_from_a_peer_on_nats_reaches_nobody() {
    use base64::Engine;
    use std::io::Write;
    let nats = Nats::start();
    let a = node(nats.port, "a");
    let mut members = members(&a, "room:r", 2);
    wait_subscribed(&a, 1);
    // A hostile (or broken) peer publishes straight on the topic's subject.
    let subject = format!(
        "corecast.t.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("room:r")
    );
    let mut peer = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    let mut wire = b"CONNECT {\"verbose\":false}\r\n".to_vec();
    for b in [
        publication("room:r", "phx_close", "{}"),
        publication("room:r", "new_msg", r#"{"n":7}"#),
    ] {
        wire.extend_from_slice(format!("PUB {subject} {}\r\n", b.len()).as_bytes());
        wire.extend_from_slice(&b);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"PING\r\n");
    peer.write_all(&wire).unwrap();
    for ws in members.iter_mut() {
        // The ordinary event arrives; the reserved one never did (it would have come first).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Vec::new();
        while !events.iter().any(|e| e == "new_msg") && Instant::now() < deadline {
            if let Ok(tungstenite::Message::Text(t)) = ws.read() {
                let v: Value = serde_json::from_str(&t).unwrap();
                events.push(v[3].as_str().unwrap_or("").to_string());
            }
        }
        assert_eq!(events, ["new_msg"], "what the member got");
    }
    assert!(a.metric("corecast_refused_events_total") >= 1);
}

/// `(n, offset)` of every `new_msg` a member gets, until `want` arrived (bounded by `for_`).
fn take_positions(ws: &mut Ws, want: usize, for_: Duration) -> Vec<(i64, u64)> {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let deadline = Instant::now() + for_;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v[3] == "new_msg" {
                    let o = v[4]["_pos"]["o"].as_u64().expect("a position");
                    got.push((v[4]["n"].as_i64().unwrap(), o));
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

#[test]
fn history_topics_are_sequenced_per_node_and_lose_nothing_across_nodes() {
    let nats = Nats::start();
    let history = "[[history]]\npattern = \"room:*\"\nsize = 100\nttl_secs = 300\n";
    let start = |name: &str| {
        let config = format!(
            "[cluster]\nnats_url = [\"nats://127.0.0.1:{}\"]\nnode = \"{name}\"\n\n{history}",
            nats.port
        );
        TestServer::start_with_config(&config, &["--cores", "2"])
    };
    let (a, b) = (start("a"), start("b"));
    let mut on_a = members(&a, "room:h", 3);
    let mut on_b = members(&b, "room:h", 3);
    wait_subscribed(&a, 1);
    wait_subscribed(&b, 1);
    for n in 0..20 {
        api_broadcast(if n % 2 == 0 { &a } else { &b }, "room:h", n);
    }
    for (node, ms) in [("a", &mut on_a), ("b", &mut on_b)] {
        let seen: Vec<Vec<(i64, u64)>> = ms
            .iter_mut()
            .map(|ws| take_positions(ws, 20, Duration::from_secs(5)))
            .collect();
        let offsets: Vec<u64> = seen[0].iter().map(|m| m.1).collect();
        assert_eq!(
            offsets,
            (1..=20).collect::<Vec<_>>(),
            "node {node}: its own offsets"
        );
        let mut ns: Vec<i64> = seen[0].iter().map(|m| m.0).collect();
        ns.sort();
        assert_eq!(
            ns,
            (0..20).collect::<Vec<_>>(),
            "node {node}: every one, once"
        );
        for s in &seen {
            assert_eq!(s, &seen[0], "node {node}: one order on the node");
        }
    }
}
