//! The incremental decoder of client frames, and the header parsing it rests on.

use std::mem;
use std::str;

use super::close::parse_close;
use super::mask::apply_mask;
use super::utf8::Utf8Tail;
use super::{FrameError, Limits, MAX_CONTROL, MAX_HEADER, Message, OpCode};

/// Incremental decoder of client->server frames. One per connection.
///
/// While idle it holds no heap memory. A partial frame is kept (header and unmasked payload so
/// far) in a buffer of at most 14 + `max_frame` bytes; a fragmented message is assembled in a
/// buffer of at most `max_message` bytes; together never more than `max_buffered`. Both are
/// released as soon as they are complete.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The partial frame: header bytes, then the payload received so far (already unmasked).
    partial: Vec<u8>,
    /// Payload of the fragmented message in progress.
    message: Vec<u8>,
    /// Opcode (Text or Binary) of the fragmented message in progress.
    message_op: Option<OpCode>,
    /// Incomplete UTF-8 sequence at the end of the text validated so far.
    utf8: Utf8Tail,
    /// A Close frame was emitted, or an error returned: ignore all further input.
    done: bool,
}

impl Decoder {
    /// A decoder in the idle state. Allocates nothing.
    pub const fn new() -> Self {
        Decoder {
            partial: Vec::new(),
            message: Vec::new(),
            message_op: None,
            utf8: Utf8Tail::new(),
            done: false,
        }
    }

