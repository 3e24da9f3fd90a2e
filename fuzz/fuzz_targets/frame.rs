//! Fuzz the RFC 6455 frame decoder.
//!
//! The first two input bytes are a seed; the rest is used twice:
//! 1. as raw client bytes, fed whole and in seed-chosen chunks: the decoder must never panic,
//!    must reach the same result for every split, and must keep its memory within the limits;
//! 2. as a payload, encoded as masked Binary (and Text when it is UTF-8) frames, possibly
//!    fragmented with a ping in between: the decoded message must equal the payload;
//! 3. as raw client bytes again under a small `max_buffered`: the decoder never holds more, and
//!    says what it said without the budget, or that much and then `OverBudget`.
#![no_main]

use libfuzzer_sys::fuzz_target;

use corecast::proto::frame::{Decoder, FrameError, Limits, Message, OpCode, encode_masked};

const LIMITS: Limits = Limits {
    max_frame: 4096,
    max_message: 16384,
    max_buffered: usize::MAX,
};

/// LIMITS with a buffer budget smaller than one largest message.
const BUDGET: Limits = Limits {
    max_buffered: 6000,
    ..LIMITS
};

/// An owned copy of a decoded message, for comparisons.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Fragment,
}

fn own(m: Message<'_>) -> Owned {
    match m {
        Message::Text(t) => Owned::Text(t.to_owned()),
        Message::Binary(b) => Owned::Binary(b.to_vec()),
        Message::Ping(b) => Owned::Ping(b.to_vec()),
        Message::Pong(b) => Owned::Pong(b.to_vec()),
        Message::Close(c) => Owned::Close(c.map(|c| (c.code, c.reason.to_owned()))),
        Message::Fragment => Owned::Fragment,
    }
}

/// Feed `bytes` to a fresh decoder in chunks of 1..=64 bytes drawn from `seed` (seed 0: in
/// one piece). Checks the memory rules after every call.
fn decode(bytes: &[u8], seed: u16) -> (Vec<Owned>, Result<(), FrameError>) {
    decode_with(bytes, seed, &LIMITS)
}

fn decode_with(bytes: &[u8], seed: u16, limits: &Limits) -> (Vec<Owned>, Result<(), FrameError>) {
    let mut input = bytes.to_vec();
    let mut rest = &mut input[..];
    let mut state = u32::from(seed);
    let mut d = Decoder::new();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = if seed == 0 {
            rest.len()
        } else {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 64) as usize + 1
        };
        let (piece, tail) = rest.split_at_mut(n.min(rest.len()));
        rest = tail;
        let result = d.feed(piece, limits, &mut |m| out.push(own(m)));
        assert!(d.heap_bytes() <= 14 + limits.max_frame + limits.max_message);
        assert!(d.heap_bytes() <= limits.max_buffered);
        if d.is_idle() {
            assert_eq!(d.heap_bytes(), 0);
        }
        if let Err(e) = result {
            assert!(matches!(e.close_code(), 1002 | 1007 | 1009 | 1013));
            return (out, Err(e));
        }
    }
    (out, Ok(()))
}

/// `payload` as one message of kind `op`, in fragments of at most `frag` bytes, with a ping
/// after the first fragment when there are several.
fn encode_message(op: OpCode, payload: &[u8], frag: usize, mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunks = payload.chunks(frag).peekable();
    let mut first = true;
    if chunks.peek().is_none() {
        encode_masked(&mut out, op, true, &[], mask);
    }
    while let Some(chunk) = chunks.next() {
        let fin = chunks.peek().is_none();
        let kind = if first { op } else { OpCode::Continuation };
        encode_masked(&mut out, kind, fin, chunk, mask);
        if first && !fin {
            let ping = &chunk[..chunk.len().min(125)];
            encode_masked(&mut out, OpCode::Ping, true, ping, mask);
        }
        first = false;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let seed = u16::from_le_bytes([a, b]);

    // 1. Arbitrary bytes: no panic, and every split agrees with one whole read.
    let whole = decode(rest, 0);
    assert_eq!(decode(rest, seed), whole);

    // 3. The same bytes under a budget: a prefix of the same messages, then the same end or
    //    OverBudget.
    let (msgs, r) = decode_with(rest, seed, &BUDGET);
    assert!(whole.0.starts_with(&msgs));
    if r != Err(FrameError::OverBudget) {
        assert_eq!((msgs, r), whole);
    }

    // 2. Round trip.
    let payload = &rest[..rest.len().min(LIMITS.max_message)];
    let frag = if a & 1 == 1 {
        usize::from(b % 16) + 1
    } else {
        usize::from(seed) % LIMITS.max_frame + 1
    };
    let mask = [a, b, a ^ 0x5a, b ^ 0xa5];
    let ping = |chunk: &[u8]| Owned::Ping(chunk[..chunk.len().min(125)].to_vec());
    // One Fragment per frame but the last, the ping after the first.
    let fragments = payload.len().div_ceil(frag).saturating_sub(1);
    let mut expected = Vec::new();
    if fragments > 0 {
        expected.push(Owned::Fragment);
        expected.push(ping(&payload[..frag]));
        expected.extend(std::iter::repeat_with(|| Owned::Fragment).take(fragments - 1));
    }
    expected.push(Owned::Binary(payload.to_vec()));
    let stream = encode_message(OpCode::Binary, payload, frag, mask);
    assert_eq!(decode(&stream, seed), (expected, Ok(())));
    if let Ok(text) = std::str::from_utf8(payload) {
        let mut expected = Vec::new();
        if fragments > 0 {
            expected.push(Owned::Fragment);
            expected.push(ping(&payload[..frag]));
            expected.extend(std::iter::repeat_with(|| Owned::Fragment).take(fragments - 1));
        }
        expected.push(Owned::Text(text.to_owned()));
        let stream = encode_message(OpCode::Text, payload, frag, mask);
        assert_eq!(decode(&stream, seed.rotate_left(3)), (expected, Ok(())));
    }
});
