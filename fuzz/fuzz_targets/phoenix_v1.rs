//! Phoenix V1 JSON decoder: never panics, on text or binary frames alike; whatever decodes
//! re-encodes as the server would (no join_ref) and decodes to the same message without it.
#![no_main]

use corecast::proto::phoenix::{Payload, v1};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut msg) = v1::decode_bytes(data) else {
        return;
    };
    let Payload::Json(payload) = msg.payload else {
        panic!("a V1 frame decoded to a binary payload");
    };
    let mut out = Vec::new();
    v1::encode_message(
        &mut out,
        msg.msg_ref.as_deref(),
        &msg.topic,
        &msg.event,
        payload,
    )
    .expect("a payload that decoded must encode");
    let again = std::str::from_utf8(&out).expect("encoder writes UTF-8");
    let back = v1::decode(again).expect("re-encoded message must decode");
    msg.join_ref = None;
    assert_eq!(back, msg);
});
