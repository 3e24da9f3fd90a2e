//! RFC 6455 frames, server side: an incremental decoder for client frames and encoders for
//! server frames. No I/O: bytes in, messages out.
//!
//! The decoder enforces what a server without extensions must (masking, reserved bits and
//! opcodes, control-frame rules, fragmentation order, UTF-8 of text and close reasons, close
//! codes) and bounds its memory by [`Limits`]. Whole frames are handed out as slices of the
//! caller's buffer; only a trailing partial frame or a fragmented message is copied.
//!
//! - `decode`: [`Decoder`] and client frame header parsing.
//! - `encode`: [`encode_frame`], [`frame_header`], [`encode_close`], [`encode_masked`].
//! - `mask`: [`apply_mask`].
//! - `utf8`: the incremental UTF-8 validator for text split across frames.
//! - [`close`]: the one list of close codes corecast sends ([`close::code`], [`close::SENT`]),
//!   those a peer may send ([`is_valid_close_code`]), Close frame bodies,
//!   [`FrameError::close_code`].

pub mod close;
mod decode;
mod encode;
mod mask;
#[cfg(test)]
mod test_util;
mod utf8;

pub use close::is_valid_close_code;
pub use decode::Decoder;
pub use encode::{encode_close, encode_frame, encode_masked, frame_header, unframe};
pub use mask::apply_mask;

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

/// Why decoding failed. Each variant names the close code the caller should send, which
/// [`FrameError::close_code`] returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer broke RFC 6455: close with 1002 ([`close::code::PROTOCOL`]).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason is not UTF-8: close with 1007
    /// ([`close::code::INVALID_DATA`]).
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    /// A frame or message exceeds [`Limits`]: close with 1009 ([`close::code::TOO_BIG`]).
    #[error("frame or message too big")]
    TooBig,
    /// Holding the rest of this frame or message would pass [`Limits::max_buffered`]: close
    /// with 1013 ([`close::code::TRY_AGAIN_LATER`]; it is the server's budget, not a fault of
    /// this frame).
    #[error("partial message over the buffer budget")]
    OverBudget,
}

/// Longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
const MAX_HEADER: usize = 14;
/// Longest control-frame payload.
const MAX_CONTROL: usize = 125;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes() {
        for b in 0..=255u8 {
            match OpCode::from_u8(b) {
                Some(op) => assert_eq!((op.to_u8(), op.is_control()), (b, b >= 8)),
                None => assert!((3..=7).contains(&b) || b >= 0xB),
            }
        }
    }
}
