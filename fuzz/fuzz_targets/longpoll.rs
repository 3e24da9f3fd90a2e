//! Long-poll input: a POST body (as one message and as NDJSON), a session token and a request
//! envelope never panic; what parses round-trips.
#![no_main]

use corecast::proto::phoenix::longpoll::{Line, SessionToken, batch};
use corecast::pubsub::longpoll::{decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ndjson in [false, true] {
        if let Ok(lines) = batch(data, ndjson) {
            assert!(lines.len() <= 100 || !ndjson);
            for l in lines {
                if let (Line::Text(t), true) = (l, ndjson) {
                    assert!(t.starts_with('[') || t.starts_with('{'));
                }
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(t) = SessionToken::parse(s)
    {
        assert_eq!(SessionToken::parse(&t.encode()), Some(t));
    }
    if let Some((to, req)) = decode_request(data) {
        assert_eq!(decode_request(&encode_request(to, &req)), Some((to, req)));
    }
});
