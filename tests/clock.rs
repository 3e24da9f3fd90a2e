//! A quiet core keeps time (issue 17): its tick, which drives the shutdown check and every
//! deadline, comes from its own ring, so it survives glommio timers that never wake an idle
//! executor. The failure is forced with the `CORECAST_FAULT_LOSE_GLOMMIO_TIMERS` fault injection
//! (see `runtime::shard::LOSE_GLOMMIO_TIMERS`); run against a build whose tick loop sleeps on
//! glommio's timer (`CORECAST_TEST_BIN=...`), these tests fail.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, read_close_code, send_json};
use serde_json::json;

const LOSE: (&str, &str) = ("CORECAST_FAULT_LOSE_GLOMMIO_TIMERS", "1");

/// Join a topic on a raw socket and read the reply, so the core has served some I/O.
fn join_and_read(srv: &TestServer) -> std::net::TcpStream {
    let mut s = srv.open_phx();
    send_json(&mut s, &json!(["1", "1", "room:quiet", "phx_join", {}])).unwrap();
    let reply = common::recv_json(&mut s).expect("join reply");
    assert_eq!(reply[3], "phx_reply", "{reply}");
    s
}

#[test]
fn sigterm_ends_an_idle_server_when_glommio_timers_are_lost() {
    for cores in ["2", "1"] {
        let mut srv = TestServer::start_with_env("", &["--cores", cores], &[LOSE]);
        drop(join_and_read(&srv));
        std::thread::sleep(Duration::from_millis(1500)); // idle: nothing but the clock runs
        let t0 = Instant::now();
        srv.terminate();
        let status = srv.wait_exit(Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.success()),
            "--cores {cores}: still running {:?} after SIGTERM ({status:?})",
            t0.elapsed()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "--cores {cores}: took {:?} to exit",
            t0.elapsed()
        );
    }
}

#[test]
fn a_quiet_cores_idle_timeout_fires_when_glommio_timers_are_lost() {
    let srv = TestServer::start_with_env("idle_timeout_ms = 1000\n", &["--cores", "1"], &[LOSE]);
    let mut s = join_and_read(&srv);
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let t0 = Instant::now();
    assert_eq!(read_close_code(&mut s), Some(1008), "idle close");
    let took = t0.elapsed();
    // The deadline is at most two ticks late (see `Shard::deadline_tick`).
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1600),
        "closed after {took:?}"
    );
}

#[test]
fn a_quiet_cores_handshake_timeout_fires_when_glommio_timers_are_lost() {
    let srv =
        TestServer::start_with_env("handshake_timeout_ms = 800\n", &["--cores", "1"], &[LOSE]);
    let mut s = srv.connect_tcp(); // says nothing
    let t0 = Instant::now();
    assert!(common::closed_within(&mut s, Duration::from_secs(5)));
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "closed after {:?}",
        t0.elapsed()
    );
}
