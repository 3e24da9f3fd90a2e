//! RFC 6455 frames, server side: an incremental decoder for client frames and encoders for
//! server frames. No I/O: bytes in, messages out.
//!
//! The decoder enforces what a server without extensions must (masking, reserved bits and
//! opcodes, control-frame rules, fragmentation order, UTF-8 of text and close reasons, close
//! codes) and bounds its memory by [`Limits`]. Whole frames are handed out as slices of the
//! caller's buffer; only a trailing partial frame or a fragmented message is copied.

use std::mem;
use std::str;

/// Frame opcode (RFC 6455 section 5.2). The reserved values have no variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a further fragment of the message in progress.
    Continuation,
    /// 0x1: first (or only) frame of a UTF-8 text message.
    Text,
    /// 0x2: first (or only) frame of a binary message.
    Binary,
    /// 0x8: connection close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// The opcode for a 4-bit wire value, or `None` for reserved and out-of-range values.
    pub fn from_u8(b: u8) -> Option<OpCode> {
        match b {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// True for Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Size limits applied by the [`Decoder`], in payload bytes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest payload of a single frame.
    pub max_frame: usize,
    /// Largest complete (reassembled) data message.
    pub max_message: usize,
    /// Most heap bytes the decoder may hold at once for a partial frame and a fragmented
    /// message together (its share of a budget the caller keeps, e.g. per core). Input that
    /// would need more fails with [`FrameError::OverBudget`] before anything is allocated.
    /// `usize::MAX`: only `max_frame` and `max_message` bound it.
    pub max_buffered: usize,
}

/// The body of a Close frame, already validated.
#[derive(Debug, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// Status code (valid per [`is_valid_close_code`]).
    pub code: u16,
    /// UTF-8 reason, possibly empty.
    pub reason: &'a str,
}

/// One complete data message or control frame, borrowed from the input or the decoder.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete (possibly reassembled) text message, UTF-8 validated.
    Text(&'a str),
    /// A complete (possibly reassembled) binary message.
    Binary(&'a [u8]),
    /// A ping; the caller answers with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame: `None` for an empty body, else its validated code and reason.
    Close(Option<CloseFrame<'a>>),
    /// A data frame of a fragmented message that is not its last one: the decoder keeps its
    /// payload, and the whole message comes as `Text` or `Binary` with the final frame. With
    /// it, every frame received yields exactly one `Message` (for rate limits).
    Fragment,
}

/// Why decoding failed. Each variant names the close code the caller should send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer broke RFC 6455: close with 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason is not UTF-8: close with 1007.
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    /// A frame or message exceeds [`Limits`]: close with 1009.
    #[error("frame or message too big")]
    TooBig,
    /// Holding the rest of this frame or message would pass [`Limits::max_buffered`]: close
    /// with 1013 (try again later; it is the server's budget, not a fault of this frame).
    #[error("partial message over the buffer budget")]
    OverBudget,
}

impl FrameError {
    /// The close code to send for this error (1002, 1007, 1009 or 1013).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::InvalidUtf8 => 1007,
            FrameError::TooBig => 1009,
            FrameError::OverBudget => 1013,
        }
    }
}

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