    /// Feed bytes just read from the socket.
    ///
    /// `input` is mutable so masked payloads are unmasked in place: when whole frames sit in
    /// `input` and no partial frame or fragmented message is pending, messages are emitted as
    /// slices of `input` with no copy. A trailing partial frame is copied into the decoder's own
    /// buffer and completed by later calls. Calls `on_msg` once per complete data message or
    /// control frame, in order. After a Close frame has been emitted, all further bytes (this
    /// call and later ones) are ignored.
    ///
    /// Stops at the first error and returns it; the caller then closes the connection with
    /// [`FrameError::close_code`]. The decoder releases its buffers and ignores later input.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        on_msg: &mut dyn FnMut(Message<'_>),
    ) -> Result<(), FrameError> {
        let result = self.feed_inner(input, limits, on_msg);
        if result.is_err() {
            self.finish();
        }
        result
    }

    /// True when no partial frame and no fragmented message is held (the normal idle state).
    pub fn is_idle(&self) -> bool {
        self.partial.is_empty() && self.message_op.is_none()
    }

    /// True while a data message is incomplete: a fragmented message has begun, or part of a
    /// Text or Binary frame is held. (A partial control frame alone does not count.) The
    /// caller can time how long a message takes to arrive with it.
    pub fn message_pending(&self) -> bool {
        self.message_op.is_some() || self.partial.first().is_some_and(|b0| b0 & 0x08 == 0)
    }

    /// Heap bytes currently held (capacity of internal buffers). 0 whenever idle.
    pub fn heap_bytes(&self) -> usize {
        self.partial.capacity() + self.message.capacity()
    }

    fn feed_inner(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        on_msg: &mut dyn FnMut(Message<'_>),
    ) -> Result<(), FrameError> {
        let mut pos = 0;
        while !self.done && pos < input.len() {
            let rest = &mut input[pos..];
            if self.partial.is_empty()
                && let Some(h) = parse_header(rest, self.message_op, self.message.len(), limits)?
                && let Some(end) = h.header_len.checked_add(h.payload_len)
                && let Some((frame, _)) = rest.split_at_mut_checked(end)
            {
                // The whole frame is here: unmask in place and emit without copying.
                let payload = &mut frame[h.header_len..];
                apply_mask(payload, h.mask, 0);
                if self.is_textish(h.op) && !(h.op == OpCode::Text && h.fin) {
                    self.utf8.push(payload)?;
                }
                self.dispatch(&h, payload, 0, limits, on_msg)?;
                pos += end;
            } else {
                let used = self.absorb(rest, limits, on_msg)?;
                if used == 0 {
                    // Cannot happen (absorb always consumes a byte here); never spin.
                    return Err(FrameError::Protocol("decoder made no progress"));
                }
                pos += used;
            }
        }
        Ok(())
    }

    /// Copy bytes of a frame that is not wholly in `input` into `self.partial`; emit it if it
    /// completes. Returns the number of bytes of `input` consumed.
    fn absorb(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        on_msg: &mut dyn FnMut(Message<'_>),
    ) -> Result<usize, FrameError> {
        let mut used = 0;
        let h = loop {
            match parse_header(&self.partial, self.message_op, self.message.len(), limits)? {
                Some(h) => break h,
                None => {
                    let need = header_len_needed(&self.partial).saturating_sub(self.partial.len());
                    let take = need.min(input.len() - used);
                    if take == 0 {
                        return Ok(used);
                    }
                    let room = self.room(limits, 0);
                    extend_bounded(
                        &mut self.partial,
                        &input[used..used + take],
                        MAX_HEADER,
                        room,
                    )?;
                    used += take;
                }
            }
        };
        let have = self.partial.len().saturating_sub(h.header_len);
        let want = h.payload_len.saturating_sub(have);
        let take = want.min(input.len() - used);
        let chunk = &mut input[used..used + take];
        apply_mask(chunk, h.mask, have);
        if self.is_textish(h.op) {
            // Fail fast: validate text as it arrives, not only when the frame is complete.
            self.utf8.push(chunk)?;
        }
        let frame_len = h.header_len.saturating_add(h.payload_len);
        let room = self.room(limits, 0);
        extend_bounded(&mut self.partial, chunk, frame_len, room)?;
        used += take;
        if take == want {
            let frame = mem::take(&mut self.partial);
            let payload = frame.get(h.header_len..).unwrap_or_default();
            self.dispatch(&h, payload, frame.capacity(), limits, on_msg)?;
        }
        Ok(used)
    }

    /// Act on one complete frame whose payload is unmasked (and, for fragments of a text
    /// message, already fed to the UTF-8 validator). `held` is the capacity of the buffer the
    /// payload sits in when that is the decoder's (it still counts against `max_buffered`).
    fn dispatch(
        &mut self,
        h: &Header,
        payload: &[u8],
        held: usize,
        limits: &Limits,
        on_msg: &mut dyn FnMut(Message<'_>),
    ) -> Result<(), FrameError> {
        match h.op {
            OpCode::Ping => on_msg(Message::Ping(payload)),
            OpCode::Pong => on_msg(Message::Pong(payload)),
            OpCode::Close => {
                let close = parse_close(payload)?;
                self.finish();
                on_msg(Message::Close(close));
            }
            OpCode::Text if h.fin => {
                self.utf8 = Utf8Tail::new();
                let text = str::from_utf8(payload).map_err(|_| FrameError::InvalidUtf8)?;
                on_msg(Message::Text(text));
            }
            OpCode::Binary if h.fin => on_msg(Message::Binary(payload)),
            OpCode::Text | OpCode::Binary => {
                self.message_op = Some(h.op);
                let room = self.room(limits, held);
                extend_bounded(&mut self.message, payload, limits.max_message, room)?;
                on_msg(Message::Fragment);
            }
            OpCode::Continuation => {
                let room = self.room(limits, held);
                extend_bounded(&mut self.message, payload, limits.max_message, room)?;
                if !h.fin {
                    on_msg(Message::Fragment);
                } else {
                    let message = mem::take(&mut self.message);
                    if self.message_op.take() == Some(OpCode::Text) {
                        let tail = mem::take(&mut self.utf8);
                        if !tail.is_empty() {
                            return Err(FrameError::InvalidUtf8);
                        }
                        let text = str::from_utf8(&message).map_err(|_| FrameError::InvalidUtf8)?;
                        on_msg(Message::Text(text));
                    } else {
                        on_msg(Message::Binary(&message));
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes the buffers may still grow by under `max_buffered`, `held` bytes held elsewhere.
    fn room(&self, limits: &Limits, held: usize) -> usize {
        limits
            .max_buffered
            .saturating_sub(self.heap_bytes().saturating_add(held))
    }

    /// True when the payload of a frame with opcode `op` is text.
    fn is_textish(&self, op: OpCode) -> bool {
        op == OpCode::Text || (op == OpCode::Continuation && self.message_op == Some(OpCode::Text))
    }

    /// Release everything and ignore further input.
    fn finish(&mut self) {
        *self = Decoder::new();
        self.done = true;
    }
}

/// A parsed and validated client frame header.
#[derive(Debug)]
struct Header {
    op: OpCode,
    fin: bool,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

/// Bytes of header needed given the bytes seen so far: 2 until the length code is known.
fn header_len_needed(b: &[u8]) -> usize {
    match b.get(1).map(|b1| b1 & 0x7f) {
        None => 2,
        Some(126) => 8,
        Some(127) => 14,
        Some(_) => 6,
    }
}

/// Validate as much of a client frame header as `b` holds. `Ok(None)` when more bytes are
/// needed; errors are reported as soon as the offending byte is present.
fn parse_header(
    b: &[u8],
    message_op: Option<OpCode>,
    message_len: usize,
    limits: &Limits,
) -> Result<Option<Header>, FrameError> {
    let Some(&b0) = b.first() else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let op = OpCode::from_u8(b0 & 0x0f).ok_or(FrameError::Protocol("reserved opcode"))?;
    let fin = b0 & 0x80 != 0;
    match (op, message_op) {
        _ if op.is_control() && !fin => {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        (OpCode::Continuation, None) => {
            return Err(FrameError::Protocol("continuation frame without a message"));
        }
        (OpCode::Text | OpCode::Binary, Some(_)) => {
            return Err(FrameError::Protocol(
                "new message inside a fragmented message",
            ));
        }
        _ => {}
    }
    let Some(&b1) = b.get(1) else {
        return Ok(None);
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frame not masked"));
    }
    let len7 = b1 & 0x7f;
    if op.is_control() && usize::from(len7) > MAX_CONTROL {
        return Err(FrameError::Protocol("control frame payload over 125 bytes"));
    }
    if len7 == 127 && b.get(2).is_some_and(|b2| b2 & 0x80 != 0) {
        return Err(FrameError::Protocol(
            "64-bit payload length with the top bit set",
        ));
    }
    let header_len = header_len_needed(b);
    let Some(h) = b.get(..header_len) else {
        return Ok(None);
    };
    let ext = header_len - 6;
    let mut len_bytes = [0u8; 8];
    len_bytes[8 - ext..].copy_from_slice(&h[2..2 + ext]);
    let payload_len = if ext == 0 {
        u64::from(len7)
    } else {
        u64::from_be_bytes(len_bytes)
    };
    if payload_len > u64::try_from(limits.max_frame).unwrap_or(u64::MAX) {
        return Err(FrameError::TooBig);
    }
    let payload_len = usize::try_from(payload_len).map_err(|_| FrameError::TooBig)?;
    let message_total = match op {
        OpCode::Continuation => message_len.checked_add(payload_len),
        OpCode::Text | OpCode::Binary => Some(payload_len),
        _ => Some(0),
    };
    if message_total.is_none_or(|total| total > limits.max_message) {
        return Err(FrameError::TooBig);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&h[header_len - 4..]);
    Ok(Some(Header {
        op,
        fin,
        mask,
        header_len,
        payload_len,
    }))
}

/// Append `data` to `v`, growing its capacity geometrically but never beyond `limit` (unless
/// `data` itself needs more, which the callers' length checks rule out), and by at most `room`
/// bytes: more than that fails with [`FrameError::OverBudget`] before allocating.
fn extend_bounded(
    v: &mut Vec<u8>,
    data: &[u8],
    limit: usize,
    room: usize,
) -> Result<(), FrameError> {
    let needed = v.len().saturating_add(data.len());
    if needed > v.capacity() {
        let cap = v.capacity();
        let target = cap
            .saturating_mul(2)
            .min(limit)
            .min(cap.saturating_add(room))
            .max(needed);
        if target - cap > room {
            return Err(FrameError::OverBudget);
        }
        v.reserve_exact(target - v.len());
    }
    v.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    use OpCode::{Binary, Close, Continuation as Cont, Ping, Pong, Text};

    #[test]
    fn decoder_is_small_and_allocates_nothing() {
        // 56 bytes on 64-bit targets: two Vecs (48) + UTF-8 tail (4) + opcode + flag, padded.
        assert!(size_of::<Decoder>() <= 64);
        assert_eq!(size_of::<Decoder>(), 56);
        let d = Decoder::default();
        assert_eq!((d.heap_bytes(), d.is_idle()), (0, true));
    }

    #[test]
    fn every_length_encoding_zero_copy() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut bytes = frame(Binary, &payload);
            let header = [6, 8, 14][usize::from(len > 125) + usize::from(len > 65535)];
            assert_eq!(bytes.len(), header + len);
            let range = bytes.as_ptr_range();
            let (mut d, mut seen) = (Decoder::new(), 0);
            d.feed(&mut bytes, &LIMITS, &mut |m| {
                assert_eq!(m, Message::Binary(&payload));
                let Message::Binary(b) = m else { return };
                assert!(len == 0 || range.contains(&b.as_ptr()), "copied");
                seen += 1;
            })
            .unwrap();
            assert_eq!((seen, d.heap_bytes(), d.is_idle()), (1, 0, true));
            let text = "é".repeat(len / 2);
            assert_eq!(
                decode(&frame(Text, text.as_bytes())),
                (vec![txt(&text)], OK)
            );
        }
    }

    #[test]
    fn masked_round_trip_of_every_kind() {
        let parts: [(OpCode, bool, &[u8]); 5] = [
            (Text, true, "héllo".as_bytes()),
            (Binary, true, &[0, 1, 2, 255]),
            (Ping, true, b"p"),
            (Pong, true, b""),
            (Close, true, b"\x0f\xa0ok \xe2\x9c\x93"),
        ];
        let (msgs, r) = decode(&frames(&parts));
        r.unwrap();
        let close = Owned::Close(Some((4000, "ok ✓".into())));
        let ping = Owned::Ping(b"p".to_vec());
        let pong = Owned::Pong(vec![]);
        assert_eq!(
            msgs,
            [txt("héllo"), bin(&[0, 1, 2, 255]), ping, pong, close]
        );
        assert_eq!(decode(&frame(Close, b"")).0, [Owned::Close(None)]);
    }

    /// A stream exercising fragmentation, control frames between fragments and a close.
    fn mixed_stream() -> Vec<u8> {
        let text = "añb€c😀d".as_bytes();
        let mut s = frames(&[
            (Text, false, &text[..2]), // splits 'ñ'
            (Ping, true, b"between"),
            (Cont, false, &text[2..6]), // splits '€'
            (Cont, false, &[]),
            (Cont, true, &text[6..]),
            (Binary, true, &[7; 300]),
            (Binary, false, &[1; 70_000]),
            (Pong, true, b"x"),
            (Cont, true, &[2; 10]),
            (Close, true, &[0x03, 0xe8]),
        ]);
        s.extend(b"ignored garbage after close");
        s
    }

    #[test]
    fn any_split_decodes_the_same() {
        let stream = mixed_stream();
        let (whole, r) = decode(&stream);
        r.unwrap();
        let big = [vec![1; 70_000], vec![2; 10]].concat();
        let expected = [
            Owned::Fragment,
            Owned::Ping(b"between".to_vec()),
            Owned::Fragment,
            Owned::Fragment,
            txt("añb€c😀d"),
            bin(&[7; 300]),
            Owned::Fragment,
            Owned::Pong(b"x".to_vec()),
            bin(&big),
            Owned::Close(Some((1000, String::new()))),
        ];
        assert_eq!(whole, expected);
        for chunk in [1, 2, 3, 5, 13, 127, 1000, 4096] {
            let split = decode_chunked(&stream, chunk, &LIMITS);
            assert_eq!(split, (whole.clone(), OK));
        }
        // Irregular splits from a small LCG.
        let mut seed = 12345u32;
        for _ in 0..50 {
            let (mut d, mut out, mut input) = (Decoder::new(), Vec::new(), stream.clone());
            let mut rest = &mut input[..];
            while !rest.is_empty() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let n = ((seed >> 16) as usize % 40 + 1).min(rest.len());
                let (piece, tail) = rest.split_at_mut(n);
                d.feed(piece, &LIMITS, &mut |m| out.push(own(m))).unwrap();
                rest = tail;
            }
            assert_eq!(out, whole);
        }
    }

    #[test]
    fn fragmented_message_releases_memory() {
        let mut d = Decoder::new();
        let first = frames(&[(Text, false, "h€".as_bytes())]);
        let split = first.len() - 1; // leave the frame partial, with an incomplete char
        assert_eq!(feed(&mut d, &first[..split]), (vec![], OK));
        assert!(!d.is_idle() && d.heap_bytes() > 0);
        assert_eq!(feed(&mut d, &first[split..]), (vec![Owned::Fragment], OK));
        assert!(!d.is_idle() && d.heap_bytes() > 0);
        assert_eq!(feed(&mut d, &frame(Ping, b"")).0, [Owned::Ping(vec![])]);
        assert_eq!(feed(&mut d, &frame(Cont, b"llo")).0, [txt("h€llo")]);
        assert_eq!((d.heap_bytes(), d.is_idle()), (0, true));
    }

    #[test]
    fn every_frame_yields_one_message() {
        // 1 + 3,998 + 1 fragments with a ping inside: 4,001 frames, 4,001 messages, whatever
        // the split, so a caller can count frames of any kind.
        let mut parts: Vec<(OpCode, bool, &[u8])> = vec![(Binary, false, b"a")];
        parts.extend(std::iter::repeat_n((Cont, false, &b"b"[..]), 3998));
        parts.insert(7, (Ping, true, b""));
        parts.push((Cont, true, b"c"));
        let stream = frames(&parts);
        for chunk in [stream.len(), 5, 1] {
            let (msgs, r) = decode_chunked(&stream, chunk, &LIMITS);
            r.unwrap();
            assert_eq!(msgs.len(), 4001, "{chunk}");
            let fragments = msgs.iter().filter(|m| **m == Owned::Fragment).count();
            assert_eq!(fragments, 3999, "{chunk}");
            assert_eq!(msgs[7], Owned::Ping(vec![]));
            assert_eq!(
                msgs.last()
                    .map(|m| matches!(m, Owned::Binary(b) if b.len() == 4000)),
                Some(true)
            );
        }
    }

    #[test]
    fn message_pending_is_about_data_only() {
        let mut d = Decoder::new();
        assert!(!d.message_pending());
        // Part of a ping: held, but no data message is pending.
        let ping = frame(Ping, b"hello");
        assert_eq!(feed(&mut d, &ping[..4]), (vec![], OK));
        assert!(!d.is_idle() && !d.message_pending());
        assert_eq!(feed(&mut d, &ping[4..]).0, [Owned::Ping(b"hello".to_vec())]);
        // Part of a text frame (even its first byte alone).
        let text = frame(Text, b"hi");
        assert_eq!(feed(&mut d, &text[..1]), (vec![], OK));
        assert!(d.message_pending());
        assert_eq!(feed(&mut d, &text[1..]).0, [txt("hi")]);
        assert!(!d.message_pending() && d.is_idle());
        // A fragmented message between its frames, with a ping in the middle.
        let first = frames(&[(Binary, false, b"ab")]);
        assert_eq!(feed(&mut d, &first).0, [Owned::Fragment]);
        assert!(d.message_pending());
        assert_eq!(feed(&mut d, &frame(Ping, b"")).0, [Owned::Ping(vec![])]);
        assert!(d.message_pending());
        assert_eq!(feed(&mut d, &frame(Cont, b"c")).0, [bin(b"abc")]);
        assert!(!d.message_pending() && d.is_idle());
    }

    #[test]
    fn buffer_budget_fails_before_allocating() {
        let budget = Limits {
            max_buffered: 100,
            ..LIMITS
        };
        let fed = |bytes: &[u8], chunk: usize| {
            let (mut d, mut out) = (Decoder::new(), Vec::new());
            for piece in bytes.to_vec().chunks_mut(chunk) {
                let r = d.feed(piece, &budget, &mut |m| out.push(own(m)));
                assert!(d.heap_bytes() <= 100, "{}", d.heap_bytes());
                if r.is_err() {
                    return (out, r);
                }
            }
            (out, Ok(()))
        };
        // Whole frames in the input are not copied, so the budget does not apply to them.
        assert_eq!(
            fed(&frame(Binary, &[1; 300]), 1000),
            (vec![bin(&[1; 300])], OK)
        );
        // The same frame arriving in pieces would have to be held: refused.
        let over: Result<(), FrameError> = Err(FrameError::OverBudget);
        assert_eq!(fed(&frame(Binary, &[1; 300]), 50), (vec![], over.clone()));
        assert_eq!(fed(&frame(Binary, &[1; 80]), 10), (vec![bin(&[1; 80])], OK));
        // A fragmented message is held whole until its end: refused past the budget.
        let parts = [
            (Text, false, &[b'a'; 60][..]),
            (Cont, false, &[b'b'; 60][..]),
        ];
        let (msgs, r) = fed(&frames(&parts), 1000);
        assert_eq!((msgs, r), (vec![Owned::Fragment], over.clone()));
        assert_eq!(FrameError::OverBudget.close_code(), 1013);
        // Held message bytes and the held part of its next frame count together.
        let parts = [(Binary, false, &[1; 50][..]), (Cont, true, &[2; 40][..])];
        let stream = frames(&parts);
        let whole = vec![Owned::Fragment, bin(&[&[1u8; 50][..], &[2; 40]].concat())];
        assert_eq!(fed(&stream, 1000), (whole, OK));
        // In pieces, a frame is held whole while it is copied into the message: 56 + 50 > 100.
        assert_eq!(fed(&stream, 30), (vec![], over.clone()));
        // Any budget, any split: what the decoder says without a budget, or a prefix of it
        // and then OverBudget; never more held than the budget.
        let stream = mixed_stream();
        let (all, r) = decode(&stream);
        r.unwrap();
        for max_buffered in [0, 10, 200, 5000, 80_000, 200_000] {
            let limits = Limits {
                max_buffered,
                ..LIMITS
            };
            for chunk in [1, 7, 4096, stream.len()] {
                let (mut d, mut out, mut r) = (Decoder::new(), Vec::new(), Ok(()));
                for piece in stream.clone().chunks_mut(chunk) {
                    r = d.feed(piece, &limits, &mut |m| out.push(own(m)));
                    assert!(d.heap_bytes() <= max_buffered);
                    if r.is_err() {
                        break;
                    }
                }
                match r {
                    Ok(()) => assert_eq!(out, all, "{max_buffered} {chunk}"),
                    Err(e) => {
                        assert_eq!(e, FrameError::OverBudget, "{max_buffered} {chunk}");
                        assert!(all.starts_with(&out), "{max_buffered} {chunk}");
                    }
                }
            }
        }
    }

    #[test]
    fn partial_buffer_is_bounded_by_the_frame() {
        let limits = lim(1000, 1000);
        let (mut d, mut got) = (Decoder::new(), None);
        for b in frame(Binary, &[5; 1000]).chunks_mut(1) {
            d.feed(b, &limits, &mut |m| got = Some(own(m))).unwrap();
            assert!(d.heap_bytes() <= 14 + 1000, "{}", d.heap_bytes());
        }
        assert_eq!((got, d.heap_bytes()), (Some(bin(&[5; 1000])), 0));
    }

    #[test]
    fn header_errors() {
        fails(&[0x82, 0x00], 1002); // unmasked binary
        fails(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], 1002); // unmasked text
        for rsv in [0x40, 0x20, 0x10] {
            fails(&[0x82 | rsv, 0x80, 0, 0, 0, 0], 1002);
        }
        for op in (3..=7).chain(0xB..=0xF) {
            fails(&[0x80 | op, 0x80, 0, 0, 0, 0], 1002);
        }
        for op in [Ping, Pong, Close] {
            fails(&frames(&[(op, false, b"")]), 1002); // fragmented control frame
            fails(&frame(op, &[b'a'; 126]), 1002); // control frame over 125 bytes
        }
        fails(&frame(Cont, b"x"), 1002); // nothing to continue
        fails(&frames(&[(Text, false, b"a"), (Binary, true, b"b")]), 1002);
        fails(&frames(&[(Binary, false, b"a"), (Text, false, b"b")]), 1002);
    }

    #[test]
    fn length_with_top_bit_set() {
        let h = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        fails(&h, 1002);
        // Reported from the third byte alone.
        let r = feed(&mut Decoder::new(), &h[..3]).1;
        assert!(matches!(r, Err(FrameError::Protocol(_))));
    }

    #[test]
    fn huge_length_is_too_big_without_allocating() {
        let mut h = vec![0x82, 0xff];
        h.extend((1u64 << 62).to_be_bytes().into_iter().chain([1, 2, 3, 4]));
        let mut d = Decoder::new();
        assert_eq!(feed(&mut d, &h).1, TOO_BIG);
        assert_eq!(d.heap_bytes(), 0);
        fails(&h, 1009);
    }

    #[test]
    fn size_limits() {
        let limits = lim(10, 25);
        let ok = decode_chunked(&frame(Binary, &[0; 10]), 3, &limits);
        assert_eq!(ok, (vec![bin(&[0; 10])], OK));
        let big = decode_chunked(&frame(Binary, &[0; 11]), 100, &limits);
        assert_eq!(big, (vec![], TOO_BIG));
        let a = [b'a'; 10];
        let mut msg = frames(&[(Text, false, &a), (Cont, false, &a), (Cont, true, &a[..5])]);
        let text = txt(&"a".repeat(25));
        let whole = vec![Owned::Fragment, Owned::Fragment, text];
        assert_eq!(decode_chunked(&msg, 1, &limits), (whole.clone(), OK));
        let [b, c] = [(Binary, false, &a[..]), (Cont, false, &a[..])];
        msg.extend(frames(&[b, c, (Cont, true, &a[..6])]));
        let fragments = [Owned::Fragment, Owned::Fragment];
        let upto_error = [whole, fragments.to_vec()].concat();
        assert_eq!(decode_chunked(&msg, 7, &limits), (upto_error, TOO_BIG));
        // A control frame also counts against max_frame.
        let ping = decode_chunked(&frame(Ping, b"hello"), 100, &lim(4, 4));
        assert_eq!(ping, (vec![], TOO_BIG));
    }

    #[test]
    fn invalid_utf8() {
        fails(&frame(Text, &[b'a', 0xff]), 1007);
        fails(&frame(Text, &[b'a', 0xe2, 0x82]), 1007); // ends inside a character
        let split = frames(&[(Text, false, b"a"), (Cont, true, &[0xf0, 0x9f])]);
        fails(&split, 1007);
        fails(&frame(Text, &[0xc0, 0xaf]), 1007); // overlong
        fails(&frame(Text, &[0xed, 0xa0, 0x80]), 1007); // surrogate
        assert_eq!(decode(&frame(Binary, &[0xff])), (vec![bin(&[0xff])], OK));
    }

    #[test]
    fn utf8_fails_fast() {
        // Invalid byte in the first fragment: reported before the rest arrives.
        let first = frames(&[(Text, false, &[b'o', b'k', 0xc3, 0x28])]);
        assert_eq!(feed(&mut Decoder::new(), &first), (vec![], BAD_UTF8));
        // A character split across fragments whose continuation is wrong: reported at once.
        let mut d = Decoder::new();
        let first = frames(&[(Text, false, &[b'o', 0xe2])]);
        assert_eq!(feed(&mut d, &first), (vec![Owned::Fragment], OK));
        let second = frames(&[(Cont, false, &[0x82, 0x41])]);
        assert_eq!(feed(&mut d, &second), (vec![], BAD_UTF8));
        // Within one frame that arrives in pieces: reported when the bad byte arrives.
        let mut d = Decoder::new();
        let whole = frame(Text, &[b'a', b'b', 0xf4, 0x90, b'c', b'd', b'e']);
        let bad = 6 + 3; // header, then 0x90 after 0xf4 (above U+10FFFF)
        assert_eq!(feed(&mut d, &whole[..bad]), (vec![], OK));
        assert_eq!(feed(&mut d, &whole[bad..=bad]), (vec![], BAD_UTF8));
        // After an error everything is released and further input ignored.
        assert_eq!(d.heap_bytes(), 0);
        assert_eq!(feed(&mut d, &whole), (vec![], OK));
    }

    #[test]
    fn bytes_after_close_are_ignored() {
        let mut s = frames(&[(Close, true, &[0x03, 0xe9]), (Text, true, b"late")]);
        s.extend([0xff; 20]); // would be a protocol error if parsed
        let mut d = Decoder::new();
        let close = Owned::Close(Some((1001, String::new())));
        assert_eq!(feed(&mut d, &s), (vec![close], OK));
        assert_eq!(feed(&mut d, &[0x0f, 0x00, 0x11]), (vec![], OK));
        assert_eq!(feed(&mut d, &frame(Ping, b"")), (vec![], OK));
        assert_eq!(d.heap_bytes(), 0);
        // A close in the middle of a fragmented message releases it.
        let s = frames(&[
            (Binary, false, b"abc"),
            (Close, true, b""),
            (Cont, true, b"d"),
        ]);
        assert_eq!(
            decode_chunked(&s, 2, &LIMITS),
            (vec![Owned::Fragment, Owned::Close(None)], OK)
        );
    }
}
