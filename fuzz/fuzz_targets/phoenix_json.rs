//! Phoenix V2 JSON decoder: never panics; whatever decodes re-encodes and decodes to the same
//! message.
#![no_main]

use corecast::proto::phoenix::{Payload, json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = json::decode(text) else {
        return;
    };
    let Payload::Json(payload) = msg.payload else {
        panic!("a text frame decoded to a binary payload");
    };
    let mut out = Vec::new();
    json::encode_message(
        &mut out,
        msg.join_ref.as_deref(),
        msg.msg_ref.as_deref(),
        &msg.topic,
        &msg.event,
        payload,
    )
    .expect("a payload that decoded must encode");
    let again = std::str::from_utf8(&out).expect("encoder writes UTF-8");
    let back = json::decode(again).expect("re-encoded message must decode");
    assert_eq!(back, msg);
});
