//! Helpers shared by the unit tests of the frame modules: masked client frames in, owned
//! messages out.

use super::*;

pub(super) const LIMITS: Limits = lim(1 << 20, 1 << 21);

pub(super) const fn lim(max_frame: usize, max_message: usize) -> Limits {
    Limits {
        max_frame,
        max_message,
        max_buffered: usize::MAX,
    }
}

/// An owned copy of a [`Message`], for comparing across calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Fragment,
}

pub(super) type Decoded = (Vec<Owned>, Result<(), FrameError>);
pub(super) const OK: Result<(), FrameError> = Ok(());
pub(super) const TOO_BIG: Result<(), FrameError> = Err(FrameError::TooBig);
pub(super) const BAD_UTF8: Result<(), FrameError> = Err(FrameError::InvalidUtf8);

pub(super) fn txt(s: &str) -> Owned {
    Owned::Text(s.to_owned())
}

pub(super) fn bin(b: &[u8]) -> Owned {
    Owned::Binary(b.to_vec())
}

pub(super) fn own(m: Message<'_>) -> Owned {
    match m {
        Message::Text(t) => Owned::Text(t.to_owned()),
        Message::Binary(b) => Owned::Binary(b.to_vec()),
        Message::Ping(b) => Owned::Ping(b.to_vec()),
        Message::Pong(b) => Owned::Pong(b.to_vec()),
        Message::Close(c) => Owned::Close(c.map(|c| (c.code, c.reason.to_owned()))),
        Message::Fragment => Owned::Fragment,
    }
}

/// Client frames, masked, one after the other.
pub(super) fn frames(parts: &[(OpCode, bool, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(op, fin, payload) in parts {
        encode_masked(&mut v, op, fin, payload, [0x37, 0xfa, 0x21, 0x3d]);
    }
    v
}

pub(super) fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    frames(&[(op, true, payload)])
}

/// Feed one piece to `d`, collecting messages.
pub(super) fn feed(d: &mut Decoder, bytes: &[u8]) -> Decoded {
    let mut out = Vec::new();
    let r = d.feed(&mut bytes.to_vec(), &LIMITS, &mut |m| out.push(own(m)));
    (out, r)
}

/// Feed `bytes` to a new decoder in chunks of `chunk` bytes; stop at the first error.
pub(super) fn decode_chunked(bytes: &[u8], chunk: usize, limits: &Limits) -> Decoded {
    let (mut d, mut out) = (Decoder::new(), Vec::new());
    for piece in bytes.to_vec().chunks_mut(chunk.max(1)) {
        if let Err(e) = d.feed(piece, limits, &mut |m| out.push(own(m))) {
            assert_eq!(d.heap_bytes(), 0);
            return (out, Err(e));
        }
    }
    (out, Ok(()))
}

pub(super) fn decode(bytes: &[u8]) -> Decoded {
    decode_chunked(bytes, bytes.len(), &LIMITS)
}

/// Assert that `bytes` fails with close code `code`, fed whole and byte at a time.
pub(super) fn fails(bytes: &[u8], code: u16) {
    for chunk in [bytes.len(), 1] {
        let r = decode_chunked(bytes, chunk, &LIMITS)
            .1
            .map_err(|e| e.close_code());
        assert_eq!(r, Err(code), "{chunk}: {bytes:02x?}");
    }
}
