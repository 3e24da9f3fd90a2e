//! The per-core readiness reactor on real sockets: bursts past the completion ring, sockets that
//! fill up, and many connections closing at once.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{MASK, Open, TestServer, read_frame};
use corecast::proto::frame::{OpCode, encode_masked};

#[test]
fn readiness_bursts_past_the_ring_are_rearmed_and_nothing_is_lost() {
    // A 16-entry completion ring and 400 sockets made readable at once: the kernel must hold
    // completions back and end multishot polls; every connection re-arms and is still served.
    let srv = TestServer::start_with_config("ring_entries = 16\n", &["--echo", "--cores", "1"]);
    let mut conns: Vec<_> = (0..400).map(|_| srv.open_echo()).collect();
    for round in 0..10 {
        let mut burst = Vec::new();
        for (i, s) in conns.iter_mut().enumerate() {
            burst.clear();
            encode_masked(
                &mut burst,
                OpCode::Text,
                true,
                format!("{round}:{i}").as_bytes(),
                MASK,
            );
            s.write_all(&burst).unwrap();
        }
        for (i, s) in conns.iter_mut().enumerate() {
            let (op, payload) = read_frame(s).expect("echo");
            assert_eq!(op, 1);
            assert_eq!(payload, format!("{round}:{i}").as_bytes());
        }
    }
    let rearms = srv.metric("corecast_poll_rearms_total");
    println!("{rearms} polls re-armed");
    assert!(
        rearms > 0,
        "no poll was ended by the kernel: the burst never passed the ring"
    );
}

#[test]
fn a_full_socket_resumes_when_the_peer_reads() {
    // The client sends 1 MiB messages and reads nothing: the server's echoes fill the socket
    // until a write would block and it arms a write poll (counted), then finish once the client
    // reads. The kernel grows a loopback send buffer to `tcp_wmem`'s maximum (4 MiB by default)
    // whatever the peer's receive buffer, so one 1 MiB echo alone fits: send more until the
    // write poll shows, at most 64 (a maximum raised to 64 MiB).
    let srv = TestServer::start(&["--echo", "--cores", "1"]);
    let write_polls = || srv.metric("corecast_write_polls_total");
    let before = write_polls();
    let small = Open {
        rcvbuf: Some(4096),
        ..Open::default()
    };
    let mut s = srv.open("/echo", small);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    encode_masked(&mut out, OpCode::Binary, true, &payload, MASK);
    let mut sent = 0;
    while sent < 64 && write_polls() == before {
        s.write_all(&out).unwrap();
        sent += 1;
        // Let the server read the message and block on its echo.
        let deadline = Instant::now() + Duration::from_millis(300);
        while write_polls() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let armed = write_polls() - before;
    println!("{armed} write polls armed after {sent} MiB of echoes unread");
    assert!(
        armed > 0,
        "the socket never filled: no write poll was armed"
    );
    for i in 0..sent {
        let (op, echoed) = read_frame(&mut s).expect("echo");
        assert_eq!(op, 2);
        assert!(
            echoed == payload,
            "echo {i} differs ({} bytes)",
            echoed.len()
        );
    }
    // And the connection still works both ways afterwards.
    out.clear();
    encode_masked(&mut out, OpCode::Text, true, b"after", MASK);
    s.write_all(&out).unwrap();
    assert_eq!(read_frame(&mut s).expect("echo").1, b"after");
}

#[test]
fn connections_closed_together_are_all_released() {
    // 500 connections dropped by their clients at once: each one's poll is removed and its slot
    // freed (the gauge returns to zero), and the server keeps accepting.
    let srv = TestServer::start(&["--echo", "--cores", "2"]);
    let conns: Vec<_> = (0..500).map(|_| srv.open_echo()).collect();
    assert!(srv.metric("corecast_connections") >= 500);
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = u64::MAX;
    while Instant::now() < deadline {
        // The /metrics request itself is one open connection.
        open = srv.metric("corecast_connections");
        if open <= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(open <= 1, "{open} connections still open");
    let mut s = srv.open_echo();
    let mut out = Vec::new();
    encode_masked(&mut out, OpCode::Text, true, b"still here", MASK);
    s.write_all(&out).unwrap();
    assert_eq!(read_frame(&mut s).expect("echo").1, b"still here");
}
