//! Slowloris and graceful drain, on real sockets.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Incoming, MASK, PHX_PATH, TestServer, closed_within, upgrade_request};
use corecast::proto::frame::{OpCode, encode_masked};
use serde_json::{Value, json};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[test]
fn slowloris_is_cut_at_the_handshake_timeout_while_others_are_served() {
    let srv = TestServer::start(&["--cores", "2", "--handshake-timeout-ms", "1000"]);
    // 300 that open TCP and send nothing, 100 that send the request one byte at a time.
    let mut silent: Vec<TcpStream> = (0..300).map(|_| srv.connect_tcp()).collect();
    let mut dribblers: Vec<TcpStream> = (0..100).map(|_| srv.connect_tcp()).collect();
    let request = upgrade_request(PHX_PATH).into_bytes();
    let mut legit = srv.open_phx();
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        for d in dribblers.iter_mut() {
            let _ = d.write_all(&request[i % request.len()..i % request.len() + 1]);
        }
        i += 1;
        let t = Instant::now();
        send(
            &mut legit,
            &json!([null, i.to_string(), "phoenix", "heartbeat", {}]),
        );
        assert!(matches!(recv(&mut legit), Incoming::Json(v) if v[4]["status"] == "ok"));
        latencies.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in silent.iter_mut().chain(dribblers.iter_mut()) {
        assert!(
            closed_within(s, Duration::from_secs(3)),
            "attacker still open"
        );
    }
    latencies.sort();
    println!(
        "slowloris: 400 attackers cut after {:?}; {} heartbeats of a normal client during the attack: p50 {:?}, p99 {:?}, max {:?}",
        start.elapsed(),
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
}

#[test]
fn sigterm_delivers_queued_broadcasts_then_closes_1001() {
    // The publisher sends its 300 pushes in one burst: past the default rate limit by design.
    let mut srv = TestServer::start_with_config(
        "max_messages_per_sec = 0\n",
        &["--cores", "2", "--shutdown-timeout-ms", "5000"],
    );
    let mut subs: Vec<TcpStream> = (0..20).map(|_| srv.open_phx()).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        send(
            s,
            &json!([i.to_string(), "j", "room:drain", "phx_join", {}]),
        );
        assert!(matches!(recv(s), Incoming::Json(v) if v[4]["status"] == "ok"));
    }
    let mut publisher = srv.open_phx();
    send(
        &mut publisher,
        &json!(["p", "j", "room:drain", "phx_join", {}]),
    );
    assert!(matches!(recv(&mut publisher), Incoming::Json(v) if v[4]["status"] == "ok"));
    let n = 300;
    for seq in 0..n {
        send(
            &mut publisher,
            &json!(["p", seq.to_string(), "room:drain", "m", {"seq": seq}]),
        );
    }
    // Wait until the server has taken every push (each is answered), then stop it at once.
    let mut replies = 0;
    while replies < n {
        if matches!(recv(&mut publisher), Incoming::Json(v) if v[3] == "phx_reply") {
            replies += 1;
        }
    }
    srv.terminate();
    for (i, s) in subs.iter_mut().enumerate() {
        let mut next = 0;
        loop {
            match recv(s) {
                Incoming::Close(code) => {
                    assert_eq!(code, Some(1001), "subscriber {i}");
                    break;
                }
                Incoming::Json(v) if v[3] == "m" => {
                    assert_eq!(v[4]["seq"], next, "subscriber {i}");
                    next += 1;
                }
                _ => {}
            }
        }
        assert_eq!(next, n, "subscriber {i} got {next} of {n} before the close");
        let mut out = Vec::new();
        encode_masked(&mut out, OpCode::Close, true, &1001u16.to_be_bytes(), MASK);
        let _ = s.write_all(&out);
    }
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .expect("did not exit");
    assert!(status.success());
}

fn send(s: &mut TcpStream, v: &Value) {
    common::send_json(s, v).expect("send");
}

fn recv(s: &mut TcpStream) -> Incoming {
    common::recv_incoming(s).expect("recv")
}

fn rss(srv: &TestServer) -> u64 {
    let rss = srv.metric("corecast_rss_bytes");
    assert!(rss > 0, "corecast_rss_bytes missing from /metrics");
    rss
}

#[test]
fn memory_goes_back_down_after_a_mass_disconnect() {
    const SOCKETS: usize = 5000;
    let srv = TestServer::start(&["--cores", "2"]);
    // Round 1 warms the server up: allocator arenas, table capacity and the pages of each core's
    // completion ring (kernel memory mapped into the process: fixed, not per connection) become
    // resident once and stay. Round 2 is measured against that.
    let join_all = |srv: &TestServer| -> Vec<TcpStream> {
        // Four channels each, on topics of their own: enough per socket (topic entries, channel
        // lists) that what they hold stands out of the allocator's noise.
        let mut socks: Vec<TcpStream> = (0..SOCKETS).map(|_| srv.open_phx()).collect();
        for (i, s) in socks.iter_mut().enumerate() {
            for k in 0..4 {
                let topic = format!("room:{i}:{k}");
                send(s, &json!([k.to_string(), "1", topic, "phx_join", {}]));
            }
        }
        for s in socks.iter_mut() {
            for _ in 0..4 {
                assert!(matches!(recv(s), Incoming::Json(v) if v[4]["status"] == "ok"));
            }
        }
        socks
    };
    let settle = |srv: &TestServer, above: u64| {
        // The cores notice the drop on their next tick and give the memory back.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut now = rss(srv);
        while now > above && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            now = rss(srv);
        }
        now
    };
    let cold = rss(&srv);
    drop(join_all(&srv));
    let before = settle(&srv, cold);
    let socks = join_all(&srv);
    let loaded = rss(&srv);
    drop(socks);
    let after = settle(&srv, before + (loaded - before) / 4);
    println!(
        "memory: {:.1} MiB cold, {:.1} MiB warmed up, {:.1} MiB with {SOCKETS} joined sockets, \
         {:.1} MiB after they left",
        cold as f64 / 1048576.0,
        before as f64 / 1048576.0,
        loaded as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert!(loaded > before, "{SOCKETS} sockets cost nothing?");
    assert!(
        after <= before + (loaded - before) / 2,
        "RSS stayed up: {before} -> {loaded} -> {after}"
    );
}
