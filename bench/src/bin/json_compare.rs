//! serde_json (what corecast uses) against simd-json for the one JSON job on corecast's hot path:
//! decode a client's Phoenix V2 text message `[join_ref, ref, topic, event, payload]` and check
//! that the payload is well-formed JSON, keeping the payload's raw text to forward verbatim.
//!
//!     cargo run --release -p corecast-bench --bin json_compare
//!
//! For payloads of about 100 B, 1 KB, 16 KB and 256 KB (chat-like objects), three ways:
//! - `serde_json`: `corecast::proto::phoenix::json::decode`, borrowed strings, payload as a raw
//!   span (validated by skipping it, no tree, no copy). This is the server's code.
//! - `simd validate`: simd-json's tape of the same text (validation only). simd-json parses in
//!   place and rewrites escaped strings in its buffer, so it must work on a copy: the raw payload
//!   text we forward would otherwise be destroyed. The copy is included. This is the least any
//!   simd-json use could cost; it still lacks the payload's raw span.
//! - `simd decode`: what it takes to get the same result with simd-json: borrowed value of a
//!   copy, the four header strings, and the payload serialised back to text to forward.
//!
//! Each figure is the best of 5 rounds of ~200 ms; ratios above 1 mean serde_json is faster.

use std::hint::black_box;
use std::time::{Duration, Instant};

use corecast::proto::phoenix::json;
use simd_json::prelude::*;

fn payload(target: usize) -> String {
    let mut p = String::from("{\"items\":[");
    let mut i = 0;
    while p.len() + 2 < target {
        if i > 0 {
            p.push(',');
        }
        p.push_str(&format!(
            "{{\"id\":{},\"user\":\"user-{i}\",\"body\":\"hello there, this is message {i} \\u00e9\",\"at\":1700000000{:03},\"ok\":true}}",
            1000 + i,
            i % 1000
        ));
        i += 1;
        if target < 150 {
            break;
        }
    }
    p.push_str("]}");
    p
}

fn best_ns(mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            for _ in 0..16 {
                f();
            }
            n += 16;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn main() {
    println!(
        "{:>9} | {:>14} | {:>14} | {:>14} | {:>8} | {:>8}",
        "message", "serde_json", "simd validate", "simd decode", "val/serde", "dec/serde"
    );
    let mut rows = Vec::new();
    for target in [100usize, 1024, 16 * 1024, 256 * 1024] {
        let p = payload(target);
        let text = format!(r#"["1","2","room:lobby","new_msg",{p}]"#);
        // Both must agree that it is valid and find the same payload.
        let m = json::decode(&text).expect("valid message");
        let corecast::proto::phoenix::Payload::Json(raw) = m.payload else {
            unreachable!()
        };
        assert_eq!(raw, p);
        let mut copy = text.clone().into_bytes();
        assert!(simd_json::to_tape(&mut copy).is_ok());

        let serde = best_ns(|| {
            let m = json::decode(black_box(&text)).expect("valid");
            black_box(&m);
        });
        let mut buf = Vec::with_capacity(text.len());
        let validate = best_ns(|| {
            buf.clear();
            buf.extend_from_slice(black_box(text.as_bytes()));
            let tape = simd_json::to_tape(&mut buf).expect("valid");
            black_box(&tape);
        });
        let decode = best_ns(|| {
            buf.clear();
            buf.extend_from_slice(black_box(text.as_bytes()));
            let v = simd_json::to_borrowed_value(&mut buf).expect("valid");
            let a = v.as_array().expect("array");
            let head: Vec<&str> = a[..4].iter().filter_map(|s| s.as_str()).collect();
            let fwd = simd_json::to_string(&a[4]).expect("serialise");
            black_box((&head, &fwd));
        });
        println!(
            "{:>7} B | {:>8.0} ns {:>3} | {:>8.0} ns {:>3} | {:>8.0} ns {:>3} | {:>8.2} | {:>8.2}",
            text.len(),
            serde,
            "",
            validate,
            "",
            decode,
            "",
            validate / serde,
            decode / serde
        );
        rows.push(serde_json::json!({
            "message_bytes": text.len(),
            "serde_json_ns": serde.round(),
            "simd_validate_ns": validate.round(),
            "simd_decode_ns": decode.round(),
            "serde_mb_per_s": (text.len() as f64 / serde * 1e3).round(),
        }));
    }
    println!("{}", serde_json::Value::Array(rows));
}
