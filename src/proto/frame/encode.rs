//! Frame encoders: unmasked server frames, and masked client frames for tests and load.

use super::mask::apply_mask;
use super::{MAX_CONTROL, OpCode};

/// Server->client frame (FIN set, unmasked) appended to `out`.
pub fn encode_frame(out: &mut Vec<u8>, op: OpCode, payload: &[u8]) {
    let (header, n) = frame_header(op, true, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// The opcode and payload of one whole unmasked FIN frame as [`encode_frame`] writes it (a
/// server frame queued for a socket): how a transport without WebSocket framing (long-poll)
/// takes back the message. `None` for anything else (masked, fragmented, short, trailing bytes).
pub fn unframe(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let (&b0, rest) = frame.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    if b0 & 0xF0 != 0x80 || b1 & 0x80 != 0 {
        return None;
    }
    let op = OpCode::from_u8(b0 & 0x0F)?;
    let (len, body) = match b1 & 0x7F {
        126 => {
            let (l, body) = rest.split_at_checked(2)?;
            (u64::from(u16::from_be_bytes([l[0], l[1]])), body)
        }
        127 => {
            let (l, body) = rest.split_at_checked(8)?;
            (u64::from_be_bytes(l.try_into().ok()?), body)
        }
        n => (u64::from(n), rest),
    };
    (body.len() as u64 == len).then_some((op, body))
}

/// Header only, for writing a header in front of a payload held elsewhere: returns
/// `(bytes, len)` with `len` in 2..=10. The mask bit is clear (server frames are unmasked).
pub fn frame_header(op: OpCode, fin: bool, payload_len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = if fin { 0x80 } else { 0 } | op.to_u8();
    if payload_len < 126 {
        h[1] = payload_len as u8;
        (h, 2)
    } else if let Ok(len) = u16::try_from(payload_len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A close frame with `code` and `reason` appended to `out`; the reason is truncated at a char
/// boundary so the body is at most 125 bytes.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let reason = &reason[..reason.floor_char_boundary(MAX_CONTROL - 2)];
    let (header, n) = frame_header(OpCode::Close, true, 2 + reason.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// Client->server frame, masked with `mask` (for tests, the load generator and fuzzing).
pub fn encode_masked(out: &mut Vec<u8>, op: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) {
    let (mut header, n) = frame_header(op, fin, payload.len());
    header[1] |= 0x80;
    out.reserve(n + 4 + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    use OpCode::{Binary, Continuation as Cont, Ping, Pong, Text};

    #[test]
    fn unframe_takes_back_what_encode_wrote() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut f = Vec::new();
            encode_frame(&mut f, OpCode::Text, &payload);
            assert_eq!(unframe(&f), Some((OpCode::Text, &payload[..])), "{len}");
            assert!(unframe(&f[..f.len().saturating_sub(1)]).is_none(), "{len}");
        }
        let mut masked = Vec::new();
        encode_masked(&mut masked, OpCode::Text, true, b"hi", [1, 2, 3, 4]);
        assert_eq!(unframe(&masked), None);
        assert_eq!(unframe(&[0x01, 0x00]), None, "no FIN");
        assert_eq!(unframe(&[]), None);
    }

    #[test]
    fn server_frame_headers() {
        let h = ([0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2);
        assert_eq!(frame_header(Text, true, 0), h);
        assert_eq!(frame_header(Binary, false, 125).0[..2], [0x02, 125]);
        assert_eq!(frame_header(Binary, true, 126).0[..4], [0x82, 126, 0, 126]);
        let h = frame_header(Ping, true, 65535).0;
        assert_eq!(h[..4], [0x89, 126, 0xff, 0xff]);
        let h = ([0x80, 127, 0, 0, 0, 0, 0, 1, 0, 0], 10);
        assert_eq!(frame_header(Cont, true, 65536), h);
        let mut out = vec![9];
        encode_frame(&mut out, Pong, b"abc");
        assert_eq!(out, [9, 0x8a, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn encode_close_truncates_at_char_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, 1001, "bye");
        assert_eq!(out, [0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
        out.clear();
        encode_close(&mut out, 1000, &"€".repeat(100));
        let body = &out[2..];
        assert_eq!((usize::from(out[1]), body.len()), (body.len(), 2 + 41 * 3));
        assert!(str::from_utf8(&body[2..]).is_ok());
    }
}
