//! Fuzz the HTTP/1.1 upgrade parser: arbitrary bytes must never panic, prefixes of a head must
//! never look complete before the whole head does, and whatever passes `check_upgrade` must
//! produce a well-formed 101 response. Every parsed head also goes through `http::plan` (the
//! plain-HTTP decision): it must not panic and never accepts a body past `max_request_body`.
#![no_main]

use libfuzzer_sys::fuzz_target;

use corecast::config::Config;
use corecast::http::{Plan, plan};
use corecast::proto::handshake::{
    Request, accept_key, bearer_credentials, bearer_token_from_protocols, check_upgrade,
    media_type_is, parse_request, query_param, write_switching,
};

const MAX_HEAD: usize = 8192;

/// Inputs up to this size are also parsed at every prefix, as a socket reader would.
const PREFIX_LIMIT: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let full = parse_request(data, MAX_HEAD);
    if let Ok(Some(req)) = &full {
        assert!(req.head_len <= data.len() && req.head_len <= MAX_HEAD);
        exercise(req);
    }
    if data.len() <= PREFIX_LIMIT {
        for n in 0..data.len() {
            if let Ok(Some(req)) = parse_request(&data[..n], MAX_HEAD) {
                // A complete head found in a prefix is found identically in the whole input.
                let whole = full.as_ref().ok().and_then(Option::as_ref);
                assert_eq!(whole.map(|r| r.head_len), Some(req.head_len), "prefix {n}");
            }
        }
    }
    // Query parsing on arbitrary text, including text that never came through httparse.
    let text = String::from_utf8_lossy(data);
    let (query, name) = text.split_once('\n').unwrap_or((&text, "token"));
    let _ = query_param(query, name);
    let _ = query_param(&text, "vsn");
    let _ = (bearer_credentials(&text), media_type_is(&text, "application/json"));
});

fn exercise(req: &Request) {
    let keyed = Config {
        api_key: Some("k".into()),
        metrics_key: Some("m".into()),
        ..Config::default()
    };
    for (cfg, loopback) in [(Config::default(), true), (Config::default(), false), (keyed, false)] {
        let peer = || Some(std::net::IpAddr::from([if loopback { 127 } else { 10 }, 0, 0, 1]));
        if let Plan::Body { len, .. } = plan(req, &cfg, peer) {
            assert!(len <= cfg.max_request_body && req.content_length == Some(len));
        }
    }
    let _ = query_param(&req.query, "vsn");
    let _ = query_param(&req.query, "token");
    let _ = bearer_token_from_protocols(&req.protocols);
    if let Ok(key) = check_upgrade(req) {
        let accept = accept_key(key);
        assert_eq!(accept.len(), 28);
        let mut out = Vec::new();
        write_switching(&mut out, &accept, req.protocols.first().map(String::as_str), &[]);
        // One head, ending at the end of the buffer, carrying the accept value.
        assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        let end = out.windows(4).position(|w| w == b"\r\n\r\n");
        assert_eq!(end, Some(out.len() - 4));
        let needle = format!("Sec-WebSocket-Accept: {accept}\r\n");
        assert!(out.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }
}
