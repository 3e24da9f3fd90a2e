//! Phoenix V2 binary push decoder: never panics; whatever decodes re-encodes byte for byte.
#![no_main]

use corecast::proto::phoenix::{Payload, binary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = binary::decode_push(data) else {
        return;
    };
    let Payload::Binary(payload) = msg.payload else {
        panic!("a binary frame decoded to a JSON payload");
    };
    let mut out = Vec::new();
    binary::encode_push(
        &mut out,
        msg.join_ref.as_deref(),
        msg.msg_ref.as_deref(),
        &msg.topic,
        &msg.event,
        payload,
    )
    .expect("fields that decoded fit in a u8 size");
    let back = binary::decode_push(&out).expect("re-encoded push must decode");
    assert_eq!(back, msg);
});
