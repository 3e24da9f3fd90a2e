//! A bounded soak: long-lived subscribers, one publisher, connect/join/push/close churn, for
//! SOAK_SECS seconds (default 60). Asserts zero lost or duplicated broadcasts for the well-behaved
//! subscribers, no leaked connections, and no RSS growth after warm-up.
//!
//! Not part of `cargo test` (it is `#[ignore]`): `make test` runs it for 60 s, `make soak` for 600.
//!
//! ```sh
//! SOAK_SECS=60 cargo test --release --test soak -- --ignored --nocapture
//! ```

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    MASK, Open, PHX_PATH, TestServer, open_raw, read_frame, recv_json as recv, send_json as send,
};
use corecast::proto::frame::{OpCode, encode_masked};
use serde_json::json;

const SUBSCRIBERS: usize = 40;
const CHURNERS: usize = 4;
const PUBLISH_EVERY: Duration = Duration::from_millis(4);

#[test]
#[ignore = "long: run by `make test` (60 s) and `make soak` (600 s)"]
fn soak_loses_nothing_leaks_nothing() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // The one publisher pushes 250 a second, past the default max_messages_per_sec (200).
    let srv = TestServer::start_with_config("max_messages_per_sec = 1000\n", &["--cores", "2"]);
    let addr = srv.addr;
    let stop = Arc::new(AtomicBool::new(false));

    // Long-lived subscribers: each checks the publisher's sequence, exactly once, in order.
    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let mut s = srv.open_phx();
            send(
                &mut s,
                &json!([i.to_string(), "j", "soak:main", "phx_join", {}]),
            )
            .unwrap();
            assert_eq!(recv(&mut s).unwrap()[4]["status"], "ok");
            // Heartbeat like phoenix.js (every 30 s; here every 20 s), from a writer clone, so
            // the server's 60 s idle timeout never fires on a live subscriber.
            let mut writer = s.try_clone().unwrap();
            let hb_stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                loop {
                    for _ in 0..200 {
                        if hb_stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    n += 1;
                    let hb = json!([null, format!("hb{n}"), "phoenix", "heartbeat", {}]);
                    if send(&mut writer, &hb).is_err() {
                        return;
                    }
                }
            });
            std::thread::spawn(move || {
                let mut next = 0u64;
                loop {
                    let v = recv(&mut s).expect("subscriber read");
                    match v[3].as_str() {
                        Some("tick") => {
                            let seq = v[4]["seq"].as_u64().expect("seq");
                            assert_eq!(seq, next, "subscriber {i}: lost or duplicated");
                            next += 1;
                        }
                        Some("done") => {
                            assert_eq!(v[4]["count"].as_u64(), Some(next), "subscriber {i}");
                            return next;
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();

    // Churn: connect, join, push, leave or vanish, from many source addresses.
    let cycles = Arc::new(AtomicU64::new(0));
    let churn: Vec<_> = (0..CHURNERS)
        .map(|c| {
            let stop = stop.clone();
            let cycles = cycles.clone();
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let src = [127, 0, (c + 1) as u8, (n % 250 + 2) as u8];
                    let from = Open {
                        source: Some(src),
                        ..Open::default()
                    };
                    let Ok(mut s) = open_raw(addr, PHX_PATH, from) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let topic = format!("soak:churn:{}", n % 7);
                    let ok = send(&mut s, &json!(["1", "1", topic, "phx_join", {}])).is_ok()
                        && recv(&mut s).is_ok()
                        && send(&mut s, &json!(["1", "2", topic, "hello", {"n": n}])).is_ok()
                        && recv(&mut s).is_ok();
                    assert!(ok, "churn cycle failed");
                    if n.is_multiple_of(2) {
                        // A clean close.
                        let mut out = Vec::new();
                        encode_masked(&mut out, OpCode::Close, true, &1000u16.to_be_bytes(), MASK);
                        let _ = s.write_all(&out);
                        let _ = read_frame(&mut s);
                    } // else: just vanish
                    cycles.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        })
        .collect();

    // The publisher, with a reader thread that drains its replies and own broadcasts.
    let mut publisher = srv.open_phx();
    send(
        &mut publisher,
        &json!(["p", "j", "soak:main", "phx_join", {}]),
    )
    .unwrap();
    assert_eq!(recv(&mut publisher).unwrap()[4]["status"], "ok");
    let mut reader = publisher.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut replies = 0u64;
        while let Ok(v) = recv(&mut reader) {
            if v[3] == "phx_reply" {
                assert_eq!(v[4]["status"], "ok");
                replies += 1;
            }
            if v[3] == "done" {
                break;
            }
        }
        replies
    });

    let start = Instant::now();
    let mut seq = 0u64;
    let mut samples = Vec::new();
    let mut last_sample = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        send(
            &mut publisher,
            &json!(["p", seq.to_string(), "soak:main", "tick", {"seq": seq}]),
        )
        .unwrap();
        seq += 1;
        if last_sample.elapsed() >= Duration::from_secs(2) {
            samples.push((start.elapsed().as_secs(), srv.metric("corecast_rss_bytes")));
            last_sample = Instant::now();
        }
        std::thread::sleep(PUBLISH_EVERY);
    }
    stop.store(true, Ordering::Relaxed);
    for t in churn {
        t.join().expect("churner");
    }
    send(
        &mut publisher,
        &json!(["p", "end", "soak:main", "done", {"count": seq}]),
    )
    .unwrap();
    let mut delivered = 0;
    for t in subs {
        let got = t.join().expect("subscriber");
        assert_eq!(got, seq);
        delivered += got;
    }
    let replies = drain.join().expect("publisher reader");
    assert!(
        replies >= seq,
        "publisher got {replies} replies for {seq} pushes"
    );

    // No leaked sockets: the subscribers hung up after "done", the churners are gone; only the
    // publisher remains open.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open_ws = srv.metric("corecast_websockets");
    while open_ws != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        open_ws = srv.metric("corecast_websockets");
    }
    assert_eq!(open_ws, 1, "leaked sockets");
    // No growth after warm-up: compare the end with the largest of the first fifth of samples.
    let warm_samples = samples.len().div_ceil(5).max(1);
    let warm = samples
        .iter()
        .take(warm_samples)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let end = srv.metric("corecast_rss_bytes");
    println!(
        "soak: {secs} s, {seq} broadcasts x {SUBSCRIBERS} subscribers = {delivered} deliveries, \
         lost 0, duplicated 0, churn cycles {}, rss after warm-up {:.1} MiB, at end {:.1} MiB",
        cycles.load(Ordering::Relaxed),
        warm as f64 / 1048576.0,
        end as f64 / 1048576.0
    );
    // The trend, to tell a plateau (allocator warm-up) from a leak (steady growth).
    let fifths: Vec<String> = (1..=5)
        .filter_map(|k| samples.get((samples.len() * k / 5).saturating_sub(1)))
        .map(|(t, r)| format!("{t} s {:.1}", *r as f64 / 1048576.0))
        .collect();
    println!(
        "soak: rss by fifths of the run (MiB): {}",
        fifths.join(", ")
    );
    assert!(
        end <= warm + 16 * 1024 * 1024,
        "RSS grew from {warm} to {end} bytes; samples {samples:?}"
    );
}