/// Server->client frame (FIN set, unmasked) appended to `out`.
pub fn encode_frame(out: &mut Vec<u8>, op: OpCode, payload: &[u8]) {
    let (header, n) = frame_header(op, true, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
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

/// XOR `buf` with `mask`, where `buf[0]` is at position `offset` of the payload (`offset % 4`
/// picks the mask byte). Works a `u64` at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = mask;
    m.rotate_left(offset % 4);
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for w in words {
        *w = (u64::from_ne_bytes(*w) ^ word).to_ne_bytes();
    }
    // Each word covers 8 bytes, a multiple of 4, so the tail starts at mask phase 0 again.
    for (b, k) in tail.iter_mut().zip(m.iter().cycle()) {
        *b ^= k;
    }
}

/// True for the close codes a peer may send (RFC 6455 section 7.4): 1000-1003, 1007-1014,
/// 3000-4999.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
const MAX_HEADER: usize = 14;
/// Longest control-frame payload.
const MAX_CONTROL: usize = 125;

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

/// Validate an unmasked close body (RFC 6455 section 5.5.1).
fn parse_close(body: &[u8]) -> Result<Option<CloseFrame<'_>>, FrameError> {
    let Some((code, reason)) = body.split_first_chunk::<2>() else {
        return if body.is_empty() {
            Ok(None)
        } else {
            Err(FrameError::Protocol("close body of one byte"))
        };
    };
    let code = u16::from_be_bytes(*code);
    if !is_valid_close_code(code) {
        return Err(FrameError::Protocol("invalid close code"));
    }
    let reason = str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
    Ok(Some(CloseFrame { code, reason }))
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

/// Streaming UTF-8 validation state: the incomplete sequence (at most 3 bytes) that ends the
/// text validated so far.
#[derive(Debug, Default, Clone, Copy)]
struct Utf8Tail {
    bytes: [u8; 3],
    len: u8,
}

impl Utf8Tail {
    const fn new() -> Self {
        Utf8Tail {
            bytes: [0; 3],
            len: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Validate the next `data` of the text. Fails as soon as an invalid sequence is present;
    /// an incomplete sequence at the end is kept for the next call.
    fn push(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        let held = usize::from(self.len);
        if held > 0 {
            // Complete the held character with the bytes it still needs.
            let width: usize = match self.bytes[0] {
                0xF0.. => 4,
                0xE0.. => 3,
                _ => 2,
            };
            let take = width.saturating_sub(held).min(data.len());
            let mut ch = [0u8; 4];
            ch[..held].copy_from_slice(&self.bytes[..held]);
            ch[held..held + take].copy_from_slice(&data[..take]);
            match str::from_utf8(&ch[..held + take]) {
                Ok(_) => {
                    self.len = 0;
                    data = &data[take..];
                }
                Err(e) if e.error_len().is_some() => return Err(FrameError::InvalidUtf8),
                Err(_) => {
                    self.bytes[..held + take].copy_from_slice(&ch[..held + take]);
                    self.len += take as u8;
                    return Ok(());
                }
            }
        }
        if let Err(e) = str::from_utf8(data) {
            if e.error_len().is_some() {
                return Err(FrameError::InvalidUtf8);
            }
            let tail = &data[e.valid_up_to()..];
            self.bytes[..tail.len()].copy_from_slice(tail);
            self.len = tail.len() as u8;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use OpCode::{Binary, Close, Continuation as Cont, Ping, Pong, Text};

    const LIMITS: Limits = lim(1 << 20, 1 << 21);

    const fn lim(max_frame: usize, max_message: usize) -> Limits {
        Limits {
            max_frame,
            max_message,
            max_buffered: usize::MAX,
        }
    }

    /// An owned copy of a [`Message`], for comparing across calls.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
        Fragment,
    }

    type Decoded = (Vec<Owned>, Result<(), FrameError>);
    const OK: Result<(), FrameError> = Ok(());
    const TOO_BIG: Result<(), FrameError> = Err(FrameError::TooBig);
    const BAD_UTF8: Result<(), FrameError> = Err(FrameError::InvalidUtf8);

    fn txt(s: &str) -> Owned {
        Owned::Text(s.to_owned())
    }

    fn bin(b: &[u8]) -> Owned {
        Owned::Binary(b.to_vec())
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

    /// Client frames, masked, one after the other.
    fn frames(parts: &[(OpCode, bool, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(op, fin, payload) in parts {
            encode_masked(&mut v, op, fin, payload, [0x37, 0xfa, 0x21, 0x3d]);
        }
        v
    }

    fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
        frames(&[(op, true, payload)])
    }

    /// Feed one piece to `d`, collecting messages.
    fn feed(d: &mut Decoder, bytes: &[u8]) -> Decoded {
        let mut out = Vec::new();
        let r = d.feed(&mut bytes.to_vec(), &LIMITS, &mut |m| out.push(own(m)));
        (out, r)
    }

    /// Feed `bytes` to a new decoder in chunks of `chunk` bytes; stop at the first error.
    fn decode_chunked(bytes: &[u8], chunk: usize, limits: &Limits) -> Decoded {
        let (mut d, mut out) = (Decoder::new(), Vec::new());
        for piece in bytes.to_vec().chunks_mut(chunk.max(1)) {
            if let Err(e) = d.feed(piece, limits, &mut |m| out.push(own(m))) {
                assert_eq!(d.heap_bytes(), 0);
                return (out, Err(e));
            }
        }
        (out, Ok(()))
    }

    fn decode(bytes: &[u8]) -> Decoded {
        decode_chunked(bytes, bytes.len(), &LIMITS)
    }

    /// Assert that `bytes` fails with close code `code`, fed whole and byte at a time.
    fn fails(bytes: &[u8], code: u16) {
        for chunk in [bytes.len(), 1] {
            let r = decode_chunked(bytes, chunk, &LIMITS)
                .1
                .map_err(|e| e.close_code());
            assert_eq!(r, Err(code), "{chunk}: {bytes:02x?}");
        }
    }

    #[test]
    fn decoder_is_small_and_allocates_nothing() {
        // 56 bytes on 64-bit targets: two Vecs (48) + UTF-8 tail (4) + opcode + flag, padded.
        assert!(size_of::<Decoder>() <= 64);
        assert_eq!(size_of::<Decoder>(), 56);
        let d = Decoder::default();
        assert_eq!((d.heap_bytes(), d.is_idle()), (0, true));
    }

    #[test]
    fn opcodes_and_error_codes() {
        for b in 0..=255u8 {
            match OpCode::from_u8(b) {
                Some(op) => assert_eq!((op.to_u8(), op.is_control()), (b, b >= 8)),
                None => assert!((3..=7).contains(&b) || b >= 0xB),
            }
        }
        assert_eq!(FrameError::Protocol("x").close_code(), 1002);
        assert_eq!(FrameError::InvalidUtf8.close_code(), 1007);
        assert_eq!(FrameError::TooBig.close_code(), 1009);
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
    fn close_body_rules() {
        fails(&frame(Close, &[0x03]), 1002);
        let invalid = [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
        ];
        for code in invalid {
            fails(&frame(Close, &code.to_be_bytes()), 1002);
        }
        fails(
            &frame(Close, b"\x03\xe8\xce\xba\xe1\xbd\xb9\xed\xa0\x80"),
            1007,
        );
        for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            let close = Owned::Close(Some((code, String::new())));
            assert_eq!(
                decode(&frame(Close, &code.to_be_bytes())),
                (vec![close], OK)
            );
        }
        let valid = (0..=u16::MAX).filter(|&c| is_valid_close_code(c));
        let expected = (1000..=1003).chain(1007..=1014).chain(3000..=4999);
        assert!(valid.eq(expected));
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

    #[test]
    fn apply_mask_matches_naive() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for offset in 0..40 {
            for len in 0..40 {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                let mut naive = data.clone();
                for (i, b) in naive.iter_mut().enumerate() {
                    *b ^= mask[(offset + i) % 4];
                }
                let mut fast = data;
                apply_mask(&mut fast, mask, offset);
                assert_eq!(fast, naive, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn utf8_tail_streaming() {
        let text = "a€😀ñz".as_bytes();
        for cut in 0..=text.len() {
            let mut t = Utf8Tail::new();
            t.push(&text[..cut]).unwrap();
            t.push(&text[cut..]).unwrap();
            assert!(t.is_empty());
        }
        let mut t = Utf8Tail::new();
        for b in text.chunks(1) {
            t.push(b).unwrap();
        }
        assert!(t.is_empty());
        t.push(&[0xf0, 0x9f]).unwrap();
        assert_eq!(t.push(&[0x41]), Err(FrameError::InvalidUtf8));
    }
}
